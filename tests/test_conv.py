"""Every conv2d lowering equals torch.nn.functional.conv2d: forward and both gradients, fp32, <= 1e-5 relative."""

from __future__ import annotations

from functools import partial

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from flax_resnet import conv
from flax_resnet.conv import GEOMETRY_BOUND, LOWERINGS, choose_lowering, conv2d

SIZES = (1, 2, 5, 32, 33)
CONCRETE = tuple(lo for lo in LOWERINGS if lo != "auto")
GENERAL = tuple(lo for lo in CONCRETE if lo not in GEOMETRY_BOUND)  # those handle some geometries only


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _torch_reference(x, w, g, stride, padding):
    """Forward, grad x, grad w from torch autograd (NCHW/OIHW), returned in NHWC/HWIO."""
    # Contiguous NCHW/OIHW copies: torch.tensor keeps numpy's transposed strides (a channels_last layout), and
    # torch 2.14's CPU channels_last conv backward hung or aborted ("double free") on some of these shapes.
    xt = torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), requires_grad=True)
    wt = torch.tensor(np.ascontiguousarray(w.transpose(3, 2, 0, 1)), requires_grad=True)
    (pt, pb), (pl, pr) = padding
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(xt, (pl, pr, pt, pb)), wt, stride=stride)
    y.backward(torch.tensor(np.ascontiguousarray(g.transpose(0, 3, 1, 2))))
    return (
        y.detach().numpy().transpose(0, 2, 3, 1),
        xt.grad.numpy().transpose(0, 2, 3, 1),
        wt.grad.numpy().transpose(2, 3, 1, 0),
    )


@partial(jax.jit, static_argnums=(3, 4, 5))
def _forward_and_grads(xs, ws, gs, strides, paddings, lowering):
    """(y, dx, dw) for each case, all in one compilation (the cases differ only in shapes)."""
    out = []
    for x, w, g, stride, padding in zip(xs, ws, gs, strides, paddings, strict=True):
        y, vjp = jax.vjp(lambda a, b, s=stride, p=padding: conv2d(a, b, s, p, lowering), x, w)
        out.append((y, *vjp(g)))
    return out


def _check(lowering, cases, n=2, dtype=np.float32, tol=1e-5):
    """cases: (size, k, stride, padding, cin, cout); n images each; max error relative to the largest value."""
    xs, ws, gs = [], [], []
    for size, k, stride, padding, cin, cout in cases:
        rng = np.random.default_rng(size * 100 + k * 10 + stride)
        xs.append(rng.standard_normal((n, size, size, cin)).astype(dtype))
        ws.append(rng.standard_normal((k, k, cin, cout)).astype(dtype))
        ho = (size + sum(padding[0]) - k) // stride + 1
        wo = (size + sum(padding[1]) - k) // stride + 1
        gs.append(rng.standard_normal((n, ho, wo, cout)).astype(dtype))
    strides = tuple(c[2] for c in cases)
    paddings = tuple(c[3] for c in cases)
    results = _forward_and_grads(xs, ws, gs, strides, paddings, lowering)
    for case, x, w, g, ours in zip(cases, xs, ws, gs, results, strict=True):
        refs = _torch_reference(x, w, g, case[2], case[3])
        assert ours[0].shape == refs[0].shape, case
        for name, a, b in zip(("y", "dx", "dw"), ours, refs, strict=True):
            err = _rel(np.asarray(a), b)
            assert err <= tol, (lowering, case, name, err)


