"""Layer-subset search: vectorised scoring of static block subsets, the pymoo problem, NSGA-II, fine-tuning.

:func:`evaluate_subsets` is the fitness of the layer-subset search and the tool ``train/benchmark.py``
uses to find the best static subset of each size (exhaustively: all ``2**depth`` masks in one call
for depths up to about 12). It never runs an individual on its own: each chunk of images is
embedded once, the individuals share the computation of their common prefix of kept blocks
(:mod:`agents.nsga2.trie`), and the head runs once per distinct subset.

:class:`LayerSubsetProblem` wraps it as a pymoo ``Problem`` (one bit per block; objectives: top-1
error and kept compute share), :func:`search_layers` runs binary NSGA-II on it, and
:func:`finetune` briefly re-trains a pruned model (:meth:`SkippableViT.pruned`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.callback import Callback
from pymoo.core.problem import Problem
from pymoo.operators.crossover.pntx import TwoPointCrossover
from pymoo.operators.mutation.bitflip import BitflipMutation
from pymoo.operators.sampling.rnd import BinaryRandomSampling
from pymoo.optimize import minimize

from vitskip_env.data import ImageDataset
from vitskip_env.model import SkippableViT, class_token_ready, run_block_class_token
from vitskip_env.model.costs import CostModel, block_costs

from ..cotraining import PathRecipe, PathTrainer
from .cache import PrefixCache, fingerprint
from .front import FRONT_COLUMNS, mask_to_str, non_dominated, str_to_mask, write_front
from .trie import State, block_runs, check_masks, walk_trie


def prepare_images(
    images: torch.Tensor, labels: torch.Tensor, dataset: ImageDataset | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels on ``device``, checked; uint8 images stay uint8 (normalised chunk by chunk).

    Raises:
        ValueError: Shapes that do not match, or uint8 images without the ``dataset`` that normalises them.
    """
    if images.ndim != 4 or labels.shape != (images.shape[0],):
        raise ValueError(f"need images (N, 3, H, W) and labels (N,), got {tuple(images.shape)} and {tuple(labels.shape)}")
    if images.dtype == torch.uint8 and dataset is None:
        raise ValueError("uint8 images need dataset= (its normalize() turns them into the backbone's input)")
    return images.to(device), labels.to(device=device, dtype=torch.long)


def embed(backbone: SkippableViT, images: torch.Tensor, dataset: ImageDataset | None) -> torch.Tensor:
    """Tokens of a chunk of images (uint8 ones normalised by ``dataset`` first)."""
    if images.dtype == torch.uint8:
        if dataset is None:
            raise ValueError("uint8 images need dataset= (its normalize() turns them into the backbone's input)")
        images = dataset.normalize(images)
    return backbone.embed(images)


