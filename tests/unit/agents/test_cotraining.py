"""Path fine-tuning (``agents.cotraining``): what co-training may change, equal recipes, bit-exact resume."""

from __future__ import annotations

import pytest
import torch

from agents.cotraining import PathRecipe, PathTrainer, depth_histogram, frozen_copy, policy_masks, random_depth_masks
from vitskip_env import DynamicViT, SkipPolicy, ViTSkipVectorEnv
from vitskip_env.measure.synthetic import default_policy_net
from vitskip_env.observations import encoder_for


@pytest.fixture
def setup(micro_kwargs: dict) -> tuple:
    env = ViTSkipVectorEnv(1, **micro_kwargs)
    vit = env.backbone
    vit.requires_grad_(True)
    return vit, env.dataset


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_teacher_stays_bit_identical_and_the_student_moves(setup: tuple) -> None:
    vit, ds = setup
    teacher = frozen_copy(vit)
    before_teacher, before_student = weights(teacher), weights(vit)
    trainer = PathTrainer(vit, ds, PathRecipe(3, batch_size=8, distill=0.5), teacher=teacher, seed=0)
    half = torch.tensor([True, False] * (vit.depth // 2))
    trainer.run(3, lambda x: half.expand(x.shape[0], -1))
    assert all(torch.equal(before_teacher[k], v) for k, v in teacher.state_dict().items())
    assert not all(torch.equal(before_student[k], v) for k, v in vit.state_dict().items())
    assert trainer.remaining == 0 and not vit.training
    with pytest.raises(ValueError, match="only 0 of the 3-step budget"):
        trainer.run(1)


def test_a_block_gets_no_gradient_from_an_image_that_skipped_it(setup: tuple) -> None:
    vit, ds = setup
    x, y = ds.normalize(ds.images[:2]), ds.labels[:2]
    mask = torch.ones(2, vit.depth, dtype=torch.bool)
    mask[0, 2] = False  # image 0 skips block 2; image 1 runs it
    block = vit.blocks[2]

    def grads(loss_rows: list[int]) -> list[torch.Tensor]:
        vit.zero_grad(set_to_none=True)
        logits = vit(x, execute_mask=mask)
        torch.nn.functional.cross_entropy(logits[loss_rows], y[loss_rows], reduction="sum").backward()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in block.parameters()]

    vit.eval()
    only_skipper = grads([0])
    assert all(float(g.abs().max()) == 0.0 for g in only_skipper)  # nothing flows into block 2 from image 0
    both, runner = grads([0, 1]), grads([1])
    assert any(float(g.abs().max()) > 0 for g in runner)
    for a, b in zip(both, runner, strict=True):
        torch.testing.assert_close(a, b)
    none = torch.ones(2, vit.depth, dtype=torch.bool)
    none[:, 2] = False
    vit.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(vit(x, execute_mask=none), y).backward()
    assert all(p.grad is None for p in block.parameters())  # not called at all


def test_resume_from_the_state_dict_is_bit_exact(setup: tuple) -> None:
    vit, ds = setup
    start = weights(vit)
    recipe = PathRecipe(4, batch_size=8)
    PathTrainer(vit, ds, recipe, seed=3).run(4)
    straight = weights(vit)
    vit.load_state_dict(start)
    first = PathTrainer(vit, ds, recipe, seed=3)
    first.run(2)
    state = first.state_dict()
    second = PathTrainer(vit, ds, recipe, seed=99)
    second.load_state_dict(state)
    second.run(2)
    assert all(torch.equal(straight[k], v) for k, v in vit.state_dict().items())


def test_policy_and_random_paths(setup: tuple) -> None:
    vit, ds = setup
    x = ds.normalize(ds.images[:32])
    torch.manual_seed(0)
    policy = SkipPolicy(default_policy_net(vit.embed_dim, vit.depth), encoder_for(vit))
    dyn = DynamicViT(vit, policy).eval()
    with torch.inference_mode():
        executed = policy_masks(dyn)(x)
        assert torch.equal(executed, dyn(x, return_mask=True)[1])
    hist = depth_histogram(executed)
    assert hist.shape == (vit.depth + 1,) and float(hist.sum()) == pytest.approx(1.0)
    draw = random_depth_masks(hist, vit.depth, seed=0)
    masks = torch.cat([draw(x) for _ in range(20)])
    got = depth_histogram(masks)
    assert torch.allclose(got, hist, atol=0.08)  # the policy's per-image depths, at random blocks
    assert torch.equal(random_depth_masks(hist, vit.depth, seed=0)(x), random_depth_masks(hist, vit.depth, seed=0)(x))


def test_bad_recipes_are_clear_errors(setup: tuple) -> None:
    vit, ds = setup
    with pytest.raises(ValueError, match="distill must be in"):
        PathRecipe(10, distill=1.5)
    with pytest.raises(ValueError, match="needs a teacher"):
        PathTrainer(vit, ds, PathRecipe(10, distill=0.5))
    with pytest.raises(ValueError, match="steps and batch_size"):
        PathRecipe(0)
