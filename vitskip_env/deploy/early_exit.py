"""``EarlyExitViT``: a ViT with exit heads whose exited images really leave the batch.

Per block, for the rows still in flight only: run the block; where an exit head reads the tokens
after this block, compute its logits, let the :class:`~vitskip_env.deploy.exit_rules.ExitRule`
decide, write the exiting rows' logits to the output and **compact** the token state (and the
rule's per-row state) to the remaining rows. Later blocks and heads never see an exited row, and
when every row has left no further block runs. This is the "regroup the low-confidence samples"
that batched early exit needs (LGViT exits the whole batch when one image is confident, so it works
at batch 1 only); here each image gets exactly the prediction and exit point it gets alone.

A saved ``EarlyExitViT`` is one safetensors file (format ``vitskip-exits``, :mod:`vitskip_env.model.exit_file`):
the backbone, the heads, the SHA-256 of the backbone weights the heads belong to and the rule.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model import SkippableViT
from ..model.exit_file import exit_file_config, load_exit_model, write_exit_file
from ..model.exits import ExitHeads
from ..model.fileformat import VitskipFileError, require, where_of
from .exit_rules import ExitRule


class EarlyExitViT(nn.Module):
    """A :class:`~vitskip_env.SkippableViT` with :class:`~vitskip_env.model.ExitHeads` and a threshold rule.

    Args:
        backbone: The ViT the heads were trained on.
        heads: Its exit heads.
        rule: When an image leaves (default: LGViT's confidence > 0.8). Its patience may not exceed
            the exit points (heads + the final classifier).

    Example:
        >>> vit = SkippableViT("micro", num_classes=10).eval()
        >>> model = EarlyExitViT(vit, ExitHeads(vit, positions=[1, 2]), ExitRule("entropy", 1.0)).eval()
        >>> logits, blocks = model(torch.randn(4, 3, 32, 32), return_exits=True)
        >>> logits.shape, blocks.shape
        (torch.Size([4, 10]), torch.Size([4]))
    """

    def __init__(self, backbone: SkippableViT, heads: ExitHeads, rule: ExitRule | None = None) -> None:
        super().__init__()
        if heads.depth != backbone.depth or heads.dim != backbone.embed_dim or heads.num_classes != backbone.num_classes:
            raise ValueError(
                f"exit heads for a {heads.depth}-block, {heads.dim}-wide, {heads.num_classes}-class backbone cannot read "
                f"this {backbone.depth}-block, {backbone.embed_dim}-wide, {backbone.num_classes}-class one"
            )
        self.backbone, self.exits = backbone, heads
        self.rule = rule or ExitRule("confidence")
        self.rule.check(self.n_points)
        self.meta: dict[str, Any] = {}

    @property
    def n_points(self) -> int:
        """Exit points: one per head, plus the final classifier."""
        return len(self.exits) + 1

    def with_rule(self, rule: ExitRule) -> EarlyExitViT:
        """The same backbone and heads (shared, not copied) under another rule."""
        out = EarlyExitViT(self.backbone, self.exits, rule)
        out.meta = dict(self.meta)
        return out.train(self.training)

    def with_linear_exits(self) -> EarlyExitViT:
        """The same backbone and rule with ``linear`` exits (the backbone's own head) at the same positions.

        The ablation LGViT's baselines use: exits that cost only the final norm and classifier.
        """
        heads = ExitHeads(self.backbone, self.exits.positions, ["linear"] * len(self.exits))
        out = EarlyExitViT(self.backbone, heads, self.rule)
        out.meta = dict(self.meta)
        return out.train(self.training)

    def forward(self, images: torch.Tensor, return_exits: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, C)``; with ``return_exits``, also the blocks each image ran before leaving ``(B,)``.

        An image leaving at the head after block ``p`` ran ``p + 1`` blocks; one reaching the final
        classifier ran ``depth``.
        """
        vit, heads = self.backbone, self.exits
        tokens = vit.embed(images)
        batch = tokens.shape[0]
        alive = torch.arange(batch, device=tokens.device)
        out = tokens.new_empty(batch, vit.num_classes)
        blocks = torch.full((batch,), vit.depth, dtype=torch.long, device=tokens.device)
        state = self.rule.init(batch, tokens.device)
        for i in range(vit.depth):
            tokens = vit.blocks[i](tokens)
            k = heads.index_at(i)
            if k is None:
                continue
            logits = heads.logits(k, tokens, vit)
            leave, state = self.rule.decide(logits, state)
            n_leave = int(leave.sum())
            if n_leave == 0:
                continue
            gone = alive[leave]
            out[gone] = logits[leave].to(out.dtype)
            blocks[gone] = i + 1
            if n_leave == alive.numel():
                return (out, blocks) if return_exits else out
            stay = ~leave
            tokens, alive = tokens[stay], alive[stay]
            state = {key: value[stay] for key, value in state.items()}
        out[alive] = vit.head(tokens).to(out.dtype)
        return (out, blocks) if return_exits else out

    @torch.no_grad()
    def exit_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Every exit point's logits ``(P, B, C)`` with every block run (for sweeps and calibration, :func:`simulate`)."""
        vit, heads = self.backbone, self.exits
        tokens = vit.embed(images)
        points = []
        for i in range(vit.depth):
            tokens = vit.blocks[i](tokens)
            k = heads.index_at(i)
            if k is not None:
                points.append(heads.logits(k, tokens, vit).float())
        points.append(vit.head(tokens).float())
        return torch.stack(points)

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """The JSON config stored in the file header and beside it."""
        return {**exit_file_config(self.backbone, self.exits), "rule": self.rule.config(), **self.meta}

    def save(self, path: str | os.PathLike, **meta: Any) -> Path:
        """Write one safetensors file (backbone + heads + JSON config in its header) and a readable ``.json`` copy.

        Raises:
            ValueError: ``path`` does not end in ``.safetensors`` (nothing is written).
        """
        self.meta.update(meta)
        return write_exit_file(path, self.config(), self.backbone, self.exits)

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, device: str | torch.device = "cpu", rule: ExitRule | None = None
    ) -> EarlyExitViT:
        """Load a file written by :meth:`save` (eval mode; no pickle); ``rule`` replaces the stored rule.

        Raises:
            FileNotFoundError: No such file.
            VitskipFileError: (a ``ValueError``) Truncated, foreign, another vitskip format, a newer
                version, a malformed header, or weights that do not match it; the message names the file.
        """
        where = where_of(Path(path).expanduser())
        config, backbone, heads, _ = load_exit_model(path)
        if rule is None and "policy" in config:
            raise VitskipFileError(f"{where}: it holds an RL skip-and-exit policy, not a threshold rule; load it with "
                                   "SkipExitViT.load, or pass rule= to use its heads with a threshold rule")  # fmt: skip
        if rule is None:
            stored = require(config, "rule", dict, where)
            try:
                rule = ExitRule(**stored)
            except (TypeError, ValueError) as exc:
                raise VitskipFileError(f"{where}: its exit rule {stored!r} is invalid ({exc}). Re-save the file.") from exc
        model = cls(backbone, heads, rule)
        skip = ("format", "format_version", "backbone", "backbone_sha256", "exits", "rule")
        model.meta = {k: v for k, v in config.items() if k not in skip}
        return model.to(device).eval()


__all__ = ["EarlyExitViT"]
