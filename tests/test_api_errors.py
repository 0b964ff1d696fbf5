"""The issue's "Bad input" list: each user error gets a clear exception whose message names the problem."""

from __future__ import annotations

import os
import pickle
import re
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax_resnet
import torch_ref
from flax_resnet import StateDictError, WeightsFileError, train
from flax_resnet.config import make_config


def _fresh_state():
    """(config, graphdef, state, tx) of a new imagenet-stem resnet18 run, batch 4: what the step tests feed."""
    config = make_config("article", arch="resnet18", variant="imagenet", batch_size=4)
    graphdef, state, tx, _ = train.build_state(config)
    return config, graphdef, state, tx


@pytest.fixture(scope="module")
def r18() -> flax_resnet.ResNet:
    return flax_resnet.create_model("resnet18", "cifar")


@pytest.mark.parametrize("create", [flax_resnet.create_model, torch_ref.create_model], ids=["flax", "torch"])
def test_unknown_arch_and_variant(create) -> None:
    names = "resnet18, resnet34, resnet50, resnet101, resnet152"
    with pytest.raises(ValueError, match=rf"unknown arch 'resnet20'.*{names}"):
        create("resnet20")
    with pytest.raises(ValueError, match=r"unknown variant 'tiny'.*cifar, imagenet, article"):
        create("resnet18", "tiny")


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        (dict(num_classes=0), "num_classes must be at least 1, got 0"),
        (dict(num_classes=-1), "num_classes must be at least 1, got -1"),  # was an MLIRError from inside XLA
        (dict(num_classes=2.5), "num_classes must be an integer, got 2.5"),
        (dict(seed=None), "seed must be an integer or a jax.random.key, got None"),  # was "No RngStream named 'params'"
    ],
)
def test_create_model_refuses_a_class_count_or_seed_it_cannot_use(kwargs: dict, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        flax_resnet.create_model("resnet18", "imagenet", **kwargs)


def test_create_model_takes_a_prng_key_as_seed_and_a_dtype_object() -> None:
    from flax import nnx

    # numpy and jnp integer scalars (a seed from np.arange) were let through and then refused inside NNX
    seeds = (3, jax.random.key(3), jax.random.PRNGKey(3), np.int64(3), np.arange(5)[3], jax.numpy.int32(3))
    models = [flax_resnet.create_model("resnet18", "imagenet", seed=seed) for seed in seeds]
    leaves = [jax.tree.leaves(nnx.state(m)) for m in models]
    assert all(np.array_equal(a, b) for other in leaves[1:] for a, b in zip(leaves[0], other, strict=True))
    assert flax_resnet.create_model("resnet18", "imagenet", dtype=jax.numpy.bfloat16).dtype == jax.numpy.bfloat16
    with pytest.raises(ValueError, match=r"seed must be an integer or a jax.random.key, got Array"):
        flax_resnet.create_model("resnet18", "imagenet", seed=jax.random.split(jax.random.key(3), 2))
    for not_a_seed in (np.array([3]), jax.numpy.float32(3), np.bool_(True)):
        with pytest.raises(ValueError, match=r"seed must be an integer or a jax.random.key, got"):
            flax_resnet.create_model("resnet18", "imagenet", seed=not_a_seed)


@pytest.mark.parametrize("shape", [(32, 32, 3), (1, 32, 32, 1), (1, 3, 32, 32)], ids=["rank3", "1-channel", "NCHW"])
def test_wrong_input_rank_or_channels(r18: flax_resnet.ResNet, shape: tuple[int, ...]) -> None:
    x = np.zeros(shape, np.float32)
    for call in (lambda: flax_resnet.predict(r18, x), lambda: nnx.view(r18, use_running_average=True)(x)):
        with pytest.raises(ValueError, match=r"\(N, H, W, 3\).*" + str(shape).replace("(", r"\(").replace(")", r"\)")):
            call()


def test_predict_refuses_raw_pixels_and_takes_normalized_images(r18: flax_resnet.ResNet) -> None:
    # Raw uint8 pixels gave confident nonsense (|logits| ~265 against ~2 for the same images normalized).
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(TypeError, match=r"normalized float images, got uint8: pass flax_resnet.normalize"):
        flax_resnet.predict(r18, pixels)
    by_hand = (pixels / 255.0 - np.asarray(flax_resnet.data.CIFAR10_MEAN)) / np.asarray(flax_resnet.data.CIFAR10_STD)
    np.testing.assert_allclose(np.asarray(flax_resnet.normalize(pixels)), by_hand, rtol=1e-6, atol=1e-6)
    assert flax_resnet.predict(r18, flax_resnet.normalize(pixels)).shape == (2, 10)
    # The functional entry point (a loss of one's own) and a plain call took them silently.
    graphdef, params, batch_stats = nnx.split(r18, nnx.Param, nnx.BatchStat)
    for call in (lambda: train.apply_model(graphdef, params, batch_stats, pixels, train=True), lambda: r18(pixels)):
        with pytest.raises(TypeError, match=r"a ResNet takes normalized float images, got uint8: pass flax_resnet"):
            call()


@pytest.mark.parametrize("variant", ["cifar", "imagenet", "article"])
def test_empty_batch_and_empty_images_behave_as_in_torch(variant: str) -> None:
    # An empty batch gives (0, classes) as torch_ref does (the article variant's flatten raised
    # ZeroDivisionError); a 0x0 image, which torch's convolutions refuse, failed deep inside a conv lowering.
    model = flax_resnet.create_model("resnet18", variant)
    tmodel = torch_ref.create_model("resnet18", variant).eval()
    with torch.no_grad():
        assert tuple(tmodel(torch.zeros(0, 3, 32, 32)).shape) == (0, 10)
    assert flax_resnet.predict(model, np.zeros((0, 32, 32, 3), np.float32)).shape == (0, 10)
    with pytest.raises(ValueError, match=r"images must be at least 1x1, got 0x5"):
        flax_resnet.predict(model, np.zeros((1, 0, 5, 3), np.float32))


def test_article_model_rejects_64px() -> None:
    model = nnx.eval_shape(lambda: flax_resnet.create_model("resnet18", "article"))
    graphdef, state = nnx.split(model)
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state)
    model = nnx.merge(graphdef, zeros)
    with pytest.raises(ValueError, match=r"32x32.*1x1|1x1.*32x32") as e:
        flax_resnet.predict(model, np.zeros((1, 64, 64, 3), np.float32))
    assert "64x64" in str(e.value)
    tmodel = torch_ref.create_model("resnet18", "article").eval()
    with pytest.raises(ValueError, match=r"1x1.*32x32"), torch.no_grad():
        tmodel(torch.zeros(1, 3, 64, 64))


