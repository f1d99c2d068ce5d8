"""Fine-tuning a backbone along execution paths: policy-aware co-training and its equal-budget baselines.

One recipe, :class:`PathRecipe`, trains every contender of ``train/joint.py``, so extra training is
never mistaken for a policy's merit: AdamW with cosine decay over the whole budget, the dataset's
crop (+ flip) augmentation, label smoothing, gradient clipping at 1 and, optionally, distillation
from a frozen teacher (the full-depth backbone as it was before any fine-tuning):

    loss = (1 - distill) * CE(student(x, mask), y) + distill * T^2 * KL(teacher(x) / T || student(x, mask) / T)

Only the *paths* differ between contenders (a :data:`MaskFn` per batch):

- :func:`policy_masks`: the blocks a ``DynamicViT`` executes for each augmented image (its
  deterministic decisions, made in eval mode before the training forward), so each block learns from
  the images that run it and only from those (the forward gathers the executing rows: a skipped block
  gets no gradient from an image that skipped it);
- ``None``: every block (the static backbone fine-tuned);
- a pruned backbone with ``None``: a static subset fine-tuned;
- :func:`random_depth_masks`: uniformly random blocks, each image as many as a depth histogram draws.

:class:`PathTrainer` keeps its optimiser, schedule, generator and step count in a state dict
(tensors and numbers only, no pickle) so a run resumes bit-exactly. ``agents.nsga2.finetune`` is this
trainer with ``distill=0``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vitskip_env.data import ImageDataset
from vitskip_env.data.augment import augment_kwargs, random_block_mask, random_crop_flip
from vitskip_env.model import SkippableViT

#: ``mask_fn(images) -> bool (B, depth)`` execute mask for a normalised batch, or ``None`` for every block.
MaskFn = Callable[[torch.Tensor], torch.Tensor | None]


@dataclass(frozen=True)
class PathRecipe:
    """The fine-tuning recipe every contender gets (equal budgets: same steps, same everything).

    Attributes:
        steps: Optimisation steps in all (the cosine schedule spans them, across resumes and rounds).
        batch_size: Images per step.
        lr: Peak AdamW learning rate (cosine decay to 0 over ``steps``).
        weight_decay: AdamW weight decay.
        label_smoothing: Cross-entropy label smoothing.
        distill: Weight of the distillation term in ``[0, 1]`` (0: cross-entropy only, no teacher needed).
        temperature: Distillation temperature.
        clip: Gradient-norm clip.
    """

    steps: int
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    distill: float = 0.0
    temperature: float = 1.0
    clip: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1 or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if not 0.0 <= self.distill <= 1.0:
            raise ValueError(f"distill must be in [0, 1] (the weight of the teacher term), got {self.distill}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ValueError(f"lr and temperature must be positive, got {self.lr} and {self.temperature}")

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain values (for args files and summaries)."""
        return asdict(self)


