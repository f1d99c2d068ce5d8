"""Real clients work unmodified: TorchRL's frameskip probe, make_vec's max_episode_steps, the
"module:id" form in a fresh process, autoreset_mode="disabled", the zoo file, the lowest gymnasium."""

from __future__ import annotations

import inspect
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium.vector import AutoresetMode

import agents
import vitskip_env
from vitskip_env import ViTSkipEnv, ViTSkipVectorEnv

ID = "ViTSkip-Shapes-v0"
ROOT = Path(__file__).resolve().parents[3]


def torchrl_style_make(env_id: str, **kwargs: object) -> tuple[gym.Env, int]:
    """TorchRL's ``GymEnv._build_env``: pass ``frameskip``; drop it only on Python's own wording."""
    kwargs = {**kwargs, "frameskip": 1}
    while True:
        try:
            return gym.make(env_id, **kwargs), 1
        except TypeError as err:
            if "unexpected keyword argument 'frameskip'" not in str(err):
                raise
            return gym.make(env_id, **{k: v for k, v in kwargs.items() if k != "frameskip"}), int(kwargs["frameskip"])


def test_torchrl_style_frameskip_fallback_builds_the_env(micro_kwargs: dict) -> None:
    env, wrapper_frame_skip = torchrl_style_make(ID, **micro_kwargs)
    assert wrapper_frame_skip == 1
    env.reset(seed=0)
    assert env.step(1)[3] is False
    for venv_kwargs in ({}, {"num_envs": 2}):  # the native vector env speaks the same way
        with pytest.raises(TypeError, match=r"got an unexpected keyword argument 'frameskip'"):
            ViTSkipVectorEnv(**venv_kwargs, **micro_kwargs, frameskip=1)


def test_near_misses_still_get_the_did_you_mean_hint(micro_kwargs: dict) -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'compute_weigth'\. Did you mean 'compute_weight'"):
        torchrl_style_make(ID, **micro_kwargs, compute_weigth=0.2)


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_make_vec_with_max_episode_steps_truncates_like_sync_mode(micro_kwargs: dict, mode: AutoresetMode) -> None:
    native = gym.make_vec(ID, num_envs=3, max_episode_steps=2, autoreset_mode=mode, **micro_kwargs)
    sync = gym.make_vec(
        ID, num_envs=3, vectorization_mode="sync", max_episode_steps=2, vector_kwargs={"autoreset_mode": mode}, **micro_kwargs
    )
    assert isinstance(native.unwrapped, ViTSkipVectorEnv)
    obs_n, _ = native.reset(seed=5)
    obs_s, _ = sync.reset(seed=5)
    np.testing.assert_allclose(obs_n, obs_s, rtol=1e-5, atol=1e-5)
    rng = np.random.default_rng(0)
    truncations = 0
    for _ in range(7):
        actions = rng.integers(0, 2, 3)
        *out_n, info_n = native.step(actions)
        *out_s, info_s = sync.step(actions)
        for a, b in zip(out_n, out_s, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        assert sorted(info_n) == sorted(info_s)
        assert not out_n[2].any()  # never terminated: the head is never reached
        truncations += int(out_n[3].all())
    assert truncations == (2 if mode == AutoresetMode.NEXT_STEP else 3)  # NEXT_STEP spends a step on each reset


def test_make_vec_max_episode_steps_at_or_above_depth_changes_nothing(micro_kwargs: dict) -> None:
    plain = gym.make_vec(ID, num_envs=2, **micro_kwargs)
    limited = gym.make_vec(ID, num_envs=2, max_episode_steps=4, **micro_kwargs)  # micro: depth 4
    plain.reset(seed=1)
    limited.reset(seed=1)
    for _ in range(4):
        a, b = plain.step(np.ones(2, dtype=np.int64)), limited.step(np.ones(2, dtype=np.int64))
        np.testing.assert_array_equal(a[2], b[2])
        assert not b[3].any()
    assert b[2].all() and "correct" in b[4]
    with pytest.raises(ValueError, match="max_episode_steps must be a positive integer"):
        ViTSkipVectorEnv(2, max_episode_steps=0, **micro_kwargs)


def test_truncated_episodes_need_a_reset_when_autoreset_is_disabled(micro_kwargs: dict) -> None:
    venv = ViTSkipVectorEnv(2, autoreset_mode="disabled", max_episode_steps=1, **micro_kwargs)
    venv.reset(seed=0)
    assert venv.step(np.ones(2, dtype=np.int64))[3].all()
    with pytest.raises(RuntimeError, match="reset"):
        venv.step(np.ones(2, dtype=np.int64))
    venv.reset()
    venv.step(np.ones(2, dtype=np.int64))


@pytest.mark.parametrize("name", ["disabled", "Disabled", "DISABLED", AutoresetMode.DISABLED])
def test_native_vector_env_accepts_autoreset_mode_disabled(micro_kwargs: dict, name: object) -> None:
    venv = gym.make_vec(ID, num_envs=2, autoreset_mode=name, **micro_kwargs)
    assert venv.unwrapped.autoreset_mode is AutoresetMode.DISABLED
    # TorchRL's GymWrapper (DISABLED): reset with the done mask after each all-done step.
    venv.reset(seed=0)
    for _ in range(2):
        for _ in range(4):
            *_, terminated, truncated, _ = venv.step(np.ones(2, dtype=np.int64))
        done = terminated | truncated
        assert done.all()
        venv.reset(options={"reset_mask": done})
    assert ViTSkipVectorEnv(1, autoreset_mode="same_step", **micro_kwargs).autoreset_mode is AutoresetMode.SAME_STEP


def test_module_prefixed_id_works_in_a_fresh_process(micro_kwargs: dict, tmp_path: Path) -> None:
    code = (
        "import json, sys, gymnasium as gym\n"
        "assert 'vitskip_env' not in sys.modules\n"
        f"env = gym.make('vitskip_env:{ID}', **json.loads(sys.argv[1]))\n"
        "env.reset(seed=0)\n"
        "done = False\n"
        "while not done:\n"
        "    *_, term, trunc, info = env.step(1)\n"
        "    done = term or trunc\n"
        "print(type(env.unwrapped).__name__, info['executed_blocks'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(micro_kwargs)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ViTSkipEnv", "4"]


def test_num_images_copies_the_slice_instead_of_viewing_the_split(micro_kwargs: dict) -> None:
    env = ViTSkipEnv(**{**micro_kwargs, "num_images": 16})
    full = vitskip_env.make_dataset("shapes", "test", device="cpu")
    assert len(full) > 1000 and len(env.dataset) == 16
    for name in ("images", "labels", "difficulty"):
        tensor = getattr(env.dataset, name)
        assert tensor.untyped_storage().nbytes() == tensor.nbytes, name  # no hidden reference to the full split
    assert len(pickle.dumps(env.dataset)) < 200_000


def test_gymnasium_lower_bound_has_autoreset_mode() -> None:
    text = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python 3.11+)
    found = re.search(r'"gymnasium>=([0-9.]+)', text)
    assert found, "pyproject.toml must give gymnasium a lower bound"
    lower = tuple(int(x) for x in found.group(1).split("."))
    assert lower >= (1, 1), f"gymnasium>={found.group(1)}: AutoresetMode (imported by vector_env.py) first appears in 1.1"
    assert re.search(r'"numpy>=[0-9.]+', text), "numpy is imported directly, so it is a direct dependency"