def _snapshot(model: nnx.Module) -> list[np.ndarray]:
    return [np.array(v) for v in jax.tree.leaves(nnx.state(model))]


@pytest.mark.parametrize(("arch", "variant"), [("resnet34", "cifar"), ("resnet18", "article")])
def test_state_dict_from_other_model(r18: flax_resnet.ResNet, arch: str, variant: str) -> None:
    with torch.device("meta"):
        other = torch_ref.create_model(arch, variant).state_dict()
    own = set(flax_resnet.to_torch_state_dict(r18))
    ours = {k: tuple(v.shape) for k, v in flax_resnet.to_torch_state_dict(r18).items()}
    missing = sorted(own - set(other))
    unexpected = sorted(set(other) - own)
    mis_shaped = sorted(k for k in own & set(other) if tuple(other[k].shape) != ours[k])
    assert missing or unexpected or mis_shaped
    before = _snapshot(r18)
    sd = {k: np.zeros(tuple(v.shape), np.float32) for k, v in other.items()}
    with pytest.raises(StateDictError) as e:
        flax_resnet.load_torch_state_dict(r18, sd)
    msg = str(e.value)
    for key in missing + unexpected + mis_shaped:
        assert key in msg
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
        if keys:
            assert f"{len(keys)} {label}" in msg
    after = _snapshot(r18)
    assert len(before) == len(after) and all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_state_dict_with_wrong_ranks_is_one_error_listing_each(r18: flax_resnet.ResNet) -> None:
    sd = flax_resnet.to_torch_state_dict(r18)
    sd["conv1.weight"] = sd["conv1.weight"].reshape(64, -1)  # 4-D conv kernel flattened to 2-D
    sd["layer1.0.conv2.weight"] = sd["layer1.0.conv2.weight"][..., 0]  # 3-D
    sd["fc.bias"] = sd["fc.bias"][:, None]  # (10, 1)
    before = _snapshot(r18)
    with pytest.raises(StateDictError) as e:
        flax_resnet.load_torch_state_dict(r18, sd)
    msg = str(e.value)
    assert "3 mis-shaped: conv1.weight (64, 27) (expected (64, 3, 3, 3))" in msg
    assert "layer1.0.conv2.weight (64, 64, 3) (expected (64, 64, 3, 3))" in msg
    assert "fc.bias (10, 1) (expected (10,))" in msg
    assert all(np.array_equal(a, b) for a, b in zip(before, _snapshot(r18), strict=True))


