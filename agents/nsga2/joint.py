"""Joint RL + NSGA-II: a GA over static layer subsets whose fitness is the RL reward of the skip agent.

A trained agent (a :class:`~vitskip_env.DynamicViT`) keeps deciding per image, but only among the
blocks a subset keeps: removed blocks are forced skipped (and the agent sees them as skipped, as if it
had skipped them itself). The fitness of a subset is the environment's episode reward averaged over
the fitness images, computed by the env's own reward model (:meth:`vitskip_env.env.rewards.RewardModel.episode`:
by default ``accuracy_weight * correct + confidence_weight * log p(true class) - compute_weight *
(cost share of the executed blocks)``, or the components of a custom ``reward_fn``), so the GA sees
the skipping dynamics: removing a block the agent rarely runs costs little, removing one it relies
on costs accuracy. Objectives: maximise the mean reward, minimise the kept blocks (a smaller model).

A population is scored in one pass through the prefix trie of its masks (:mod:`agents.nsga2.trie`):
the agent's decisions depend only on the tokens and the executed mask, so subsets that keep the
same first blocks share their states, decisions included. A chosen subset deploys as a
:class:`SubsetDynamicViT`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pymoo.core.problem import Problem
from torch import nn

from vitskip_env.data import ImageDataset
from vitskip_env.deploy import DynamicViT
from vitskip_env.env.rewards import DEFAULT_WEIGHTS, WEIGHT_NAMES, RewardFn, RewardModel
from vitskip_env.model import run_executing_rows
from vitskip_env.model.costs import CostModel, block_costs

from .cache import PrefixCache, fingerprint
from .front import FRONT_COLUMNS, mask_to_str, non_dominated, str_to_mask
from .layers import ProgressFn, embed, prepare_images, run_nsga2
from .trie import State, check_masks, walk_trie


def reward_weights(run_dir: str | os.PathLike) -> dict[str, float]:
    """The reward weights a training run used (``{"correct", "confidence", "compute"}``), from its ``args.yaml``.

    Raises:
        FileNotFoundError: The run directory has no ``args.yaml``.
    """
    import yaml

    path = Path(run_dir) / "args.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no args.yaml in {str(run_dir)!r}: pass a run directory written by train/ppo.py (or a2c, ...)"
        )
    args = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {comp: float(args.get(kw, DEFAULT_WEIGHTS[comp])) for kw, comp in WEIGHT_NAMES.items()}


def joint_step(dyn: DynamicViT, block: int, tokens: torch.Tensor, executed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The agent decides ``block`` for every row (as ``DynamicViT.forward`` does) and the executing rows run it.

    Returns new tensors (the inputs are left unchanged, so states can be shared).
    """
    if block in dyn.policy.always_execute:
        execute = torch.ones(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    else:
        execute = dyn.decide(block, tokens, executed)
    executed = executed.clone()
    executed[:, block] = execute
    return run_executing_rows(dyn.backbone, block, tokens, execute, inplace=False), executed


@torch.inference_mode()
def evaluate_joint(
    dyn: DynamicViT,
    masks: torch.Tensor | np.ndarray | Sequence[Sequence[bool]],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    dataset: ImageDataset | None = None,
    weights: Mapping[str, float] | None = None,
    reward_fn: RewardFn | None = None,
    batch_size: int = 256,
    costs: torch.Tensor | CostModel = "flops",
    cache: PrefixCache | None = None,
) -> dict[str, torch.Tensor]:
    """RL reward, top-1 and executed blocks of the agent restricted to each subset in ``masks``, in one pass.

    Args:
        dyn: The trained agent combined with its backbone.
        masks: ``bool (P, depth)``, True = block kept (the agent may run it), False = removed.
        images: ``uint8`` images (with ``dataset``) or normalised ones.
        labels: Their labels.
        dataset: Normalises uint8 images.
        weights: Reward weights ``{"correct", "confidence", "compute"}`` (missing ones: the env's
            defaults); use :func:`reward_weights` for a run's own.
        reward_fn: The env's custom component function, if the agent trained with one (``None``:
            the built-in components).
        batch_size: Images per chunk.
        costs: Cost share per block: ``"flops"``, ``"latency"`` or a ``(depth,)`` tensor (used as
            ``float32``, as the env does).
        cache: States (tokens and executed blocks) of kept-block prefixes from earlier calls on the
            same agent, images and ``batch_size`` (:class:`agents.nsga2.cache.PrefixCache`). The
            agent is deterministic, so a prefix's state is the same whichever subset it belongs to.

    Returns:
        CPU tensors with one entry per mask: ``reward`` (mean episode reward, summed over the steps
        in float64 by :meth:`~vitskip_env.env.rewards.RewardModel.episode`), ``top1`` (percent),
        ``correct``, ``executed_blocks`` (mean per image), ``compute`` (mean executed cost share),
        ``kept_blocks``; and the scalars ``images`` and ``block_calls`` (trie steps run, summed over the
        chunks; a step decides a block for every row and runs it for those that execute).
    """
    backbone = dyn.backbone
    rewards = RewardModel(weights or {}, reward_fn)
    mask_np = check_masks(masks, backbone.depth)
    device = next(backbone.parameters()).device
    images, labels = prepare_images(images, labels, dataset, device)
    share = costs.to(device) if isinstance(costs, torch.Tensor) else block_costs(backbone, costs)
    unique, inverse = np.unique(mask_np, axis=0, return_inverse=True)
    sums = torch.zeros(len(unique), 4, dtype=torch.float64, device=device)  # reward, correct, executed, compute
    was_training = dyn.training
    dyn.eval()
    if cache is not None:
        cache.bind(fingerprint(dyn, images, dataset, batch_size, "joint"))

    def root(x: torch.Tensor) -> State:
        tokens = embed(backbone, x, dataset)
        return tokens, torch.zeros(tokens.shape[0], backbone.depth, dtype=torch.bool, device=device)

    calls = 0
    try:
        for k, start in enumerate(range(0, images.shape[0], batch_size)):
            x, y = images[start : start + batch_size], labels[start : start + batch_size]

            def finish(state: State, mask_id: int, y: torch.Tensor = y) -> None:
                tokens, executed = state
                logits = backbone.head(tokens)
                reward, _ = rewards.episode(executed, logits, y, share)
                correct = (F.log_softmax(logits.float(), 1).argmax(1) == y).double()
                compute = executed.double() @ share.double()
                sums[mask_id] += torch.stack([reward.sum(), correct.sum(), executed.sum().double(), compute.sum()])

            view = None if cache is None else cache.chunk(k)
            calls += walk_trie(unique, lambda x=x: root(x), lambda i, s: joint_step(dyn, i, *s), finish, cache=view)
    finally:
        dyn.train(was_training)
    n = max(1, images.shape[0])
    per_mask = (sums.cpu() / n)[torch.from_numpy(inverse.reshape(-1))]
    return {
        "reward": per_mask[:, 0],
        "top1": 100.0 * per_mask[:, 1],
        "correct": (per_mask[:, 1] * n).round().long(),
        "executed_blocks": per_mask[:, 2],
        "compute": per_mask[:, 3],
        "kept_blocks": torch.from_numpy(mask_np).sum(1),
        "images": torch.tensor(images.shape[0]),
        "block_calls": torch.tensor(calls),
    }


class JointSubsetProblem(Problem):
    """Which blocks the agent may use: one bit per block; minimise (-mean RL reward, kept share of the blocks).

    Args:
        dyn: The trained agent (``DynamicViT``).
        images: Fitness images (e.g. the ``val`` split) and ``labels``.
        labels: Their labels.
        dataset: Normalises uint8 images.
        weights: Reward weights (:func:`reward_weights` of the agent's run).
        reward_fn: The env's custom component function, if the agent trained with one.
        min_blocks: Fewest kept blocks allowed.
        batch_size: Images per chunk.
        cache_mb: Memory for prefix states kept between generations (see :class:`LayerSubsetProblem`); 0: off.
    """

    def __init__(
        self,
        dyn: DynamicViT,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        dataset: ImageDataset | None = None,
        weights: Mapping[str, float] | None = None,
        reward_fn: RewardFn | None = None,
        min_blocks: int = 1,
        batch_size: int = 256,
        cache_mb: float = 1024.0,
    ) -> None:
        depth = dyn.depth
        if not isinstance(min_blocks, int) or not 1 <= min_blocks <= depth:
            raise ValueError(f"min_blocks must be an integer in [1, {depth}] (blocks the subset keeps), got {min_blocks!r}")
        super().__init__(n_var=depth, n_obj=2, n_ieq_constr=1, xl=0, xu=1, vtype=bool)
        self.dyn = dyn
        self.images, self.labels = prepare_images(images, labels, dataset, next(dyn.backbone.parameters()).device)
        self.dataset = dataset
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        self.reward_fn = reward_fn
        self.min_blocks = min_blocks
        self.batch_size = batch_size
        self.costs = block_costs(dyn.backbone, "flops")
        self.cache = PrefixCache(cache_mb)
        self.scores: dict[str, dict[str, float]] = {}
        self.requested = 0
        self.eval_seconds = 0.0

    def _evaluate(self, X: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        masks = check_masks(X, self.n_var)
        self.score(masks)
        self.requested += len(masks)
        keys = [mask_to_str(m) for m in masks]
        out["F"] = np.array([[-self.scores[k]["reward"], k.count("1") / self.n_var] for k in keys])
        out["G"] = (self.min_blocks - masks.sum(1)).astype(float)[:, None]

    def score(self, masks: np.ndarray) -> None:
        """Score the masks not seen before (one :func:`evaluate_joint` call)."""
        new = sorted({mask_to_str(m) for m in masks} - set(self.scores))
        if not new:
            return
        t0 = time.perf_counter()
        masks = np.stack([str_to_mask(k) for k in new])
        r = evaluate_joint(self.dyn, masks, self.images, self.labels, dataset=self.dataset, weights=self.weights,
                           reward_fn=self.reward_fn, batch_size=self.batch_size, costs=self.costs,
                           cache=self.cache)  # fmt: skip
        self.eval_seconds += time.perf_counter() - t0
        for j, k in enumerate(new):
            self.scores[k] = {name: float(r[name][j]) for name in ("reward", "top1", "executed_blocks", "compute")}

    def evaluated(self) -> pd.DataFrame:
        """Every subset scored so far, as front rows (``search="joint"``, ``split="val"``)."""
        n, depth = self.images.shape[0], self.n_var
        rows = []
        for kept, s in self.scores.items():
            k = kept.count("1")
            rows.append(dict(search="joint", top1=s["top1"], error=100.0 - s["top1"], executed_blocks=s["executed_blocks"],
                             executed_frac=s["executed_blocks"] / depth, compute=s["compute"], split="val", kept=kept,
                             kept_blocks=k, removed_blocks=depth - k, reward=s["reward"], images=n))  # fmt: skip
        return pd.DataFrame(rows, columns=[*FRONT_COLUMNS, "kept", "kept_blocks", "removed_blocks", "reward", "images"])

    def front(self) -> pd.DataFrame:
        """Non-dominated feasible subsets (highest reward for their number of kept blocks), fewest blocks first."""
        frame = self.evaluated()
        frame = frame[frame["kept_blocks"] >= self.min_blocks].assign(neg_reward=lambda f: -f["reward"])
        if len(frame):
            frame = frame[non_dominated(frame, ("neg_reward", "kept_blocks"))]
        return frame.drop(columns="neg_reward").sort_values(["kept_blocks", "kept"]).reset_index(drop=True)


def search_joint(
    problem: JointSubsetProblem,
    *,
    pop_size: int = 16,
    n_gen: int = 8,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    callback: ProgressFn | None = None,
) -> pd.DataFrame:
    """NSGA-II over the subsets the agent may use; returns the front (reward vs kept blocks, on the fitness split).

    On Ctrl-C the front of the last completed generation is written to ``out_dir`` and the interrupt re-raised.
    """
    return run_nsga2(problem, problem.front, pop_size=pop_size, n_gen=n_gen, seed=seed, out_dir=out_dir, callback=callback)


class SubsetDynamicViT(nn.Module):
    """A :class:`~vitskip_env.DynamicViT` whose agent may only use the kept blocks: removed blocks never run.

    Args:
        dyn: The agent combined with its backbone.
        kept: ``bool (depth,)`` mask or kept block indices.

    Example:
        >>> model = SubsetDynamicViT(DynamicViT.load("runs/x/dynamic_vit.safetensors"), [0, 1, 2, 3, 4])  # doctest: +SKIP
        >>> logits, executed = model(images, return_mask=True)  # doctest: +SKIP
    """

    def __init__(self, dyn: DynamicViT, kept: Sequence[bool] | Sequence[int] | np.ndarray) -> None:
        super().__init__()
        values = list(np.asarray(kept).reshape(-1))
        if values and all(isinstance(v, (bool, np.bool_)) for v in values):
            kept_idx = [i for i, v in enumerate(values) if v] if len(values) == dyn.depth else None
        else:
            kept_idx = sorted({int(v) for v in values})
        if not kept_idx or any(not 0 <= i < dyn.depth for i in kept_idx):
            raise ValueError(f"kept must be a ({dyn.depth},) bool mask or block indices in [0, {dyn.depth - 1}], got {values}")
        self.dyn = dyn
        self.kept_blocks = kept_idx

    def forward(self, images: torch.Tensor, return_mask: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits for normalised images; with ``return_mask`` also the ``bool (B, depth)`` executed mask."""
        backbone = self.dyn.backbone
        tokens = backbone.embed(images)
        executed = torch.zeros(tokens.shape[0], backbone.depth, dtype=torch.bool, device=tokens.device)
        for i in self.kept_blocks:
            tokens, executed = joint_step(self.dyn, i, tokens, executed)
        logits = backbone.head(tokens)
        return (logits, executed) if return_mask else logits

    def save(self, path: str | os.PathLike, **meta: Any) -> Path:
        """Write the agent's ``DynamicViT`` file with the kept blocks in its config (``kept_blocks``)."""
        return self.dyn.save(path, kept_blocks=self.kept_blocks, **meta)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> SubsetDynamicViT:
        """Load a file written by :meth:`save`.

        Raises:
            ValueError: The file is a plain ``DynamicViT`` without ``kept_blocks``.
        """
        dyn = DynamicViT.load(path, device=device)
        kept = dyn.meta.get("kept_blocks")
        if kept is None:
            raise ValueError(f"{str(path)!r} is a DynamicViT without 'kept_blocks'; load it with DynamicViT.load")
        return cls(dyn, kept).eval()
