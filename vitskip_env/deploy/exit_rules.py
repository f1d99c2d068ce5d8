"""Training-free early-exit rules (LGViT's four), one decision function for batched deployment and for sweeps.

At each exit point a rule sees the exit's logits for the rows still in flight (and a small per-row
state) and says which rows leave. The same :meth:`ExitRule.decide` runs inside
:class:`~vitskip_env.deploy.EarlyExitViT` (rows compacted as they exit) and in :func:`simulate`
(all exits of all images precomputed, for threshold sweeps and budget calibration), so a threshold
chosen offline gives exactly the exits the deployed model takes.

========================  =============================================  ====================
rule                      exits when                                     LGViT default
========================  =============================================  ====================
``confidence``            max softmax probability > ``threshold``         0.8 (scripts)
``entropy``               entropy (nats) < ``threshold``                  0.6
``patience``              the same argmax at ``patience`` exits in a row  7 (PABEE)
``patient_confident``     entropy < ``threshold`` at ``patience`` exits   0.5, 2
                          in a row
========================  =============================================  ====================

``patience`` cannot exceed the number of exit points (heads + the final classifier); with 4 heads
LGViT's 7 is lowered to the most the layout allows (:meth:`ExitRule.for_exits`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

#: Each rule's LGViT defaults: (threshold, patience).
DEFAULTS: dict[str, tuple[float | None, int | None]] = {
    "confidence": (0.8, None),
    "entropy": (0.6, None),
    "patience": (None, 7),
    "patient_confident": (0.5, 2),
}
RULES = tuple(DEFAULTS)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of ``softmax(logits)`` per row (float32)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@dataclass(frozen=True)
class ExitRule:
    """One of :data:`RULES` with its threshold and patience (``None``: not used by that rule).

    Example:
        >>> rule = ExitRule("confidence", threshold=0.9)
        >>> leave, state = rule.decide(torch.tensor([[4.0, 0.0], [0.1, 0.0]]), rule.init(2, "cpu"))
        >>> leave.tolist()
        [True, False]
    """

    kind: str
    threshold: float | None = None
    patience: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in DEFAULTS:
            raise ValueError(f"unknown exit rule {self.kind!r}; choose from {list(RULES)}")
        default_t, default_p = DEFAULTS[self.kind]
        t = default_t if self.threshold is None and default_t is not None else self.threshold
        p = default_p if self.patience is None and default_p is not None else self.patience
        if default_t is None and self.threshold is not None:
            raise ValueError(f"the {self.kind!r} rule takes no threshold (it counts equal predictions); give patience")
        if default_p is None and self.patience is not None:
            raise ValueError(f"the {self.kind!r} rule takes no patience; give a threshold")
        if self.kind == "confidence" and not 0.0 < t <= 1.0:
            raise ValueError(f"a confidence threshold is a probability in (0, 1], got {t}; LGViT uses 0.8")
        if self.kind in ("entropy", "patient_confident") and not (math.isfinite(t) and t > 0.0):
            raise ValueError(f"an entropy threshold is a positive number of nats, got {t}; LGViT uses {default_t}")
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p < 1):
            raise ValueError(f"patience is a whole number of exits >= 1, got {p!r}; LGViT uses {default_p}")
        object.__setattr__(self, "threshold", None if t is None else float(t))
        object.__setattr__(self, "patience", p)

    def for_exits(self, n_points: int) -> ExitRule:
        """This rule with its patience lowered to ``n_points`` (exit heads + the final classifier) where it is larger."""
        if self.patience is not None and self.patience > n_points:
            return replace(self, patience=n_points)
        return self

    def check(self, n_points: int) -> None:
        """Refuse a patience the exit points cannot reach (it would never exit).

        Raises:
            ValueError: ``patience`` larger than ``n_points``.
        """
        if self.patience is not None and self.patience > n_points:
            raise ValueError(
                f"patience {self.patience} needs {self.patience} exit points in a row, but this model has {n_points} "
                f"(its heads and the final classifier); use patience <= {n_points}, or rule.for_exits({n_points})"
            )

    def init(self, batch: int, device: torch.device | str) -> dict[str, torch.Tensor]:
        """The per-row state before the first exit point (previous argmax, run length)."""
        return {
            "previous": torch.full((batch,), -1, dtype=torch.long, device=device),
            "run": torch.zeros(batch, dtype=torch.long, device=device),
        }

    def decide(self, logits: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Which rows (``bool (B,)``) exit at this point, and the state for the next one."""
        if self.kind == "confidence":
            return torch.softmax(logits.float(), -1).amax(-1) > self.threshold, state
        if self.kind == "entropy":
            return entropy(logits) < self.threshold, state
        if self.kind == "patience":
            pred = logits.argmax(-1)
            run = torch.where(pred == state["previous"], state["run"] + 1, torch.ones_like(state["run"]))
            return run >= self.patience, {"previous": pred, "run": run}
        low = entropy(logits) < self.threshold  # patient_confident
        run = torch.where(low, state["run"] + 1, torch.zeros_like(state["run"]))
        return run >= self.patience, {"previous": state["previous"], "run": run}

    def config(self) -> dict[str, Any]:
        """JSON form (``ExitRule(**config)`` rebuilds it)."""
        return {"kind": self.kind, "threshold": self.threshold, "patience": self.patience}

    def label(self) -> str:
        """Short readable name, e.g. ``confidence>0.8`` or ``patience=4``."""
        if self.kind == "confidence":
            return f"confidence>{self.threshold:g}"
        if self.kind == "entropy":
            return f"entropy<{self.threshold:g}"
        if self.kind == "patience":
            return f"patience={self.patience}"
        return f"entropy<{self.threshold:g}x{self.patience}"


