"""``ViTSkipVectorEnv``: N images in flight on one device, one ``SkipCore`` step per vector step."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from ..observations import ObservationEncoder
from ..rules import SkipContract, block_indices
from .core import SkipCore
from .exit_core import ExitCore
from .infos import (
    CoreAccess,
    batched,
    batched_step_info,
    check_actions,
    check_reset_options,
    check_rewards,
    check_seed,
    merge_infos,
    row_step_info,
    select_rows,
)
from .options import EnvOptions, build_core, check_kwargs
from .render import render_frame
from .sampling import ImageSampler, draw_compute_weights


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
    the autoreset starts a new batch of images. With ``actions="skip_exit"`` an episode ends when
    its agent exits, so sub-environments end at different steps: each restarts alone (in the same
    batch; rows at the same block still run it as one call), as ``SyncVectorEnv`` restarts its
    sub-envs, and ``options["reset_mask"]`` may reset any subset; with autoreset ``DISABLED`` a
    sub-environment whose episode ended waits (not stepped, zero reward) until it is reset.

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
        #: Episodes end one by one (``actions="skip_exit"``): each row restarts alone.
        self.per_row = isinstance(self.core, ExitCore)
        self.single_action_space = spaces.Discrete(3 if self.per_row else 2)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.sampler = ImageSampler(len(self.core.dataset), self.num_envs, self.options.sampling)
        self._autoreset = False
        #: ``reset(options={"compute_weight": w})``: every episode's weight until the next reset without it.
        self._pinned_weight: float | None = None
        #: Rows whose episode ended on the last step (``per_row``, ``NEXT_STEP``): this step restarts them.
        self._restart = np.zeros(self.num_envs, dtype=bool)
        #: Rows whose episode ended with autoreset ``DISABLED``: they wait for ``reset``.
        self._over = np.zeros(self.num_envs, dtype=bool)

    # ------------------------------------------------------------------ reset
    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start a new batch of episodes (every sub-environment; they are always aligned)."""
        n = self.num_envs
        seed = check_seed(seed, n)
        options = check_reset_options(options, ("image_index", "reset_mask", "compute_weight"))
        if isinstance(seed, int):
            super().reset(seed=seed)
            seeds: list[int | None] | None = [seed + j for j in range(n)]
        else:
            seeds = seed
        if seeds is not None or not self.sampler.rngs:
            seeds = seeds or [None] * n
            self.sampler.seed([seeding.np_random(s)[0] for s in seeds])
        mask = options.pop("reset_mask", None)
        if mask is not None and self.per_row:
            mask = np.asarray(mask)
            if mask.shape != (n,) or mask.dtype != np.bool_:
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({n},), got {mask!r}")
        elif mask is not None and not np.all(mask):
            raise ValueError(
                "ViTSkipVectorEnv keeps all episodes aligned (each lasts exactly `depth` steps), so it resets "
                "every sub-environment together; options['reset_mask'] must be all True or omitted"
            )
        index = options.pop("image_index", None)
        if "compute_weight" in options:
            self._pinned_weight = options.pop("compute_weight")
            draw_compute_weights(self.core.budget_range, [], self._pinned_weight)  # checked before anything starts
        else:
            self._pinned_weight = None
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; "
                             "supported: ['image_index', 'reset_mask', 'compute_weight']")  # fmt: skip
        if index is not None:
            index = np.asarray(index)
            if index.shape != (n,) or index.dtype.kind not in "iu" or index.min() < 0 or index.max() >= len(self.dataset):
                raise ValueError(f"options['image_index'] must be {n} integers in [0, {len(self.dataset)}), got {index!r}")
        if mask is not None and self.per_row and not mask.all() and not self.core.done:
            rows = np.flatnonzero(mask)
            obs, infos = self._start_rows(rows, None if index is None else index[rows])
            self._restart &= ~mask
            self._over &= ~mask
            return obs, infos
        self._restart[:] = False
        self._over[:] = False
        return self._start(index)

    def _start_rows(self, rows: np.ndarray, index: np.ndarray | None = None) -> tuple[Any, dict[str, Any]]:
        """Restart the episodes of ``rows`` only; every row's observation, reset infos for ``rows``."""
        index = self.sampler.next_rows(rows) if index is None else index.astype(np.int64)
        core = self.core
        assert isinstance(core, ExitCore)
        packed = core.start_rows(torch.from_numpy(rows).to(core.device), index).cpu().numpy()
        full = np.zeros(self.num_envs, dtype=np.int64)
        full[rows] = index
        mask = np.zeros(self.num_envs, dtype=bool)
        mask[rows] = True
        return core.encoder.unpack_numpy(packed), {"image_index": full, "_image_index": mask}

    def _start(self, index: np.ndarray | None = None) -> tuple[Any, dict[str, Any]]:
        index = self.sampler.next() if index is None else index.astype(np.int64)
        weights = draw_compute_weights(self.core.budget_range, self.sampler.rngs, self._pinned_weight)
        packed = self.core.start(index, weights).cpu().numpy()
        self._autoreset = self._truncated = False
        return self.core.encoder.unpack_numpy(packed), batched({"image_index": np.array(index, dtype=np.int64)}, self.num_envs)

    # ------------------------------------------------------------------ step
    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Skip (0) or execute (1) the next block in every sub-environment.

        Args:
            actions: ``(num_envs,)`` integers in ``{0, 1}`` (numpy, list, or a torch tensor on any device).
        """
        n = self.num_envs
        acts = check_actions(actions, n, self.core.device, int(self.single_action_space.n))
        if self.per_row:
            return self._step_rows(acts)
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

    def _step_rows(self, acts: torch.Tensor) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """``actions="skip_exit"``: step the rows in flight, restart the ones that ended (per the autoreset mode)."""
        core, n = self.core, self.num_envs
        assert isinstance(core, ExitCore)
        if core.done:
            raise RuntimeError("no episodes in flight: call reset()")
        restart = self._restart.copy()
        # DISABLED: a row whose episode ended waits (not stepped, zero reward) until reset(options={"reset_mask": ...})
        stepped = ~restart & ~self._over
        result = core.step(acts, torch.from_numpy(stepped).to(core.device))
        host = SkipCore.to_host(result)
        check_rewards(host, False)
        ended = host["ended"] & stepped
        truncated = np.zeros(n, dtype=bool)
        if self.max_episode_steps is not None:
            truncated = stepped & ~ended & (core.blocks.cpu().numpy() >= self.max_episode_steps)
        infos = row_step_info(host, stepped, ended)
        rewards = np.where(stepped, host["reward"], 0.0).astype(np.float64)
        obs = core.encoder.unpack_numpy(host["obs"])
        over = ended | truncated
        if restart.any():  # NEXT_STEP: these rows only start their new episode in this step
            obs, reset_infos = self._start_rows(np.flatnonzero(restart))
            infos = merge_infos(infos, reset_infos)
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._restart = over
        elif self.autoreset_mode == AutoresetMode.SAME_STEP and over.any():
            final_obs = np.full(n, None, dtype=object)
            for j in np.flatnonzero(over).tolist():
                final_obs[j] = {k: v[j] for k, v in obs.items()} if isinstance(obs, dict) else obs[j]
            final_info = select_rows(infos, over)
            obs, reset_infos = self._start_rows(np.flatnonzero(over))
            infos = merge_infos(select_rows(infos, ~over), reset_infos)
            infos |= {"final_obs": final_obs, "_final_obs": over.copy(), "final_info": final_info, "_final_info": over.copy()}
        if self.autoreset_mode == AutoresetMode.DISABLED:
            self._over |= over
        return obs, rewards, ended, truncated, infos

    # ------------------------------------------------------------------ extras
    def action_masks(self) -> np.ndarray:
        """``bool (num_envs, A)``: per sub-environment ``[skip allowed, execute allowed(, exit allowed)]`` (MaskablePPO)."""
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
        blocks = core.blocks.tolist() if isinstance(core, ExitCore) else [core.block] * self.num_envs  # per row with exits
        return tuple(render_frame(images[j], executed[j], blocks[j]) for j in range(self.num_envs))
