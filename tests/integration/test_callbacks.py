"""Skip-aware evaluation, the eval callback's logs and best model, checkpoints and resuming."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

from agents import SB3VecEnv, evaluate_agent, make_agent
from agents.callbacks import SkipCheckpointCallback, SkipEvalCallback, load_checkpoint, save_checkpoint
from agents.checkpoint import FORMAT
from agents.evaluation import spearman
from vitskip_env import ViTSkipVectorEnv
from vitskip_env.env import EnvOptions
from vitskip_env.measure import evaluate_backbone

N, DEPTH = 8, 4


class ConstantAgent:
    """Always the same action; records what it was given."""

    def __init__(self, action: int, normalizer: Any = None) -> None:
        self.action, self.normalizer, self.seen = action, normalizer, []

    def predict(self, obs: np.ndarray, state: Any = None, episode_start: Any = None, deterministic: bool = False) -> tuple:
        self.seen.append((obs, deterministic))
        return np.full(len(obs), self.action, dtype=np.int64), state

    def get_vec_normalize_env(self) -> Any:
        return self.normalizer


def test_evaluate_agent_scores_each_image_once(micro_kwargs: dict) -> None:
    result = evaluate_agent(ConstantAgent(1), micro_kwargs, 10, num_envs=4, return_episodes=True)
    ep = result["episodes"]
    assert result["images"] == 10 and ep["image_index"].tolist() == list(range(10))
    assert result["executed_blocks"] == DEPTH and result["block_rates"] == [1.0] * DEPTH and result["compute_ratio"] == 1.0
    # executing everything is the static backbone: the same top-1 as the backbone scorer
    venv = ViTSkipVectorEnv(1, **micro_kwargs)
    assert result["top1"] == pytest.approx(evaluate_backbone(venv.backbone, venv.dataset, limit=10)["top1"])
    weight = EnvOptions().compute_weight  # the default, paid in full when every block runs
    np.testing.assert_allclose(ep["return"], ep["correct"] - weight, rtol=1e-6)
    skip = evaluate_agent(ConstantAgent(0), micro_kwargs, None, num_envs=16)
    assert skip["images"] == 64 and skip["executed_blocks"] == 0 and skip["block_rates"] == [0.0] * DEPTH  # whole split
    assert np.isnan(skip["difficulty_corr"])  # constant executed blocks: no rank correlation


def test_evaluate_agent_is_deterministic_and_uses_the_normalizer(micro_kwargs: dict) -> None:
    class Zero:
        def normalize_obs(self, obs: np.ndarray) -> np.ndarray:
            return obs * 0.0

    agent = ConstantAgent(1, Zero())
    evaluate_agent(agent, micro_kwargs, 4, num_envs=4, throughput_fn=lambda a: 1.5)
    assert all(d for _, d in agent.seen) and all((o == 0).all() for o, _ in agent.seen) and len(agent.seen) == DEPTH
    assert evaluate_agent(agent, micro_kwargs, 4, throughput_fn=lambda a: 1.5)["throughput_ratio"] == 1.5
    with pytest.raises(ValueError, match="sequential"):
        evaluate_agent(agent, ViTSkipVectorEnv(2, **{**micro_kwargs, "sampling": "shuffle"}), 4)


def test_spearman() -> None:
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 20, 40])) == pytest.approx(0.9486833)
    assert spearman(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1.0)


def test_eval_callback_logs_and_saves_the_best_model(micro_kwargs: dict, tmp_path: Path) -> None:
    env = SB3VecEnv(N, **micro_kwargs)
    model = make_agent("ppo", VecMonitor(env), seed=0, n_steps=8)
    model.set_logger(configure(str(tmp_path / "logs"), ["csv", "tensorboard"]))
    calls = []
    callback = SkipEvalCallback(
        micro_kwargs,
        eval_freq=64,
        n_images=16,
        best_model_save_path=tmp_path / "best",
        throughput_fn=lambda m: calls.append(m) or 1.25,
    )
    model.learn(128, callback=callback)
    model.logger.close()
    assert [step for step, _ in callback.history] == [64, 128] and calls == [model, model]
    assert callback.eval_env.backbone is env.backbone  # shared, not loaded twice
    with open(tmp_path / "logs" / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    evals = [r for r in rows if r.get("vitskip/top1")]
    assert len(evals) == 2
    for key in ("vitskip/executed_blocks", "vitskip/mean_return", "vitskip/throughput_ratio", "vitskip/block_3_rate"):
        assert evals[0][key] != "", key
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))
    best = json.loads((tmp_path / "best" / "best_model.json").read_text())
    assert best["metric"] == "mean_return" and best["value"] == max(r["mean_return"] for _, r in callback.history)
    assert (tmp_path / "best" / "best_model.zip").is_file()


def test_eval_callback_with_reinforce(micro_kwargs: dict, tmp_path: Path) -> None:
    agent = make_agent("reinforce", gym.make_vec("ViTSkip-Shapes-v0", num_envs=N, **micro_kwargs), seed=0, n_steps=8)
    callback = SkipEvalCallback(micro_kwargs, eval_freq=64, n_images=8, best_model_save_path=tmp_path)
    agent.learn(128, callback=[callback, SkipCheckpointCallback(64, tmp_path / "ckpt")])
    assert len(callback.history) == 2 and (tmp_path / "best_model.pt").is_file()
    resumed = load_checkpoint(tmp_path / "ckpt", env=gym.make_vec("ViTSkip-Shapes-v0", num_envs=N, **micro_kwargs))
    assert type(resumed).__name__ == "Reinforce" and resumed.num_timesteps == 128


def test_checkpoint_and_resume_with_vec_normalize(micro_kwargs: dict, tmp_path: Path) -> None:
    def build() -> VecMonitor:
        return VecMonitor(SB3VecEnv(N, **micro_kwargs))

    model = make_agent("ppo", VecNormalize(build()), seed=0, n_steps=8)
    model.learn(64, callback=SkipCheckpointCallback(32, tmp_path))
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert meta["num_timesteps"] == 64 and meta["algo"] == "ppo" and meta["format"] == FORMAT
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".npz", ".pt"]  # no pickle, no model.zip
    resumed = load_checkpoint(tmp_path, env=build())
    assert resumed.num_timesteps == 64 and resumed.n_steps == 8  # rebuilt with the recorded arguments
    normalizer, original = resumed.get_vec_normalize_env(), model.get_vec_normalize_env()
    np.testing.assert_array_equal(normalizer.obs_rms.mean, original.obs_rms.mean)
    np.testing.assert_array_equal(normalizer.obs_rms.var, original.obs_rms.var)
    assert normalizer.obs_rms.count == original.obs_rms.count and normalizer.ret_rms.var == original.ret_rms.var
    for key, value in model.policy.state_dict().items():
        torch.testing.assert_close(resumed.policy.state_dict()[key], value, rtol=0, atol=0)
    resumed.learn(64, reset_num_timesteps=False)
    assert resumed.num_timesteps == 128
    with pytest.raises(ValueError, match="without VecNormalize"):
        load_checkpoint(tmp_path, env=VecNormalize(build()))
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        load_checkpoint(tmp_path / "missing", env=build())


def test_checkpoint_keeps_the_replay_buffer(micro_kwargs: dict, tmp_path: Path) -> None:
    env = VecMonitor(SB3VecEnv(4, **micro_kwargs))
    model = make_agent("qrdqn", env, seed=0, learning_starts=8, buffer_size=256)
    model.learn(64)
    save_checkpoint(model, tmp_path)
    resumed = load_checkpoint(tmp_path, env=env)
    assert resumed.replay_buffer.size() == model.replay_buffer.size() > 0
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        np.testing.assert_array_equal(getattr(resumed.replay_buffer, name), getattr(model.replay_buffer, name))
    assert resumed._n_calls == model._n_calls and resumed.exploration_rate == model.exploration_rate


def test_checkpoint_callback_saves_only_at_rollout_boundaries(micro_kwargs: dict, tmp_path: Path) -> None:
    """A stop asked for mid-rollout lands on the next boundary: the saved state is the one between two updates."""
    model = make_agent("ppo", VecMonitor(SB3VecEnv(N, **micro_kwargs)), seed=0, n_steps=8)  # 64 steps per rollout
    callback = SkipCheckpointCallback(1000, tmp_path)

    class StopAt(SkipCheckpointCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == 72:
                callback.request_stop()
            return True

    model.learn(640, callback=[StopAt(1000, tmp_path / "unused", save_on_end=False), callback])
    assert callback.stopped and callback.last_saved == 128
    assert json.loads((tmp_path / "checkpoint.json").read_text())["num_timesteps"] == 128


def test_reinforce_resumed_from_a_checkpoint_matches_the_uninterrupted_run(micro_kwargs: dict, tmp_path: Path) -> None:
    def build() -> Any:
        return gym.make_vec("ViTSkip-Shapes-v0", num_envs=N, **micro_kwargs)

    straight = make_agent("reinforce", build(), seed=0, n_steps=6).learn(144)
    first = make_agent("reinforce", build(), seed=0, n_steps=6)
    first.learn(48, callback=SkipCheckpointCallback(1000, tmp_path))  # saved when training ends, mid-episode
    torch.manual_seed(123)  # whatever happens in between is undone by the checkpoint
    np.random.seed(123)
    resumed = load_checkpoint(tmp_path, env=build())
    assert resumed.config["n_steps"] == 6 and resumed.num_timesteps == 48
    resumed.learn(96, reset_num_timesteps=False)
    for key, value in straight.policy.state_dict().items():
        torch.testing.assert_close(resumed.policy.state_dict()[key], value, rtol=0, atol=0)
    torch.testing.assert_close(resumed.baseline, straight.baseline, rtol=0, atol=0)


def test_checkpoint_counters_cannot_set_other_attributes(micro_kwargs: dict, tmp_path: Path) -> None:
    """checkpoint.json's counters restore step counters only: not n_epochs, gamma or the policy."""
    from agents.checkpoint import CheckpointError

    model = make_agent("ppo", VecMonitor(SB3VecEnv(N, **micro_kwargs)), seed=0, n_steps=8)
    save_checkpoint(model, tmp_path)
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    meta["state"]["agent"]["counters"]["n_epochs"] = 10**6
    (tmp_path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"counters hold \['n_epochs'\]"):
        load_checkpoint(tmp_path, env=VecMonitor(SB3VecEnv(N, **micro_kwargs)))