def simulate(rule: ExitRule, exit_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exit point and prediction of every image under ``rule``, from all points' logits.

    Args:
        rule: The rule.
        exit_logits: ``(P, N, C)``: the logits of every exit point (heads, then the final classifier) for N images.

    Returns:
        ``(point (N,), prediction (N,))``: the index of the point each image leaves at (``P - 1`` = the
        final classifier) and the argmax there.
    """
    n_points, n = exit_logits.shape[:2]
    state = rule.init(n, exit_logits.device)
    point = torch.full((n,), n_points - 1, dtype=torch.long, device=exit_logits.device)
    done = torch.zeros(n, dtype=torch.bool, device=exit_logits.device)
    for k in range(n_points - 1):
        leave, state = rule.decide(exit_logits[k], state)
        new = leave & ~done
        point[new] = k
        done |= leave
    pred = exit_logits.argmax(-1).gather(0, point[None]).squeeze(0)
    return point, pred


def sweep_values(kind: str, n_points: int) -> list[float] | list[int]:
    """The thresholds (or patiences) a sweep of ``kind`` tries, from the most eager to exit to the least.

    The last value (almost) never exits, so a sweep always reaches the final classifier's accuracy.
    """
    if kind == "confidence":
        return [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0]
    if kind in ("entropy", "patient_confident"):
        return [2.0, 1.5, 1.2, 1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.05, 0.02, 0.01, 0.001, 1e-6]
    if kind == "patience":
        return list(range(1, n_points + 1))
    raise ValueError(f"unknown exit rule {kind!r}; choose from {list(RULES)}")


def with_value(kind: str, value: float, base: ExitRule | None = None) -> ExitRule:
    """The rule ``kind`` with its swept knob (threshold, or patience for ``patience``) set to ``value``."""
    base = base or ExitRule(kind)
    if kind == "patience":
        return replace(base, patience=int(value))
    return replace(base, threshold=float(value))


def point_costs(
    block_costs: Sequence[float], positions: Sequence[int], head_costs: Sequence[float], final_cost: float
) -> torch.Tensor:
    """Total cost of leaving at each exit point: the blocks up to it plus every head evaluated on the way.

    Args:
        block_costs: Cost of each block (FLOPs, or a measured share).
        positions: Block after which each head reads (the final classifier is after the last block).
        head_costs: Cost of each head; ``final_cost``: of the final classifier.

    Returns:
        ``(len(positions) + 1,)`` float64 costs.
    """
    cum = torch.tensor(block_costs, dtype=torch.float64).cumsum(0)
    heads = torch.tensor(head_costs, dtype=torch.float64).cumsum(0)
    out = [cum[p] + heads[k] for k, p in enumerate(positions)]
    out.append(cum[-1] + (heads[-1] if len(head_costs) else 0.0) + final_cost)
    return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in out])


def evaluate(rule: ExitRule, exit_logits: torch.Tensor, labels: torch.Tensor, costs: torch.Tensor) -> dict[str, float]:
    """Top-1 (%), mean exit point and mean cost of ``rule`` on precomputed logits (``costs`` from :func:`point_costs`)."""
    point, pred = simulate(rule, exit_logits)
    return {
        "top1": 100.0 * (pred == labels).float().mean().item(),
        "mean_point": point.double().mean().item(),
        "mean_cost": costs.to(point.device)[point].mean().item(),
    }


def calibrate(
    kind: str,
    exit_logits: torch.Tensor,
    labels: torch.Tensor,
    costs: torch.Tensor,
    *,
    budget: float | None = None,
    min_top1: float | None = None,
    base: ExitRule | None = None,
) -> ExitRule:
    """The rule ``kind`` with the knob that meets a compute budget or an accuracy, fitted on held-out images (``val``).

    Exactly one of:
        budget: Largest mean cost allowed (in ``costs``' unit): the most accurate knob within it
            (DVT's budgeted batch classification).
        min_top1: Top-1 (%) to reach: the cheapest knob that reaches it.

    Raises:
        ValueError: Both or neither given, or no knob meets the goal (the message gives the reachable range).
    """
    if (budget is None) == (min_top1 is None):
        raise ValueError("calibrate needs exactly one goal: budget=<mean cost> or min_top1=<top-1 %>")
    rows = []
    for value in sweep_values(kind, exit_logits.shape[0]):
        rule = with_value(kind, value, base)
        rows.append((rule, evaluate(rule, exit_logits, labels, costs)))
    if budget is not None:
        fits = [(r, m) for r, m in rows if m["mean_cost"] <= budget]
        if not fits:
            cheapest = min(m["mean_cost"] for _, m in rows)
            raise ValueError(
                f"no {kind} threshold stays within a mean cost of {budget:.4g}; the cheapest costs {cheapest:.4g}"
            )
        return max(fits, key=lambda rm: (rm[1]["top1"], -rm[1]["mean_cost"]))[0]
    fits = [(r, m) for r, m in rows if m["top1"] >= min_top1]
    if not fits:
        best = max(m["top1"] for _, m in rows)
        raise ValueError(f"no {kind} threshold reaches {min_top1:.2f} % top-1; the best reaches {best:.2f} %")
    return min(fits, key=lambda rm: (rm[1]["mean_cost"], -rm[1]["top1"]))[0]


__all__ = [
    "DEFAULTS",
    "RULES",
    "ExitRule",
    "calibrate",
    "entropy",
    "evaluate",
    "point_costs",
    "simulate",
    "sweep_values",
    "with_value",
]
