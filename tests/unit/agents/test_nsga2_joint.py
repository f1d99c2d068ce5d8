"""Joint RL + NSGA-II: the agent restricted to each subset, scored in one pass, equals running it subset by subset."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from agents.nsga2 import JointSubsetProblem, SubsetDynamicViT, evaluate_joint, reward_weights, search_joint
from agents.nsga2.cache import PrefixCache
from vitskip_env import DynamicViT, SkippableViT, SkipPolicy, make_dataset
from vitskip_env.env.rewards import RewardContext, default_components
from vitskip_env.model import flops_costs
from vitskip_env.observations import encoder_for

ALL4 = np.array(list(itertools.product([False, True], repeat=4)))[1:]


def content_policy(vit: SkippableViT, calibration: torch.Tensor) -> SkipPolicy:
    """Always block 0, then execute when a random projection of the class token exceeds its median (varies per image).

    (Before any block runs every image has the same class token, hence the forced block 0.)
    """
    enc = encoder_for(vit)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(enc.embed_dim, generator=g)
    with torch.inference_mode():
        feat = enc.pack(vit.run_block(0, vit.embed(calibration)), 1, torch.zeros(len(calibration)))[:, : enc.embed_dim]
    lin = nn.Linear(enc.obs_dim, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[1, : enc.embed_dim] = w
        lin.bias[1] = -(feat @ w).median()
    return SkipPolicy(lin, enc, always_execute=(0,))


@pytest.fixture(scope="module")
def setup() -> tuple[DynamicViT, object]:
    torch.manual_seed(0)
    ds = make_dataset("shapes", "val")
    vit = SkippableViT("micro", num_classes=10).eval()
    return DynamicViT(vit, content_policy(vit, ds.normalize(ds.images[:64]))).eval(), ds


def one_subset(dyn: DynamicViT, ds, kept: np.ndarray, n: int, w: dict) -> dict[str, float]:
    """The agent restricted to one subset, run on its own (SubsetDynamicViT), with the reward computed by hand."""
    x, y = ds.normalize(ds.images[:n]), ds.labels[:n]
    with torch.inference_mode():
        logits, executed = SubsetDynamicViT(dyn, kept)(x, return_mask=True)
    correct = (logits.argmax(1) == y).double()
    compute = executed.double() @ flops_costs(dyn.backbone)
    reward = w["correct"] * correct - w["compute"] * compute
    executed_blocks = executed.sum(1).double().mean().item()
    return {"top1": 100 * correct.mean().item(), "reward": reward.mean().item(), "executed": executed_blocks}


def test_vectorised_joint_scores_equal_each_subset_alone(setup) -> None:
    dyn, ds = setup
    w = {"correct": 1.0, "compute": 0.3, "confidence": 0.0}
    got = evaluate_joint(dyn, ALL4, ds.images[:80], ds.labels[:80], dataset=ds, weights=w, batch_size=32)
    for j, kept in enumerate(ALL4):
        ref = one_subset(dyn, ds, kept, 80, w)
        assert got["top1"][j].item() == pytest.approx(ref["top1"])
        assert got["reward"][j].item() == pytest.approx(ref["reward"])
        assert got["executed_blocks"][j].item() == pytest.approx(ref["executed"])
        assert got["executed_blocks"][j] <= kept.sum()  # removed blocks never run
    executed = got["executed_blocks"].numpy()
    assert 1 < executed[-1] < 4  # the agent really skips, differently per image


def test_a_custom_reward_fn_is_the_fitness(setup) -> None:
    """The joint fitness is the env's reward model: a custom ``reward_fn`` (here: +1 per executed block) counts."""

    def per_block(ctx: RewardContext) -> dict[str, torch.Tensor]:
        return {**default_components(ctx), "blocks": ctx.actions.float()}

    dyn, ds = setup
    w = {"correct": 1.0, "compute": 0.3, "confidence": 0.0}
    base = evaluate_joint(dyn, ALL4, ds.images[:80], ds.labels[:80], dataset=ds, weights=w, batch_size=32)
    got = evaluate_joint(dyn, ALL4, ds.images[:80], ds.labels[:80], dataset=ds, weights=w, reward_fn=per_block, batch_size=32)
    assert torch.allclose(got["reward"], base["reward"] + got["executed_blocks"].double(), atol=1e-9)
    assert torch.equal(got["top1"], base["top1"]) and torch.equal(got["executed_blocks"], base["executed_blocks"])
    problems = [JointSubsetProblem(dyn, ds.images[:80], ds.labels[:80], dataset=ds, weights=w, reward_fn=fn, batch_size=32)
                for fn in (None, per_block)]  # fmt: skip
    fitness = [p.evaluate(ALL4.astype(float), return_values_of=["F"])[:, 0] for p in problems]
    assert np.allclose(fitness[1], fitness[0] - got["executed_blocks"].numpy())


