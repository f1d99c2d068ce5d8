"""The benchmark's measurements (``vitskip_env.measure.contenders``): contenders, depth matching, efficiency,
memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from vitskip_env import DynamicViT, SkippableViT, SkipPolicy, make_dataset
from vitskip_env.measure import evaluate_backbone
from vitskip_env.measure.contenders import CONTENDERS, accuracy_table, measure_speed, peak_memory_mib, random_masks_like
from vitskip_env.observations import encoder_for


def varied_dynamic(seed: int = 3) -> DynamicViT:
    """Micro backbone (4 blocks) + a random MLP policy whose decisions vary between images and blocks.

    Block 0 always runs: before it every image has the same class token, hence the same decision.
    """
    torch.manual_seed(seed)
    vit = SkippableViT("micro", num_classes=10).eval()
    enc = encoder_for(vit)
    net = nn.Sequential(nn.Linear(enc.obs_dim, 16), nn.Tanh(), nn.Linear(16, 2))
    with torch.no_grad():
        net[0].weight.mul_(4.0)
    return DynamicViT(vit, SkipPolicy(net, enc, always_execute=(0,))).eval()


@pytest.fixture(scope="module")
def test_split() -> object:
    return make_dataset("shapes", "test")


def test_random_masks_keep_each_rows_depth_and_spread_over_blocks() -> None:
    g = torch.Generator().manual_seed(0)
    executed = torch.rand(4000, 6, generator=g) < torch.linspace(0.05, 0.95, 6)  # very uneven per block
    rnd = random_masks_like(executed, seed=1)
    assert torch.equal(rnd.sum(1), executed.sum(1))
    assert torch.equal(rnd, random_masks_like(executed, seed=1)) and not torch.equal(rnd, random_masks_like(executed, seed=2))
    rates = rnd.float().mean(0)  # uniform over blocks, unlike the input's 0.05 ... 0.95
    assert torch.allclose(rates, rates.mean().expand(6), atol=0.03)
    # The benchmark's random contender for a seed must never change.
    rows = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    pinned = [[1, 0, 0, 1, 0, 0], [1, 1, 1, 0, 1, 1], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert random_masks_like(rows, seed=3).int().tolist() == pinned


def test_accuracy_table_scores_every_contender_like_the_plain_scorers(test_split) -> None:
    dyn = varied_dynamic()
    vit, ds = dyn.backbone, test_split
    subset = torch.tensor([True, False, True, False])
    acc = accuracy_table(dyn, ds, subset=subset, limit=96, batch_size=40)
    assert list(acc) == list(CONTENDERS)
    assert acc["static"]["top1"] == pytest.approx(evaluate_backbone(vit, ds, limit=96)["top1"])
    sub = evaluate_backbone(vit, ds, lambda s, imgs: subset.expand(imgs.shape[0], -1), limit=96)
    assert acc["static_subset"] == pytest.approx({"top1": sub["top1"], "executed_blocks": 2.0})
    with torch.inference_mode():
        logits, mask = dyn(ds.normalize(ds.images[:96]), return_mask=True)
    assert 0 < mask.sum() < mask.numel()
    assert acc["dynamic"]["top1"] == pytest.approx(100 * float((logits.argmax(1) == ds.labels[:96]).float().mean()))
    assert acc["dynamic"]["executed_blocks"] == pytest.approx(float(mask.sum()) / 96)
    assert acc["random"]["executed_blocks"] == pytest.approx(acc["dynamic"]["executed_blocks"])
    assert "static_subset" not in accuracy_table(dyn, ds, limit=8)


def test_measure_speed_rows_and_efficiency_arithmetic(test_split) -> None:
    dyn = varied_dynamic()
    rows = measure_speed(dyn, test_split, 16, subset=torch.tensor([True, True, False, False]), images_per_round=32, rounds=2)
    by = {r["model"]: r for r in rows}
    assert list(by) == list(CONTENDERS)
    assert by["static"]["speedup"] == 1.0 and by["static"]["executed_blocks"] == 4.0
    assert by["static_subset"]["executed_blocks"] == 2.0
    assert by["random"]["executed_blocks"] == pytest.approx(by["dynamic"]["executed_blocks"])
    for r in rows:
        assert r["batch"] == 16 and r["images_per_s"] > 0
        assert r["ideal_speedup"] == pytest.approx(4.0 / r["executed_blocks"])
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["ideal_speedup"])
        assert r["bound_efficiency"] == pytest.approx(r["speedup"] / r["bound_speedup"])
    with pytest.raises(ValueError, match="larger than the split"):
        measure_speed(dyn, make_dataset("shapes", "val"), 8192)


def test_peak_memory_grows_with_the_batch(tmp_path: Path) -> None:
    path = varied_dynamic().save(tmp_path / "dyn.safetensors")
    small = peak_memory_mib(path, "static", 1, dataset="shapes", threads=1)
    large = peak_memory_mib(path, "dynamic", 512, dataset="shapes", threads=1)
    assert 0 <= small < large
    assert large > 512 * 17 * 32 * 4 / 2**20  # at least one (B, T, D) float32 token state of the micro model
    with pytest.raises(FileNotFoundError, match="memory probe: no such model file"):
        peak_memory_mib(tmp_path / "missing.safetensors", "static", 1, dataset="shapes")
