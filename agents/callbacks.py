"""Stable-Baselines3 callbacks: skip-aware evaluation with a best model, and resumable checkpoints.

* :class:`SkipEvalCallback`: every ``eval_freq`` environment steps, :func:`~agents.evaluation.evaluate_agent`
  on the test split (deterministic policy, each image once) -> ``vitskip/top1``,
  ``vitskip/executed_blocks``, ``vitskip/block_<i>_rate``... in the SB3 logger (TensorBoard, CSV);
  the best model so far is saved.
* :class:`SkipCheckpointCallback` / :func:`save_checkpoint` / :func:`load_checkpoint`: the model,
  the ``VecNormalize`` statistics and the replay buffer (off-policy) in one folder, written
  atomically, and loaded back for ``--resume``.

Both also work with :class:`~agents.reinforce.Reinforce` (it exposes what callbacks use:
``num_timesteps``, ``logger``, ``get_env``, ``predict``, ``save``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecNormalize, unwrap_vec_normalize
from torch import nn

from vitskip_env._io import atomic_path, atomic_write_text

from .evaluation import evaluate_agent, make_eval_env

CHECKPOINT_META = "checkpoint.json"
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
    """Save ``model`` and its ``VecNormalize`` statistics (``<name>_vecnormalize.pkl``) atomically; returns the file names."""
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


def save_checkpoint(model: Any, directory: str | os.PathLike) -> Path:
    """Everything needed to resume training, in ``directory`` (overwriting the previous checkpoint).

    Writes ``model.zip`` / ``model.pt``, ``model_vecnormalize.pkl`` (with ``VecNormalize``),
    ``replay_buffer.pkl`` (off-policy algorithms) and, last, ``checkpoint.json`` (algorithm class,
    ``num_timesteps``, files). Each file is replaced atomically, so an interrupted save keeps the
    previous checkpoint readable.

    Returns:
        The path of ``checkpoint.json``.
    """
    directory = Path(directory)
    files = save_model(model, directory)
    if getattr(model, "replay_buffer", None) is not None and hasattr(model, "save_replay_buffer"):
        files.append("replay_buffer.pkl")
        with atomic_path(directory / files[-1]) as tmp:
            model.save_replay_buffer(tmp)
    cls = type(model)
    meta = {"algo": f"{cls.__module__}:{cls.__qualname__}", "num_timesteps": int(model.num_timesteps), "files": files}
    atomic_write_text(directory / CHECKPOINT_META, json.dumps(meta, indent=2) + "\n")
    return directory / CHECKPOINT_META


def load_checkpoint(directory: str | os.PathLike, env: Any = None, **load_kwargs: Any) -> Any:
    """Load what :func:`save_checkpoint` wrote, ready for ``model.learn(rest, reset_num_timesteps=False)``.

    Args:
        directory: The checkpoint folder.
        env: The training env built as for the original run, *without* ``VecNormalize``: if the
            checkpoint has ``VecNormalize`` statistics, the env is wrapped with them here.
        **load_kwargs: Passed to the class's ``load`` (``device``...).
    """
    from . import load_agent  # deferred: agents/__init__ imports this module

    directory = Path(directory)
    meta_path = directory / CHECKPOINT_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"no checkpoint in {directory} (missing {CHECKPOINT_META}); nothing to resume")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    files = set(meta["files"])
    if "model_vecnormalize.pkl" in files and env is not None:
        if isinstance(env, VecEnv) and unwrap_vec_normalize(env) is not None:
            raise ValueError("pass the env without VecNormalize: load_checkpoint restores it from the checkpoint")
        env = VecNormalize.load(str(directory / "model_vecnormalize.pkl"), env)
    model_file = next(f for f in meta["files"] if f.startswith("model."))
    model = load_agent(meta["algo"], directory / model_file, env=env, **load_kwargs)
    if "replay_buffer.pkl" in files and hasattr(model, "load_replay_buffer"):
        model.load_replay_buffer(directory / "replay_buffer.pkl")
    return model


class SkipCheckpointCallback(BaseCallback):
    """:func:`save_checkpoint` every ``save_freq`` environment steps (and at the end of training).

    Args:
        save_freq: Environment steps (transitions, all envs together) between checkpoints.
        save_path: Checkpoint folder (the latest checkpoint only).
        save_on_end: Also save when training ends.
        verbose: 1 prints a line per checkpoint.
    """

    def __init__(self, save_freq: int, save_path: str | os.PathLike, save_on_end: bool = True, verbose: int = 0) -> None:
        super().__init__(verbose)
        if save_freq < 1:
            raise ValueError(f"save_freq must be >= 1 environment steps, got {save_freq}")
        self.save_freq, self.save_path, self.save_on_end = save_freq, Path(save_path), save_on_end
        self._next = save_freq

    def _on_training_start(self) -> None:
        self._next = (self.model.num_timesteps // self.save_freq + 1) * self.save_freq

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next = (self.num_timesteps // self.save_freq + 1) * self.save_freq
            self._save()
        return True

    def _on_training_end(self) -> None:
        if self.save_on_end:
            self._save()

    def _save(self) -> None:
        path = save_checkpoint(self.model, self.save_path)
        if self.verbose:
            print(f"checkpoint at {self.num_timesteps} steps: {path.parent}")


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
        self.eval_env = make_eval_env(kwargs, min(self.num_envs, self.n_images or self.num_envs), self.split)
        best_json = self.best_model_save_path / "best_model.json" if self.best_model_save_path else None
        if best_json is not None and best_json.is_file():  # resumed run: only a better model replaces it
            self.best_value = float(json.loads(best_json.read_text(encoding="utf-8"))["value"])

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
