"""LGViT's two-stage training of exit heads, as loss functions on one batch (the loop is ``train/exits.py``).

* **Stage 1** (end to end): the loss alternates per call between the final classifier's
  cross-entropy alone (even calls) and a depth-weighted mean over every exit point (odd calls):
  ``(sum_k (p_k + 1) CE_k + depth CE_final) / (sum_k (p_k + 1) + depth)``; for a 12-block ViT with
  exits after blocks 4..11 that is LGViT's weights 4..11 and 12.
* **Stage 2** (backbone frozen, heads only): ``0.7 sum CE + 0.3 sum KD`` over the heads (KD = KL
  to the final classifier at temperature 2, times T^2), plus LGViT's feature distillation at weight
  0.01 each: *heterogeneous* (the first and last head of each family against the last layer's patch
  tokens, subsampled like a global head's; KL over the feature dimension) and *homogeneous* (local
  heads against the last local head, MSE; global heads against the last global head, MSE of Gram
  matrices). ``linear`` exits have no parameters and take no part in stage 2.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .backbone import SkippableViT
from .exits import ExitHeads


def exit_outputs(
    backbone: SkippableViT,
    heads: ExitHeads,
    images: torch.Tensor,
    execute_mask: torch.Tensor | None = None,
    *,
    frozen: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None], torch.Tensor]:
    """Every exit point's logits (heads in order, then the final classifier), the heads' body outputs and the last tokens.

    Args:
        backbone: The ViT.
        heads: Its exit heads.
        images: Normalised images ``(B, 3, H, W)``.
        execute_mask: ``bool (B, depth)`` blocks each image runs (skipped rows are really skipped);
            ``None`` runs every block.
        frozen: Run the backbone (blocks and final classifier) without a graph (stage 2): only the
            heads get gradients, and the token states they read are plain inputs.
    """
    with torch.no_grad() if frozen else contextlib.nullcontext():
        tokens = backbone.embed(images)
        states = []
        for i in range(backbone.depth):
            rows = None if execute_mask is None else execute_mask[:, i]
            tokens = backbone.run_block(i, tokens, rows)  # not in place: the states kept stay intact
            if heads.index_at(i) is not None:
                states.append(tokens)
        final = backbone.head(tokens)
    logits: list[torch.Tensor] = []
    feats: list[torch.Tensor | None] = []
    for k, state in enumerate(states):
        out, feat = heads.logits_and_features(k, state, backbone)
        logits.append(out)
        feats.append(feat)
    logits.append(final)
    return logits, feats, tokens


def stage1_loss(
    logits: list[torch.Tensor], labels: torch.Tensor, heads: ExitHeads, call: int, label_smoothing: float = 0.0
) -> torch.Tensor:
    """LGViT's ``alternating_weighted`` loss: final CE on even ``call``, the depth-weighted mean over all points on odd."""
    final = F.cross_entropy(logits[-1], labels, label_smoothing=label_smoothing)
    if call % 2 == 0:
        return final
    weights = [p + 1 for p in heads.positions]
    total = sum(w * F.cross_entropy(z, labels, label_smoothing=label_smoothing) for w, z in zip(weights, logits, strict=False))
    return (total + heads.depth * final) / (sum(weights) + heads.depth)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """LGViT's distillation term: ``KL(teacher || student)`` at ``temperature``, times T^2, summed then divided by numel."""
    log_s = F.log_softmax(student / temperature, -1)
    p_t = F.softmax(teacher.detach() / temperature, -1)
    return F.kl_div(log_s, p_t, reduction="sum") * temperature**2 / student.numel()


def _feature_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL over the feature dimension between token sets of the same shape (teacher detached)."""
    log_s = F.log_softmax(student, -1)
    p_t = F.softmax(teacher.detach(), -1)
    return F.kl_div(log_s, p_t, reduction="batchmean") / student.shape[1]


def _gram(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2) @ x / x.shape[1]


def stage2_loss(
    logits: list[torch.Tensor],
    feats: list[torch.Tensor | None],
    last_tokens: torch.Tensor,
    labels: torch.Tensor,
    heads: ExitHeads,
    *,
    alpha: float = 0.3,
    temperature: float = 2.0,
    hetero: float = 0.01,
    homo: float = 0.01,
) -> torch.Tensor:
    """LGViT's stage-2 loss over the trainable heads (the backbone is frozen: its outputs are only teachers)."""
    teacher = logits[-1].detach()
    trained = [k for k, kind in enumerate(heads.kinds) if kind != "linear"]
    if not trained:
        raise ValueError("stage 2 trains exit heads, but every exit is 'linear' (no parameters); skip stage 2")
    ce = sum(F.cross_entropy(logits[k], labels) for k in trained)
    kd = sum(kd_loss(logits[k], teacher, temperature) for k in trained)
    loss = (1 - alpha) * ce + alpha * kd
    patches = last_tokens.detach()[:, heads.prefix :]
    b, _, d = patches.shape
    grid = patches.transpose(1, 2).reshape(b, d, *heads.grid)
    local = [k for k in trained if heads.kinds[k].startswith("local")]
    glob = [k for k in trained if heads.kinds[k].startswith("global")]
    for family in (local, glob):
        for k in sorted({family[0], family[-1]}) if family else ():
            stride = int(heads.kinds[k][-1]) if heads.kinds[k].startswith("global") else 1
            target = grid[:, :, ::stride, ::stride].flatten(2).transpose(1, 2)
            loss = loss + hetero * _feature_kl(feats[k], target)
    if len(local) > 1:
        last = feats[local[-1]].detach()
        loss = loss + homo * sum(F.mse_loss(feats[k], last) for k in local[:-1])
    if len(glob) > 1:
        last = _gram(feats[glob[-1]].detach())
        loss = loss + homo * sum(F.mse_loss(_gram(feats[k]), last) for k in glob[:-1])
    return loss


__all__ = ["exit_outputs", "kd_loss", "stage1_loss", "stage2_loss"]