def test_something_that_is_no_state_dict_is_a_type_error_that_says_what_to_pass(r18: flax_resnet.ResNet) -> None:
    for wrong in (torch_ref.create_model("resnet18"), "w.pt", None):  # the module, a path, nothing
        with pytest.raises(TypeError, match=r"expected a state dict .* pass module.state_dict\(\), or load_weights"):
            flax_resnet.load_torch_state_dict(r18, wrong)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])  # DataParallel's, torch.compile's
def test_a_prefixed_state_dict_says_so(r18: flax_resnet.ResNet, prefix: str) -> None:
    sd = {prefix + key: value for key, value in flax_resnet.to_torch_state_dict(r18).items()}
    says = rf"102 missing: .*122 unexpected: .*\(the state dict's keys carry the prefix '{re.escape(prefix)}',.*: strip"
    with pytest.raises(StateDictError, match=says):  # 122: num_batches_tracked, which may be missing, too
        flax_resnet.load_torch_state_dict(r18, sd)
    with pytest.raises(StateDictError) as e:  # some other mismatch: no prefix hint
        flax_resnet.load_torch_state_dict(r18, {"fc.weight": np.zeros((10, 512), np.float32)})
    assert "prefix" not in str(e.value)


def test_a_train_state_is_no_model_to_export_or_load(r18: flax_resnet.ResNet) -> None:
    """Its tree paths (`opt_state.0.trace.bn1.weight`) made 184 keys that nothing could load, without an error."""
    _, graphdef, state, _ = _fresh_state()
    for call in (lambda: flax_resnet.to_torch_state_dict(state), lambda: flax_resnet.load_torch_state_dict(
            state, flax_resnet.to_torch_state_dict(r18))):
        with pytest.raises(TypeError, match=r"^weight conversion takes a Flax model \(flax_resnet.create_model\), "
                           r"got TrainState \(train.merge_model\(graphdef, state\) makes one of a TrainState\)$"):
            call()
    assert len(flax_resnet.to_torch_state_dict(train.merge_model(graphdef, state))) == 122


def test_a_torch_module_or_an_abstract_model_is_refused_by_name() -> None:
    """These failed inside NNX or XLA: "'ResNet' object has no attribute 'dtype'", an IndexError, "copy
    requires ndarray", "ShapeDtypeStruct is not a valid JAX type"."""
    import optax

    x = np.zeros((1, 32, 32, 3), np.float32)
    tv = torch_ref.create_model("resnet18", "imagenet")
    with pytest.raises(TypeError, match=r"^predict takes a Flax model \(flax_resnet.create_model\), got ResNet$"):
        flax_resnet.predict(tv, x)
    with pytest.raises(TypeError, match=r"^count_params takes a Flax model .*, got ResNet \(a torch module's count: "):
        flax_resnet.count_params(tv)
    shell = nnx.eval_shape(lambda: flax_resnet.create_model("resnet18", "imagenet"))
    for who, call in (("predict", lambda: flax_resnet.predict(shell, x)),
                      ("init_state", lambda: train.init_state(shell, optax.sgd(0.1)))):
        with pytest.raises(TypeError, match=rf"^{who}: the model is abstract \(nnx.eval_shape\).*load_torch_state"):
            call()
    assert flax_resnet.count_params(shell) == sum(p.numel() for p in tv.parameters())  # shapes suffice there


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_normalize_refuses_channels_first_images(dtype) -> None:
    with pytest.raises(ValueError, match=r"channels-last images \(N, H, W, 3\) .* got shape \(2, 3, 32, 32\)"):
        flax_resnet.normalize(np.zeros((2, 3, 32, 32), dtype))
    assert flax_resnet.normalize(np.zeros((2, 32, 32, 3), dtype)).shape == (2, 32, 32, 3)
    for one in (0.5, (0.5,)):  # one mean and std for every channel, whatever the layout: as torchvision's
        x = np.asarray(flax_resnet.normalize(np.full((1, 2, 2, 3), 255, dtype), one, one))
        assert x.shape == (1, 2, 2, 3) and np.all(x == 1.0)


