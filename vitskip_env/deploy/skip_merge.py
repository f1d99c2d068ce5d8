"""``SkipMergeViT``: a ``DynamicViT`` whose executed blocks also merge tokens (ToMe), training-free.

The policy decides per image which blocks run, exactly as in :class:`~vitskip_env.deploy.DynamicViT`
(same observation, same decision code, same skip rules); every block that runs also merges ``r``
tokens (:func:`vitskip_env.model.merging.run_block_merged`), so the two savings multiply: fewer
blocks per image, fewer tokens per block. A row that skips a block still merges that block's ``r``
tokens by its token features, so the batch stays one rectangular tensor and every row reaches the
head with the same number of tokens.

The policy was trained on unmerged tokens; it reads the class token (never merged), which merging
changes only through attention, so its decisions shift a little. ``train/compare.py`` measures
whether the two gains compound. With ``r = 0`` this is the ``DynamicViT`` itself (the same tokens,
the same decisions, bit for bit).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..model.merging import check_mergeable, merge_schedule, run_block_merged
from .dynamic import DynamicViT

__all__ = ["SkipMergeViT"]


class SkipMergeViT(nn.Module):
    """A :class:`DynamicViT` plus ToMe: ``r`` tokens merged per block, skipped blocks cost nothing.

    Args:
        dyn: The deployable skip model (its backbone's blocks must be timm ``Block`` s).
        r: Tokens merged per block: one int, or one per block (capped as ToMe caps it).

    Raises:
        ValueError: A policy that observes the whole token state (``obs_mode="tokens"``): merging
            changes the token count it was trained on.
    """

    def __init__(self, dyn: DynamicViT, r: int | Sequence[int]) -> None:
        super().__init__()
        if dyn.policy.encoder.mode == "tokens":
            raise ValueError("a policy that observes every token (obs_mode='tokens') cannot run with token merging: "
                             "merging changes the token count it was trained on; use a flat or dict policy")  # fmt: skip
        vit = dyn.backbone
        for block in vit.blocks:
            check_mergeable(block)
        self.dyn = dyn
        self.schedule = merge_schedule(r, vit.depth, vit.num_tokens, vit.num_prefix_tokens)

    @property
    def backbone(self):
        """The backbone (a :class:`~vitskip_env.SkippableViT`)."""
        return self.dyn.backbone

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return self.dyn.depth

    def forward(self, images: torch.Tensor, return_mask: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits for normalised images ``(B, 3, H, W)`` (and the ``bool (B, depth)`` executed mask)."""
        vit = self.dyn.backbone
        tokens, size = vit.embed(images), None
        executed = torch.zeros(tokens.shape[0], vit.depth, dtype=torch.bool, device=tokens.device)
        for i, r in enumerate(self.schedule):
            execute = self.dyn.decide(i, tokens, executed)
            executed[:, i] = execute
            tokens, size = run_block_merged(vit, i, tokens, size, r, execute)
        logits = vit.head(tokens)
        return (logits, executed) if return_mask else logits
