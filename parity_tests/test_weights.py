"""Weight exchange (round trip, torchvision, no aliasing) and fresh-init statistics."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from parity_tests import harness
from parity_tests.conftest import PAIR_PARAMS


@pytest.mark.parametrize(("arch", "variant"), PAIR_PARAMS)
def test_roundtrip_bitwise(arch: str, variant: str) -> None:
    assert harness.check_roundtrip(arch, variant) == []


@pytest.mark.parametrize(("arch", "variant"), [p for p in PAIR_PARAMS if p.values[1] == "imagenet"])
def test_imagenet_export_loads_into_torchvision(
    arch: str, variant: str, record_property: pytest.RecordProperty
) -> None:
    d = harness.check_torchvision(arch)
    record_property("max_diff", d)
    assert d <= harness.TOL_EVAL


@pytest.mark.parametrize(("arch", "variant"), PAIR_PARAMS)
def test_init_std(arch: str, variant: str, record_property: pytest.RecordProperty) -> None:
    r = harness.check_init_std(arch, variant)
    record_property("max_diff", r.worst)
    assert r.included > 0 and r.bn_constant_ok
    assert r.worst <= harness.TOL_STD, r.worst_name


def test_loaded_weights_do_not_alias_torch_memory() -> None:
    """Training the torch model after a load must not change the Flax model (jnp.asarray can alias numpy)."""
    tmodel = harness.torch_model("resnet18", "cifar", randomize_bn=False)
    fmodel = harness.flax_from_torch(tmodel)
    before = np.array(fmodel.bn1.mean[...]), np.array(fmodel.conv1.kernel[...])
    with torch.no_grad():
        tmodel.bn1.running_mean.add_(1.0)
        tmodel.conv1.weight.mul_(2.0)
    assert np.array_equal(np.asarray(fmodel.bn1.mean[...]), before[0])
    assert np.array_equal(np.asarray(fmodel.conv1.kernel[...]), before[1])
    assert float(jnp.max(jnp.abs(fmodel.bn1.mean[...] - jnp.asarray(tmodel.bn1.running_mean.numpy())))) == 1.0


def test_torch_ref_imagenet_is_a_drop_in_for_torchvision_feature_extraction() -> None:
    # Same keys and weights give the same logits, and torchvision's feature-extraction node names (avgpool)
    # exist in torch_ref too: code written against torchvision's resnet18 runs on it unchanged.
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    import torch_ref

    tv = torchvision.models.resnet18(num_classes=10).eval()
    ref = torch_ref.create_model("resnet18", "imagenet", num_classes=10).eval()
    ref.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ref(x), tv(x))
        feats = [create_feature_extractor(m, {"avgpool": "pooled"})(x)["pooled"] for m in (ref, tv)]
    assert feats[0].shape == (2, 512, 1, 1) and torch.equal(feats[0], feats[1])


def test_backbone_with_another_head_loads_with_skip() -> None:
    """torchvision's 1000-class resnet18 into a 10-class Flax model with `skip="fc"`: every other weight is
    torchvision's, the head keeps its own values, and the logits are torchvision's backbone under that head."""
    import torchvision
    from flax import nnx

    import flax_resnet

    torch.manual_seed(3)
    tv = torchvision.models.resnet18(num_classes=1000).eval()
    harness.randomize_batchnorm(tv, 4)
    model = flax_resnet.create_model("resnet18", "imagenet", num_classes=10, seed=5)
    head = {k: v for k, v in flax_resnet.to_torch_state_dict(model).items() if k.startswith("fc.")}
    with pytest.raises(flax_resnet.StateDictError, match=r"2 mis-shaped: fc\.bias .*fc\.weight"):
        flax_resnet.load_torch_state_dict(model, tv.state_dict())  # strict by default
    with pytest.raises(flax_resnet.StateDictError, match=r"skip matches no key: 'fc1'"):
        flax_resnet.load_torch_state_dict(model, tv.state_dict(), skip=("fc", "fc1"))  # a typo is not silent

    assert flax_resnet.load_torch_state_dict(model, tv.state_dict(), skip="fc") == ["fc.bias", "fc.weight"]
    ours = flax_resnet.to_torch_state_dict(model)
    theirs = tv.state_dict()
    assert set(ours) == set(theirs)
    for key, value in ours.items():
        want = head[key] if key.startswith("fc.") else theirs[key].numpy()
        assert np.array_equal(value, want), key

    tv.fc = torch.nn.Linear(512, 10)  # torchvision's backbone under the Flax model's head
    tv.fc.load_state_dict({"weight": torch.from_numpy(head["fc.weight"]), "bias": torch.from_numpy(head["fc.bias"])})
    x = harness.images(6, 2, 64)
    with torch.no_grad():
        want = tv.eval()(harness.nchw(x)).numpy()
    got = np.asarray(nnx.view(model, use_running_average=True)(x))
    assert np.max(np.abs(got - want)) <= harness.TOL_EVAL * max(1.0, float(np.max(np.abs(want))))

    # A skipped module whose shapes do match is left alone too (the head above could not have loaded anyway).
    tv10 = torchvision.models.resnet18(num_classes=10)
    harness.randomize_batchnorm(tv10, 6)
    before = flax_resnet.to_torch_state_dict(model)
    skipped = ("layer4.1.bn2", "fc")
    kept = flax_resnet.load_torch_state_dict(model, tv10.state_dict(), skip=skipped)
    assert kept == sorted(k for k in before if k.startswith(tuple(name + "." for name in skipped)))
    after, theirs = flax_resnet.to_torch_state_dict(model), tv10.state_dict()
    for key, value in after.items():
        want = before[key] if key in kept else theirs[key].numpy()
        assert np.array_equal(value, want), key
        if key in kept and not key.endswith("num_batches_tracked"):  # else the check above could not fail
            assert not np.array_equal(value, theirs[key].numpy()), key


def test_torchvision_weights_load_into_an_abstract_model(record_property: pytest.RecordProperty) -> None:
    """`nnx.eval_shape` builds the model without its random init; loading torchvision's state dict gives it values,
    and its logits are torchvision's. A partial load or an export would leave values unset, and says so."""
    import torchvision
    from flax import nnx

    import flax_resnet

    torch.manual_seed(7)
    tv = torchvision.models.resnet18(num_classes=10).eval()
    harness.randomize_batchnorm(tv, 8)
    model = nnx.eval_shape(lambda: flax_resnet.create_model("resnet18", "imagenet"))
    with pytest.raises(TypeError, match=r"abstract \(nnx.eval_shape\): it has shapes but no values"):
        flax_resnet.to_torch_state_dict(model)
    with pytest.raises(TypeError, match=r"skip would leave 2 of its values unset \(fc\.bias, fc\.weight\)"):
        flax_resnet.load_torch_state_dict(model, tv.state_dict(), skip="fc")
    assert flax_resnet.load_torch_state_dict(model, tv.state_dict()) == []
    x = harness.images(9, 2, 64)
    with torch.no_grad():
        want = tv(harness.nchw(x)).numpy()
    d = harness.max_rel(flax_resnet.predict(model, x), want, floor=1.0)
    record_property("max_diff", d)
    assert d <= harness.TOL_EVAL
    assert all(np.array_equal(v, tv.state_dict()[k].numpy()) for k, v in flax_resnet.to_torch_state_dict(model).items())