@pytest.mark.parametrize(
    ("text", "message"), [("{}", "KeyError"), ('{"value": "x"}', "ValueError"), ('{"value": Infinity}', "best value of inf")]
)
def test_a_malformed_best_model_json_is_one_error_naming_it(
    micro_kwargs: dict, tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "best_model.json").write_text(text)
    model = make_agent("ppo", VecMonitor(SB3VecEnv(N, **micro_kwargs)), seed=0, n_steps=8)
    callback = SkipEvalCallback(micro_kwargs, eval_freq=64, n_images=16, best_model_save_path=tmp_path)
    with pytest.raises(ValueError, match=message) as info:
        callback.init_callback(model)
    assert str(tmp_path / "best_model.json") in str(info.value)


def test_load_checkpoint_takes_no_log_path_from_the_file(micro_kwargs: dict, tmp_path: Path) -> None:
    """SB3's learn() writes TensorBoard files to tensorboard_log: a checkpoint.json never chooses that path."""
    model = make_agent("ppo", VecMonitor(SB3VecEnv(N, **micro_kwargs)), seed=0, n_steps=8)
    save_checkpoint(model, tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())
    elsewhere = str(tmp_path / "elsewhere")
    meta["agent_kwargs"]["tensorboard_log"] = meta["state"]["agent"]["hyperparameters"]["tensorboard_log"] = elsewhere
    (tmp_path / "ckpt" / "checkpoint.json").write_text(json.dumps(meta))
    resumed = load_checkpoint(tmp_path / "ckpt", env=VecMonitor(SB3VecEnv(N, **micro_kwargs)))
    assert resumed.tensorboard_log is None
    given = load_checkpoint(tmp_path / "ckpt", env=VecMonitor(SB3VecEnv(N, **micro_kwargs)), tensorboard_log=elsewhere)
    assert given.tensorboard_log == elsewhere


def test_skip_exit_ppo_resumed_mid_episode_matches_the_uninterrupted_run(micro_kwargs: dict, tmp_path: Path) -> None:
    """Rows at different blocks, pending restarts and exit-head state all travel in the checkpoint."""
    kwargs = {**micro_kwargs, "actions": "skip_exit", "exits": "linear"}

    def build() -> VecMonitor:
        return VecMonitor(SB3VecEnv(N, **kwargs))

    straight = make_agent("ppo", build(), seed=0, n_steps=6)
    straight.learn(144)
    first = make_agent("ppo", build(), seed=0, n_steps=6)
    first.learn(48, callback=SkipCheckpointCallback(1000, tmp_path))
    core = first.get_env().unwrapped.vector_env.core
    assert len(set(core.blocks.tolist())) > 1  # saved with rows at different blocks
    torch.manual_seed(123)
    np.random.seed(123)
    resumed = load_checkpoint(tmp_path, env=build())
    resumed.learn(96, reset_num_timesteps=False)
    for key, value in straight.policy.state_dict().items():
        torch.testing.assert_close(resumed.policy.state_dict()[key], value, rtol=0, atol=0)
