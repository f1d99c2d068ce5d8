"""Layer-subset search: the vectorised scorer equals one-at-a-time scoring, the pymoo problem, reproducibility."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from agents.nsga2 import LayerSubsetProblem, evaluate_subsets, finetune, search_layers, str_to_mask
from agents.nsga2.trie import block_runs, check_masks, walk_trie
from vitskip_env import SkippableViT, make_dataset
from vitskip_env.model import flops_costs

ALL4 = np.array(list(itertools.product([False, True], repeat=4)))


@pytest.fixture(scope="module")
def setup() -> tuple[SkippableViT, object]:
    torch.manual_seed(0)
    return SkippableViT("micro", num_classes=10).eval(), make_dataset("shapes", "val")


def brute_force(vit: SkippableViT, ds, masks: np.ndarray, n: int) -> list[int]:
    """Correct counts of every mask on its own, through the backbone's own masked forward."""
    x, y = ds.normalize(ds.images[:n]), ds.labels[:n]
    with torch.inference_mode():
        return [int((vit(x, execute_mask=torch.as_tensor(m).expand(n, -1).contiguous()).argmax(1) == y).sum()) for m in masks]


def test_vectorised_scores_equal_each_subset_alone(setup) -> None:
    vit, ds = setup
    masks = np.concatenate([ALL4, ALL4[[5, 5, 9]]])  # every subset, with duplicates
    got = evaluate_subsets(vit, masks, ds.images[:100], ds.labels[:100], dataset=ds, batch_size=32)  # chunks of 32, 32, 32, 4
    assert got["correct"].tolist() == brute_force(vit, ds, masks, 100)
    assert got["top1"].tolist() == pytest.approx(got["correct"].tolist())  # 100 images: percent = count
    assert got["kept_blocks"].tolist() == masks.sum(1).tolist()
    assert got["compute"].numpy() == pytest.approx(masks.astype(float) @ flops_costs(vit).numpy())
    assert int(got["block_runs"]) == 15 and int(got["naive_block_runs"]) == int(masks.sum())  # 2**4 - 1 distinct kept prefixes


def test_normalised_float_images_give_the_same_result(setup) -> None:
    vit, ds = setup
    a = evaluate_subsets(vit, ALL4, ds.images[:40], ds.labels[:40], dataset=ds)
    b = evaluate_subsets(vit, ALL4, ds.normalize(ds.images[:40]), ds.labels[:40])
    assert torch.equal(a["correct"], b["correct"])