def test_nnx_view_info_lists_the_batch_norm_mode() -> None:
    """Flax reads each set_view's "Args:" section; without one, nnx.view_info raised KeyError."""
    info = str(nnx.view_info(flax_resnet.create_model("resnet18", "imagenet")))
    assert "use_running_average" in info and "running statistics" in info


def test_a_batch_count_beyond_int32_is_refused_not_wrapped() -> None:
    r18 = flax_resnet.create_model("resnet18", "cifar")  # its own: this test loads into it
    sd = flax_resnet.to_torch_state_dict(r18)
    sd["bn1.num_batches_tracked"] = np.array(2**31 + 5, np.int64)
    before = _snapshot(r18)
    with pytest.raises(StateDictError, match=r"1 out of range: bn1.num_batches_tracked 2147483653 \(the model"):
        flax_resnet.load_torch_state_dict(r18, sd)
    assert all(np.array_equal(a, b) for a, b in zip(before, _snapshot(r18), strict=True))
    sd["bn1.num_batches_tracked"] = np.array(2**31 - 1, np.int64)  # the largest count it holds: bitwise back
    flax_resnet.load_torch_state_dict(r18, sd)
    assert flax_resnet.to_torch_state_dict(r18)["bn1.num_batches_tracked"] == 2**31 - 1


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_bfloat16_weights_files_load_exactly_as_float32(r18: flax_resnet.ResNet, tmp_path: Path, suffix: str) -> None:
    # A bf16 .safetensors came back as ml_dtypes bfloat16 while the same .pt came back as float32.
    tmodel = torch_ref.create_model("resnet18", "cifar")
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tmodel.state_dict().items()}
    path = tmp_path / f"bf16{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        safetensors.torch.save_file(state, str(path))
    loaded = flax_resnet.load_weights_file(path)
    for k, v in state.items():  # bfloat16 -> float32 is exact
        expected = v.float().numpy() if v.is_floating_point() else v.numpy()
        assert loaded[k].dtype == expected.dtype and np.array_equal(loaded[k], expected), k
    flax_resnet.load_torch_state_dict(nnx.clone(r18), loaded)  # a copy: r18 is shared by the module


