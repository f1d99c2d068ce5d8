"""SkipCore inside the envs: real skipping, the skip rules and action masks, host transfer, the skip contract."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from vitskip_env import SkipCore, ViTSkipEnv, ViTSkipVectorEnv
from vitskip_env.rules import SkipContract, SkipRules


def count_block_calls(vit: torch.nn.Module) -> dict[int, list[int]]:
    """Batch size of every call of every block."""
    seen: dict[int, list[int]] = {i: [] for i in range(vit.depth)}
    for i, blk in enumerate(vit.blocks):
        blk.register_forward_pre_hook(lambda mod, inp, i=i: seen[i].append(inp[0].shape[0]))
    return seen


def test_skipped_blocks_are_not_called_and_see_only_executing_rows(micro_kwargs: dict) -> None:
    venv = ViTSkipVectorEnv(3, **micro_kwargs)
    seen = count_block_calls(venv.backbone)
    venv.reset(seed=0)
    plan = np.array([[1, 0, 0, 1], [1, 1, 0, 0], [1, 0, 0, 0]])  # rows = envs, columns = blocks
    for i in range(4):
        venv.step(plan[:, i])
    assert seen == {0: [3], 1: [1], 2: [], 3: [1]}


def test_skipping_leaves_tokens_untouched_and_executing_matches_the_block(micro_kwargs: dict) -> None:
    venv = ViTSkipVectorEnv(2, **micro_kwargs)
    venv.reset(seed=0)
    core = venv.core
    before = core.tokens.clone()
    venv.step(np.array([0, 1]))
    assert torch.equal(core.tokens[0], before[0])
    with torch.no_grad():
        expected = venv.backbone.blocks[0](before[1:2])
    assert torch.allclose(core.tokens[1:2], expected, atol=1e-6)


def test_action_masks_min_blocks_and_override(micro_kwargs: dict) -> None:
    env = ViTSkipEnv(**{**micro_kwargs, "min_blocks": 2, "always_execute": (0,)})
    env.reset(seed=0)
    masks, overridden = [], []
    for a in [0, 0, 0, 0]:  # always try to skip
        masks.append(env.action_masks().tolist())
        _, _, _, _, info = env.step(a)
        overridden.append(info["action_overridden"])
    # Block 0 is always executed; skipping 1 and 2 leaves block 3 as the only way to reach 2 blocks.
    assert masks == [[False, True], [True, True], [True, True], [False, True]]
    assert overridden == [True, False, False, True]
    assert info["executed_mask"].tolist() == [True, False, False, True]
    assert info["executed_blocks"] == 2
    # The compute reward charges the overridden (executed) blocks.
    assert info["compute_ratio"] == pytest.approx(0.5)


def test_vector_action_masks_are_per_env(micro_kwargs: dict) -> None:
    venv = ViTSkipVectorEnv(2, **{**micro_kwargs, "min_blocks": 3})
    venv.reset(seed=0)
    assert venv.action_masks().tolist() == [[True, True], [True, True]]
    venv.step(np.array([0, 1]))  # env 0 skipped block 0: it must now execute 1, 2 and 3
    assert venv.action_masks().tolist() == [[False, True], [True, True]]
    _, _, _, _, infos = venv.step(np.array([0, 0]))
    assert infos["action_overridden"].tolist() == [True, False]


def test_to_host_types_and_one_transfer(micro_kwargs: dict) -> None:
    venv = ViTSkipVectorEnv(2, **micro_kwargs)
    venv.reset(seed=0)
    core = venv.core
    for _ in range(3):
        core.step(torch.ones(2, dtype=torch.long))
    result = core.step(torch.tensor([1, 0]))
    host = SkipCore.to_host(result)
    assert host["obs"].dtype == np.float32 and host["obs"].shape == (2, 37)
    assert host["final/label"].dtype == np.int64 and host["final/correct"].dtype == bool
    confidence = host["final/confidence"]  # softmax probability of the predicted class
    assert confidence.dtype == np.float32 and ((confidence > 0) & (confidence <= 1)).all()
    assert host["final/executed_mask"].shape == (2, 4)
    assert host["final/executed_mask"].tolist() == [[True] * 4, [True, True, True, False]]
    assert np.array_equal(host["final/image_index"], core.image_index.numpy())
    with pytest.raises(RuntimeError, match="start new ones"):
        core.step(torch.ones(2, dtype=torch.long))


def test_skip_contract_is_the_public_accessor_of_every_env(micro_kwargs: dict) -> None:
    """``env.unwrapped.skip_contract()``: the encoder and the one rules object the core steps with."""
    kwargs = {**micro_kwargs, "min_blocks": 2, "always_execute": (0,)}
    wrapped = gym.make("ViTSkip-Shapes-v0", **kwargs)
    encoder, rules = wrapped.unwrapped.skip_contract()
    core = wrapped.unwrapped.core
    assert encoder is core.encoder and rules is core.rules
    assert rules == SkipRules(4, min_blocks=2, always_execute=(0,))
    assert (core.min_blocks, core.always_execute) == (2, frozenset({0}))
    venv = gym.make_vec("ViTSkip-Shapes-v0", num_envs=2, vectorization_mode="vector_entry_point", **kwargs)
    contract = gym.wrappers.vector.RecordEpisodeStatistics(venv).unwrapped.skip_contract()
    assert isinstance(contract, SkipContract) and contract.rules == rules and contract.encoder.config() == encoder.config()


def test_the_core_steps_with_its_rules_object(micro_kwargs: dict) -> None:
    """Replacing the rules object changes what the core overrides (there is no second copy of the rules)."""
    venv = ViTSkipVectorEnv(2, **micro_kwargs)
    venv.core.rules = SkipRules(4, always_execute=(1,))
    venv.reset(seed=0)
    venv.step(np.zeros(2, dtype=np.int64))
    assert venv.action_masks().tolist() == [[False, True], [False, True]]
    _, _, _, _, infos = venv.step(np.zeros(2, dtype=np.int64))
    assert infos["action_overridden"].tolist() == [True, True]
