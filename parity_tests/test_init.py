"""Fresh-init *distributions* (not only std): every tensor of create_model against torch/torchvision's init rule.

The reference is written out by hand from torch's documented initializers, and the same checks are run on
torch_ref's own fresh model (torchvision's init loop), so the hand-written rule is shown to be torch's:

- conv weights: `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, i.e. N(0, 2 / (cout * k * k));
- fc weight, fc bias and conv biases (article): torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with
  fan_in = in_features or cin * k * k;
- BatchNorm: weight 1, bias 0, running mean 0 / var 1, no batches tracked (torch_ref has no zero-init residual).

Each tensor's values get a Kolmogorov-Smirnov test against its distribution; uniform tensors also get an
exact range test (the largest |value| of n uniform draws on [-B, B] is below t * B with probability t ** n),
which catches a bound that is too small even for the smallest biases, where KS has little power.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

import flax_resnet
import torch_ref
from parity_tests.conftest import pair_param

# Per-test p-value floor. With ~20-60 tests per model a correct init fails by chance with probability < 1%;
# the init mutations this guards against (uniform for normal, a wrong bound, zeros) give p < 1e-15.
ALPHA = 1e-4
KS_MAX_ELEMENTS = 1 << 16  # the first 65536 values of a tensor (i.i.d. draws): a KS of all 11M values takes ~1.5 s

PAIRS = [
    pair_param("resnet18", "cifar"),
    pair_param("resnet18", "imagenet"),
    pair_param("resnet18", "article"),
    pair_param("resnet50", "imagenet"),
]


def _ks_p(values: np.ndarray, dist: str, args: tuple[float, ...]) -> float:
    sample = values.ravel()[:KS_MAX_ELEMENTS].astype(np.float64)
    return float(scipy.stats.kstest(sample, dist, args=args).pvalue)


def init_problems(sd: dict[str, np.ndarray]) -> list[str]:
    """Every way `sd` (torch names) departs from torch's init (a tensor of no known kind is one)."""
    bn_modules = {k.rsplit(".", 1)[0] for k in sd if k.endswith(".running_mean")}
    constants = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0, "num_batches_tracked": 0}
    problems: list[str] = []
    scaled_biases: list[np.ndarray] = []
    for key, value in sd.items():
        module, leaf = key.rsplit(".", 1)
        if module in bn_modules:
            if not np.all(value == constants[leaf]):
                problems.append(f"{key}: not all {constants[leaf]}")
        elif leaf == "weight" and value.ndim == 4:  # conv (cout, cin, k, k)
            std = math.sqrt(2.0 / (value.shape[0] * value.shape[2] * value.shape[3]))
            p = _ks_p(value, "norm", (0.0, std))
            if p < ALPHA:
                problems.append(f"{key}: KS vs N(0, {std:.4g}^2) p={p:.3g}")
        elif leaf in ("weight", "bias"):  # fc weight, fc bias, conv biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            weight = sd[f"{module}.weight"]
            bound = 1.0 / math.sqrt(math.prod(weight.shape[1:]))
            top = float(np.max(np.abs(value.astype(np.float64))))
            p_range = (top / bound) ** value.size  # P(max |x| <= top) for value.size draws of U(-bound, bound)
            p = _ks_p(value, "uniform", (-bound, 2 * bound))
            if top > bound or p_range < ALPHA or p < ALPHA:
                problems.append(f"{key}: max|x|/bound {top / bound:.4f} (p={p_range:.3g}), KS p={p:.3g}")
            if leaf == "bias" and value.ndim == 1 and module != "fc":
                scaled_biases.append(value.astype(np.float64) / bound)
        else:
            problems.append(f"{key}: unexpected tensor")
    if scaled_biases:  # all conv biases pooled, each scaled by its bound: U(-1, 1)
        p = _ks_p(np.concatenate(scaled_biases), "uniform", (-1.0, 2.0))
        if p < ALPHA:
            problems.append(f"conv biases pooled: KS vs U(-1, 1) p={p:.3g}")
    return problems


@pytest.mark.parametrize(("arch", "variant"), PAIRS)
def test_init_distributions_match_torch(arch: str, variant: str) -> None:
    seed = 0
    fsd = flax_resnet.to_torch_state_dict(flax_resnet.create_model(arch, variant, 10, seed=seed))
    torch.manual_seed(seed)
    tsd = {k: v.numpy() for k, v in torch_ref.create_model(arch, variant, 10).state_dict().items()}
    assert {k: v.shape for k, v in fsd.items()} == {k: v.shape for k, v in tsd.items()}
    # The hand-written rule is torch's: torch_ref's fresh model meets it too.
    torch_problems = init_problems(tsd)
    assert not torch_problems, "\n".join(torch_problems)
    problems = init_problems(fsd)
    assert not problems, "\n".join(problems)
    if variant == "article":  # the biased convs are really there, so the bias checks above did run
        assert sum(k.endswith("conv1.bias") for k in fsd) == 8