def test_joint_scores_with_a_prefix_cache_equal_scores_without(setup) -> None:
    dyn, ds = setup
    cache = PrefixCache(64)
    rng = np.random.default_rng(2)
    for pop in [ALL4[rng.choice(len(ALL4), 6, replace=False)] for _ in range(4)]:  # overlapping generations
        got = evaluate_joint(dyn, pop, ds.images[:80], ds.labels[:80], dataset=ds, batch_size=32, cache=cache)
        ref = evaluate_joint(dyn, pop, ds.images[:80], ds.labels[:80], dataset=ds, batch_size=32)
        for key in ("reward", "correct", "executed_blocks", "compute"):
            assert torch.equal(got[key], ref[key]), key
        assert int(got["block_calls"]) <= int(ref["block_calls"])
    assert cache.hits > 0 and int(got["block_calls"]) < int(ref["block_calls"])
    problem = JointSubsetProblem(dyn, ds.images[:32], ds.labels[:32], dataset=ds)
    problem.score(ALL4[:5])
    problem.score(ALL4[5:])
    assert problem.cache.hits > 0


def test_all_blocks_kept_is_the_deployed_dynamic_vit(setup) -> None:
    dyn, ds = setup
    got = evaluate_joint(dyn, np.ones((1, 4), dtype=bool), ds.images[:50], ds.labels[:50], dataset=ds)
    with torch.inference_mode():
        logits, executed = dyn(ds.normalize(ds.images[:50]), return_mask=True)
    assert got["top1"][0].item() == pytest.approx(100 * (logits.argmax(1) == ds.labels[:50]).double().mean().item())
    assert got["executed_blocks"][0].item() == pytest.approx(executed.sum(1).double().mean().item())


def test_joint_search_is_reproducible_and_its_front_non_dominated(setup) -> None:
    dyn, ds = setup
    fronts = []
    for _ in range(2):
        problem = JointSubsetProblem(dyn, ds.images[:48], ds.labels[:48], dataset=ds, weights={"compute": 0.5})
        fronts.append(search_joint(problem, pop_size=8, n_gen=3, seed=0))
    assert fronts[0].equals(fronts[1])
    front = fronts[0]
    assert front["search"].eq("joint").all() and front["kept_blocks"].is_monotonic_increasing
    assert front["reward"].is_monotonic_increasing  # more kept blocks only on the front if they buy reward
    assert (front["executed_blocks"] <= front["kept_blocks"]).all()


def test_subset_model_saves_and_loads(setup, tmp_path) -> None:
    dyn, ds = setup
    model = SubsetDynamicViT(dyn, [0, 2, 3])
    path = model.save(tmp_path / "joint.safetensors")
    loaded = SubsetDynamicViT.load(path)
    assert loaded.kept_blocks == [0, 2, 3]
    x = ds.normalize(ds.images[:16])
    with torch.inference_mode():
        a, ma = model(x, return_mask=True)
        b, mb = loaded(x, return_mask=True)
    assert torch.equal(a, b) and torch.equal(ma, mb) and not ma[:, 1].any()
    plain = DynamicViT(dyn.backbone, dyn.policy).save(tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="without 'kept_blocks'"):
        SubsetDynamicViT.load(plain)
    with pytest.raises(ValueError, match=r"\(4,\) bool mask or block indices"):
        SubsetDynamicViT(dyn, [5])


def test_reward_weights_come_from_the_run(tmp_path) -> None:
    (tmp_path / "args.yaml").write_text(yaml.safe_dump({"compute_weight": 0.25, "accuracy_weight": 2.0}))
    assert reward_weights(tmp_path) == {"correct": 2.0, "confidence": 0.0, "compute": 0.25}
    with pytest.raises(FileNotFoundError, match=r"args\.yaml"):
        reward_weights(tmp_path / "missing")
