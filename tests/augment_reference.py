"""Brute-force reference for random crop + flip (both frameworks' `augment`): which window of the zero-padded
image each output is, and whether the draws are uniform over the windows and fair over the flips."""

from __future__ import annotations

import numpy as np


def recover_windows(images: np.ndarray, out: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NHWC inputs and outputs: per output, the one (dy, dx, flipped) such that it is the window at (dy, dx) of
    np.pad(image), mirrored left-right if flipped; asserts that exactly one of the candidates matches."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k = 2 * pad + 1
    matches = np.zeros((n, k, k, 2), bool)
    for dy in range(k):
        for dx in range(k):
            window = padded[:, dy : dy + h, dx : dx + w]
            matches[:, dy, dx, 0] = (out == window).all(axis=(1, 2, 3))
            matches[:, dy, dx, 1] = (out == window[:, :, ::-1]).all(axis=(1, 2, 3))
    count = matches.sum(axis=(1, 2, 3))
    assert (count == 1).all(), f"{(count != 1).sum()} outputs are not exactly one of the {k}x{k}x2 candidates"
    _, dy, dx, flipped = np.nonzero(matches)  # one hit per image, so in image order
    return dy, dx, flipped.astype(bool)


def assert_uniform_draws(dy: np.ndarray, dx: np.ndarray, flipped: np.ndarray, pad: int) -> None:
    """Offsets uniform over the (2 pad + 1)^2 windows (chi-square under its mean + 5 sd) and flips fair (within
    4.5 sd of 0.5): a sampler that favours the edge offsets 2x or flips at 0.42 fails at 2048 draws."""
    n, k = len(dy), 2 * pad + 1
    expected = n / k**2
    assert expected >= 5, f"{n} draws are too few for a chi-square test over {k * k} windows"
    counts = np.bincount(dy * k + dx, minlength=k * k)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = k * k - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof), f"offsets not uniform: chi2 {chi2:.1f} with {dof} dof"
    rate = float(flipped.mean())
    assert abs(rate - 0.5) < 4.5 * 0.5 / np.sqrt(n), f"flip rate {rate:.3f} over {n} draws"
