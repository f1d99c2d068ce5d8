"""One training run of a ViT with patches dropped: the engine under the ``ViTPatchDrop`` envs.

:class:`TrainingRun` trains a backbone (fresh weights from a preset, or a vitskip file to fine-tune)
one minibatch at a time, keeping per image the share of patches it is told to (or AgentViT's
batch-shared mask), and keeps a *clock*: the budget the run may spend.

- ``clock="wall"``: measured seconds of everything a training minibatch costs (drawing and
  augmenting it, scoring the patches, forward, backward, the optimiser step; the device is
  synchronised before the clock is read). Validation is not on the clock.
- ``clock="tokens"``: a deterministic clock for tests and exact reproduction: a minibatch costs its
  kept tokens over all tokens (one full-patch minibatch = 1.0).

The learning rate follows the *budget*: linear warm-up over ``warmup`` of it, then cosine down to
``min_lr_ratio``; every contender with the same budget gets the same schedule in its own time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from ..data import make_dataset
from ..data.augment import augment_kwargs, random_crop_flip
from ..model import SkippableViT, load_backbone
from ..model.patch_select import forward_blocks, keep_shared, select_patches
from ..runtime import resolve_device, sync

Clock = Literal["wall", "tokens"]
CLOCKS: tuple[str, ...] = ("wall", "tokens")


@dataclass(frozen=True)
class RunConfig:
    """How one training run is set up (everything except what the agent decides)."""

    dataset: str = "shapes"
    """built-in or real dataset name"""
    backbone: str = "mini"
    """a preset (fresh weights, initialised from the run's seed) or a vitskip backbone file to fine-tune"""
    batch_size: int = 128
    lr: float = 2e-3
    """peak AdamW learning rate"""
    weight_decay: float = 0.05
    warmup: float = 0.05
    """share of the budget spent warming the learning rate up"""
    min_lr_ratio: float = 0.1
    """cosine floor as a fraction of the peak"""
    label_smoothing: float = 0.1
    augment: bool = True
    """random crop (and flip where it keeps the label) on the device"""
    val_images: int = 512
    """validation images behind the observation and the reward (the first ones of ``val``)"""
    clock: str = "wall"
    device: str = "cpu"
    data_root: str | None = None

    def check(self) -> None:
        """Raise a ``ValueError`` naming the first invalid field and what is allowed."""
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {self.clock!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        for name in ("lr", "weight_decay", "min_lr_ratio", "label_smoothing"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup is a share of the budget in [0, 1), got {self.warmup!r}")
        if not isinstance(self.val_images, int) or self.val_images < 1:
            raise ValueError(f"val_images must be a positive integer, got {self.val_images!r}")


def check_budget(budget: float, clock: str) -> float:
    """The budget as a float; a clear ``ValueError`` unless it is a finite positive number."""
    unit = "seconds" if clock == "wall" else "full-patch minibatches"
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget must be a finite number > 0 ({unit} with clock={clock!r}), got {budget!r}")
    return float(budget)


class TrainingRun:
    """A ViT being trained under a budget; :meth:`reset` starts a new run from a seed."""

    def __init__(self, config: RunConfig, budget: float) -> None:
        config.check()
        self.config = config
        self.budget = check_budget(budget, config.clock)
        self.device = resolve_device(config.device)
        self.train_set = make_dataset(config.dataset, "train", root=config.data_root, device=self.device)
        self.val_set = make_dataset(config.dataset, "val", root=config.data_root, device=self.device)
        if config.batch_size > len(self.train_set):
            raise ValueError(f"batch_size {config.batch_size} exceeds the {len(self.train_set)} training images")
        self.vit: SkippableViT | None = None
        self.used = 0.0
        self.minibatches = 0
        self.images_seen = 0

    # ------------------------------------------------------------------ set-up
    def reset(self, seed: int) -> None:
        """A fresh run: weights (from the seed for a preset), optimiser, data order and clock."""
        torch.manual_seed(seed)
        self.vit = self._build_model().to(self.device).train()
        cfg = self.config
        self.opt = torch.optim.AdamW(self.vit.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.long, device=self.device)
        self._position = 0
        self.used = 0.0
        self.minibatches = 0
        self.images_seen = 0

    def _build_model(self) -> SkippableViT:
        name = self.config.backbone
        classes = self.train_set.num_classes
        if Path(name).expanduser().suffix == ".safetensors" or Path(name).expanduser().is_file():
            vit = load_backbone(name)
            if vit.num_classes != classes:
                raise ValueError(f"backbone {name!r} has {vit.num_classes} classes but {self.config.dataset!r} has {classes}")
        else:
            vit = SkippableViT(name, num_classes=classes)
        if vit.img_size != self.train_set.image_size:
            raise ValueError(
                f"backbone {name!r} takes {vit.img_size}px images but {self.config.dataset!r} has "
                f"{self.train_set.image_size}px ones; pick a backbone built for this dataset"
            )
        return vit

    @property
    def num_patches(self) -> int:
        """Patch tokens per image (prefix tokens excluded)."""
        return self.model.num_tokens - self.model.num_prefix_tokens

    @property
    def model(self) -> SkippableViT:
        """The backbone being trained (after :meth:`reset`)."""
        if self.vit is None:
            raise RuntimeError("call reset(seed) before training")
        return self.vit

    @property
    def fraction(self) -> float:
        """Share of the budget used (may pass 1 by at most one minibatch)."""
        return self.used / self.budget

    @property
    def done(self) -> bool:
        """Whether the budget is spent."""
        return self.used >= self.budget

    def lr_factor(self) -> float:
        """The learning-rate factor at the current share of the budget."""
        f, cfg = min(self.fraction, 1.0), self.config
        if cfg.warmup > 0 and f < cfg.warmup:
            return max(f / cfg.warmup, 0.01)
        t = (f - cfg.warmup) / max(1.0 - cfg.warmup, 1e-12)
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    # ------------------------------------------------------------------ training
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training minibatch: normalised (augmented) images and labels."""
        n, b = len(self.train_set), self.config.batch_size
        if self._position + b > self._order.numel():
            self._order = torch.randperm(n, device=self.device, generator=self.generator)
            self._position = 0
        idx = self._order[self._position : self._position + b]
        self._position += b
        images = self.train_set.images[idx]
        if self.config.augment:
            images = random_crop_flip(images, generator=self.generator, **augment_kwargs(self.train_set.name))
        return self.train_set.normalize(images), self.train_set.labels[idx]

    def train_minibatch(
        self,
        keep_ratio: float = 1.0,
        *,
        scorer: str = "cls_attn",
        mask: torch.Tensor | None = None,
        batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, float | torch.Tensor | None]:
        """One AdamW step on the next minibatch with patches dropped.

        Args:
            keep_ratio: Share of patches kept per image (chosen by ``scorer``). Ignored with ``mask``.
            scorer: ``"cls_attn"`` or ``"random"`` (timm's ``PatchDropout``).
            mask: AgentViT's batch-shared ``bool (P,)`` mask instead of a ratio.
            batch: A minibatch drawn already (AgentViT's state is computed on it before the step);
                its drawing time must then be on the clock through :meth:`charge`.

        Returns:
            ``loss`` (at the kept patches), ``kept`` (patches per image), ``seconds`` (clock cost) and
            ``scores`` (the class-token scores when they were computed, else ``None``).
        """
        vit = self.model
        cfg = self.config
        sync(self.device)
        start = time.perf_counter()
        x, y = batch if batch is not None else self.next_batch()
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr * self.lr_factor()
        tokens = vit.embed(x)
        scores = None
        if mask is not None:
            tokens = keep_shared(tokens, mask, vit.num_prefix_tokens)
        else:
            tokens, scores = select_patches(vit, tokens, keep_ratio, scorer)
        kept = tokens.shape[1] - vit.num_prefix_tokens
        loss = F.cross_entropy(forward_blocks(vit, tokens), y, label_smoothing=cfg.label_smoothing)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vit.parameters(), 1.0)
        self.opt.step()
        value = loss.item()
        sync(self.device)
        seconds = (vit.num_prefix_tokens + kept) / vit.num_tokens  # the tokens clock
        if cfg.clock == "wall":
            seconds = time.perf_counter() - start
        self.charge(seconds)
        self.minibatches += 1
        self.images_seen += int(y.numel())
        return {"loss": value, "kept": kept, "seconds": seconds, "scores": scores}

    def charge(self, seconds: float) -> None:
        """Put ``seconds`` of work on the clock (used by :meth:`train_minibatch` and for agents' extra work)."""
        self.used += float(seconds)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(
        self, images: int | None = None, split: str = "val", keep_ratio: float = 1.0, scorer: str = "cls_attn"
    ) -> tuple[float, float]:
        """``(mean loss, top-1)`` on the first ``images`` of ``split`` (default: the run's ``val_images``).

        With ``keep_ratio < 1`` the same patch selection as in training is applied (``scorer``).
        """
        vit = self.model
        data = (
            self.val_set
            if split == "val"
            else make_dataset(self.config.dataset, split, root=self.config.data_root, device=self.device)
        )
        n = min(len(data), images or self.config.val_images)
        was_training = vit.training
        vit.eval()
        total_loss, correct = 0.0, 0
        for start in range(0, n, 500):
            x = data.normalize(data.images[start : min(n, start + 500)])
            y = data.labels[start : min(n, start + 500)]
            tokens, _ = select_patches(vit, vit.embed(x), keep_ratio, scorer)
            logits = forward_blocks(vit, tokens)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
        vit.train(was_training)
        return total_loss / n, correct / n
