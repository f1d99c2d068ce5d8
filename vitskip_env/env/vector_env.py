"""``ViTSkipVectorEnv``: N images in flight on one device, one ``SkipCore`` step per vector step."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from ..observations import ObservationEncoder
from ..rules import SkipContract, block_indices
from .core import SkipCore
from .infos import CoreAccess, batched, batched_step_info, check_actions, check_reset_options, check_rewards, check_seed
from .options import EnvOptions, build_core, check_kwargs
from .render import render_frame
from .sampling import ImageSampler


def parse_autoreset_mode(value: AutoresetMode | str) -> AutoresetMode:
    """An ``AutoresetMode`` from the enum or a name in any case, with or without ``_`` (``"disabled"``, ``"SAME_STEP"``).

    Raises:
        ValueError: Anything else (the message lists the accepted names).
    """
    if isinstance(value, AutoresetMode):
        return value
    if isinstance(value, str):
        key = value.replace("_", "").replace("-", "").lower()
        for mode in AutoresetMode:
            if key == mode.value.lower():
                return mode
    valid = [m.value for m in AutoresetMode] + [m.name.lower() for m in AutoresetMode]
    raise ValueError(f"autoreset_mode must be an AutoresetMode or one of {valid}, got {value!r}")


class ViTSkipVectorEnv(CoreAccess, VectorEnv):
    """The native vector version of :class:`~vitskip_env.ViTSkipEnv` (see its docstring for the task).

    All ``num_envs`` episodes run as one batch through the same ``SkipCore`` the single env uses:
    each vector step runs block ``i`` once, on the rows that execute it, and crosses to numpy once.
    Every episode lasts exactly ``depth`` steps, so all sub-environments terminate together and
    the autoreset starts a new batch of images.

    Args:
        num_envs: Episodes in flight.
        autoreset_mode: ``AutoresetMode.NEXT_STEP`` (default; the step after a terminal step
            returns the new batch's first observations, zero rewards and the reset infos) or
            ``SAME_STEP`` (the terminal step already returns the new observations, with
            ``infos["final_obs"]`` and ``infos["final_info"]``), or ``DISABLED`` (call ``reset``;
            what TorchRL's ``GymWrapper`` wants). Also as a string, in any case, with or without
            underscores: ``"disabled"``, ``"same_step"``, ``"NextStep"``.
        max_episode_steps: ``gym.make_vec(id, num_envs=N, max_episode_steps=k)`` passes it here.
            ``k >= depth`` changes nothing (episodes last ``depth`` steps). ``k < depth`` truncates
            every episode after ``k`` steps (``truncated=True``, ``terminated=False``, no
            episode-end fields, the backbone's head never runs), as Gymnasium's ``TimeLimit`` does
            on each sub-env of ``gym.make_vec(..., vectorization_mode="sync")``; the autoreset
            then starts the next batch.
        **kwargs: Every keyword argument of ``ViTSkipEnv`` (``dataset``, ``backbone``, ...).

    Seeding: ``reset(seed=s)`` seeds sub-environment ``j`` with ``s + j`` (a list seeds each one),
    exactly as ``SyncVectorEnv`` seeds its sub-envs, and sub-environment ``j`` samples images like
    a single ``ViTSkipEnv`` reset with seed ``s + j``. For the same seed and actions this env and
    ``gym.make_vec(id, num_envs=N, vectorization_mode="sync")`` return the same observations (up
    to float rounding of batched matrix products), rewards and infos; in ``sampling="sequential"``
    mode the batch instead sweeps the split in order (each single env would start at image 0), and
    with ``cost_model="latency"`` every env measures its own (slightly different) block costs.

    Example:
        >>> import gymnasium as gym, vitskip_env
        >>> venv = gym.make_vec("ViTSkip-Shapes-v0", num_envs=256)  # doctest: +SKIP
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["rgb_array"],
        "render_fps": 4,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int = 1,
        *,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        max_episode_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        check_kwargs(kwargs, type(self).__name__, extra_names=("num_envs", "autoreset_mode", "max_episode_steps"))
        if not isinstance(num_envs, (int, np.integer)) or isinstance(num_envs, bool) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        mode = parse_autoreset_mode(autoreset_mode)
        if max_episode_steps is not None and (
            not isinstance(max_episode_steps, (int, np.integer))
            or isinstance(max_episode_steps, bool)
            or max_episode_steps < 1
        ):
            raise ValueError(f"max_episode_steps must be a positive integer or None, got {max_episode_steps!r}")
        if "always_execute" in kwargs:
            kwargs["always_execute"] = block_indices(kwargs["always_execute"])
        self.options = EnvOptions(**kwargs)
        self.core: SkipCore = build_core(self.options, int(num_envs))
        self.num_envs = int(num_envs)
        #: Steps after which every episode is truncated (``None``: episodes end at ``depth``).
        self.max_episode_steps = (
            None if max_episode_steps is None or max_episode_steps >= self.core.depth else int(max_episode_steps)
        )
        self._truncated = False
        self.autoreset_mode = mode
        self.metadata = {**type(self).metadata, "autoreset_mode": mode}
        self.render_mode = self.options.render_mode
        self.single_observation_space = self.core.encoder.space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.single_action_space = spaces.Discrete(2)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.sampler = ImageSampler(len(self.core.dataset), self.num_envs, self.options.sampling)
        self._autoreset = False

    # ------------------------------------------------------------------ reset
    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start a new batch of episodes (every sub-environment; they are always aligned)."""
        n = self.num_envs
        seed = check_seed(seed, n)
        options = check_reset_options(options, ("image_index", "reset_mask"))
        if isinstance(seed, int):
            super().reset(seed=seed)
            seeds: list[int | None] | None = [seed + j for j in range(n)]
        else:
            seeds = seed
        if seeds is not None or not self.sampler.rngs:
            seeds = seeds or [None] * n
            self.sampler.seed([seeding.np_random(s)[0] for s in seeds])
        mask = options.pop("reset_mask", None)
        if mask is not None and not np.all(mask):
            raise ValueError(
                "ViTSkipVectorEnv keeps all episodes aligned (each lasts exactly `depth` steps), so it resets "
                "every sub-environment together; options['reset_mask'] must be all True or omitted"
            )
        index = options.pop("image_index", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; supported: ['image_index', 'reset_mask']")
        if index is not None:
            index = np.asarray(index)
            if index.shape != (n,) or index.dtype.kind not in "iu" or index.min() < 0 or index.max() >= len(self.dataset):
                raise ValueError(f"options['image_index'] must be {n} integers in [0, {len(self.dataset)}), got {index!r}")
        return self._start(index)

    def _start(self, index: np.ndarray | None = None) -> tuple[Any, dict[str, Any]]:
        index = self.sampler.next() if index is None else index.astype(np.int64)
        packed = self.core.start(index).cpu().numpy()
        self._autoreset = self._truncated = False
        return self.core.encoder.unpack_numpy(packed), batched({"image_index": np.array(index, dtype=np.int64)}, self.num_envs)

    # ------------------------------------------------------------------ step
    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Skip (0) or execute (1) the next block in every sub-environment.

        Args:
            actions: ``(num_envs,)`` integers in ``{0, 1}`` (numpy, list, or a torch tensor on any device).
        """
        n = self.num_envs
        acts = check_actions(actions, n, self.core.device)
        no = np.zeros(n, dtype=bool)
        if self._autoreset:  # NEXT_STEP: this step only starts the new batch
            obs, infos = self._start()
            return obs, np.zeros(n, dtype=np.float64), no, no.copy(), infos
        if self.core.done or self._truncated:
            raise RuntimeError("no episodes in flight: call reset() (also after each last step when autoreset is DISABLED)")
        result = self.core.step(acts)
        host = SkipCore.to_host(result)
        check_rewards(host, self.options.reward_fn is not None)
        obs = self.core.encoder.unpack_numpy(host["obs"])
        rewards = host["reward"].astype(np.float64)
        terminated = np.full(n, result.terminal, dtype=bool)
        truncated = np.full(n, not result.terminal and self.core.block == self.max_episode_steps, dtype=bool)
        self._truncated = bool(truncated[0])
        infos = batched_step_info(host)
        if result.terminal or self._truncated:
            if self.autoreset_mode == AutoresetMode.NEXT_STEP:
                self._autoreset = True
            elif self.autoreset_mode == AutoresetMode.SAME_STEP:
                final_obs = np.empty(n, dtype=object)
                for j in range(n):
                    final_obs[j] = {k: v[j] for k, v in obs.items()} if isinstance(obs, dict) else obs[j]
                infos = {"final_obs": final_obs, "_final_obs": np.ones(n, dtype=bool), "final_info": infos}
                infos["_final_info"] = np.ones(n, dtype=bool)
                obs, reset_infos = self._start()
                infos.update(reset_infos)
        return obs, rewards, terminated, truncated, infos

    # ------------------------------------------------------------------ extras
    def action_masks(self) -> np.ndarray:
        """``bool (num_envs, 2)``: per sub-environment ``[skip allowed, execute allowed]`` (MaskablePPO)."""
        return self.core.action_masks().cpu().numpy()

    def skip_contract(self) -> SkipContract[ObservationEncoder]:
        """The observation encoder and the skip rules of this env: what a deployed policy must share.

        ``encoder, rules = env.unwrapped.skip_contract()``; ``agents.export_policy`` reads them here.
        """
        return self.core.skip_contract()

    def render(self) -> tuple[np.ndarray, ...] | None:
        """One frame per sub-environment (``render_mode="rgb_array"``)."""
        if self.render_mode is None:
            return None
        core = self.core
        if core.tokens is None:
            raise RuntimeError("nothing to render before reset()")
        images = core.dataset.images[core.image_index].cpu().numpy()
        executed = core.executed.cpu().numpy()
        return tuple(render_frame(images[j], executed[j], core.block) for j in range(self.num_envs))