def test_truncated_and_non_safetensors_files(r18: flax_resnet.ResNet, tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    flax_resnet.save_safetensors(flax_resnet.to_torch_state_dict(r18), good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.safetensors"
    text.write_text("this is not a weights file\n")
    for path in (truncated, text):
        with pytest.raises(WeightsFileError, match=path.name):
            flax_resnet.load_weights_file(path)
    with pytest.raises(WeightsFileError, match="not found"):
        flax_resnet.load_weights_file(tmp_path / "absent.safetensors")


class _Payload:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pt_with_code_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload(marker)}, path)
    with open(path, "rb") as f:
        assert f.read(2) == b"PK"
    with pytest.raises(WeightsFileError, match=r"evil\.pt") as e:
        flax_resnet.load_weights_file(path)
    assert "refused" in str(e.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proves the payload is live: the unsafe load runs it
    assert marker.exists()


def test_a_pickled_whole_model_is_refused_in_one_plain_line(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # the module object, not its state_dict
    with pytest.raises(pickle.UnpicklingError) as raw:
        torch.load(path, weights_only=True)
    assert "\x1b[" in str(raw.value)  # torch styles its advice for a terminal
    with pytest.raises(WeightsFileError) as e:
        flax_resnet.load_weights_file(path)
    message = str(e.value)
    assert message.startswith(f"{path}: refused to load: it pickles Python objects (torch.nn.modules.linear.Linear)")
    assert "\x1b" not in message and "\n" not in message


def test_a_pt_mapping_with_values_that_are_no_tensors_is_refused_not_filtered(tmp_path: Path) -> None:
    """A training checkpoint's dict: its tensors under "state_dict" (Lightning), "model" (torchvision's reference
    scripts) or "model_state_dict" (torch's tutorial) load, the rest is ignored; a flat mapping that mixes
    tensors and other values is refused, never loaded with the other values silently dropped."""
    weight = torch.arange(4.0).reshape(2, 2)
    cases = {"mixed": ({"fc.weight": weight, "epoch": 3}, " (its keys: fc.weight, epoch)"),
             "none": ({"epoch": 3}, " (its keys: epoch)"), "list": ([weight], ""),
             "nested": ({"model": {"fc": {"weight": weight}}, "epoch": 3}, " (its keys: model, epoch)")}  # fmt: skip
    for name, (obj, keys) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(obj, path)
        with pytest.raises(WeightsFileError) as e:
            flax_resnet.load_weights_file(path)
        assert str(e.value) == f"{path}: does not hold a state dict of tensors{keys}"
    for key in ("state_dict", "model", "model_state_dict"):  # the last one was refused, saying only "does not hold"
        torch.save({key: {"fc.weight": weight}, "optimizer": {"state": {}}, "epoch": 3}, tmp_path / "checkpoint.pt")
        loaded = flax_resnet.load_weights_file(tmp_path / "checkpoint.pt")
        assert list(loaded) == ["fc.weight"] and np.array_equal(loaded["fc.weight"], weight.numpy()), key


@pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")  # torch 2.14 deprecates TorchScript; users keep files
def test_a_torchscript_archive_or_a_directory_is_one_line_that_says_what_to_pass(tmp_path: Path) -> None:
    """A TorchScript .pt printed torch's warning, then advice about torch.load's weights_only cut mid-sentence;
    a run's workdir said "weights file not found"."""
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.load's "looks like a TorchScript archive" warning, had it run
        with pytest.raises(WeightsFileError) as e:
            flax_resnet.load_weights_file(scripted)
    assert str(e.value) == (f"{scripted}: a TorchScript archive (torch.jit.save), not a state dict: save "
                            "torch.jit.load(path).state_dict() with torch.save instead")  # fmt: skip
    with pytest.raises(WeightsFileError) as e:
        flax_resnet.load_weights_file(tmp_path)
    export = f"scripts/export.py {tmp_path} W.safetensors writes them"
    assert str(e.value) == f"{tmp_path} is a directory, not a weights file ({export})"
    flax_resnet.save_safetensors({"fc.weight": np.ones((2, 2), np.float32)}, tmp_path / "model.safetensors")
    with pytest.raises(WeightsFileError) as e:  # a torch_ref run's workdir
        flax_resnet.load_weights_file(tmp_path)
    assert str(e.value) == f"{tmp_path} is a directory, not a weights file (its weights: {tmp_path}/model.safetensors)"


@pytest.mark.parametrize("content", [b"hello\n", bytes(range(256)) * 4], ids=["text", "bytes"])
def test_a_pt_file_that_is_no_torch_save_is_unreadable_not_unsafe(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(content)  # torch.load raises KeyError for the text, "Weights only load failed" for the bytes
    with pytest.raises(WeightsFileError) as e:
        flax_resnet.load_weights_file(path)
    assert str(e.value).startswith(f"{path}: not a readable torch file (")


def test_safetensors_round_trip_into_torch_ref_strict(r18: flax_resnet.ResNet, tmp_path: Path) -> None:
    path = tmp_path / "r18.safetensors"
    exported = flax_resnet.to_torch_state_dict(r18)
    flax_resnet.save_safetensors(exported, path)
    loaded = flax_resnet.load_weights_file(path)
    tmodel = torch_ref.create_model("resnet18", "cifar")
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in loaded.items()}, strict=True)
    for k, v in tmodel.state_dict().items():
        assert v.dtype == (torch.int64 if k.endswith("num_batches_tracked") else torch.float32)
        assert np.array_equal(v.numpy(), exported[k])




def test_save_safetensors_writes_through_a_link_keeps_metadata_and_refuses_what_it_cannot_store(
    r18: flax_resnet.ResNet, tmp_path: Path
) -> None:
    from safetensors import safe_open

    target, link = tmp_path / "real.safetensors", tmp_path / "link.safetensors"
    target.write_bytes(b"")
    link.symlink_to(target)
    flax_resnet.save_safetensors({"w": np.ones((2, 3), np.float32)}, link, {"arch": "resnet18"})
    assert link.is_symlink() and target.stat().st_size > 0  # written through the link, not replacing it
    with safe_open(str(target), framework="numpy") as f:
        assert f.metadata() == {"arch": "resnet18"} and f.get_tensor("w").tolist() == [[1.0] * 3] * 2
    for bad in ({"w": np.array(["x"])}, {"t": np.array([1], "m8[s]")}, {3: np.ones(2, np.float32)}):  # not I/O
        with pytest.raises(TypeError, match="cannot store"):
            flax_resnet.save_safetensors(bad, tmp_path / "bad.safetensors")
    with pytest.raises(TypeError, match=r"metadata are str -> str; got 'step': 3 \(e.g. str\(step\)"):
        flax_resnet.save_safetensors({"w": np.ones(2, np.float32)}, tmp_path / "bad.safetensors", {"step": 3})
    assert not (tmp_path / "bad.safetensors").exists()
    # A non-str key in a state dict to load is reported like any unexpected key (the report used to fail).
    with pytest.raises(StateDictError, match=r"1 unexpected: 7"):
        flax_resnet.load_torch_state_dict(r18, {**flax_resnet.to_torch_state_dict(r18), 7: np.zeros(1)})


def test_export_of_one_variable_kind_has_torchs_keys(r18: flax_resnet.ResNet) -> None:
    """`to_torch_state_dict(model, nnx.BatchStat)` is exactly torch's buffers; `nnx.Param` its parameters."""
    tmodel = torch_ref.create_model("resnet18", "cifar")
    assert set(flax_resnet.to_torch_state_dict(r18, nnx.BatchStat)) == {k for k, _ in tmodel.named_buffers()}
    assert set(flax_resnet.to_torch_state_dict(r18, nnx.Param)) == {k for k, _ in tmodel.named_parameters()}


def test_one_line_collapses_whitespace_drops_terminal_styles_and_cuts_where_asked() -> None:
    from flax_resnet.errors import one_line

    e = RuntimeError("Weights \x1b[1mnot\x1b[0m loaded:\n  \x1b[31;1mred\x1b[0m\ttext")
    assert one_line(e) == "RuntimeError: Weights not loaded: red text"
    assert one_line(e, limit=20) == "RuntimeError: Weight..."
    assert one_line(KeyError()) == "KeyError"


def test_the_steps_refuse_images_normalized_twice_and_float_labels() -> None:
    # The steps normalize raw pixels themselves: float images (normalized by the caller) were normalized again,
    # and trained on, without a word.
    config, graphdef, state, tx = _fresh_state()
    pixels = np.zeros((4, 32, 32, 3), np.uint8)
    normalized = {"image": flax_resnet.normalize(pixels), "label": np.zeros(4, np.int32), "mask": np.ones(4)}
    with pytest.raises(TypeError, match=r"the train step takes raw integer pixels .* got float32 images"):
        train.make_train_step(graphdef, tx, config)(state, normalized, jax.random.key(0))
    with pytest.raises(TypeError, match=r"the eval step takes raw integer pixels .* got float32 images"):
        train.make_eval_step(graphdef)(state, normalized)
    with pytest.raises(TypeError, match=r"the eval step takes integer class labels, got float32"):
        train.make_eval_step(graphdef)(state, {**normalized, "image": pixels, "label": np.zeros(4, np.float32)})



@pytest.mark.parametrize(
    ("which", "change", "says"),
    [
        # (N, 1) labels broadcast against (N, C) logits into an N x N loss: 2.62 instead of 2.33 for 8 images,
        # and the eval step counted "correct" over N x N pairs.
        ("train", dict(label=np.zeros((4, 1), np.int32)), r"one label per image, shape \(4,\) .* got shape \(4, 1\)"),
        ("eval", dict(label=np.zeros((4, 1), np.int32)), r"one label per image, shape \(4,\) .* got shape \(4, 1\)"),
        ("train", dict(label=np.eye(4, 10, dtype=np.int32)), r"one label per image, .* got shape \(4, 10\)"),
        ("train", dict(label=np.zeros(3, np.int32)), r"one label per image, shape \(4,\) .* got shape \(3,\)"),
        ("eval", dict(mask=np.ones((4, 1))), r"one mask per image, shape \(4,\) .* got shape \(4, 1\)"),
        ("train", dict(image=np.zeros((4, 3, 32, 32), np.uint8)), r"NHWC .* got shape \(4, 3, 32, 32\)"),
        ("train", dict(image=np.zeros((32, 32, 3), np.uint8)), r"NHWC .* got shape \(32, 32, 3\)"),
        ("train", dict(label=None), r"a dict with keys 'image', 'label'; got keys \['image'\]"),
        ("eval", dict(mask=None), r"a dict with keys 'image', 'label', 'mask'; got keys \['image', 'label'\]"),
        ("train", dict(rng=0), r"one PRNG key, jax.random.key\(seed\); got int32 of shape \(\)"),
        ("train", dict(rng=jax.random.split(jax.random.key(0), 4)), r"one PRNG key, .* of shape \(4,\)"),
        ("train", dict(rng=np.zeros(3, np.uint32)), r"one PRNG key, .* got uint32 of shape \(3,\)"),  # not raw
    ],
)
def test_the_steps_refuse_batches_of_the_wrong_structure_or_shape(which: str, change: dict, says: str) -> None:
    config, graphdef, state, tx = _fresh_state()
    batch = {"image": np.zeros((4, 32, 32, 3), np.uint8), "label": np.zeros(4, np.int32), "mask": np.ones(4)}
    change = dict(change)
    rng = change.pop("rng", jax.random.key(0))
    batch = {key: value for key, value in {**batch, **change}.items() if value is not None}
    error = TypeError if "dict" in says or "key" in says else ValueError
    with pytest.raises(error, match=f"the {which} step takes " + says):
        if which == "train":
            train.make_train_step(graphdef, tx, config)(state, {k: batch[k] for k in batch if k != "mask"}, rng)
        else:
            train.make_eval_step(graphdef)(state, batch)
    with pytest.raises(TypeError, match=r"the train step takes a dict .* got tuple"):
        train.make_train_step(graphdef, tx, config)(state, (batch["image"], np.zeros(4)), jax.random.key(0))


def test_an_out_of_range_label_gets_a_nan_loss_and_masked_padding_any_label() -> None:
    """torch's cross_entropy raises on a label outside 0..classes-1; one_hot made it an all-zero target and a
    finite loss, training on nothing. The steps now report NaN for it (the trainer stops on it); masked padding
    may carry any label, and the rest matches torch."""
    config, graphdef, state, tx = _fresh_state()
    pixels = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    evaluate = train.make_eval_step(graphdef)
    evaluated = evaluate(state, {"image": pixels, "label": np.array([3, 5, -1, 99]), "mask": np.array([1, 1, 0, 0])})
    kept = torch.from_numpy(np.array(evaluated["logits"], np.float32)[:2])
    reference = torch.nn.functional.cross_entropy(kept, torch.tensor([3, 5]), reduction="sum").item()
    assert float(evaluated["loss_sum"]) == pytest.approx(reference, rel=1e-5) and float(evaluated["count"]) == 2
    unmasked = evaluate(state, {"image": pixels, "label": np.array([3, 5, 10, 0]), "mask": np.ones(4)})
    assert np.isnan(float(unmasked["loss_sum"]))
    state, metrics = train.make_train_step(graphdef, tx, config)(
        state, {"image": pixels, "label": np.array([0, 1, 2, 10], np.int32)}, jax.random.key(0)
    )
    assert np.isnan(float(metrics["loss"]))
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state.params))