class PathTrainer:
    """Fine-tunes ``model`` in place with :class:`PathRecipe`, one path (mask) per image and step.

    Args:
        model: The backbone to train (updated in place; left in eval mode between calls).
        train: Training split (moved to the model's device).
        recipe: The recipe.
        teacher: Frozen full-depth teacher (required when ``recipe.distill > 0``; never updated).
        seed: Seed of the batch, augmentation and random-path draws.
    """

    def __init__(
        self,
        model: SkippableViT,
        train: ImageDataset,
        recipe: PathRecipe,
        *,
        teacher: SkippableViT | None = None,
        seed: int = 0,
    ) -> None:
        if recipe.distill > 0 and teacher is None:
            raise ValueError("recipe.distill > 0 needs a teacher (the frozen full-depth backbone)")
        self.model, self.recipe, self.teacher = model, recipe, teacher
        self.device = next(model.parameters()).device
        self.train = train.to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=recipe.steps)
        self.steps_done = 0
        self.last_loss: float | None = None
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    @property
    def remaining(self) -> int:
        """Steps left in the budget."""
        return self.recipe.steps - self.steps_done

    def run(self, steps: int, mask_fn: MaskFn | None = None) -> SkippableViT:
        """Take ``steps`` more steps (at most what is left of the budget); returns the model in eval mode."""
        if steps > self.remaining:
            raise ValueError(f"{steps} steps asked but only {self.remaining} of the {self.recipe.steps}-step budget are left")
        for _ in range(steps):
            self.step(mask_fn)
        return self.model.eval()

    def step(self, mask_fn: MaskFn | None = None) -> float:
        """One optimisation step on a random augmented batch along the paths ``mask_fn`` gives; returns the loss."""
        r, ds, g, model = self.recipe, self.train, self.generator, self.model
        idx = torch.randint(0, len(ds), (r.batch_size,), device=self.device, generator=g)
        x = ds.normalize(random_crop_flip(ds.images[idx], generator=g, **augment_kwargs(ds.name)))
        labels = ds.labels[idx]
        mask = None
        if mask_fn is not None:
            model.eval()  # the paths are decided as deployment decides them: eval mode, no gradient
            with torch.no_grad():
                mask = mask_fn(x)
        model.train()
        logits = model(x, execute_mask=mask)
        loss = F.cross_entropy(logits, labels, label_smoothing=r.label_smoothing)
        if r.distill > 0:
            assert self.teacher is not None
            with torch.no_grad():
                target = F.log_softmax(self.teacher(x).float() / r.temperature, dim=1)
            kd = F.kl_div(F.log_softmax(logits.float() / r.temperature, dim=1), target, reduction="batchmean", log_target=True)
            loss = (1 - r.distill) * loss + r.distill * r.temperature**2 * kd
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.steps_done += 1
        self.last_loss = float(loss.detach())
        model.eval()
        return self.last_loss

    def state_dict(self) -> dict[str, Any]:
        """Optimiser, schedule, generator and step count (with the model's weights, everything a resume needs)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "steps_done": self.steps_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the model's weights are restored separately)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.steps_done = int(state["steps_done"])


def policy_masks(dynamic: torch.nn.Module) -> MaskFn:
    """The paths a ``DynamicViT`` (or ``SkipExitViT``-like model with ``return_mask``) takes, as a :data:`MaskFn`."""

    def mask_fn(images: torch.Tensor) -> torch.Tensor:
        return dynamic(images, return_mask=True)[1]

    return mask_fn


def depth_histogram(executed: torch.Tensor) -> torch.Tensor:
    """``float64 (depth + 1,)``: the share of images executing 0..depth blocks in a ``bool (N, depth)`` mask."""
    counts = torch.bincount(executed.sum(1).cpu(), minlength=executed.shape[1] + 1).double()
    return counts / counts.sum()


def random_depth_masks(histogram: torch.Tensor, depth: int, seed: int = 0) -> MaskFn:
    """Random skipping at a policy's per-image depth: a count per image from ``histogram``, then random blocks.

    Args:
        histogram: ``(depth + 1,)`` probabilities of executing 0..depth blocks (:func:`depth_histogram`).
        depth: Blocks of the backbone.
        seed: Seed of the CPU generator the counts and blocks are drawn from.
    """
    if histogram.shape != (depth + 1,) or float(histogram.sum()) <= 0:
        raise ValueError(f"histogram must be ({depth + 1},) non-negative shares, got shape {tuple(histogram.shape)}")
    g = torch.Generator().manual_seed(seed)
    probs = histogram.double().cpu()

    def mask_fn(images: torch.Tensor) -> torch.Tensor:
        n = images.shape[0]
        counts = torch.multinomial(probs, n, replacement=True, generator=g)[:, None]
        return random_block_mask(n, depth, counts, "cpu", g).to(images.device)

    return mask_fn


def frozen_copy(model: SkippableViT) -> SkippableViT:
    """A deep copy in eval mode with no gradient: the teacher, never updated."""
    import copy

    return copy.deepcopy(model).eval().requires_grad_(False)
