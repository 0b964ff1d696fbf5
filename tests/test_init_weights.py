"""`--init-weights` / `--init-skip`: both trainers start from a torch state dict (here torchvision's 1000-class
resnet18, the usual fine-tuning start) with the head left at each trainer's own seeded init.

References are independent of the trainers: torchvision's own tensors, and a model built by
`create_model(seed)` (Flax) or `torch.manual_seed(seed); torch_ref.create_model` (torch) for the head.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
import torchvision
from flax import nnx

import torch_ref
from conftest import TINY_CLASSES
from flax_resnet import convert, flags
from flax_resnet import train as train_lib
from flax_resnet.config import make_config
from flax_resnet.models import create_model
from torch_ref.train import TorchOptions, TrainError
from torch_ref.train import train as torch_train

HEAD = ["fc.bias", "fc.weight"]


@pytest.fixture(scope="module")
def imagenet_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """torchvision's resnet18 with 1000 classes and non-trivial BatchNorm statistics, saved as a .pt file."""
    torch.manual_seed(11)
    tv = torchvision.models.resnet18(num_classes=1000)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.num_batches_tracked.fill_(7)
    path = tmp_path_factory.mktemp("weights") / "resnet18_imagenet.pt"
    torch.save(tv.state_dict(), path)
    return path, {k: v.numpy().copy() for k, v in tv.state_dict().items()}


def _config(tiny_data: Path, tmp_path: Path, weights: Path | str, **kw):
    values = dict(
        arch="resnet18", variant="imagenet", batch_size=16, lr=0.05, epochs=2, progress=False, max_steps=1,
        data=str(tiny_data), data_dir=str(tmp_path / "cache"), workdir=str(tmp_path / "run"),
        init_weights=str(weights), init_skip=("fc",), checkpoint_seconds=0,
    )  # fmt: skip
    values.update(kw)
    return make_config("default", **values)


