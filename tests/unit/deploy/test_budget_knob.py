"""DynamicViT's compute knob (budget-conditioned policies): monotone, folded == exact, saved and reloaded, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from vitskip_env import DynamicViT, SkippableViT, SkipPolicy, ViTSkipVectorEnv
from vitskip_env.deploy.netspec import Columns
from vitskip_env.observations import encoder_for

RANGE = (0.01, 1.0)


def budget_policy(vit: SkippableViT, seed: int = 0) -> SkipPolicy:
    """The agents' network shape with a budget entry; the budget drives skipping, the token the rest."""
    torch.manual_seed(seed)
    enc = encoder_for(vit, budget_range=RANGE)
    d, depth = enc.embed_dim, enc.depth
    first = nn.Linear(d + 8 + 2, 16)
    last = nn.Linear(16, 2)
    with torch.no_grad():
        first.weight.mul_(0.3)
        first.weight[0].zero_()
        first.bias[0] = 0.0
        first.weight[0, -1] = 3.0  # hidden unit 0 = tanh(3 * budget entry)
        last.weight[:, 0] = torch.tensor([2.0, -2.0])  # more budget weight -> more skipping
    net = nn.Sequential(Columns([d, depth, 2], {"1": nn.Linear(depth, 8, bias=False)}), first, nn.Tanh(), last)
    return SkipPolicy(net, enc)


@pytest.fixture
def model(micro_kwargs: dict) -> tuple[DynamicViT, torch.Tensor]:
    env = ViTSkipVectorEnv(1, **micro_kwargs)
    ds = env.dataset
    return DynamicViT(env.backbone, budget_policy(env.backbone)).eval(), ds.normalize(ds.images[:64])


def executed_frac(dyn: DynamicViT, x: torch.Tensor) -> float:
    with torch.inference_mode():
        return float(dyn(x, return_mask=True)[1].float().mean())


def test_the_knob_changes_the_executed_fraction_monotonically(model: tuple) -> None:
    dyn, x = model
    by_weight = [executed_frac(dyn.set_compute_weight(w), x) for w in (0.01, 0.03, 0.1, 0.3, 1.0)]
    assert by_weight == sorted(by_weight, reverse=True) and by_weight[0] - by_weight[-1] > 0.3
    calibration = dyn.calibrate_budget(x, points=9)
    low, high = min(calibration["executed_frac"]), max(calibration["executed_frac"])
    targets = [low + (high - low) * t for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    got = [executed_frac(dyn.set_budget(f), x) for f in targets]
    assert got == sorted(got) and got[-1] - got[0] > 0.3
    assert got[0] == pytest.approx(low, abs=0.02) and got[-1] == pytest.approx(high, abs=0.02)


def test_folded_and_exact_decisions_agree_at_every_weight(model: tuple) -> None:
    dyn, x = model
    for w in (0.01, 0.05, 0.2, 1.0):
        dyn.set_compute_weight(w)
        assert dyn.folded is not None
        with torch.inference_mode():
            logits, mask = dyn(x, return_mask=True)
            one, one_mask = dyn(x[:3], return_mask=True)  # the NumPy path of a few CPU images
            folded, dyn.folded = dyn.folded, None
            exact, exact_mask = dyn(x, return_mask=True)
            dyn.folded = folded
        assert torch.equal(mask, exact_mask) and torch.equal(mask[:3], one_mask)
        torch.testing.assert_close(one, exact[:3])
        torch.testing.assert_close(logits, exact)


def test_saved_model_reloads_identical_at_each_budget(model: tuple, tmp_path: Path) -> None:
    dyn, x = model
    dyn.calibrate_budget(x, points=5)
    dyn.set_compute_weight(0.2)
    loaded = DynamicViT.load(dyn.save(tmp_path / "knob.safetensors"))
    assert loaded.compute_weight == pytest.approx(0.2) and loaded.meta["budget_calibration"] == dyn.meta["budget_calibration"]
    for w in (0.01, 0.1, 1.0):
        with torch.inference_mode():
            a, ma = dyn.set_compute_weight(w)(x, return_mask=True)
            b, mb = loaded.set_compute_weight(w)(x, return_mask=True)
        assert torch.equal(a, b) and torch.equal(ma, mb)


def test_out_of_range_and_missing_knobs_are_clear_errors(model: tuple, micro_kwargs: dict) -> None:
    dyn, x = model
    with pytest.raises(ValueError, match=r"outside the range the policy was trained on, \[0.01, 1.0\]"):
        dyn.set_compute_weight(5.0)
    with pytest.raises(ValueError, match="calibrate_budget"):
        dyn.set_budget(0.3)
    dyn.calibrate_budget(x, points=5)
    with pytest.raises(ValueError, match=r"executed fraction spans \[.*\] of the blocks; pass a fraction in that span"):
        dyn.set_budget(1.5)
    with pytest.raises(ValueError, match="must be a number"):
        dyn.set_compute_weight("high")  # type: ignore[arg-type]
    from test_folded import agent_like_policy

    plain = DynamicViT(dyn.backbone, agent_like_policy(dyn.backbone))
    assert plain.budget_range is None and plain.compute_weight is None
    with pytest.raises(ValueError, match=r"no compute knob.*--budget-range"):
        plain.set_budget(0.3)
