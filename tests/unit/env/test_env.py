"""ViTSkipEnv: the single-env API, episode infos, invalid input, backbone resolution, render."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import vitskip_env
from vitskip_env import SkippableViT, ViTSkipEnv
from vitskip_env.env.render import EXECUTED, NEXT, SKIPPED


def run_episode(env: gym.Env, actions: list[int], seed: int | None = None) -> tuple[list, list[float], list[dict], dict]:
    obs, reset_info = env.reset(seed=seed)
    observations, rewards, infos = [obs], [], []
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        observations.append(obs)
        rewards.append(reward)
        infos.append(info)
        assert truncated is False
    assert terminated is True
    return observations, rewards, infos, reset_info


def test_episode_types_and_final_info(micro_kwargs: dict) -> None:
    env = ViTSkipEnv(**micro_kwargs)
    actions = [1, 0, 1, 0]
    observations, rewards, infos, reset_info = run_episode(env, actions, seed=3)
    assert all(type(r) is float for r in rewards)
    for obs in observations:
        assert obs.dtype == np.float32 and obs in env.observation_space
    last = infos[-1]
    k = reset_info["image_index"]
    assert last["image_index"] == k and 0 <= k < 64
    assert last["label"] == int(env.dataset.labels[k])
    np.testing.assert_array_equal(last["executed_mask"], np.array(actions, dtype=bool))
    assert last["executed_blocks"] == 2
    costs = np.array(env.backbone.block_flops(), dtype=float)
    assert last["compute_ratio"] == pytest.approx(costs[[0, 2]].sum() / costs.sum(), rel=1e-6)
    assert last["is_success"] == last["correct"] == (last["prediction"] == last["label"])
    assert last["difficulty"] == pytest.approx(float(env.dataset.difficulty[k]))
    # The env's prediction is what the backbone predicts with the same execute mask (one shared engine).
    with torch.no_grad():
        x = env.dataset.normalize(env.dataset.images[k : k + 1])
        logits = env.backbone(x, execute_mask=torch.tensor([actions], dtype=torch.bool))
    assert last["prediction"] == int(logits.argmax(1))
    assert type(last["confidence"]) is float
    assert last["confidence"] == pytest.approx(float(logits.softmax(1).max()), rel=1e-5)
    for info in infos[:-1]:
        assert set(info) == {"reward_components", "action_overridden"}


def test_observation_tracks_block_and_executed_fraction(micro_kwargs: dict) -> None:
    env = ViTSkipEnv(**micro_kwargs)
    observations, *_ = run_episode(env, [1, 1, 0, 1], seed=0)
    d, depth = env.backbone.embed_dim, env.backbone.depth
    onehots = [obs[d : d + depth] for obs in observations]
    fracs = [float(obs[-1]) for obs in observations]
    for i, onehot in enumerate(onehots[:-1]):
        np.testing.assert_array_equal(onehot, np.eye(depth, dtype=np.float32)[i])
    np.testing.assert_array_equal(onehots[-1], np.zeros(depth, dtype=np.float32))
    assert fracs == [0.0, 0.25, 0.5, 0.5, 0.75]
    # Skipping block 2 leaves the token features unchanged; executing changes them.
    np.testing.assert_array_equal(observations[3][:d], observations[2][:d])
    assert not np.array_equal(observations[1][:d], observations[0][:d])


def test_reset_is_deterministic_under_seed_and_streams_differ(micro_kwargs: dict) -> None:
    env = ViTSkipEnv(**micro_kwargs)
    first = [env.reset(seed=7)[1]["image_index"]] + [env.reset()[1]["image_index"] for _ in range(9)]
    again = [env.reset(seed=7)[1]["image_index"]] + [env.reset()[1]["image_index"] for _ in range(9)]
    other = [env.reset(seed=8)[1]["image_index"]] + [env.reset()[1]["image_index"] for _ in range(9)]
    assert first == again and first != other
    obs_a, *_ = run_episode(env, [1, 0, 1, 1], seed=1)
    obs_b, *_ = run_episode(ViTSkipEnv(**micro_kwargs), [1, 0, 1, 1], seed=1)
    for a, b in zip(obs_a, obs_b, strict=True):
        np.testing.assert_array_equal(a, b)


def test_epochs_cover_the_split_without_replacement(micro_kwargs: dict) -> None:
    env = ViTSkipEnv(**{**micro_kwargs, "num_images": 10})
    seen = [env.reset(seed=0)[1]["image_index"]] + [env.reset()[1]["image_index"] for _ in range(29)]
    epochs = [seen[i : i + 10] for i in range(0, 30, 10)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]  # a fresh order every epoch


def test_sequential_sampling_and_reset_option(micro_kwargs: dict) -> None:
    env = ViTSkipEnv(**{**micro_kwargs, "num_images": 5, "sampling": "sequential"})
    seen = [env.reset(seed=0)[1]["image_index"]] + [env.reset()[1]["image_index"] for _ in range(6)]
    assert seen == [0, 1, 2, 3, 4, 0, 1]
    assert env.reset(options={"image_index": 3})[1]["image_index"] == 3
    assert env.reset()[1]["image_index"] == 2  # the option did not consume the stream
    with pytest.raises(ValueError, match=r"image_index"):
        env.reset(options={"image_index": 5})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"imag_index": 1})


@pytest.mark.parametrize("bad", [2, -1, 0.5, 1.0, float("nan"), np.array([1]), np.array(0.0), "1", None, np.array([[0]])])
def test_invalid_actions_raise_and_say_what_is_allowed(micro_kwargs: dict, bad: object) -> None:
    env = ViTSkipEnv(**micro_kwargs)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"0 \(skip the block\) or 1 \(execute it\)"):
        env.step(bad)


@pytest.mark.parametrize("good", [0, 1, True, np.int64(1), np.array(1), np.uint8(0), torch.tensor(1)])
def test_integer_like_actions_are_accepted(micro_kwargs: dict, good: object) -> None:
    env = ViTSkipEnv(**micro_kwargs)
    env.reset(seed=0)
    env.step(good)


def test_stepping_after_the_end_needs_reset(micro_kwargs: dict) -> None:
    env = ViTSkipEnv(**micro_kwargs)
    run_episode(env, [1, 1, 1, 1], seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(1)


def test_unknown_and_misspelt_kwargs_are_rejected_with_a_suggestion(micro_kwargs: dict) -> None:
    with pytest.raises(TypeError, match="Did you mean 'compute_weight'"):
        ViTSkipEnv(**micro_kwargs, compute_weigth=0.2)
    with pytest.raises(TypeError, match="Did you mean 'obs_mode'"):
        gym.make("ViTSkip-Shapes-v0", **micro_kwargs, obs_mod="dict")
    with pytest.raises(TypeError, match="Did you mean 'backbone_mode'"):
        gym.make_vec("ViTSkip-Shapes-v0", num_envs=2, **micro_kwargs, backbone_mod="frozen")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"obs_mode": "image"}, r"obs_mode must be one of \['flat', 'dict', 'tokens'\]"),
        ({"backbone_mode": "train"}, r"backbone_mode must be one of"),
        ({"cost_model": "time"}, r"cost_model must be one of"),
        ({"sampling": "random"}, r"sampling must be one of"),
        ({"min_blocks": 5}, r"min_blocks must be an integer in \[0, 4\]"),
        ({"always_execute": (4,)}, r"always_execute must hold block indices in \[0, 3\]"),
        ({"cotrain": {"every": 8}}, r"backbone_mode='cotrain'"),
        ({"backbone_mode": "cotrain", "cotrain": {"evry": 8}}, r"Did you mean 'every'"),
        ({"render_mode": "human"}, r"render_mode must be"),
        ({"num_images": 0}, r"num_images must be a positive integer"),
    ],
)
def test_bad_option_values(micro_kwargs: dict, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ViTSkipEnv(**{**micro_kwargs, **kwargs})


def test_missing_trained_backbone_says_how_to_train_it(micro_kwargs: dict) -> None:
    kwargs = {**micro_kwargs, "backbone_weights": "trained", "backbone": "tiny"}
    with pytest.raises(FileNotFoundError, match=r"python train/backbone\.py --dataset shapes --preset tiny"):
        ViTSkipEnv(**kwargs)
    kwargs["backbone"] = None  # the dataset's default preset
    if vitskip_env.model.presets.find_backbone("demo", "shapes") is None:
        with pytest.raises(FileNotFoundError, match=r"--preset demo"):
            ViTSkipEnv(**kwargs)


def test_backbone_from_file_module_and_found_preset(
    micro_kwargs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(5)
    vit = SkippableViT("micro", num_classes=10)
    path = vit.save(tmp_path / "bb.safetensors", dataset="shapes")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = vit.eval()(x)
        for backbone in (str(path), path):
            env = ViTSkipEnv(**{**micro_kwargs, "backbone": backbone, "backbone_weights": "trained"})
            assert torch.equal(env.backbone(x), ref)
        # A module is used as is, not copied.
        assert ViTSkipEnv(**{**micro_kwargs, "backbone": vit}).backbone is vit
        # A preset name finds the trained file train/backbone.py writes.
        monkeypatch.setattr(vitskip_env.env.options, "find_backbone", lambda name, ds: path if name == "micro" else None)
        env = ViTSkipEnv(**{**micro_kwargs, "backbone_weights": "trained"})
        assert torch.equal(env.backbone(x), ref)


def test_backbone_mismatch_errors(micro_kwargs: dict) -> None:
    with pytest.raises(ValueError, match="3 output classes but dataset 'shapes' has 10"):
        ViTSkipEnv(**{**micro_kwargs, "backbone": SkippableViT("micro", num_classes=3)})
    with pytest.raises(ValueError, match="64x64 images"):
        ViTSkipEnv(**{**micro_kwargs, "backbone": SkippableViT("micro", num_classes=10, img_size=64)})


def test_random_backbones_are_identical_and_leave_global_rng_alone(micro_kwargs: dict) -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = ViTSkipEnv(**micro_kwargs).backbone
    assert torch.equal(torch.rand(1), expected)
    b = ViTSkipEnv(**micro_kwargs).backbone
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_render_shows_image_and_block_strip(micro_kwargs: dict) -> None:
    env = ViTSkipEnv(**micro_kwargs, render_mode="rgb_array")
    env.reset(seed=0)
    env.step(1)
    env.step(0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == (128, 128 + 24, 3)
    cells = [tuple(frame[16 + 32 * i, 128 + 12]) for i in range(4)]
    assert cells[:3] == [EXECUTED, SKIPPED, NEXT]
    k = env.core.image_index[0]
    np.testing.assert_array_equal(frame[::4, :128:4].transpose(2, 0, 1), env.dataset.images[k].numpy())
