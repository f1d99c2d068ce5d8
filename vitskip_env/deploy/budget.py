"""The runtime compute knob of a budget-conditioned ``DynamicViT`` (a policy trained with ``compute_weight_range``).

The policy sees the episode's compute weight ``w`` (its ``budget`` observation entry), so one model
serves every weight of the range it was trained on: :meth:`DynamicViT.set_compute_weight` sets ``w``.
Users think in compute, not in reward weights: :func:`calibrate` measures, on images the caller
gives (a validation split), the fraction of blocks the model executes at log-spaced weights, and
:func:`weight_for_fraction` inverts that curve, so ``dyn.set_budget(0.3)`` runs about 30 % of the
blocks. The measured curve is made non-increasing in ``w`` (a running minimum) before it is
inverted, so the knob is monotone by construction; the calibration is stored in the model file.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def log_spaced(budget_range: tuple[float, float], points: int) -> list[float]:
    """``points`` compute weights, log-spaced over ``budget_range`` (both ends included)."""
    lo, hi = budget_range
    return [float(lo * (hi / lo) ** (i / (points - 1))) for i in range(points)]


@torch.inference_mode()
def calibrate(dyn: Any, images: torch.Tensor, *, points: int = 13, batch_size: int = 512) -> dict[str, list[float]]:
    """Executed fraction of the blocks at ``points`` log-spaced compute weights, on normalised ``images``.

    Returns:
        ``{"compute_weight": [...increasing], "executed_frac": [...non-increasing], "measured_frac": [...]}``
        (``measured_frac`` as measured, ``executed_frac`` its running minimum). The model's weight is restored.
    """
    if dyn.budget_range is None:
        raise ValueError("calibrate needs a budget-conditioned DynamicViT (a policy trained with compute_weight_range)")
    if points < 2 or images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"calibrate needs points >= 2 and a batch of images (N, C, H, W), got {points} and "
                         f"{tuple(images.shape)}")  # fmt: skip
    before = dyn.compute_weight
    weights, measured = log_spaced(dyn.budget_range, points), []
    try:
        for w in weights:
            dyn.set_compute_weight(w)
            executed = sum(int(dyn(images[s : s + batch_size], return_mask=True)[1].sum())
                           for s in range(0, images.shape[0], batch_size))  # fmt: skip
            measured.append(executed / (images.shape[0] * dyn.depth))
    finally:
        dyn.set_compute_weight(before)
    monotone = np.minimum.accumulate(np.array(measured)).tolist()
    return {"compute_weight": weights, "executed_frac": monotone, "measured_frac": measured}


def weight_for_fraction(calibration: dict[str, list[float]], fraction: float) -> float:
    """The compute weight whose calibrated executed fraction is ``fraction`` (log-linear between the points).

    Raises:
        ValueError: ``fraction`` not a number inside the calibrated span (the message gives the span).
    """
    w = np.log(np.asarray(calibration["compute_weight"], dtype=np.float64))
    f = np.asarray(calibration["executed_frac"], dtype=np.float64)
    low, high = float(f.min()), float(f.max())
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not math.isfinite(fraction)
        or not (low <= fraction <= high)
    ):
        raise ValueError(f"budget {fraction!r} is outside what this model can run: its calibrated executed fraction "
                         f"spans [{low:.3f}, {high:.3f}] of the blocks; pass a fraction in that span")  # fmt: skip
    # f is non-increasing in w: flip both to interpolate on an increasing axis; flat stretches pick their smallest w
    order = np.arange(len(f))[::-1]
    fx, wx = f[order], w[order]
    keep = np.concatenate([[True], np.diff(fx) > 0])
    if keep.sum() == 1:
        return float(np.exp(wx[keep][0]))
    return float(np.exp(np.interp(fraction, fx[keep], wx[keep])))
