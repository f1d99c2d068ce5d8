"""The one scorer (``vitskip_env.measure.accuracy.score``) against a hand count, image by image."""

from __future__ import annotations

import pytest
import torch
from test_contenders import varied_dynamic

from vitskip_env import DynamicViT, SkippableViT, make_dataset
from vitskip_env.data.augment import random_skip_mask
from vitskip_env.measure import Score, evaluate_backbone, random_skip_top1, score
from vitskip_env.model import flops_costs

N = 37  # images scored: batches of 16, 16 and 5
BATCH = 16


@pytest.fixture(scope="module")
def ds() -> object:
    return make_dataset("shapes", "test")


@pytest.fixture(scope="module")
def dyn() -> DynamicViT:
    """Micro backbone (4 blocks) + a random MLP policy whose decisions vary between images (block 0 always runs)."""
    return varied_dynamic(3)


def hand_count(ds, run) -> tuple[list[bool], list[list[bool]]]:
    """Run image ``i`` alone through ``run(x, i) -> (logits, bool (1, depth) executed)``; per-image correctness and masks."""
    correct, executed = [], []
    with torch.inference_mode():
        for i in range(N):
            logits, mask = run(ds.normalize(ds.images[i : i + 1]), i)
            correct.append(int(logits.argmax(1)) == int(ds.labels[i]))
            executed.append(mask[0].tolist())
    return correct, executed


def check(s: Score, correct: list[bool], executed: list[list[bool]], vit: SkippableViT) -> None:
    """``s`` holds exactly what the hand count says."""
    blocks = sum(sum(row) for row in executed)
    assert s.n_images == N
    assert s.top1 == pytest.approx(100.0 * sum(correct) / N)
    assert s.executed_blocks == pytest.approx(blocks / N)
    assert s.executed_frac == pytest.approx(blocks / N / vit.depth)
    costs = flops_costs(vit)
    assert s.compute == pytest.approx(float(sum(torch.tensor(row, dtype=torch.float64) @ costs for row in executed)) / N)
    assert s.correct is not None and s.correct.tolist() == correct
    assert s.executed is not None and s.executed.tolist() == executed


def test_static_backbone_every_block(dyn: DynamicViT, ds) -> None:
    vit = dyn.backbone
    correct, executed = hand_count(ds, lambda x, i: (vit(x), torch.ones(1, vit.depth, dtype=torch.bool)))
    s = score(vit, ds, n_images=N, batch_size=BATCH, per_image=True)
    check(s, correct, executed, vit)
    assert s.executed_blocks == 4.0 and s.compute == pytest.approx(1.0)
    plain = score(vit, ds, n_images=N, batch_size=BATCH)
    assert plain.correct is None and plain.executed is None and plain.top1 == s.top1


def test_backbone_under_a_static_subset_and_under_per_image_masks(dyn: DynamicViT, ds) -> None:
    vit = dyn.backbone
    subset = torch.tensor([True, False, True, False])
    correct, executed = hand_count(ds, lambda x, i: (vit(x, execute_mask=subset[None]), subset[None]))
    check(score(vit, ds, masks=subset, n_images=N, batch_size=BATCH, per_image=True), correct, executed, vit)

    g = torch.Generator().manual_seed(0)
    masks = torch.rand(N + 5, vit.depth, generator=g) < 0.5
    correct, executed = hand_count(ds, lambda x, i: (vit(x, execute_mask=masks[i : i + 1]), masks[i : i + 1]))
    assert 0 < sum(correct) < N and len({tuple(r) for r in executed}) > 4  # the masks change the answers
    check(score(vit, ds, masks=masks, n_images=N, batch_size=BATCH, per_image=True), correct, executed, vit)

    calls: list[tuple[int, int]] = []

    def mask_fn(start: int, images: torch.Tensor) -> torch.Tensor:
        calls.append((start, images.shape[0]))
        return masks[start : start + images.shape[0]]

    check(score(vit, ds, masks=mask_fn, n_images=N, batch_size=BATCH, per_image=True), correct, executed, vit)
    assert calls == [(0, 16), (16, 16), (32, 5)]  # once per batch, in order
    assert evaluate_backbone(vit, ds, mask_fn, batch_size=BATCH, limit=N) == {
        "top1": pytest.approx(100.0 * sum(correct) / N),
        "executed_blocks": pytest.approx(sum(sum(r) for r in executed) / N),
        "images": float(N),
    }