ZOO_ONLY = {"n_envs", "n_timesteps", "policy", "normalize", "env_wrapper", "frame_stack", "callback", "vec_env_wrapper"}


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_zoo_hyperparameter_file_matches_the_defaults_and_builds(micro_kwargs: dict, algo: str) -> None:
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.env_util import make_vec_env

    path = Path(agents.__file__).parent / "zoo" / f"{algo}.yml"
    conf = yaml.safe_load(path.read_text())
    assert set(vitskip_env.ENV_IDS) <= set(conf)
    hp = dict(conf[ID])
    defaults = yaml.safe_load((Path(agents.__file__).parent / "defaults.yaml").read_text())[algo]
    for key in ("gamma", "n_steps", "gae_lambda", "learning_rate", "ent_coef", "vf_coef", "max_grad_norm", "n_epochs"):
        if key in defaults:
            assert hp[key] == defaults[key], key
    if algo == "ppo":
        assert hp["batch_size"] == hp["n_steps"] * hp["n_envs"] // defaults["n_minibatches"]
    cls = {"ppo": PPO, "a2c": A2C}[algo]
    params = set(inspect.signature(cls.__init__).parameters)
    assert set(hp) - ZOO_ONLY <= params
    # What the zoo does: n_envs single envs, policy_kwargs evaluated, the rest passed to the algorithm.
    venv = make_vec_env(ID, n_envs=hp["n_envs"], env_kwargs=micro_kwargs)
    model_kwargs = {k: v for k, v in hp.items() if k not in ZOO_ONLY}
    model_kwargs["policy_kwargs"] = eval(model_kwargs["policy_kwargs"], {"dict": dict})
    model = cls(hp["policy"], venv, seed=0, **model_kwargs)
    model.learn(hp["n_steps"] * hp["n_envs"])
    assert model.num_timesteps == hp["n_steps"] * hp["n_envs"]
