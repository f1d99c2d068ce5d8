"""EarlyExitViT and the exit rules: batched exit is exact, exited rows do no work, rules are checked."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from vitskip_env import EarlyExitViT, ExitHeads, ExitRule, SkippableViT
from vitskip_env.deploy import calibrate, point_costs, simulate
from vitskip_env.deploy.exit_rules import entropy, evaluate


def _model(rule: ExitRule | None = None) -> EarlyExitViT:
    torch.manual_seed(0)
    vit = SkippableViT("micro", num_classes=5)
    heads = ExitHeads(vit, positions=[0, 1, 2], kinds=["local", "linear", "global2"])
    with torch.no_grad():  # spread the heads' confidences so that images leave at different points
        for head in heads.heads.values():
            head.fc.weight.mul_(20)
    return EarlyExitViT(vit, heads, rule).eval()


def _varied_rule(model: EarlyExitViT, kind: str, x: torch.Tensor) -> ExitRule:
    """The rule ``kind`` with a knob at which the images of ``x`` leave at more than one point."""
    logits = model.exit_logits(x)
    if kind == "patience":
        return ExitRule("patience", patience=2)
    if kind == "confidence":
        return ExitRule(kind, threshold=_between(torch.softmax(logits[0], -1).amax(-1)))
    return ExitRule(kind, threshold=_between(entropy(logits[0])), **({"patience": 1} if kind != "entropy" else {}))


def _between(values: torch.Tensor) -> float:
    """A threshold halfway between the two middle values (no image sits on it, whatever the batch's rounding)."""
    v = values.sort().values
    return (v[len(v) // 2 - 1] + v[len(v) // 2]).item() / 2


@pytest.mark.parametrize("kind", ["confidence", "entropy", "patience", "patient_confident"])
def test_batched_exit_equals_one_image_at_a_time(kind: str) -> None:
    model = _model()
    x = torch.randn(64, 3, 32, 32)
    model = model.with_rule(_varied_rule(model, kind, x))
    with torch.no_grad():
        logits, blocks = model(x, return_exits=True)
        alone = [model(x[i : i + 1], return_exits=True) for i in range(64)]
    assert torch.equal(blocks, torch.cat([b for _, b in alone]))
    torch.testing.assert_close(logits, torch.cat([z for z, _ in alone]), rtol=1e-4, atol=1e-4)
    # the offline simulation (sweeps, calibration) gives the same exits and predictions
    point, pred = simulate(model.rule, model.exit_logits(x))
    exit_blocks = torch.tensor([p + 1 for p in model.exits.positions] + [model.backbone.depth])
    assert torch.equal(exit_blocks[point], blocks)
    assert torch.equal(pred, logits.argmax(-1))
    if kind != "patience":
        assert len(set(blocks.tolist())) > 1  # the test means something: images left at different points


def test_exited_rows_do_no_further_work() -> None:
    model = _model()
    x = torch.randn(48, 3, 32, 32)
    model = model.with_rule(_varied_rule(model, "confidence", x))
    seen: Counter[str] = Counter()
    hooks = [blk.register_forward_hook(lambda m, i, o, k=f"block{b}": seen.update({k: i[0].shape[0]}))
             for b, blk in enumerate(model.backbone.blocks)]  # fmt: skip
    hooks += [head.register_forward_hook(lambda m, i, o, k=f"head{p}": seen.update({k: i[0].shape[0]}))
              for p, head in model.exits.heads.items()]  # fmt: skip
    hooks.append(model.backbone.vit.head.register_forward_hook(lambda m, i, o: seen.update({"final": i[0].shape[0]})))
    with torch.no_grad():
        _, blocks = model(x, return_exits=True)
    for h in hooks:
        h.remove()
    for b in range(model.backbone.depth):
        assert seen[f"block{b}"] == int((blocks > b).sum()), b  # only rows still in flight enter block b
    assert seen["head0"] == 48 and seen["head2"] == int((blocks > 2).sum())
    # the linear exit after block 2 and the final classifier both call the backbone's head
    assert seen["final"] == int((blocks > 1).sum()) + int((blocks == 4).sum())
    assert int((blocks == 1).sum()) > 0 and int((blocks == 4).sum()) > 0


def test_when_every_row_exits_no_later_block_runs() -> None:
    model = _model(ExitRule("confidence", threshold=1e-6))  # everyone leaves at the first head
    calls = Counter()
    for b, blk in enumerate(model.backbone.blocks):
        blk.register_forward_hook(lambda m, i, o, b=b: calls.update([b]))
    with torch.no_grad():
        _, blocks = model(torch.randn(8, 3, 32, 32), return_exits=True)
    assert blocks.tolist() == [1] * 8 and set(calls) == {0}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "confidence", "threshold": 1.5}, r"probability in \(0, 1\]"),
        ({"kind": "confidence", "threshold": 0.0}, "probability"),
        ({"kind": "entropy", "threshold": -0.1}, "positive number of nats"),
        ({"kind": "entropy", "threshold": float("nan")}, "positive number"),
        ({"kind": "patience", "patience": 0}, ">= 1"),
        ({"kind": "patience", "threshold": 0.5}, "takes no threshold"),
        ({"kind": "confidence", "patience": 2}, "takes no patience"),
        ({"kind": "margin"}, "unknown exit rule"),
    ],
)
def test_bad_rules_say_what_is_allowed(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ExitRule(**kwargs)


def test_lgvit_defaults_and_a_patience_the_model_cannot_reach() -> None:
    assert ExitRule("confidence").threshold == 0.8 and ExitRule("entropy").threshold == 0.6
    assert ExitRule("patience").patience == 7
    assert (ExitRule("patient_confident").threshold, ExitRule("patient_confident").patience) == (0.5, 2)
    with pytest.raises(ValueError, match=r"patience 7 needs 7 exit points.*has 4"):
        _model(ExitRule("patience"))
    assert ExitRule("patience").for_exits(4).patience == 4


def test_calibration_meets_a_budget_and_an_accuracy() -> None:
    model = _model()
    x, labels = torch.randn(200, 3, 32, 32), torch.randint(0, 5, (200,))
    logits = model.exit_logits(x)
    costs = point_costs([1.0] * 4, model.exits.positions, [0.1, 0.0, 0.1], 0.0)
    assert costs.tolist() == pytest.approx([1.1, 2.1, 3.2, 4.2])
    rule = calibrate("confidence", logits, labels, costs, budget=2.5)
    assert evaluate(rule, logits, labels, costs)["mean_cost"] <= 2.5
    full = evaluate(ExitRule("confidence", threshold=1.0), logits, labels, costs)["top1"]
    cheap = calibrate("entropy", logits, labels, costs, min_top1=full - 5)
    assert evaluate(cheap, logits, labels, costs)["top1"] >= full - 5
    with pytest.raises(ValueError, match="cheapest costs"):
        calibrate("confidence", logits, labels, costs, budget=0.5)
    with pytest.raises(ValueError, match="exactly one goal"):
        calibrate("confidence", logits, labels, costs)