def test_save_safetensors_takes_torch_and_jax_arrays_as_they_are(tmp_path: Path) -> None:
    """A torch module's state_dict() saves directly, bfloat16 and non-contiguous tensors included; what
    safetensors' own torch reader returns equals the tensors given, dtype and bits."""
    sd = torch_ref.create_model("resnet18").state_dict()
    given = {
        "conv1.weight": sd["conv1.weight"],
        "bn1.num_batches_tracked": sd["bn1.num_batches_tracked"],
        "bf16": sd["fc.weight"].to(torch.bfloat16),
        "transposed": sd["fc.weight"].t(),
        "jax": jax.numpy.arange(6, dtype=np.float32).reshape(2, 3),
    }
    path = tmp_path / "torch.safetensors"
    flax_resnet.save_safetensors(given, path)
    read = safetensors.torch.load_file(str(path))
    for key, value in given.items():
        expected = torch.from_numpy(np.array(value)) if key == "jax" else value
        assert read[key].dtype == expected.dtype and torch.equal(read[key], expected), key
    assert flax_resnet.load_weights_file(path)["bf16"].dtype == np.float32  # the loader's documented widening


@pytest.mark.parametrize("hw", [(32, 33), (33, 32), (64, 64)])
def test_torch_article_refuses_inputs_without_a_1x1_final_map(hw) -> None:
    # 32x33 ends in a 1x2 map (stem 17x17 -> pool 9 -> 5 -> 3 -> 2 along the 33 side): the flatten would
    # feed 1024 features to a 512-input head.
    from torch_ref.models import create_model

    with pytest.raises(ValueError, match="needs a 1x1 final feature map"):
        create_model("resnet18", "article").eval()(torch.zeros(1, 3, *hw))