@pytest.mark.parametrize("lowering", GENERAL)
@pytest.mark.parametrize("k", (1, 3, 7))
@pytest.mark.parametrize("stride", (1, 2))
def test_lowering_matches_torch(lowering: str, k: int, stride: int) -> None:
    p = ((k // 2, k // 2), (k // 2, k // 2))
    _check(lowering, [(size, k, stride, p, 3, 5) for size in SIZES])


@pytest.mark.parametrize("lowering", GENERAL)
def test_asymmetric_padding_and_wide_channels(lowering: str) -> None:
    # Asymmetric explicit padding (the 'SAME'-with-stride-2 trap) and channel counts as in the net's deep stages.
    cases = [(5, 3, 2, ((0, 1), (1, 0)), 3, 5), (4, 3, 1, ((1, 1),) * 2, 64, 32), (2, 1, 2, ((0, 0),) * 2, 48, 16)]
    _check(lowering, cases)


@pytest.mark.parametrize("chunk_bytes", (None, 1))
def test_winograd_matches_torch(chunk_bytes: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Even maps from 2x2 (one tile) to 32x32, narrow and wide channels; chunk_bytes=1 forces one image per
    # chunk, so the scan over chunks and the kernel-gradient accumulation across chunks are exercised.
    if chunk_bytes is not None:
        monkeypatch.setattr(conv, "WINOGRAD_CHUNK_BYTES", chunk_bytes)
    same = ((1, 1), (1, 1))
    cases = [(2, 3, 1, same, 3, 5), (4, 3, 1, same, 64, 32), (8, 3, 1, same, 16, 48), (32, 3, 1, same, 3, 5)]
    _check("winograd", cases, n=3 if chunk_bytes is None else 4)


def test_winograd_is_exact_math_in_float64() -> None:
    # The transforms are exact identities, so in float64 Winograd agrees with torch's direct conv to roundoff.
    same = ((1, 1), (1, 1))
    with jax.enable_x64(True):
        _check("winograd", [(4, 3, 1, same, 8, 16), (16, 3, 1, same, 32, 8)], dtype=np.float64, tol=1e-12)


def test_auto_picks_winograd_for_float32_same_convs_only() -> None:
    same = ((1, 1), (1, 1))
    big, k = (128, 32, 32, 64), (3, 3, 64, 64)
    if jax.default_backend() == "cpu":
        assert choose_lowering(big, k, 1, same, np.float32) == "winograd"
        for dtype in (np.float64, jnp.bfloat16):
            assert choose_lowering(big, k, 1, same, dtype) == "chunked"
        assert choose_lowering(big, k, 2, same, np.float32) == "chunked"
        assert choose_lowering((128, 5, 5, 64), k, 1, same, np.float32) == "chunked"
        assert choose_lowering((128, 2, 2, 64), k, 1, same, np.float32) == "dense"
        assert choose_lowering((128, 4, 4, 64), k, 1, same, np.float32) == "winograd"


def test_winograd_refuses_other_geometries() -> None:
    for size, k, stride, padding in ((5, 3, 1, ((1, 1),) * 2), (4, 3, 2, ((1, 1),) * 2), (4, 1, 1, ((0, 0),) * 2),
                                     (4, 3, 1, ((0, 1), (1, 0)))):
        with pytest.raises(ValueError, match="winograd lowering needs"):
            conv2d(np.zeros((1, size, size, 2), np.float32), np.zeros((k, k, 2, 2), np.float32), stride, padding,
                   "winograd")


def test_auto_resolves_to_a_concrete_lowering() -> None:
    for shape, kshape, stride in (((128, 32, 32, 64), (3, 3, 64, 64), 1), ((128, 1, 1, 512), (3, 3, 512, 512), 1)):
        assert choose_lowering(shape, kshape, stride, ((1, 1), (1, 1))) in CONCRETE


def test_unknown_lowering_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="valid choices"):
        conv2d(np.zeros((1, 4, 4, 1), np.float32), np.zeros((3, 3, 1, 1), np.float32), 1, ((1, 1), (1, 1)), "fft")


@pytest.mark.parametrize("lowering", GEOMETRY_BOUND)
def test_model_wide_geometry_bound_lowering_falls_back_where_it_cannot_apply(lowering: str) -> None:
    # resnet18 cifar on 16x16 images has maps from 16x16 to 2x2, stride-2 3x3 and 1x1 convs: with a model-wide
    # winograd or dense lowering the convs it cannot take use auto's choice, and the logits equal the
    # all-chunked model's (same seed, same weights) to float32 roundoff.
    from flax_resnet import create_model, predict

    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    bound = np.asarray(predict(create_model("resnet18", "cifar", conv_lowering=lowering), x))
    chunked = np.asarray(predict(create_model("resnet18", "cifar", conv_lowering="chunked"), x))
    assert bound.shape == (2, 10)
    assert _rel(bound, chunked) <= 1e-5


SAME = ((1, 1), (1, 1))
# (size, k, stride, padding, cin, cout) where every output pixel's window covers the whole input map
DENSE_CASES = [
    (1, 3, 1, SAME, 8, 16),  # a 1x1 map: only the centre tap touches data
    (1, 7, 1, ((3, 3), (3, 3)), 3, 5),
    (1, 1, 1, ((0, 0), (0, 0)), 4, 6),
    (2, 3, 1, SAME, 16, 8),  # 2x2 -> 2x2: all 16 (input, output) pairs, 4 taps each
    (2, 3, 2, SAME, 8, 16),  # 2x2 -> 1x1
    (2, 3, 2, ((0, 1), (1, 0)), 3, 5),  # asymmetric padding
]


def test_dense_matches_torch() -> None:
    _check("dense", DENSE_CASES, n=3)


def test_dense_refuses_other_geometries() -> None:
    # a 3x3 map (the corner output does not see the far row), stride 2 on 4x4, a window smaller than the map
    for size, k, stride, padding in ((3, 3, 1, SAME), (4, 3, 2, SAME), (2, 1, 1, ((0, 0),) * 2)):
        with pytest.raises(ValueError, match="dense lowering needs"):
            conv2d(np.zeros((1, size, size, 2), np.float32), np.zeros((k, k, 2, 2), np.float32), stride, padding,
                   "dense")


def _matmul_flops(lowering: str, x_shape: tuple[int, ...], k_shape: tuple[int, ...], stride: int) -> int:
    """2 x the multiplies in the dot_generals of forward + both gradients of one conv, from its jaxpr."""
    x, k = jnp.zeros(x_shape, jnp.float32), jnp.zeros(k_shape, jnp.float32)

    def fwd_bwd(x, k):
        y, vjp = jax.vjp(lambda a, b: conv2d(a, b, stride, SAME, lowering), x, k)
        return (y, *vjp(y))

    def count(jaxpr) -> int:
        total = 0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                (_, rc), (_, rb) = eqn.params["dimension_numbers"]
                rhs = eqn.invars[1].aval.shape
                free = [d for i, d in enumerate(rhs) if i not in rc and i not in rb]
                total += 2 * int(np.prod(eqn.invars[0].aval.shape)) * int(np.prod(free))
            assert eqn.primitive.name != "conv_general_dilated", "a lowering without convolutions"
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                total += count(sub)
        return total

    return count(jax.make_jaxpr(fwd_bwd)(x, k).jaxpr)


def test_dense_multiplies_only_real_data() -> None:
    # Hand count of the products that touch data (forward, input gradient, kernel gradient: 3 x 2 flops each):
    # a 1x1 map has 1 live tap of 9 per output pixel; a 2x2 map, 4 per output pixel (16 of 36 in all).
    n, c = 4, 32
    for size, stride, live_taps in ((1, 1, 1), (2, 1, 16), (2, 2, 4)):
        real = 3 * 2 * n * live_taps * c * c
        dense = _matmul_flops("dense", (n, size, size, c), (3, 3, c, c), stride)
        patches = _matmul_flops("matmul", (n, size, size, c), (3, 3, c, c), stride)
        assert dense == real, (size, stride, dense, real)
        assert patches >= 2 * real, (size, stride, patches, real)  # the patches form also multiplies the padding


def test_auto_picks_dense_where_the_window_covers_the_map() -> None:
    if jax.default_backend() != "cpu":
        pytest.skip("auto picks XLA's convolution off the CPU")
    assert choose_lowering((128, 1, 1, 512), (3, 3, 512, 512), 1, SAME) == "dense"
    assert choose_lowering((128, 2, 2, 256), (3, 3, 256, 256), 1, SAME) == "dense"
    assert choose_lowering((128, 2, 2, 256), (3, 3, 256, 512), 2, SAME) == "dense"
    assert choose_lowering((128, 4, 4, 128), (3, 3, 128, 256), 2, SAME) == "chunked"  # 25 of 36 pairs
    assert choose_lowering((128, 1, 1, 512), (1, 1, 512, 512), 1, ((0, 0), (0, 0))) == "matmul"


# Several chunks per batch, non-square maps, padding whose two axes differ (a mutation audit found these
# untested): every value against torch.nn.functional.conv2d, forward and both gradients.

@pytest.mark.parametrize(
    "case",
    [
        (8, 3, 2, SAME, 16, 8),  # a stride-2 3x3 conv: auto's "chunked" choice on CPU
        (5, 3, 1, SAME, 16, 8),  # an odd map
        (6, 3, 1, ((0, 2), (1, 0)), 4, 5),  # one-sided padding, the two axes differing
    ],
)
@pytest.mark.parametrize(("n", "fits", "chunk"), [(6, 2, 2), (6, 4, 3), (5, 2, 1)], ids=["6by2", "6by3", "5by1"])
def test_chunked_over_several_chunks_matches_torch(
    case, n: int, fits: int, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A budget of `fits` images per chunk: the chunk is the largest divisor of the batch within it (a batch of
    # 5 in chunks of 2 would lose an image), and several chunks exercise the scan's output order and the
    # kernel gradient summed across chunks (the other tests' batches fit in one chunk).
    size, k, stride, padding, cin, _ = case
    ho = (size + sum(padding[0]) - k) // stride + 1
    wo = (size + sum(padding[1]) - k) // stride + 1
    per_image = ho * wo * k * k * cin * 4  # the patch buffer of one image, float32
    monkeypatch.setattr(conv, "CHUNK_BYTES", fits * per_image + per_image // 2)
    assert conv._chunk_images((n, size, size, cin), (k, k, cin, 1), stride, padding) == chunk
    _check("chunked", [case], n=n)


def test_winograd_over_several_chunks_matches_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2 images per chunk of 6: the chunk outputs must come back in batch order.
    size, cin, cout = 8, 16, 48
    per_image = 4 * size * size * max(cin, cout) * 4
    monkeypatch.setattr(conv, "WINOGRAD_CHUNK_BYTES", 2 * per_image + per_image // 2)
    assert conv._winograd_images((6, size, size, cin), max(cin, cout)) == 2
    _check("winograd", [(size, 3, 1, SAME, cin, cout)], n=6)


def _check_geometry(x_shape, k, stride, padding, cout, lowering, tol=1e-5) -> None:
    """One conv of any (non-square) geometry: forward and both gradients against torch."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((k, k, x_shape[3], cout)).astype(np.float32)
    ho = (x_shape[1] + sum(padding[0]) - k) // stride + 1
    wo = (x_shape[2] + sum(padding[1]) - k) // stride + 1
    g = rng.standard_normal((x_shape[0], ho, wo, cout)).astype(np.float32)
    y, vjp = jax.vjp(lambda a, b: conv2d(a, b, stride, padding, lowering), x, w)
    ours = (y, *vjp(g))
    refs = _torch_reference(x, w, g, stride, padding)
    assert ours[0].shape == refs[0].shape, (lowering, x_shape, padding, ours[0].shape, refs[0].shape)
    for name, a, b in zip(("y", "dx", "dw"), ours, refs, strict=True):
        err = _rel(np.asarray(a), b)
        assert err <= tol, (lowering, x_shape, padding, name, err)


@pytest.mark.parametrize(
    ("x_shape", "padding"),
    [
        ((2, 4, 5, 16), SAME),  # even height, odd width: no Winograd tiling of the width
        ((2, 5, 4, 16), SAME),
        ((2, 4, 4, 16), ((1, 1), (0, 0))),  # a 3x3 conv padded along the height only
        ((2, 4, 4, 16), ((1, 1), (2, 0))),  # the width padded on one side
        ((2, 3, 1, 8), SAME),  # a 3x1 map: the far rows are out of the corner outputs' windows
        ((2, 1, 3, 8), SAME),
        ((2, 2, 1, 8), ((2, 0), (1, 1))),  # the first input row is 3 rows (a kernel's height) from an output
    ],
)
def test_auto_on_non_square_maps_and_per_axis_padding_matches_torch(x_shape, padding) -> None:
    if jax.default_backend() != "cpu":
        pytest.skip("auto picks XLA's convolution off the CPU")
    _check_geometry(x_shape, 3, 1, padding, 8, "auto")


def test_dense_with_different_padding_per_axis_matches_torch() -> None:
    # A 1x1 map padded (1, 1) in height and (1, 2) in width gives a 1x2 output: every output still sees the pixel.
    _check("dense", [(1, 3, 1, ((1, 1), (1, 2)), 4, 6)], n=3)


@pytest.mark.parametrize(
    ("lowering", "shape", "padding"),
    [
        ("winograd", (1, 4, 5, 2), SAME),  # an odd width: no 2x2 tiling of it
        ("winograd", (1, 5, 4, 2), SAME),
        ("winograd", (1, 4, 4, 2), ((1, 1), (0, 0))),  # padded along the height only
        ("winograd", (1, 4, 4, 2), ((1, 1), (0, 2))),
        ("dense", (1, 3, 1, 2), SAME),  # a 3x1 map: the corner outputs do not see the far row
        ("dense", (1, 1, 3, 2), SAME),
        ("dense", (1, 1, 1, 2), ((0, 0), (0, 0))),  # a conv with no output at all
        ("dense", (1, 2, 1, 2), ((2, 0), (1, 1))),
    ],
)
def test_geometry_bound_lowerings_refuse_per_axis_geometries(lowering, shape, padding) -> None:
    with pytest.raises(ValueError, match=f"{lowering} lowering needs"):
        conv2d(np.zeros(shape, np.float32), np.zeros((3, 3, 2, 2), np.float32), 1, padding, lowering)