def test_dynamic_vit_scored_by_its_own_decisions(dyn: DynamicViT, ds) -> None:
    correct, executed = hand_count(ds, lambda x, i: dyn(x, return_mask=True))
    assert 1 < sum(sum(r) for r in executed) / N < 4  # it really skips, differently per image
    s = score(dyn, ds, n_images=N, batch_size=BATCH, per_image=True)
    check(s, correct, executed, dyn.backbone)
    assert s.as_dict() == {"images": N, "top1": s.top1, "executed_blocks": s.executed_blocks,
                           "executed_frac": s.executed_frac, "compute": s.compute}  # fmt: skip


def test_per_image_predictions_and_confidences(dyn: DynamicViT, ds) -> None:
    """``per_image`` also gives each image's predicted class and its softmax probability (the skip frame's columns)."""
    predictions, confidences = [], []
    with torch.inference_mode():
        for i in range(N):
            probs = dyn(ds.normalize(ds.images[i : i + 1])).float().softmax(1)[0]
            predictions.append(int(probs.argmax()))
            confidences.append(float(probs.max()))
    s = score(dyn, ds, n_images=N, batch_size=BATCH, per_image=True)
    assert s.prediction is not None and s.prediction.tolist() == predictions
    assert s.confidence is not None and s.confidence.dtype == torch.float32
    assert s.confidence.tolist() == pytest.approx(confidences, rel=1e-5)
    assert s.correct is not None and s.correct.tolist() == (s.prediction == ds.labels[:N]).tolist()
    plain = score(dyn, ds, n_images=N, batch_size=BATCH)
    assert plain.prediction is None and plain.confidence is None


def test_the_whole_split_eval_mode_and_errors(dyn: DynamicViT, ds) -> None:
    vit = dyn.backbone
    small = make_dataset("shapes", "val")
    assert score(vit, small, n_images=10**9).n_images == len(small) == score(vit, small).n_images
    vit.train()
    try:
        seen = []
        handle = vit.register_forward_pre_hook(lambda m, args: seen.append(m.training))
        score(vit, ds, n_images=4)
        handle.remove()
        assert seen == [False] and vit.training  # scored in eval mode, left in training mode
    finally:
        vit.eval()
    with pytest.raises(ValueError, match="decides its own blocks"):
        score(dyn, ds, masks=torch.ones(4, dtype=torch.bool), n_images=4)
    with pytest.raises(ValueError, match="no images"):
        score(vit, ds, n_images=0)
    with pytest.raises(ValueError, match="a row per scored image"):
        score(vit, ds, masks=torch.ones(3, 4, dtype=torch.bool), n_images=4)


def test_random_skip_masks_are_pinned_and_drawn_per_batch(dyn: DynamicViT, ds) -> None:
    g = torch.Generator().manual_seed(0)
    pinned = random_skip_mask(3, 6, 0.5, "cpu", g).int().tolist()  # seeded masks must never change
    assert pinned == [[1, 1, 0, 0, 0, 1], [1, 1, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1]]
    vit = dyn.backbone
    g = torch.Generator().manual_seed(7)
    masks = torch.cat([random_skip_mask(b, 4, 0.5, "cpu", g) for b in (16, 16, 5)])
    assert (masks.sum(1) == 2).all()
    expected = score(vit, ds, masks=masks, n_images=N, batch_size=BATCH).top1
    assert random_skip_top1(vit, ds, 0.5, seed=7, limit=N, batch_size=BATCH) == expected