def test_each_prefix_runs_its_block_once(setup) -> None:
    vit, ds = setup
    masks = np.array([[1, 1, 0, 1], [1, 1, 1, 0], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=bool)
    calls = []
    step = lambda i, s: (calls.append(i), (vit.run_block(i, s[0]),))[1]  # noqa: E731
    finished = []
    with torch.inference_mode():
        walk_trie(masks, (vit.embed(ds.normalize(ds.images[:8])),), step, lambda s, k: finished.append(k))
    assert sorted(finished) == [0, 1, 2, 3]
    assert sorted(calls) == [0, 1, 1, 2, 3, 3]  # prefixes 1, 11, 01, 111, 1101, 0101
    assert block_runs(masks) == len(calls)


def test_problem_objectives_match_a_per_individual_loop(setup) -> None:
    vit, ds = setup
    problem = LayerSubsetProblem(vit, ds.images[:64], ds.labels[:64], dataset=ds, min_blocks=2)
    X = ALL4[[3, 15, 6, 0, 3]]
    out: dict = {}
    problem._evaluate(X, out)
    costs = flops_costs(vit).numpy()
    correct = brute_force(vit, ds, X, 64)
    expected = [[100 - 100 * c / 64, float(m.astype(float) @ costs)] for m, c in zip(X, correct, strict=True)]
    assert out["F"] == pytest.approx(np.array(expected))
    assert out["G"][:, 0].tolist() == [0, -2, 0, 2, 0]  # keep at least 2 blocks: G <= 0 is feasible
    assert len(problem.scores) == 4 and problem.requested == 5  # the duplicate is scored once


def test_same_seed_gives_the_same_front(setup) -> None:
    vit, ds = setup
    fronts, seen = [], []
    for _ in range(2):
        problem = LayerSubsetProblem(vit, ds.images[:48], ds.labels[:48], dataset=ds)
        fronts.append(search_layers(problem, pop_size=8, n_gen=3, seed=3, callback=lambda g, n, f: seen.append((g, n))))
    assert fronts[0].equals(fronts[1])
    generations, evaluations = zip(*seen[:3], strict=True)
    assert generations == (1, 2, 3) and 0 < evaluations[0] < evaluations[1] < evaluations[2]
    front = fronts[0]
    assert (front["kept_blocks"] >= 1).all() and front["split"].eq("val").all()
    assert front["compute"].is_monotonic_increasing and front["error"].is_monotonic_decreasing
    other = search_layers(LayerSubsetProblem(vit, ds.images[:48], ds.labels[:48], dataset=ds), pop_size=8, n_gen=3, seed=4)
    assert len(other)  # another seed also runs (its front may or may not differ on 16 subsets)


def test_bad_input_is_rejected_with_what_is_allowed(setup) -> None:
    vit, ds = setup
    with pytest.raises(ValueError, match=r"shape \(P, 4\)"):
        evaluate_subsets(vit, np.ones((2, 3), dtype=bool), ds.images[:4], ds.labels[:4], dataset=ds)
    with pytest.raises(ValueError, match="0/1"):
        check_masks(np.full((1, 4), 2), 4)
    with pytest.raises(ValueError, match="dataset="):
        evaluate_subsets(vit, ALL4, ds.images[:4], ds.labels[:4])
    with pytest.raises(ValueError, match=r"min_blocks must be an integer in \[1, 4\]"):
        LayerSubsetProblem(vit, ds.images[:4], ds.labels[:4], dataset=ds, min_blocks=0)


def test_pruned_model_equals_the_masked_original(setup, tmp_path) -> None:
    vit, ds = setup
    x = ds.normalize(ds.images[:16])
    keep = str_to_mask("1011")
    pruned = vit.pruned(keep)
    assert pruned.depth == 3 and pruned.kept_blocks == [0, 2, 3] and vit.depth == 4
    with torch.inference_mode():
        expected = vit(x, execute_mask=torch.as_tensor(keep).expand(16, -1).contiguous())
        assert torch.equal(pruned(x), expected)
        twice = pruned.pruned([0, 2])  # indices of the pruned model: source blocks 0 and 3
        assert twice.kept_blocks == [0, 3]
        assert torch.equal(twice(x), vit(x, execute_mask=torch.tensor([True, False, False, True]).expand(16, -1).contiguous()))
    from vitskip_env import load_backbone

    path = pruned.save(tmp_path / "p.safetensors", dataset="shapes")
    loaded = load_backbone(path)
    assert loaded.depth == 3 and loaded.kept_blocks == [0, 2, 3] and loaded.meta["dataset"] == "shapes"
    assert loaded.config()["model_kwargs"]["depth"] == 4  # the source architecture
    with torch.inference_mode():
        assert torch.equal(loaded(x), expected)
    with pytest.raises(ValueError, match="at least one kept block"):
        vit.pruned([False] * 4)
    with pytest.raises(ValueError, match="one bool per block"):
        vit.pruned([True, False])
    with pytest.raises(ValueError, match=r"in \[0, 3\]"):
        vit.pruned([0, 4])


def test_finetune_updates_the_pruned_model(setup) -> None:
    vit, ds = setup
    source = [p.clone() for p in vit.parameters()]
    model = vit.pruned([0, 1])
    before = [p.clone() for p in model.parameters()]
    out = finetune(model, ds, steps=2, batch_size=8)
    assert out is model and not model.training
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(source, vit.parameters(), strict=True))  # the source is untouched