def test_the_jax_trainer_starts_from_the_weights_with_its_own_head(
    tiny_data: Path, tmp_path: Path, imagenet_weights, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    path, theirs = imagenet_weights
    built = []
    real_build_state = train_lib.build_state

    def spy(*args, **kwargs):
        built.append(real_build_state(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(train_lib, "build_state", spy)
    train_lib.train(_config(tiny_data, tmp_path, path))
    assert f"weights from {path}; at the seeded init: fc.bias, fc.weight" in capsys.readouterr().out
    graphdef, state = built[0][:2]
    ours = convert.to_torch_state_dict(train_lib.merge_model(graphdef, state))
    seeded = convert.to_torch_state_dict(create_model("resnet18", "imagenet", len(TINY_CLASSES), seed=0))
    assert set(ours) == set(theirs)
    for key, value in ours.items():
        want = seeded[key] if key in HEAD else theirs[key]
        assert value.dtype == want.dtype and np.array_equal(value, want), key

    # The run trained from there: one step of lr 0.05/25 moves the backbone a little, nowhere near the seeded init.
    run = train_lib.load_run(tmp_path / "run")
    assert run.step == 1
    after = convert.to_torch_state_dict(run.model())
    moved = np.abs(after["layer1.0.conv1.weight"] - theirs["layer1.0.conv1.weight"]).max()
    assert 0 < moved < 0.1 * np.abs(seeded["layer1.0.conv1.weight"] - theirs["layer1.0.conv1.weight"]).max()
    assert json.loads((tmp_path / "run/config.json").read_text())["init_skip"] == ["fc"]


def test_the_torch_trainer_starts_from_the_weights_with_its_own_head(
    tiny_data: Path, tmp_path: Path, imagenet_weights, capsys
) -> None:
    path = tmp_path / "copy.pt"
    path.write_bytes(imagenet_weights[0].read_bytes())
    theirs = imagenet_weights[1]
    # lr 0 and no weight decay: after one step the parameters are where the run started.
    config = _config(tiny_data, tmp_path, path, lr=0.0, weight_decay=0.0)
    history = torch_train(config, TorchOptions())
    assert f"weights from {path}; at the seeded init: fc.bias, fc.weight" in capsys.readouterr().out
    ours = convert.load_weights_file(tmp_path / "run/model.safetensors")
    torch.manual_seed(0)
    seeded = torch_ref.create_model("resnet18", "imagenet", len(TINY_CLASSES)).state_dict()
    assert set(ours) == set(theirs)
    for key, value in ours.items():
        if key in HEAD:
            assert np.array_equal(value, seeded[key].numpy()), key
        elif "running" in key:  # one train-mode step updated the statistics
            assert not np.array_equal(value, theirs[key]), key
        elif key.endswith("num_batches_tracked"):
            assert value == theirs[key] + 1, key
        else:
            assert np.array_equal(value, theirs[key]), key
    # The finished run's own command has nothing to do, even with its weights file gone.
    path.unlink()
    assert torch_train(config, TorchOptions()) == history
    assert "holds this run, finished at step 1: nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_weights_that_do_not_fit_are_one_line_before_anything_is_written(
    tiny_data: Path, tmp_path: Path, imagenet_weights, framework: str
) -> None:
    path, theirs = imagenet_weights
    nan = tmp_path / "nan.safetensors"  # was taken, and the run stopped at step 1 on a "loss is not finite"
    convert.save_safetensors({**theirs, "layer1.0.conv1.weight": np.full((64, 64, 3, 3), np.nan, np.float32)}, nan)
    trainer = (lambda c: train_lib.train(c)) if framework == "jax" else (lambda c: torch_train(c, TorchOptions()))
    error = train_lib.RunError if framework == "jax" else TrainError
    cases = [
        (dict(init_skip=()), f"--init-weights {path}: state dict does not match resnet18/imagenet: 2 mis-shaped: "
         "fc.bias (1000,) (expected (3,)), fc.weight (1000, 512) (expected (3, 512)); --init-skip fc starts a head of "
         "another size from the seeded init"),
        (dict(init_skip=("fc", "layer9")), f"--init-weights {path}: state dict does not match resnet18/imagenet: "
         "skip matches no key: 'layer9'"),
        # another module skipped, the head not: the hint still says how to start a head of another size
        (dict(init_skip=("layer4",)), f"--init-weights {path}: state dict does not match resnet18/imagenet: "
         "2 mis-shaped: fc.bias (1000,) (expected (3,)), fc.weight (1000, 512) (expected (3, 512)); --init-skip "
         "layer4,fc starts a head of another size from the seeded init"),
        (dict(variant="cifar"), f"--init-weights {path}: state dict does not match resnet18/cifar: 1 mis-shaped: "
         "conv1.weight (64, 3, 7, 7) (expected (64, 3, 3, 3)); these weights are resnet18/imagenet's: --variant "
         "imagenet"),  # torchvision's 7x7 stem into the default variant: the hint said nothing
        (dict(init_weights=str(tmp_path / "no.pt")), f"--init-weights: weights file not found: {tmp_path / 'no.pt'}"),
        (dict(init_weights=str(nan)), f"--init-weights: {nan}: non-finite values (nan/inf) in layer1.0.conv1.weight"),
        (dict(init_weights=str(tmp_path)), f"--init-weights: {tmp_path} is a directory, not a weights file "
         f"(scripts/export.py {tmp_path} W.safetensors writes them)"),
    ]  # fmt: skip
    for overrides, message in cases:
        with pytest.raises(error) as excinfo:
            trainer(_config(tiny_data, tmp_path, path, **overrides))
        assert str(excinfo.value) == message
        assert not (tmp_path / "run").exists()


def test_a_resumed_run_takes_its_checkpoint_and_never_reads_the_weights(
    tiny_data: Path, tmp_path: Path, trained_run: Path, capsys
) -> None:
    """The run in `trained_run` has checkpoints: its own command with --init-weights naming a file that is
    gone must resume (the weights are a fresh run's start), not fail."""
    shutil.copytree(trained_run, tmp_path / "run")
    config = _config(tiny_data, tmp_path, tmp_path / "gone.pt", max_steps=None)
    result = train_lib.train(config)
    captured = capsys.readouterr()
    assert "resuming from checkpoint step 12" in captured.out and "weights from" not in captured.out
    assert result["step"] == 12
    # It started from the seeded init, and its config keeps saying so.
    assert "note: resuming a run that started from the seeded init; --init-weights and --init-skip apply to a " \
        "fresh run only" in captured.err
    saved = json.loads((tmp_path / "run/config.json").read_text())
    assert saved["init_weights"] is None and saved["init_skip"] == []


def test_a_skip_name_that_only_the_file_has_is_no_error(tiny_data: Path, tmp_path: Path, imagenet_weights) -> None:
    """`--init-skip fc,aux` over a file with an extra `aux.*` module: checked once, loaded as checked."""
    path, theirs = imagenet_weights
    sd = {**theirs, "aux.weight": np.ones((2, 2), np.float32)}
    config = _config(tiny_data, tmp_path, path, init_skip=("fc", "aux"), num_classes=len(TINY_CLASSES))
    assert train_lib.check_initial_weights(config, sd) == HEAD
    graphdef, state = train_lib.build_state(config, 1, sd)[:2]
    ours = convert.to_torch_state_dict(train_lib.merge_model(graphdef, state))
    assert np.array_equal(ours["layer4.1.conv2.weight"], theirs["layer4.1.conv2.weight"])


def test_the_torch_trainer_takes_bfloat16_safetensors(tmp_path: Path, imagenet_weights) -> None:
    """safetensors' numpy reader gives ml_dtypes' bfloat16 (jax is loaded), which torch.tensor cannot take."""
    from torch_ref.train import _load_initial_weights

    _, theirs = imagenet_weights
    bf16 = {k: torch.from_numpy(v).to(torch.bfloat16) if v.dtype == np.float32 else torch.from_numpy(v)
            for k, v in theirs.items() if not k.startswith("fc.")}  # fmt: skip
    path = tmp_path / "bf16.safetensors"
    convert.save_safetensors({k: v.float().numpy().astype(ml_dtypes.bfloat16) if v.dtype == torch.bfloat16
                              else v.numpy() for k, v in bf16.items()}, path)  # fmt: skip
    config = make_config(arch="resnet18", variant="imagenet", init_weights=str(path), init_skip=("fc",))
    model = torch_ref.create_model("resnet18", "imagenet", 3)
    assert _load_initial_weights(model, config, convert.load_weights_file(path)) == HEAD
    assert torch.equal(model.state_dict()["conv1.weight"], bf16["conv1.weight"].float())


def test_a_wrapped_model_s_prefix_is_named() -> None:
    model = create_model("resnet18", "imagenet", 10)
    sd = {f"module.{k}": v for k, v in convert.to_torch_state_dict(model).items()}
    config = make_config(variant="imagenet", init_weights="dp.pt")
    with pytest.raises(RuntimeError) as excinfo:
        flags.match_init_weights(config, convert.torch_shapes(model), sd, RuntimeError)
    # said once: the trainers' line repeated it in other words after the API's own hint
    assert str(excinfo.value).endswith(
        "(the state dict's keys carry the prefix 'module.', a wrapper's (DataParallel, torch.compile): strip it "
        "from each key first, or save the inner model's state_dict())"
    )


def test_a_head_mismatch_from_another_architecture_is_summarized(imagenet_weights) -> None:
    """A resnet34 state dict into resnet18: the API error lists every key, the CLI line at most 4 of each kind."""
    with torch.device("meta"):
        other = torchvision.models.resnet34(num_classes=10).state_dict()
    sd = {k: np.zeros(v.shape, np.float32) for k, v in other.items()}
    model = create_model("resnet18", "imagenet", 10)
    with pytest.raises(convert.StateDictError) as excinfo:
        convert.load_torch_state_dict(model, sd)
    e = excinfo.value
    unexpected = sorted(set(other) - set(convert.to_torch_state_dict(model)))
    assert len(unexpected) > 4 and e.problems == {"unexpected": unexpected}
    assert all(key in str(e) for key in unexpected)
    config = make_config(variant="imagenet", init_weights="r34.pt")
    with pytest.raises(RuntimeError) as excinfo:
        flags.match_init_weights(config, convert.torch_shapes(model), sd, RuntimeError)
    assert str(excinfo.value) == (
        "--init-weights r34.pt: state dict does not match resnet18/imagenet: "
        f"{len(unexpected)} unexpected: {', '.join(unexpected[:4])}, ({len(unexpected) - 4} more); "
        "these weights are resnet34/imagenet's: --arch resnet34"
    )


@pytest.mark.parametrize(
    ("theirs", "ours", "fix", "says"),
    [
        (("resnet18", {}), {}, dict(variant="imagenet", init_skip=("fc",)), "; these weights are resnet18/imagenet's: "
         "--variant imagenet --init-skip fc (the head from the seeded init)"),
        (("resnet50", {}), {}, dict(arch="resnet50", variant="imagenet", init_skip=("fc",)), "; these weights are "
         "resnet50/imagenet's: --arch resnet50 --variant imagenet --init-skip fc (the head from the seeded init)"),
        (("resnet34", dict(num_classes=10)), dict(variant="imagenet"), dict(arch="resnet34"), "; these weights are "
         "resnet34/imagenet's: --arch resnet34"),
        (("resnet18", {}), dict(variant="imagenet"), dict(init_skip=("fc",)), "; --init-skip fc starts a head of "
         "another size from the seeded init"),
    ],
    ids=["tv18-into-cifar", "tv50-into-cifar18", "tv34-10-classes", "head-only"],
)  # fmt: skip
def test_the_line_names_the_flags_under_which_torchvision_weights_load(
    theirs: tuple[str, dict], ours: dict, fix: dict, says: str
) -> None:
    """torchvision's models (ImageNet layout, the imagenet variant's) into other settings: the line names the
    flags, and under those flags torchvision's state dict loads."""
    name, kwargs = theirs
    with torch.device("meta"):
        module = getattr(torchvision.models, name)(**kwargs)
    sd = {k: np.zeros(v.shape, np.float32) for k, v in module.state_dict().items()}

    def match(overrides: dict) -> tuple:
        config = make_config(init_weights="tv.pth", **overrides)
        model = nnx.eval_shape(lambda: create_model(config.arch, config.variant, 10))
        return flags.match_init_weights(config, convert.torch_shapes(model), sd, RuntimeError)

    with pytest.raises(RuntimeError) as excinfo:
        match(ours)
    assert str(excinfo.value).endswith(says)
    assert match({**ours, **fix})[1] == (HEAD if "init_skip" in fix else [])
