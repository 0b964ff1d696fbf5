"""Classify image files with a trained checkpoint: top-k classes with probabilities.

Images that are not 32x32 are center-cropped to a square and resized to 32x32 (bicubic); a note says so.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flax_resnet.errors import ArgumentParser

SIZE = 32


def load_image(path: Path) -> tuple[object, list[str]]:
    """RGB uint8 (32, 32, 3) array of an image file, upright as its EXIF orientation says (a phone's photo is
    stored sideways), and what was done to it beyond that of a training image (turned, cropped, resized)."""
    import numpy as np
    from PIL import ExifTags, Image, ImageOps

    from flax_resnet.data import check_scale, rgb8

    # The file is one the user named: PIL's two-line warning for 1-2x its pixel limit would only break the
    # one-line output (over 2x, PIL refuses, and main says so in one line).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as opened:
            check_scale(opened)
            # Training reads images as stored (as torchvision's ImageFolder): a turn is said, as a resize is.
            turned = opened.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9)  # 1: as stored; 2-8: turns
            done = ["turned upright by its EXIF orientation"] if turned else []
            image = Image.fromarray(rgb8(ImageOps.exif_transpose(opened)))
        if image.size != (SIZE, SIZE):
            w, h = image.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
            done.append(f"center-cropped and resized from {w}x{h} to {SIZE}x{SIZE}")
        return np.asarray(image, np.uint8), done


def main(argv: list[str] | None = None) -> int:
    """Parse flags, classify, print top-k per image; bad paths print one line and return 1."""
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", metavar="WORKDIR_OR_CHECKPOINT",
                   help="a run's workdir (JAX or torch_ref), one checkpoint step dir, or an exported .safetensors")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (PNG/JPEG/...)")
    p.add_argument("--top-k", type=int, default=3, help="how many classes to list per image (default: 3)")
    args = p.parse_args(argv)
    if args.top_k <= 0:
        p.error(f"--top-k must be positive, got {args.top_k}")

    import jax
    import numpy as np
    from PIL import Image

    from flax_resnet import data as data_lib
    from flax_resnet.checkpoint import CheckpointError
    from flax_resnet.errors import one_line
    from flax_resnet.models import predict
    from flax_resnet.train import load_run

    try:
        arrays = []
        for name in args.images:
            path = Path(name)
            try:
                array, done = load_image(path)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # bomb: over PIL's limit
                raise data_lib.DataError(f"{path}: cannot read image ({one_line(e)})") from None
            if done:
                print(f"note: {path}: {'; '.join(done)}", file=sys.stderr)
            arrays.append(array)
        run = load_run(args.checkpoint)
    except (CheckpointError, data_lib.DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    x = data_lib.normalize(np.stack(arrays))
    probs = np.asarray(jax.nn.softmax(predict(run.model(), x), axis=-1))
    k = min(args.top_k, probs.shape[1])
    for name, pr in zip(args.images, probs, strict=True):
        top = np.argsort(-pr, kind="stable")[:k]
        print(f"{name}: " + ", ".join(f"{data_lib.printable(run.class_names[c])} {pr[c]:.4f}" for c in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