@torch.inference_mode()
def evaluate_subsets(
    backbone: SkippableViT,
    masks: torch.Tensor | np.ndarray | Sequence[Sequence[bool]],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    dataset: ImageDataset | None = None,
    batch_size: int = 256,
    costs: torch.Tensor | CostModel = "flops",
    cache: PrefixCache | None = None,
) -> dict[str, torch.Tensor]:
    """Top-1 and compute of every static block subset in ``masks`` on the same images, in one pass.

    Chunk by chunk of ``batch_size`` images: one embedding, then a depth-first walk of the masks'
    prefix trie (:func:`agents.nsga2.trie.walk_trie`): every distinct prefix of kept blocks runs its
    last block once for all the subsets that share it, removed blocks cost nothing, and the head
    runs once per distinct subset. Identical masks are scored once. Peak memory: about
    ``depth + 2`` token states of ``batch_size`` images, plus one block's activations.

    Args:
        backbone: The ViT (put in eval mode for the call, restored afterwards).
        masks: ``bool (P, depth)``, True = block kept.
        images: ``uint8 (N, 3, H, W)`` (with ``dataset``) or normalised float images.
        labels: ``int64 (N,)``.
        dataset: Normalises uint8 images (``dataset.normalize``).
        batch_size: Images per chunk, i.e. rows per block call (large on a GPU, ~256 on a CPU).
        costs: ``"flops"`` / ``"latency"`` (:func:`vitskip_env.model.costs.block_costs`; latency is measured
            at every call, so pass the tensor when calling repeatedly) or a ``(depth,)`` share per block.
        cache: Token states of trie nodes kept from earlier calls on the same backbone, images and
            ``batch_size`` (:class:`agents.nsga2.cache.PrefixCache`; it empties itself when any of them
            changed): a prefix some earlier call left behind is not run again. Scores are identical.

    Returns:
        CPU tensors with one entry per input mask: ``correct`` (int64), ``top1`` (percent,
        float64), ``kept_blocks`` (int64), ``compute`` (share of the block cost kept, float64); and
        the scalars ``images``, ``block_runs`` / ``naive_block_runs`` (block evaluations per image
        with prefix sharing / scoring each mask on its own) and ``block_calls`` (blocks actually run,
        summed over the chunks: fewer than ``block_runs`` per chunk when ``cache`` held some prefixes).

    Example:
        >>> masks = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0]], dtype=torch.bool)   # doctest: +SKIP
        >>> evaluate_subsets(vit, masks, ds.images[:1000], ds.labels[:1000], dataset=ds)["top1"]  # doctest: +SKIP
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    mask_np = check_masks(masks, backbone.depth)
    device = next(backbone.parameters()).device
    images, labels = prepare_images(images, labels, dataset, device)
    unique, inverse = np.unique(mask_np, axis=0, return_inverse=True)
    n = images.shape[0]
    correct = torch.zeros(len(unique), dtype=torch.long, device=device)
    was_training = backbone.training
    backbone.eval()
    # A trie leaf's output only feeds the head: with class-token pooling, run it for the class token alone.
    last_step = (lambda i, s: (run_block_class_token(backbone, i, s[0]),)) if class_token_ready(backbone) else None
    if cache is not None:
        cache.bind(fingerprint(backbone, images, dataset, batch_size, "subsets"))
    calls = 0
    try:
        for k, start in enumerate(range(0, n, batch_size)):
            x, y = images[start : start + batch_size], labels[start : start + batch_size]

            def finish(state: State, mask_id: int, y: torch.Tensor = y) -> None:
                correct[mask_id] += (backbone.head(state[0]).argmax(1) == y).sum()

            calls += walk_trie(
                unique, lambda x=x: (embed(backbone, x, dataset),), lambda i, s: (backbone.run_block(i, s[0]),), finish,
                last_step, None if cache is None else cache.chunk(k),
            )  # fmt: skip
    finally:
        backbone.train(was_training)
    share = _costs(backbone, costs, device).cpu().double()
    kept = torch.from_numpy(mask_np)
    per_mask = correct.cpu()[torch.from_numpy(inverse.reshape(-1))]
    return {
        "correct": per_mask,
        "top1": 100.0 * per_mask.double() / max(1, n),
        "kept_blocks": kept.sum(1),
        "compute": kept.double() @ share,
        "images": torch.tensor(n),
        "block_runs": torch.tensor(block_runs(unique)),
        "naive_block_runs": torch.tensor(int(mask_np.sum())),
        "block_calls": torch.tensor(calls),
    }


def _costs(backbone: SkippableViT, costs: torch.Tensor | CostModel, device: torch.device) -> torch.Tensor:
    if isinstance(costs, torch.Tensor):
        if costs.shape != (backbone.depth,):
            raise ValueError(f"costs must have shape ({backbone.depth},) (one share per block), got {tuple(costs.shape)}")
        return costs.to(device)
    return block_costs(backbone, costs)


# ---------------------------------------------------------------------------------------- the pymoo problem
class LayerSubsetProblem(Problem):
    """Which blocks to keep: one bit per block, minimising (top-1 error in %, kept share of the block cost).

    ``_evaluate`` scores the whole population with one :func:`evaluate_subsets` call on the
    problem's images (the model stays in this process: no per-individual process, no pickling).
    A subset already scored is not scored again (results are cached by mask), and the token states
    of kept-block prefixes are kept from one generation to the next within ``cache_mb``, so a later
    generation runs only the prefixes no earlier one computed. One inequality constraint keeps at
    least ``min_blocks`` blocks.

    Args:
        backbone: The ViT whose blocks are searched.
        images: Fitness images (``uint8`` with ``dataset``, or normalised), e.g. the ``val`` split.
        labels: Their labels.
        dataset: Normalises uint8 images.
        min_blocks: Fewest kept blocks allowed (``>= 1``).
        cost_model: ``"flops"`` (share of block FLOPs) or ``"latency"`` (measured once, on the backbone's device).
        batch_size: Images per chunk (see :func:`evaluate_subsets`).
        cache_mb: Memory (on the backbone's device) for token states of prefixes kept from one
            generation to the next (:class:`agents.nsga2.cache.PrefixCache`); 0 turns it off. Scores
            do not depend on it. A prefix takes images x tokens x width x 4 bytes (16.6 MiB for 2,000 ``demo`` images).

    Attributes:
        scores: ``{kept: (correct, compute)}`` of every subset scored so far.
        requested: Individuals pymoo asked for (``scores`` holds the distinct ones).
        eval_seconds: Time spent scoring.
        block_calls: Blocks run while scoring, summed over the chunks of images.
        cache: The :class:`agents.nsga2.cache.PrefixCache` (``cache.stats()``: hits, memory held).

    Example:
        >>> problem = LayerSubsetProblem(vit, val.images[:2000], val.labels[:2000], dataset=val)  # doctest: +SKIP
        >>> frame = search_layers(problem, pop_size=24, n_gen=10, seed=0)  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: SkippableViT,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        dataset: ImageDataset | None = None,
        min_blocks: int = 1,
        cost_model: CostModel = "flops",
        batch_size: int = 256,
        cache_mb: float = 1024.0,
    ) -> None:
        depth = backbone.depth
        if not isinstance(min_blocks, int) or not 1 <= min_blocks <= depth:
            raise ValueError(f"min_blocks must be an integer in [1, {depth}] (blocks the subset keeps), got {min_blocks!r}")
        super().__init__(n_var=depth, n_obj=2, n_ieq_constr=1, xl=0, xu=1, vtype=bool)
        device = next(backbone.parameters()).device
        self.backbone = backbone
        self.images, self.labels = prepare_images(images, labels, dataset, device)
        self.dataset = dataset
        self.min_blocks = min_blocks
        self.costs = block_costs(backbone, cost_model)
        self.cost_model = cost_model
        self.batch_size = batch_size
        self.cache = PrefixCache(cache_mb)
        self.scores: dict[str, tuple[int, float]] = {}
        self.requested = 0
        self.eval_seconds = 0.0
        self.block_calls = 0

    def _evaluate(self, X: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        masks = check_masks(X, self.n_var)
        out["F"] = self.objectives(masks)
        out["G"] = (self.min_blocks - masks.sum(1)).astype(float)[:, None]

    def objectives(self, masks: np.ndarray) -> np.ndarray:
        """``float (P, 2)``: error (%) and compute share of each mask, scoring only masks not seen before."""
        keys = [mask_to_str(m) for m in masks]
        new = sorted({k for k in keys if k not in self.scores})
        self.requested += len(keys)
        if new:
            t0 = time.perf_counter()
            r = evaluate_subsets(
                self.backbone, np.stack([str_to_mask(k) for k in new]), self.images, self.labels,
                dataset=self.dataset, batch_size=self.batch_size, costs=self.costs, cache=self.cache,
            )  # fmt: skip
            self.eval_seconds += time.perf_counter() - t0
            self.block_calls += int(r["block_calls"])
            for k, correct, compute in zip(new, r["correct"].tolist(), r["compute"].tolist(), strict=True):
                self.scores[k] = (int(correct), float(compute))
        n = self.images.shape[0]
        return np.array([[100.0 - 100.0 * self.scores[k][0] / n, self.scores[k][1]] for k in keys])

    def evaluated(self) -> pd.DataFrame:
        """Every subset scored so far, as front rows (``split="val"``), feasible or not."""
        n, depth = self.images.shape[0], self.n_var
        rows = []
        for kept, (correct, compute) in self.scores.items():
            k = kept.count("1")
            top1 = 100.0 * correct / n
            rows.append(dict(search="layers", kept=kept, kept_blocks=k, removed_blocks=depth - k, top1=top1,
                             error=100.0 - top1, executed_blocks=float(k), executed_frac=k / depth, compute=compute,
                             split="val", images=n))  # fmt: skip
        return pd.DataFrame(rows, columns=[*FRONT_COLUMNS, "kept", "kept_blocks", "removed_blocks", "images"])

    def front(self) -> pd.DataFrame:
        """The non-dominated feasible subsets among all scored ones (error and compute), by compute."""
        frame = self.evaluated()
        frame = frame[frame["kept_blocks"] >= self.min_blocks]
        frame = frame[non_dominated(frame)] if len(frame) else frame
        return frame.sort_values(["compute", "error", "kept"]).reset_index(drop=True)


def binary_nsga2(pop_size: int) -> NSGA2:
    """NSGA-II with pymoo's binary operators: random bits, two-point crossover, bit-flip mutation, no duplicates."""
    if pop_size < 2:
        raise ValueError(f"pop_size must be >= 2 (NSGA-II mates pairs), got {pop_size}")
    return NSGA2(
        pop_size=pop_size,
        sampling=BinaryRandomSampling(),
        crossover=TwoPointCrossover(),
        mutation=BitflipMutation(),
        eliminate_duplicates=True,
    )


ProgressFn = Callable[[int, int, pd.DataFrame], None]
"""``callback(generation, evaluations, front)`` after every generation."""


class FrontTracker(Callback):
    """pymoo callback: after every generation, the current front of ``problem`` and a user callback.

    Attributes:
        front: The latest front (written on Ctrl-C).
        generation: Generations completed.
    """

    def __init__(self, front_fn: Callable[[], pd.DataFrame], callback: ProgressFn | None = None) -> None:
        super().__init__()
        self.front_fn = front_fn
        self.callback = callback
        self.front: pd.DataFrame | None = None
        self.generation = 0

    def notify(self, algorithm: Any) -> None:
        """Record the front after generation ``algorithm.n_gen`` and report it."""
        self.generation = int(algorithm.n_gen)
        self.front = self.front_fn()
        if self.callback is not None:
            self.callback(self.generation, int(algorithm.evaluator.n_eval), self.front)


def run_nsga2(
    problem: Problem,
    front_fn: Callable[[], pd.DataFrame],
    *,
    pop_size: int,
    n_gen: int,
    seed: int,
    out_dir: str | os.PathLike | None = None,
    callback: ProgressFn | None = None,
) -> pd.DataFrame:
    """Run binary NSGA-II on ``problem`` and return ``front_fn()``; on Ctrl-C write the current front and re-raise.

    Raises:
        KeyboardInterrupt: After writing the front of the last completed generation to ``out_dir``.
    """
    if n_gen < 1:
        raise ValueError(f"n_gen must be >= 1, got {n_gen}")
    tracker = FrontTracker(front_fn, callback)
    try:
        minimize(problem, binary_nsga2(pop_size), ("n_gen", n_gen), seed=seed, callback=tracker, verbose=False)
    except KeyboardInterrupt:
        if out_dir is not None and tracker.front is not None and len(tracker.front):
            write_front(tracker.front, out_dir)
        raise
    return front_fn()


def search_layers(
    problem: LayerSubsetProblem,
    *,
    pop_size: int = 24,
    n_gen: int = 10,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    callback: ProgressFn | None = None,
) -> pd.DataFrame:
    """NSGA-II over static layer subsets; returns the front (non-dominated among every subset scored, on ``split="val"``).

    Args:
        problem: The :class:`LayerSubsetProblem` (its images are the fitness split).
        pop_size: Population size (and offspring per generation).
        n_gen: Generations.
        seed: pymoo seed (same seed, same images -> the same front).
        out_dir: Where the current front is written if the search is interrupted.
        callback: ``callback(generation, evaluations, front)`` after every generation.
    """
    return run_nsga2(problem, problem.front, pop_size=pop_size, n_gen=n_gen, seed=seed, out_dir=out_dir, callback=callback)


# ---------------------------------------------------------------------------------------- fine-tuning a pruned model
def finetune(
    model: SkippableViT,
    train: ImageDataset,
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 3e-4,
    weight_decay: float = 0.05,
    label_smoothing: float = 0.1,
    seed: int = 0,
) -> SkippableViT:
    """A short AdamW fine-tune of ``model`` (e.g. a pruned subset) on ``train``, in place; returned in eval mode.

    Random batches with the dataset's crop (+ flip) augmentation (:func:`vitskip_env.data.augment.augment_kwargs`),
    label smoothing, cosine decay from ``lr`` to 0 and gradient clipping at 1, like ``train/backbone.py``
    but without its warm-up, curriculum and block dropping (the subset is static).
    """
    recipe = PathRecipe(steps, batch_size, lr, weight_decay, label_smoothing)
    return PathTrainer(model, train, recipe, seed=seed).run(steps)
