"""Export a checkpoint's weights as a torch state dict in `.safetensors` (strict into torch_ref; imagenet: torchvision).

The file's metadata names the arch, variant, classes and the input normalization, so it is usable on its own.

`python scripts/export.py runs/r18 r18.safetensors`
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flax_resnet.errors import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, export; bad paths print one line and return 1."""
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", metavar="WORKDIR_OR_CHECKPOINT",
                   help="a run's workdir (JAX or torch_ref), one checkpoint step dir, or an exported .safetensors")
    p.add_argument("out", metavar="OUT.safetensors", help="output file")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        p.error(f"output must end in .safetensors, got {out.name!r}")
    if not out.parent.is_dir():
        p.error(f"{out}: no such directory {str(out.parent)!r}")

    from flax_resnet.checkpoint import CheckpointError
    from flax_resnet.convert import save_safetensors, to_torch_state_dict, weights_metadata
    from flax_resnet.train import load_run

    try:
        run = load_run(args.checkpoint)
        state_dict = to_torch_state_dict(run.model())
        c = run.config
        metadata = weights_metadata(c.arch, c.variant, run.class_names, run.step, c.holdout, run.holdout_digest)
        save_safetensors(state_dict, out, metadata)
    except (CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}: {len(state_dict)} tensors, {c.arch}/{c.variant}, {c.num_classes} classes (step {run.step})")
    print(f"classes: {', '.join(run.class_names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
