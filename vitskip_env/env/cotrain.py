"""Co-training the backbone from inside the environment (``backbone_mode="cotrain"``).

Every ``every`` finished episodes the env takes one supervised step on the backbone with those
episodes' images and recorded execute masks: cross-entropy through the executed blocks only
(``backbone(x, execute_mask=mask)`` in train mode), so the backbone adapts to the paths the agent
actually takes. Any RL algorithm gets co-training for free, since it happens inside ``step``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..data import ImageDataset
from ..model import SkippableViT

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


@dataclass
class CotrainConfig:
    """Settings of the supervised backbone step in ``cotrain`` mode.

    Attributes:
        every: Finished episodes per supervised step; also its batch size.
        lr: Learning rate.
        weight_decay: Weight decay (AdamW's decoupled decay, SGD's L2).
        optimizer: ``"adamw"``, ``"sgd"`` or a factory ``params -> torch.optim.Optimizer``.
        optimizer_kwargs: Extra keyword arguments for the optimizer (``betas``, ``momentum``, ...).
        schedule: Learning-rate factor per supervised step (``LambdaLR``), e.g. a warm-up; ``None`` = constant.
        label_smoothing: Cross-entropy label smoothing.
    """

    every: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    optimizer: Literal["adamw", "sgd"] | OptimizerFactory = "adamw"
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    schedule: Callable[[int], float] | None = None
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"cotrain every must be a positive number of episodes, got {self.every!r}")
        if not (isinstance(self.optimizer, str) and self.optimizer in ("adamw", "sgd")) and not callable(self.optimizer):
            raise ValueError(f"cotrain optimizer must be 'adamw', 'sgd' or a callable, got {self.optimizer!r}")

    @classmethod
    def from_value(cls, value: CotrainConfig | Mapping[str, Any] | None) -> CotrainConfig:
        """Accept a config, a dict of its fields (misspelt keys rejected with a suggestion) or ``None``."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"cotrain must be a CotrainConfig or a dict, got {type(value).__name__}")
        names = [f.name for f in fields(cls)]
        for key in value:
            if key not in names:
                hint = difflib.get_close_matches(key, names, n=1)
                extra = f" Did you mean {hint[0]!r}?" if hint else ""
                raise ValueError(f"unknown cotrain setting {key!r}; valid: {names}.{extra}")
        return cls(**value)


class Cotrainer:
    """Buffers finished episodes and takes the supervised steps.

    Args:
        backbone: The env's backbone (updated in place).
        dataset: The env's dataset (images are re-read by index, nothing is copied per episode).
        config: The settings.
    """

    def __init__(self, backbone: SkippableViT, dataset: ImageDataset, config: CotrainConfig) -> None:
        self.backbone = backbone
        self.dataset = dataset
        self.config = config
        params = [p for p in backbone.parameters() if p.requires_grad]
        if not params:
            raise ValueError("backbone_mode='cotrain' needs trainable parameters, but every parameter has requires_grad=False")
        c = config
        if c.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay, **c.optimizer_kwargs)
        elif c.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=c.lr, weight_decay=c.weight_decay, **c.optimizer_kwargs)
        else:
            self.optimizer = c.optimizer(params)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, c.schedule) if c.schedule else None
        self.steps = 0
        self.last_loss: float | None = None
        self._indices: list[torch.Tensor] = []
        self._masks: list[torch.Tensor] = []
        self._pending = 0

    def add(self, indices: torch.Tensor, executed: torch.Tensor) -> int:
        """Record finished episodes (image indices ``(N,)``, masks ``bool (N, depth)``); returns steps taken."""
        # Clones made outside inference mode: inference tensors cannot be saved for backward.
        self._indices.append(indices.detach().clone())
        self._masks.append(executed.detach().clone())
        self._pending += int(indices.shape[0])
        taken = 0
        k = self.config.every
        if self._pending >= k:
            idx, mask = torch.cat(self._indices), torch.cat(self._masks)
            usable = (self._pending // k) * k
            for start in range(0, usable, k):
                self._update(idx[start : start + k], mask[start : start + k])
                taken += 1
            self._indices, self._masks = [idx[usable:]], [mask[usable:]]
            self._pending -= usable
        return taken

    def _update(self, indices: torch.Tensor, mask: torch.Tensor) -> None:
        ds, vit = self.dataset, self.backbone
        x = ds.normalize(ds.images[indices])
        labels = ds.labels[indices]
        vit.train()
        try:
            with torch.enable_grad():
                logits = vit(x, execute_mask=mask)
                loss = F.cross_entropy(logits, labels, label_smoothing=self.config.label_smoothing)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        finally:
            vit.eval()
        if self.scheduler is not None:
            self.scheduler.step()
        self.steps += 1
        self.last_loss = float(loss.detach())
