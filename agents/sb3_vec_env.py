"""``SB3VecEnv``: the native ``ViTSkipVectorEnv`` as a Stable-Baselines3 ``VecEnv``.

SB3 cannot take a Gymnasium ``VectorEnv``: it wants its own ``VecEnv`` contract (``reset()`` without
arguments, ``step_async`` / ``step_wait``, a list of one info dict per environment, the final
observation of a finished episode in ``info["terminal_observation"]``). This adapter runs one
``ViTSkipVectorEnv`` in ``SAME_STEP`` autoreset mode, so every step maps to exactly one SB3 step
and all ``N`` episodes stay one batch on the device.

Per step it builds ``N`` small info dicts holding only what SB3 reads (``TimeLimit.truncated``)
and, on the terminal step, ``terminal_observation`` and the episode summary (``label``,
``prediction``, ``correct``, ``confidence``, ``is_success``, ``executed_blocks``, ``compute_ratio``,
``image_index``, ``difficulty`` where known and ``exit_block`` with exits): the native env's
dict-of-arrays is converted column-wise with ``tolist()``, never element by element through numpy
scalars. With ``actions="skip_exit"`` episodes end one by one and each restarts in the same step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from vitskip_env import ViTSkipVectorEnv

#: Episode-end fields copied from the native final info into each finished env's SB3 info.
EPISODE_INFO_KEYS: tuple[str, ...] = (
    "label",
    "prediction",
    "correct",
    "confidence",
    "is_success",
    "executed_blocks",
    "compute_ratio",
    "image_index",
    "difficulty",
    "exit_block",
)
#: Methods whose result holds one entry per sub-environment (split by ``env_method``).
PER_ENV_METHODS: frozenset[str] = frozenset({"action_masks", "render"})


class SB3VecEnv(VecEnv):
    """A Stable-Baselines3 ``VecEnv`` over one native :class:`~vitskip_env.ViTSkipVectorEnv`.

    Args:
        num_envs: Episodes in flight ``N`` (one batch on the device; 256+ is the intended scale).
        env_id: Optional registered id (``"ViTSkip-CIFAR100-v0"``); its registered keyword arguments
            are used under ``env_kwargs``.
        info_keys: Episode-end fields copied into the infos of finished episodes.
        **env_kwargs: Every keyword argument of :class:`~vitskip_env.ViTSkipEnv` (``dataset``,
            ``backbone``, ``compute_weight``, ``obs_mode``, ...).

    Semantics:
        * ``seed(s)`` then ``reset()`` seeds sub-environment ``j`` with ``s + j``, exactly like
          ``DummyVecEnv`` of single envs and ``ViTSkipVectorEnv.reset(seed=s)``.
        * ``set_options(...)`` then ``reset()``: ``image_index`` is per sub-environment (an int each);
          any other option must be the same for all sub-environments (they reset together).
        * ``env_method("action_masks")`` returns one ``bool (2,)`` mask per sub-environment
          (sb3-contrib ``MaskablePPO`` stacks them); other methods run once on the shared vector env
          and their result is repeated per index.
        * ``get_attr(name)`` reads the shared vector env's attribute (``backbone``, ``dataset``...);
          ``set_attr`` sets it there and therefore needs all indices.

    Example:
        >>> from agents import SB3VecEnv
        >>> from stable_baselines3.common.vec_env import VecMonitor
        >>> env = VecMonitor(SB3VecEnv(num_envs=256, dataset="shapes", compute_weight=0.5))  # doctest: +SKIP
    """

    def __init__(
        self,
        num_envs: int = 1,
        *,
        env_id: str | None = None,
        info_keys: Sequence[str] = EPISODE_INFO_KEYS,
        **env_kwargs: Any,
    ) -> None:
        if env_id is not None:
            env_kwargs = {**gym.spec(env_id).kwargs, **env_kwargs}
        venv = ViTSkipVectorEnv(num_envs, autoreset_mode=AutoresetMode.SAME_STEP, **env_kwargs)
        self._init_from(venv, info_keys)

    @classmethod
    def from_vector_env(cls, venv: ViTSkipVectorEnv, info_keys: Sequence[str] = EPISODE_INFO_KEYS) -> SB3VecEnv:
        """Wrap an existing native vector env (it must use ``autoreset_mode=SAME_STEP``)."""
        if venv.autoreset_mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"SB3VecEnv needs a ViTSkipVectorEnv with autoreset_mode=SAME_STEP, got {venv.autoreset_mode}; "
                "build it with ViTSkipVectorEnv(n, autoreset_mode=AutoresetMode.SAME_STEP, ...) or use SB3VecEnv(n, ...)"
            )
        self = cls.__new__(cls)
        self._init_from(venv, info_keys)
        return self

    def _init_from(self, venv: ViTSkipVectorEnv, info_keys: Sequence[str]) -> None:
        self.vector_env = venv
        self.info_keys = tuple(info_keys)
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    # ------------------------------------------------------------------ properties
    @property
    def backbone(self) -> Any:
        """The ``SkippableViT`` the env runs."""
        return self.vector_env.backbone

    @property
    def dataset(self) -> Any:
        """The ``ImageDataset`` split the images come from."""
        return self.vector_env.dataset

    @property
    def exit_heads(self) -> Any:
        """The exit heads of ``actions="skip_exit"`` (``None`` for skip-only envs)."""
        return self.vector_env.exit_heads

    @property
    def depth(self) -> int:
        """Blocks per image (= steps per episode)."""
        return self.vector_env.core.depth

    # ------------------------------------------------------------------ VecEnv contract
    def reset(self) -> VecEnvObs:
        """Reset every sub-environment with the seeds / options set since the last reset (then forgotten)."""
        seeds = self._seeds
        seed: int | list[int | None] | None
        if all(s is None for s in seeds):
            seed = None
        elif all(s is not None for s in seeds) and list(seeds) == [seeds[0] + j for j in range(self.num_envs)]:
            seed = int(seeds[0])  # also seeds the vector env's own np_random, as reset(seed=s) does
        else:
            seed = list(seeds)
        obs, infos = self.vector_env.reset(seed=seed, options=self._merged_options())
        self._store_reset_infos(infos)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        """Remember the actions for :meth:`step_wait`."""
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        """Step every sub-environment; finished episodes restart in the same step (SB3 convention)."""
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async(actions)")
        actions, self._actions = np.asarray(self._actions).reshape(self.num_envs), None
        obs, rewards, terminated, truncated, infos = self.vector_env.step(actions)
        dones = terminated | truncated
        sb3_infos: list[dict[str, Any]] = [{"TimeLimit.truncated": False} for _ in range(self.num_envs)]
        if "final_obs" in infos:
            trunc_only = (truncated & ~terminated).tolist()
            final_info = infos["final_info"]
            columns = {k: np.asarray(final_info[k]).tolist() for k in self.info_keys if k in final_info}
            for j in np.flatnonzero(infos["_final_obs"]).tolist():
                info = sb3_infos[j]
                info["TimeLimit.truncated"] = trunc_only[j]
                info["terminal_observation"] = infos["final_obs"][j]
                for key, values in columns.items():
                    info[key] = values[j]
            self._store_reset_infos(infos)
        return obs, rewards.astype(np.float32), dones, sb3_infos

    def close(self) -> None:
        """Close the native vector env."""
        self.vector_env.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The shared vector env's attribute, once per requested index (``AttributeError`` if missing)."""
        value = getattr(self.vector_env, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of the shared vector env (all sub-environments share it)."""
        self._check_all(indices, "set_attr")
        setattr(self.vector_env, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call a method of the vector env; per-env results (``action_masks``, ``render``) are split by index."""
        result = getattr(self.vector_env, method_name)(*method_args, **method_kwargs)
        idx = list(self._get_indices(indices))
        if method_name in PER_ENV_METHODS:
            if result is None:
                return [None for _ in idx]
            return [result[i] for i in idx]
        return [result for _ in idx]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """Always ``False``: there are no per-env Gymnasium wrappers (wrap with ``VecMonitor`` instead of ``Monitor``)."""
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        """One rendered frame per sub-environment (``render_mode="rgb_array"``)."""
        frames = self.vector_env.render() if self.render_mode == "rgb_array" else None
        return list(frames) if frames is not None else [None for _ in range(self.num_envs)]

    # ------------------------------------------------------------------ helpers
    def _store_reset_infos(self, infos: Mapping[str, Any]) -> None:
        index = infos.get("image_index")
        if index is not None:
            self.reset_infos = [{"image_index": k} for k in np.asarray(index).tolist()]

    def _check_all(self, indices: VecEnvIndices, what: str) -> None:
        idx: Iterable[int] = self._get_indices(indices)
        if sorted(set(idx)) != list(range(self.num_envs)):
            raise ValueError(
                f"{what}: the {self.num_envs} sub-environments of SB3VecEnv share one ViTSkipVectorEnv, so attributes "
                f"can only be set for all of them (indices=None), got indices={indices!r}"
            )

    def _merged_options(self) -> dict[str, Any] | None:
        """SB3's per-env option dicts -> the one options dict of the native vector env."""
        per_env = self._options
        if not any(per_env):
            return None
        keys = set().union(*per_env)
        merged: dict[str, Any] = {}
        for key in sorted(keys):
            values = [opts.get(key) for opts in per_env]
            if key == "image_index":
                if any(v is None or np.ndim(v) != 0 for v in values):
                    raise ValueError(
                        f"options['image_index'] must be one integer per sub-environment (set_options([{{'image_index': k}}, "
                        f"...]) for all {self.num_envs}), got {values!r}"
                    )
                merged[key] = np.asarray(values, dtype=np.int64)
            elif all(_equal(v, values[0]) for v in values):
                merged[key] = values[0]
            else:
                raise ValueError(
                    f"option {key!r} differs between sub-environments ({values!r}); they reset together, so it must be "
                    "the same for all (only 'image_index' is per sub-environment)"
                )
        return merged


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(np.all(a == b))
    except (TypeError, ValueError):
        return a is b
