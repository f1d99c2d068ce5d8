"""``ViTPatchDrop-*``: an episode is one training run of a ViT; the agent decides how many patches it sees.

Registered as ``ViTPatchDrop-{Shapes,Relations,Pointers,CIFAR10,CIFAR100,TinyImageNet}-v0``
(``gym.make("ViTPatchDrop-Shapes-v0", budget=60)``). Patches are *removed*, never masked: the
blocks see fewer tokens (:mod:`vitskip_env.model.patch_select`), so a step at a lower keep ratio
really costs less time, and the budget is time (``clock="wall"``) or its deterministic stand-in
(``clock="tokens"``). This speeds up **training**; the trained ViT is evaluated with every patch
(and, for the kept-patch speed-up at inference, with the kept ones).

Two modes:

``mode="keep_ratio"`` (default): one step is ``minibatches_per_step`` minibatches at the keep ratio
chosen from ``keep_ratios`` (``Discrete``); which patches each image keeps is chosen by ``scorer``
(the class token's first-block attention, or random as timm's ``PatchDropout``). The observation is
the run's progress (:data:`OBS_FEATURES`). The reward pays for time-to-accuracy: each step earns
``w_area * (V0 - V_t) * dt / budget`` (the validation-loss drop achieved so far, held for the
measured share of the budget the step took; summed, the area between the starting loss and the
loss-vs-time curve), and the last step adds ``w_final * val top-1``.

``mode="agentvit"`` (faithful to AgentViT's code): one step is one minibatch; the observation is
the first attention block's output averaged over channels, ``(batch_size, P)``; the action is one
score per patch in ``[-1, 1]`` for the whole batch, a patch kept where its score is at least the
mean; the reward, every ``reward_every`` minibatches (0 otherwise), is
``w_L * L(0)/L(t) - w_P * |dropped - ideal| / ideal`` (:func:`agentvit_reward`).
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from ..model.patch_select import check_scorer, cls_attention, first_block_state, kept_count, shared_keep_mask
from .patchdrop_run import RunConfig, TrainingRun

MODES: tuple[str, ...] = ("keep_ratio", "agentvit")
KEEP_RATIOS: tuple[float, ...] = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375)

#: The observation of ``mode="keep_ratio"``, in order (losses are divided by ``log(classes)``).
OBS_FEATURES: tuple[str, ...] = (
    "budget_used",  # share of the budget spent
    "train_loss_ema",  # EMA of the training loss (at the kept patches)
    "train_loss_slope",  # change of that EMA per tenth of the budget
    "val_loss",  # validation loss with every patch
    "val_top1",  # validation top-1 with every patch
    "keep_ratio",  # the ratio of the last step
    "step_cost",  # seconds per minibatch of the last step / the slowest step of the episode
    "score_entropy",  # entropy of the class-token attention over patches / log(P)
    "score_top_half",  # share of that attention on the top half of the patches
    "score_std",  # its standard deviation across patches, x P
    "train_loss",  # mean training loss of the last step
)


def agentvit_reward(
    loss0: float,
    loss: float,
    dropped: int,
    num_patches: int,
    progress: float,
    *,
    alpha: float = 0.2,
    ideal_keep: float = 40 / 64,
) -> float:
    """AgentViT's reward: ``w_L * L(0)/L(t) - w_P * |dropped - ideal| / ideal``.

    ``ideal = num_patches * (1 - ideal_keep)`` patches dropped (24 of 64), ``w_L = alpha + (1 - alpha) * e/E``,
    ``w_P = 1 - alpha * (1 - e/E)``, with ``e/E = progress`` the share of training done.
    """
    ideal = num_patches * (1.0 - ideal_keep)
    w_loss = alpha + (1.0 - alpha) * progress
    w_patch = 1.0 - alpha * (1.0 - progress)
    return w_loss * loss0 / loss - w_patch * abs(dropped - ideal) / ideal


class ViTPatchDropEnv(gym.Env):
    """One training run per episode; see the module docstring for both modes.

    Args:
        dataset: Dataset name (the registered ids set it).
        backbone: A preset (fresh weights from the episode's seed; default ``"mini"``: 64 patches) or a
            vitskip backbone file to fine-tune.
        mode: ``"keep_ratio"`` or ``"agentvit"``.
        budget: Seconds of training (``clock="wall"``) or full-patch minibatches (``clock="tokens"``).
        clock: ``"wall"`` (measured) or ``"tokens"`` (deterministic: kept tokens / all tokens per minibatch).
        minibatches_per_step: ``K``, minibatches per step in ``keep_ratio`` mode.
        keep_ratios: The action set of ``keep_ratio`` mode, each in ``(0, 1]``.
        scorer: ``"cls_attn"`` or ``"random"`` (timm ``PatchDropout``), in ``keep_ratio`` mode.
        reward_weights: ``{"area": w_area, "final": w_final}`` in ``keep_ratio`` mode.
        alpha, ideal_keep, reward_every: AgentViT's reward settings (``agentvit`` mode).
        batch_size, lr, weight_decay, warmup, val_images, augment, device, data_root: The run's
            :class:`~vitskip_env.env.patchdrop_run.RunConfig`.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self,
        dataset: str = "shapes",
        backbone: str = "mini",
        *,
        mode: str = "keep_ratio",
        budget: float = 20.0,
        clock: str = "wall",
        minibatches_per_step: int = 10,
        keep_ratios: tuple[float, ...] = KEEP_RATIOS,
        scorer: str = "cls_attn",
        reward_weights: dict[str, float] | None = None,
        alpha: float = 0.2,
        ideal_keep: float = 40 / 64,
        reward_every: int = 10,
        batch_size: int = 128,
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        warmup: float = 0.05,
        val_images: int = 512,
        augment: bool = True,
        device: str = "cpu",
        data_root: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        check_scorer(scorer)
        if isinstance(minibatches_per_step, bool) or not isinstance(minibatches_per_step, int) or minibatches_per_step < 1:
            raise ValueError(f"minibatches_per_step must be a positive integer, got {minibatches_per_step!r}")
        self.keep_ratios = _check_ratios(keep_ratios)
        weights = {"area": 1.0, "final": 1.0, **(reward_weights or {})}
        if set(weights) != {"area", "final"}:
            raise ValueError(f"reward_weights takes the keys 'area' and 'final', got {sorted(weights)}")
        if not isinstance(reward_every, int) or reward_every < 1:
            raise ValueError(f"reward_every must be a positive integer, got {reward_every!r}")
        if not 0.0 < ideal_keep < 1.0 or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"ideal_keep must be in (0, 1) and alpha in [0, 1], got {ideal_keep!r} and {alpha!r}")
        config = RunConfig(
            dataset=dataset, backbone=backbone, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            warmup=warmup, val_images=val_images, augment=augment, clock=clock, device=device, data_root=data_root,
        )  # fmt: skip
        self.run = TrainingRun(config, budget)
        self.mode, self.scorer, self.weights = mode, scorer, weights
        self.k = minibatches_per_step
        self.alpha, self.ideal_keep, self.reward_every = float(alpha), float(ideal_keep), reward_every
        with torch.random.fork_rng(devices=[]):  # builds the model once so that the spaces know the patch count
            self.run.reset(0)
        patches = self.run.num_patches
        if mode == "keep_ratio":
            self.action_space = gym.spaces.Discrete(len(self.keep_ratios))
            self.observation_space = gym.spaces.Box(-10.0, 10.0, (len(OBS_FEATURES),), np.float32)
        else:
            self.action_space = gym.spaces.Box(-1.0, 1.0, (patches,), np.float32)
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (batch_size, patches), np.float32)
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new training run (fresh weights for a preset) from a seed drawn from ``seed``.

        The run's seed also seeds torch's global generator: timm initialises weights from it and timm's
        ``PatchDropout`` (``scorer="random"``) draws from it.
        """
        super().reset(seed=seed)
        if options:
            raise ValueError(f"reset takes no options, got {sorted(options)}")
        self.run.reset(int(self.np_random.integers(2**31 - 1)))
        self.history = []
        self.steps_done = 0
        self._ema = self._slope = None
        self._loss0: float | None = None
        if self.mode == "agentvit":
            return self._agentvit_observation(), {}
        self.start_val_loss, self.start_val_top1 = self.run.evaluate()
        self._last = {
            "val_loss": self.start_val_loss,
            "val_top1": self.start_val_top1,
            "keep_ratio": 1.0,
            "step_cost": 1.0,
            "train_loss": self.start_val_loss,
        }
        self._scores = None
        self._slowest = 0.0
        return self._observation(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Train for one step (``K`` minibatches, or one in ``agentvit`` mode) and report progress."""
        if self.run.vit is None or not hasattr(self, "steps_done"):
            raise RuntimeError("call reset() before step()")
        if self.run.done:
            raise RuntimeError("the episode is over (the budget is spent): call reset()")
        if self.mode == "agentvit":
            return self._agentvit_step(action)
        return self._ratio_step(self._check_action(action))

    # ------------------------------------------------------------------ keep_ratio mode
    def _check_action(self, action: Any) -> int:
        a = np.asarray(action)
        if a.size != 1 or not np.issubdtype(a.dtype, np.integer) or not 0 <= int(a.reshape(())) < len(self.keep_ratios):
            raise ValueError(
                f"action must be an integer index into keep_ratios {self.keep_ratios} (0..{len(self.keep_ratios) - 1}), "
                f"got {action!r}"
            )
        return int(a.reshape(()))

    def _ratio_step(self, index: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        run, ratio = self.run, self.keep_ratios[index]
        before, losses, kept = run.used, [], 0
        wall = time.perf_counter()
        for j in range(self.k):
            out = run.train_minibatch(ratio, scorer=self.scorer)
            losses.append(out["loss"])
            kept = out["kept"]
            if j == 0:
                self._scores = self._score_stats(out["scores"])
            if run.done:
                break
        wall_train = time.perf_counter() - wall
        dt = run.used - before
        eval_start = time.perf_counter()
        val_loss, val_top1 = run.evaluate()
        eval_seconds = time.perf_counter() - eval_start
        train_loss = float(np.mean(losses))
        self._update_ema(train_loss, dt)
        share = min(dt, max(run.budget - before, 0.0)) / run.budget
        reward = self.weights["area"] * (self.start_val_loss - val_loss) * share
        done = run.done
        if done:
            reward += self.weights["final"] * val_top1
        self.steps_done += 1
        per_batch = wall_train / len(losses) if run.config.clock == "wall" else dt / len(losses)
        self._slowest = max(self._slowest, per_batch)
        self._last = {"val_loss": val_loss, "val_top1": val_top1, "keep_ratio": ratio, "train_loss": train_loss}
        self._last["step_cost"] = per_batch / self._slowest
        info = {
            "keep_ratio": ratio, "kept_patches": kept, "minibatches": len(losses), "train_loss": train_loss,
            "val_loss": val_loss, "val_top1": val_top1, "seconds": dt, "used": run.used, "budget_used": run.fraction,
            "images_seen": run.images_seen,
        }  # fmt: skip
        timings = {"train_wall_seconds": wall_train, "eval_seconds": eval_seconds}
        if run.config.clock == "wall":  # measured times only where the clock is measured (tokens: reproducible infos)
            info.update(timings)
        self.history.append({"step": self.steps_done, "reward": reward, **info, **timings})
        return self._observation(), float(reward), done, False, info

    @torch.no_grad()
    def _score_stats(self, scores: torch.Tensor | None) -> tuple[float, float, float]:
        """Entropy, top-half share and spread of the class-token attention over patches (one minibatch)."""
        if scores is None:  # keep ratio 1 or a random scorer: score 64 validation images (off the clock)
            val = self.run.val_set
            scores = cls_attention(self.run.model, self.run.model.embed(val.normalize(val.images[:64])))
        p = scores / scores.sum(dim=1, keepdim=True).clamp_min(1e-12)
        n = p.shape[1]
        entropy = float((-(p * p.clamp_min(1e-12).log()).sum(1) / math.log(n)).mean())
        top_half = float(p.topk(max(1, n // 2), dim=1).values.sum(1).mean())
        spread = float((p.std(dim=1) * n).mean())
        return entropy, top_half, spread

    def _update_ema(self, loss: float, dt: float) -> None:
        previous = self._ema
        self._ema = loss if previous is None else 0.7 * previous + 0.3 * loss
        if previous is not None and dt > 0:
            self._slope = (self._ema - previous) / (dt / self.run.budget / 0.1)

    def _observation(self) -> np.ndarray:
        log_c = math.log(self.run.train_set.num_classes)
        last, scores = self._last, self._scores or (1.0, 0.5, 0.0)
        ema = self._ema if self._ema is not None else last["train_loss"]
        values = [
            min(self.run.fraction, 1.0), ema / log_c, (self._slope or 0.0) / log_c, last["val_loss"] / log_c,
            last["val_top1"], last["keep_ratio"], last["step_cost"], *scores, last["train_loss"] / log_c,
        ]  # fmt: skip
        return np.clip(np.asarray(values, dtype=np.float32), -10.0, 10.0)

    # ------------------------------------------------------------------ agentvit mode
    def _agentvit_observation(self) -> np.ndarray:
        run = self.run
        sync_start = time.perf_counter()
        self._batch = run.next_batch()
        self._state = first_block_state(run.model, run.model.embed(self._batch[0]))
        if run.config.clock == "wall":
            run.charge(time.perf_counter() - sync_start)
        return self._state.float().cpu().numpy()

    def _agentvit_step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        run = self.run
        scores = np.asarray(action, dtype=np.float32)
        if scores.shape != self.action_space.shape or not np.isfinite(scores).all():
            raise ValueError(
                f"action must be {self.action_space.shape[0]} finite scores (one per patch, in [-1, 1]), "
                f"got shape {scores.shape}"
            )
        mask = shared_keep_mask(torch.as_tensor(scores))
        out = run.train_minibatch(mask=mask.to(run.device), batch=self._batch)
        if self._loss0 is None:
            self._loss0 = out["loss"]
        self.steps_done += 1
        dropped = run.num_patches - int(out["kept"])
        reward = 0.0
        if self.steps_done % self.reward_every == 0:
            reward = agentvit_reward(
                self._loss0,
                out["loss"],
                dropped,
                run.num_patches,
                min(run.fraction, 1.0),
                alpha=self.alpha,
                ideal_keep=self.ideal_keep,
            )
        done = run.done
        info = {
            "keep_ratio": out["kept"] / run.num_patches, "kept_patches": out["kept"], "dropped": dropped,
            "train_loss": out["loss"], "seconds": out["seconds"], "used": run.used, "budget_used": run.fraction,
            "images_seen": run.images_seen,
        }  # fmt: skip
        self.history.append({"step": self.steps_done, "reward": reward, **info})
        obs = self._agentvit_observation() if not done else self._state.float().cpu().numpy()
        return obs, float(reward), done, False, info

    def close(self) -> None:
        """Drop the model and the optimiser."""
        self.run.vit = None


def _check_ratios(ratios: Any) -> tuple[float, ...]:
    values = tuple(float(r) for r in ratios) if isinstance(ratios, (list, tuple)) else ()
    if not values:
        raise ValueError(f"keep_ratios must be a non-empty list of numbers in (0, 1], got {ratios!r}")
    for r in values:
        kept_count(1, r)  # raises for anything outside (0, 1]
    if len(set(values)) != len(values):
        raise ValueError(f"keep_ratios must not repeat a value, got {values}")
    return values
