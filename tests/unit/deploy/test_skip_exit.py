"""``SkipExitViT``: the env's skip-and-exit episodes reproduced in deployment, batched exit, save / load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from torch import nn

from vitskip_env import DynamicViT, EarlyExitViT, SkipExitViT, ViTSkipVectorEnv
from vitskip_env.deploy import SkipPolicy
from vitskip_env.deploy.netspec import Columns


def random_policy(env: ViTSkipVectorEnv, seed: int = 0) -> SkipPolicy:
    """A fixed random policy shaped like an exported PPO one (block embedding, MLP, 3 actions), biased so
    that it skips, executes and exits."""
    torch.manual_seed(seed)
    enc = env.core.encoder
    d, depth = enc.embed_dim, enc.depth
    net = nn.Sequential(
        Columns([d, depth, 6], {"1": nn.Linear(depth, 8, bias=False)}),
        nn.Linear(d + 8 + 6, 32),
        nn.ReLU(),
        nn.Linear(32, 3),
    )
    with torch.no_grad():
        net[1].weight.mul_(3.0)
        net[3].bias.copy_(torch.tensor([0.0, 0.6, 0.1]))
    return SkipPolicy.from_contract(env.skip_contract(), net).eval()


@pytest.fixture
def setup(micro_kwargs: dict) -> tuple[ViTSkipVectorEnv, SkipExitViT]:
    kwargs = {**micro_kwargs, "actions": "skip_exit", "exits": "linear", "sampling": "sequential"}
    env = ViTSkipVectorEnv(16, autoreset_mode=AutoresetMode.DISABLED, **kwargs)
    model = SkipExitViT(env.backbone, env.core.heads, random_policy(env)).eval()
    assert model.folded is not None and model.folded.has_host_path  # batches of <= 16 decide in NumPy
    return env, model


def env_episodes(env: ViTSkipVectorEnv, policy: SkipPolicy) -> dict[str, np.ndarray]:
    obs, _ = env.reset(seed=0)
    out: dict[str, np.ndarray] = {}
    for _ in range(env.core.depth):
        actions, _ = policy.predict(obs)
        obs, _, _, _, infos = env.step(actions)
        for key in ("prediction", "executed_mask", "exit_block", "image_index"):
            if key in infos:
                mask = infos[f"_{key}"]
                out.setdefault(key, np.zeros_like(infos[key]))[mask] = infos[key][mask]
    return out


def test_deployment_reproduces_the_env(setup: tuple[ViTSkipVectorEnv, SkipExitViT]) -> None:
    env, model = setup
    ep = env_episodes(env, model.policy)
    assert set(ep["exit_block"].tolist()) >= {2, 4} and (ep["exit_block"] < 4).sum() >= 3  # exits and full runs
    assert ep["executed_mask"].sum() < ep["executed_mask"].size  # and skips
    images = env.dataset.normalize(env.dataset.images[torch.from_numpy(ep["image_index"])])
    logits, mask, blocks = model(images, return_mask=True, return_exits=True)
    np.testing.assert_array_equal(logits.argmax(1).numpy(), ep["prediction"])
    np.testing.assert_array_equal(mask.numpy(), ep["executed_mask"])
    np.testing.assert_array_equal(blocks.numpy(), ep["exit_block"])


def test_batched_equals_one_by_one_and_exited_rows_do_no_work(setup: tuple[ViTSkipVectorEnv, SkipExitViT]) -> None:
    env, model = setup
    images = env.dataset.normalize(env.dataset.images[:32])
    rows = {f"block{i}": 0 for i in range(model.depth)} | {"head": 0}
    for i, blk in enumerate(model.backbone.vit.blocks):
        blk.register_forward_hook(lambda m, a, o, i=i: rows.__setitem__(f"block{i}", rows[f"block{i}"] + a[0].shape[0]))
    model.backbone.vit.norm.register_forward_hook(lambda m, a, o: rows.__setitem__("head", rows["head"] + a[0].shape[0]))
    logits, mask, blocks = model(images, return_mask=True, return_exits=True)
    for i in range(model.depth):  # a block runs on the rows that execute it, and on no exited row
        assert rows[f"block{i}"] == int((mask[:, i] & (blocks > i)).sum())
    # the linear heads (after blocks 1, 2) and the final classifier run on the rows in flight only
    assert rows["head"] == int((blocks >= 2).sum() + (blocks >= 3).sum() + (blocks == 4).sum())
    for b in range(0, 32, 5):
        one, one_mask, one_block = model(images[b : b + 1], return_mask=True, return_exits=True)
        torch.testing.assert_close(one[0], logits[b], rtol=1e-5, atol=1e-5)
        assert one_block.item() == blocks[b].item() and torch.equal(one_mask[0], mask[b])


def test_save_load_round_trip_and_wrong_loaders(setup: tuple[ViTSkipVectorEnv, SkipExitViT], tmp_path: Path) -> None:
    env, model = setup
    path = model.save(tmp_path / "skip_exit.safetensors", env="ViTSkip-Shapes-v0")
    loaded = SkipExitViT.load(path)
    images = env.dataset.normalize(env.dataset.images[:16])
    torch.testing.assert_close(loaded(images), model(images))
    assert loaded.meta["env"] == "ViTSkip-Shapes-v0"
    with pytest.raises(ValueError, match=r"SkipExitViT\.load"):
        EarlyExitViT.load(path)
    with pytest.raises(ValueError, match="SkipExitViT"):
        DynamicViT(model.backbone, model.policy)
    plain = EarlyExitViT(model.backbone, model.exits).save(tmp_path / "rule.safetensors")
    with pytest.raises(ValueError, match="no policy"):
        SkipExitViT.load(plain)
