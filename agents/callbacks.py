"""Stable-Baselines3 callbacks: skip-aware evaluation with a best model, and resumable checkpoints.

* :class:`SkipEvalCallback`: every ``eval_freq`` environment steps, :func:`~agents.evaluation.evaluate_agent`
  on the test split (deterministic policy, each image once) -> ``vitskip/top1``,
  ``vitskip/executed_blocks``, ``vitskip/block_<i>_rate``... in the SB3 logger (TensorBoard, CSV);
  the best model so far is saved.
* :class:`SkipCheckpointCallback`: resumable checkpoints at rollout boundaries in the safe format
  of :mod:`agents.checkpoint` (:func:`save_checkpoint` / :func:`load_checkpoint`, re-exported here).
* :func:`save_model`: SB3's own ``model.zip`` (+ ``*_vecnormalize.pkl``) for SB3 users. Those files
  hold pickles, which run code when loaded: load them only from folders you trust. Resuming never
  reads them.

Both also work with :class:`~agents.reinforce.Reinforce` (it exposes what callbacks use:
``num_timesteps``, ``logger``, ``get_env``, ``predict``, ``save``).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from vitskip_env.files import atomic_path, atomic_write_text

from .checkpoint import CHECKPOINT_META, load_checkpoint, save_checkpoint
from .evaluation import evaluate_agent, make_eval_env

__all__ = [
    "CHECKPOINT_META",
    "LOGGED_KEYS",
    "SkipCheckpointCallback",
    "SkipEvalCallback",
    "load_checkpoint",
    "model_filename",
    "save_checkpoint",
    "save_model",
]

#: Evaluation results logged as ``vitskip/<key>`` (plus ``vitskip/block_<i>_rate``).
LOGGED_KEYS = (
    "top1",
    "executed_blocks",
    "executed_frac",
    "compute_ratio",
    "mean_return",
    "difficulty_corr",
    "throughput_ratio",
)


def model_filename(model: Any, name: str = "model") -> str:
    """``name.zip`` for SB3 models, ``name.pt`` for others (what their ``save`` writes)."""
    return f"{name}.zip" if isinstance(model, BaseAlgorithm) else f"{name}.pt"


def save_model(model: Any, directory: str | os.PathLike, name: str = "model") -> list[str]:
    """Save ``model`` and its ``VecNormalize`` statistics (``<name>_vecnormalize.pkl``) atomically; returns the file names.

    An export for Stable-Baselines3 users (``PPO.load``): these files hold pickles, which run code
    when loaded, so load them only from folders you trust. Checkpoints for resuming are written by
    :func:`save_checkpoint` instead.
    """
    directory = Path(directory)
    files = [model_filename(model, name)]
    with atomic_path(directory / files[0]) as tmp:
        if isinstance(model, BaseAlgorithm):
            with open(tmp, "wb") as f:  # a file object: SB3 would append ".zip" to a bare path
                model.save(f)
        else:
            model.save(tmp)
    vec_normalize = model.get_vec_normalize_env() if hasattr(model, "get_vec_normalize_env") else None
    if vec_normalize is not None:
        files.append(f"{name}_vecnormalize.pkl")
        with atomic_path(directory / files[-1]) as tmp:
            vec_normalize.save(tmp)
    return files


class SkipCheckpointCallback(BaseCallback):
    """:func:`~agents.checkpoint.save_checkpoint` every ``save_freq`` environment steps, at rollout boundaries.

    Checkpoints are taken only between two updates (at the start of a rollout, and when training
    ends), never in the middle of a rollout or an update, so that resuming one continues exactly
    as the uninterrupted run would have. :meth:`request_stop` (e.g. from a SIGINT handler) makes
    the next boundary write a checkpoint and stop training; :attr:`stopped` then holds.

    Args:
        save_freq: Environment steps (transitions, all envs together) between checkpoints (the
            first rollout boundary at or after each multiple).
        save_path: Checkpoint folder (the latest checkpoint only).
        save_on_end: Also save when training ends.
        verbose: 1 prints a line per checkpoint.
        agent_kwargs: JSON-able arguments the agent was built with (recorded in the checkpoint).
        extra_fn: ``() -> dict`` of more JSON to record with each checkpoint (e.g. time spent).
    """

    def __init__(
        self,
        save_freq: int,
        save_path: str | os.PathLike,
        save_on_end: bool = True,
        verbose: int = 0,
        agent_kwargs: dict[str, Any] | None = None,
        extra_fn: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(verbose)
        if save_freq < 1:
            raise ValueError(f"save_freq must be >= 1 environment steps, got {save_freq}")
        self.save_freq, self.save_path, self.save_on_end = save_freq, Path(save_path), save_on_end
        self.agent_kwargs, self.extra_fn = agent_kwargs, extra_fn
        self.stop_requested = False
        self.stopped = False
        self.last_saved: int | None = None
        self.unsupported = False
        self._next = save_freq

    def request_stop(self) -> None:
        """Save at the next rollout boundary (after the update in progress) and stop training there."""
        self.stop_requested = True

    def _on_training_start(self) -> None:
        self._next = (self.model.num_timesteps // self.save_freq + 1) * self.save_freq

    def _on_rollout_start(self) -> None:
        if self.stopped:
            return
        if self.stop_requested:
            self._save()
            self.stopped = True
        elif self.num_timesteps >= self._next:
            self._next = (self.num_timesteps // self.save_freq + 1) * self.save_freq
            self._save()

    def _on_step(self) -> bool:
        return not self.stopped

    def _on_training_end(self) -> None:
        if self.stopped:
            return
        if self.save_on_end or self.stop_requested:
            self._save()
        self.stopped = self.stop_requested  # a stop asked for during the last update still counts as an interruption

    def _save(self) -> None:
        if self.unsupported:
            return
        extra = self.extra_fn() if self.extra_fn is not None else None
        try:
            path = save_checkpoint(self.model, self.save_path, agent_kwargs=self.agent_kwargs, extra=extra)
        except TypeError as err:  # an agent class the checkpoint format does not know: train on, without checkpoints
            self.unsupported = True
            warnings.warn(f"{err}; this run takes no checkpoints and cannot be resumed", stacklevel=2)
            return
        self.last_saved = int(self.model.num_timesteps)
        if self.verbose:
            print(f"checkpoint at {self.model.num_timesteps} steps: {path.parent}")


class SkipEvalCallback(BaseCallback):
    """Evaluate the deterministic policy on the test split every ``eval_freq`` environment steps.

    Logs ``vitskip/top1``, ``vitskip/executed_blocks``, ``vitskip/executed_frac``,
    ``vitskip/compute_ratio``, ``vitskip/mean_return``, ``vitskip/difficulty_corr`` (shapes),
    ``vitskip/throughput_ratio`` (with ``throughput_fn``) and ``vitskip/block_<i>_rate`` (not on
    stdout), then dumps the logger. Saves the model with the best ``best_metric`` so far.

    Args:
        env_kwargs: The training env's keyword arguments (the eval env is a frozen, sequential
            ``ViTSkipVectorEnv`` on ``split`` built from them).
        eval_freq: Environment steps (all envs together) between evaluations.
        n_images: Test images per evaluation, each seen once (``None``: the whole split).
        num_envs: Images per evaluation batch.
        split: Split to evaluate on.
        best_model_save_path: Folder for ``best_model.zip`` / ``.pt`` and ``best_model.json`` (``None``: not saved).
        best_metric: Key of the evaluation result to maximise (the env's own objective ``mean_return`` by default).
        throughput_fn: Optional ``fn(model) -> float``, speed-up vs the static backbone (e.g. via ``DynamicViT``).
        share_backbone: Evaluate on the training env's backbone module (no second copy; sees co-trained weights).
        final_eval: Evaluate once more when training ends (unless just done).
        verbose: 1 prints a line per evaluation.
    """

    def __init__(
        self,
        env_kwargs: Mapping[str, Any],
        eval_freq: int,
        n_images: int | None = 1000,
        num_envs: int = 256,
        split: str = "test",
        best_model_save_path: str | os.PathLike | None = None,
        best_metric: str = "mean_return",
        throughput_fn: Callable[[Any], float] | None = None,
        share_backbone: bool = True,
        final_eval: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if eval_freq < 1:
            raise ValueError(f"eval_freq must be >= 1 environment steps, got {eval_freq}")
        self.env_kwargs, self.eval_freq, self.n_images = dict(env_kwargs), eval_freq, n_images
        self.num_envs, self.split, self.best_metric = num_envs, split, best_metric
        self.best_model_save_path = None if best_model_save_path is None else Path(best_model_save_path)
        self.throughput_fn, self.share_backbone, self.final_eval = throughput_fn, share_backbone, final_eval
        self.best_value = -math.inf
        self.last_result: dict[str, Any] | None = None
        self.history: list[tuple[int, dict[str, Any]]] = []
        self.eval_env: Any = None
        self._next, self._last_eval_step = eval_freq, -1

    def _init_callback(self) -> None:
        kwargs = dict(self.env_kwargs)
        backbone = getattr(self.training_env.unwrapped, "backbone", None)
        if self.share_backbone and isinstance(backbone, nn.Module):
            kwargs["backbone"] = backbone
            heads = getattr(self.training_env.unwrapped, "exit_heads", None)
            if heads is not None:  # actions="skip_exit": the same heads on the same backbone
                kwargs["exits"] = heads
        self.eval_env = make_eval_env(kwargs, min(self.num_envs, self.n_images or self.num_envs), self.split)
        best_json = self.best_model_save_path / "best_model.json" if self.best_model_save_path else None
        if best_json is not None and best_json.is_file():  # resumed run: only a better model replaces it
            self.best_value = _recorded_best(best_json)

    def _on_training_start(self) -> None:
        self._next = (self.model.num_timesteps // self.eval_freq + 1) * self.eval_freq

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next = (self.num_timesteps // self.eval_freq + 1) * self.eval_freq
            self.evaluate()
        return True

    def _on_training_end(self) -> None:
        if self.final_eval and self._last_eval_step != self.num_timesteps:
            self.evaluate()

    def evaluate(self) -> dict[str, Any]:
        """Evaluate now, log, and save the model if it is the best so far; returns the result."""
        result = evaluate_agent(self.model, self.eval_env, self.n_images, throughput_fn=self.throughput_fn)
        self.last_result, self._last_eval_step = result, self.num_timesteps
        self.history.append((self.num_timesteps, result))
        for key in LOGGED_KEYS:
            if key in result:
                self.logger.record(f"vitskip/{key}", result[key])
        for i, rate in enumerate(result["block_rates"]):
            self.logger.record(f"vitskip/block_{i}_rate", rate, exclude="stdout")
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(self.num_timesteps)
        if self.verbose:
            print(
                f"eval at {self.num_timesteps} steps: top1 {result['top1']:.2f}%, executed blocks "
                f"{result['executed_blocks']:.2f}, mean return {result['mean_return']:.4f}"
            )
        value = float(result[self.best_metric])
        if value > self.best_value:
            self.best_value = value
            if self.best_model_save_path is not None:
                save_model(self.model, self.best_model_save_path, "best_model")
                summary = {k: v for k, v in result.items() if k != "episodes"}
                meta = {"metric": self.best_metric, "value": value, "num_timesteps": self.num_timesteps, "result": summary}
                atomic_write_text(self.best_model_save_path / "best_model.json", json.dumps(meta, indent=2) + "\n")
        return result


def _recorded_best(path: Path) -> float:
    """The finite ``value`` of a run's ``best_model.json``; ``ValueError`` naming the file otherwise."""
    try:
        value = float(json.loads(path.read_text(encoding="utf-8"))["value"])
    except (ValueError, KeyError, TypeError, IndexError, RecursionError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a best_model.json written by a run ({type(err).__name__}: {err}); "
                         "delete it to let this run record its own best model") from None  # fmt: skip
    if not math.isfinite(value):
        raise ValueError(f"{path} records a best value of {value}; delete it to let this run record its own best model")
    return value
