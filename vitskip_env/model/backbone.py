"""``SkippableViT``: a timm Vision Transformer whose blocks can be skipped per image.

The timm model is held, never re-implemented: ``embed`` calls its patch embedding, position
embedding (which adds class / distillation / register tokens), patch dropout and pre-norm;
``run_block`` calls ``blocks[i]`` as a black box on a gathered subset of rows and scatters the
result back; ``head`` calls its final norm and ``forward_head``. So LayerScale, qk-norm, register
tokens, distillation heads and whatever timm adds later keep working, and executing every block
reproduces ``timm_model(x)``.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import atomic_path, atomic_write_text
from .fileformat import check_save_path
from .presets import PRESETS, preset_spec, suggest_preset
from .stems import resolve_stem

FORMAT = "vitskip-backbone"
FORMAT_VERSION = 1


def _vit_classes() -> tuple[type, ...]:
    from timm.models.vision_transformer import VisionTransformer

    return (VisionTransformer,)


def rows_per_block(execute_mask: torch.Tensor) -> list[torch.Tensor]:
    """Split a ``bool (B, depth)`` mask into one sorted row-index tensor per block.

    One ``nonzero`` and one host transfer of the per-block counts for the whole mask, instead of
    one synchronisation per block.
    """
    counts = execute_mask.sum(0).tolist()
    rows = execute_mask.t().nonzero()[:, 1]
    return list(rows.split(counts))


def run_executing_rows(
    backbone: SkippableViT, block: int, tokens: torch.Tensor, execute: torch.Tensor, *, inplace: bool = True
) -> torch.Tensor:
    """Run ``block`` on the rows where ``execute`` (``bool (N,)``) holds; the others pass unchanged.

    Real skipping (docs/architecture.md, "Principles"): the executing rows are gathered, the block runs on
    them only and the result is scattered back; with no executing row the block is not called.
    The ``nonzero`` is the step's one host synchronisation on a GPU (the gather size is data-dependent).
    """
    rows = execute.nonzero().squeeze(1)
    return backbone.run_block(block, tokens, rows, inplace=inplace)


class SkippableViT(nn.Module):
    """A timm ViT split into ``embed`` / ``run_block`` / ``head`` for per-image block skipping.

    Args:
        model: A timm ``VisionTransformer`` instance (ViT, DeiT, distilled DeiT, DeiT-III with
            LayerScale, register-token ViTs), a preset name (``"demo"``, ``"tiny"``, ``"small"``,
            ``"base"``, ``"micro"``; see ``presets.py``) or any timm model name.
        pretrained: Ask timm for its pretrained weights (needs network; never implied).
        pretrained_file: Load pretrained timm weights from this local file (``.safetensors``,
            ``.pth``, ``.bin``; ``.pth`` is read with ``weights_only=True``). Mismatched heads or
            position embeddings are adapted by timm (resized / re-initialised head).
        **overrides: Keyword arguments for ``timm.create_model`` (``img_size=32, patch_size=4,
            num_classes=100``), applied over the preset's.

    Example:
        >>> vit = SkippableViT("micro", num_classes=10)
        >>> x = torch.randn(2, 3, 32, 32)
        >>> mask = torch.tensor([[True, False, True, True], [True, True, False, False]])
        >>> vit(x, execute_mask=mask).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        model: str | nn.Module,
        *,
        pretrained: bool = False,
        pretrained_file: str | os.PathLike | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        if isinstance(model, str):
            vit, model_name, kwargs = _create(model, pretrained, pretrained_file, overrides)
        elif isinstance(model, nn.Module):
            if pretrained or pretrained_file or overrides:
                raise ValueError("pretrained, pretrained_file and overrides apply only when `model` is a name")
            vit, model_name, kwargs = model, None, None
        else:
            raise TypeError(f"model must be a timm model name or nn.Module, got {type(model).__name__}")
        if not isinstance(vit, _vit_classes()):
            raise TypeError(
                f"{type(vit).__name__} is not supported: SkippableViT needs a timm VisionTransformer (ViT, DeiT, distilled "
                "DeiT, DeiT-III, register-token ViTs). Models whose blocks take extra inputs (EVA/RoPE, Swin, hierarchical "
                "ViTs) are not supported."
            )
        self.vit = vit
        if model_name is None:
            model_name = getattr(vit, "pretrained_cfg", {}).get("architecture")
        self.model_name = model_name
        self.model_kwargs = kwargs if kwargs is not None else _infer_kwargs(vit)
        self.meta: dict[str, Any] = {}
        self.kept_blocks: list[int] | None = None
        self._flops: list[int] | None = None

    # ------------------------------------------------------------------ structure
    @property
    def blocks(self) -> nn.Sequential:
        """The timm blocks, indexable."""
        return self.vit.blocks

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return len(self.vit.blocks)

    @property
    def embed_dim(self) -> int:
        """Token width ``D``."""
        return int(self.vit.embed_dim)

    @property
    def num_classes(self) -> int:
        """Number of output classes of the head."""
        return int(self.vit.num_classes)

    @property
    def num_prefix_tokens(self) -> int:
        """Class, distillation and register tokens in front of the patch tokens."""
        return int(self.vit.num_prefix_tokens)

    @property
    def img_size(self) -> int:
        """Input side length in pixels."""
        size = self.vit.patch_embed.img_size
        return int(size[0] if isinstance(size, Sequence) else size)

    @property
    def num_tokens(self) -> int:
        """Tokens per image ``T`` (prefix tokens + patches)."""
        return int(self.vit.patch_embed.num_patches) + self.num_prefix_tokens

    # ------------------------------------------------------------------ forward pieces
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images ``(B, 3, H, W)`` -> tokens ``(B, T, D)`` (timm's own embedding modules)."""
        vit = self.vit
        x = vit.patch_embed(images)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        return vit.norm_pre(x)

    def run_block(
        self, i: int, tokens: torch.Tensor, rows: torch.Tensor | None = None, *, inplace: bool = False
    ) -> torch.Tensor:
        """Run block ``i`` on the given rows only; the other rows pass through unchanged.

        Args:
            i: Block index in ``[0, depth)``.
            tokens: ``(B, T, D)`` token state.
            rows: ``None`` (all rows), a 1-D tensor of unique row indices, or a ``bool (B,)`` mask.
                The block sees only the gathered rows: skipped rows cost no arithmetic, and with no
                rows the block is not called at all.
            inplace: Scatter into ``tokens`` itself (saves a copy; only when no gradient is needed).

        Returns:
            The new token state ``(B, T, D)``.
        """
        block = self.vit.blocks[i]
        if rows is None:
            return block(tokens)
        if rows.dtype == torch.bool:
            rows = rows.nonzero().squeeze(1)
        n = rows.numel()
        if n == 0:
            return tokens
        if n == tokens.shape[0]:
            return block(tokens)
        out = block(tokens.index_select(0, rows))
        if inplace:
            return tokens.index_copy_(0, rows, out)
        return tokens.index_copy(0, rows, out)

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, T, D)`` -> logits ``(B, num_classes)`` (timm's final norm and ``forward_head``)."""
        return self.vit.forward_head(self.vit.norm(tokens))

    def forward(self, images: torch.Tensor, execute_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for ``images``, running block ``i`` of image ``b`` only where ``execute_mask[b, i]``.

        Args:
            images: Normalised float images ``(B, 3, H, W)``.
            execute_mask: ``bool (B, depth)``; ``None`` executes every block (exactly ``timm_model(images)``).
        """
        x = self.embed(images)
        if execute_mask is None:
            for blk in self.vit.blocks:
                x = blk(x)
            return self.head(x)
        self._check_mask(execute_mask, images.shape[0])
        inplace = not torch.is_grad_enabled()
        for i, rows in enumerate(rows_per_block(execute_mask.to(x.device))):
            x = self.run_block(i, x, rows, inplace=inplace)
        return self.head(x)

    def _check_mask(self, mask: torch.Tensor, batch: int) -> None:
        if mask.dtype != torch.bool or tuple(mask.shape) != (batch, self.depth):
            raise ValueError(
                f"execute_mask must be a bool tensor of shape ({batch}, {self.depth}) (True = execute); "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )

    def pruned(self, keep: Sequence[bool] | Sequence[int] | torch.Tensor) -> SkippableViT:
        """A copy with only the kept blocks: a shorter ``blocks`` sequence, so removed blocks cost nothing.

        The copy's logits equal this model's run with ``execute_mask`` = ``keep`` for every image. It
        saves and loads like any backbone (:meth:`save`, :func:`load_backbone`); its config keeps the
        source architecture and lists the source indices of the kept blocks as ``kept_blocks``
        (composed when an already pruned model is pruned again).

        Args:
            keep: ``bool (depth,)`` mask (True = kept) or the kept block indices.

        Raises:
            ValueError: A mask of the wrong length, an index out of range or no block kept.
        """
        idx = _kept_indices(keep, self.depth)
        vit = copy.deepcopy(self.vit)
        vit.blocks = nn.Sequential(*[vit.blocks[i] for i in idx])
        if isinstance(getattr(vit, "feature_info", None), list):
            vit.feature_info = vit.feature_info[: len(idx)]  # one entry per block, named blocks.<i>
        out = SkippableViT(vit)
        out.model_name, out.model_kwargs = self.model_name, copy.deepcopy(self.model_kwargs)
        out.meta = copy.deepcopy(self.meta)
        source = self.kept_blocks if self.kept_blocks is not None else list(range(self.depth))
        out.kept_blocks = [source[i] for i in idx]
        if self._flops is not None:
            out._flops = [self._flops[i] for i in idx]
        return out.train(self.training)

    # ------------------------------------------------------------------ cost model
    def block_flops(self) -> list[int]:
        """FLOPs of each block for one image (counted once with torch's FLOP counter, then cached)."""
        if self._flops is None:
            from torch.utils.flop_counter import FlopCounterMode

            p = next(self.parameters())
            x = torch.zeros(1, 3, self.img_size, self.img_size, device=p.device, dtype=p.dtype)
            flops = []
            with torch.no_grad():
                tokens = self.embed(x)
                for blk in self.vit.blocks:
                    counter = FlopCounterMode(display=False)
                    with counter:
                        blk(tokens)
                    flops.append(int(counter.get_total_flops()))
            self._flops = flops
        return list(self._flops)

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """The JSON config stored beside the weights (architecture, classes, data, training)."""
        if not self.model_name:
            raise ValueError("cannot describe this model: build it from a timm name or preset to save it")
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "model_kwargs": self.model_kwargs,
            "num_classes": self.num_classes,
            "depth": self.depth,
            "embed_dim": self.embed_dim,
            **({"kept_blocks": self.kept_blocks} if self.kept_blocks is not None else {}),
            **self.meta,
        }

    def save(self, path: str | os.PathLike, **meta: Any) -> Path:
        """Write weights as safetensors with the JSON config in its header, plus a readable ``.json`` copy.

        Args:
            path: Destination; must end in ``.safetensors`` (the config goes to ``<stem>.json``); written atomically.
            **meta: Extra JSON-serialisable entries (``dataset``, ``mean``, ``std``, ``training``).

        Raises:
            ValueError: ``path`` does not end in ``.safetensors`` (nothing is written).
        """
        from safetensors.torch import save_file

        path = check_save_path(path)
        self.meta.update(meta)
        config = self.config()
        text = json.dumps(config, indent=2, sort_keys=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.vit.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={"vitskip": text})
        atomic_write_text(path.with_suffix(".json"), text + "\n")
        return path


def _create(
    name: str, pretrained: bool, pretrained_file: str | os.PathLike | None, overrides: dict[str, Any]
) -> tuple[nn.Module, str, dict[str, Any]]:
    import timm

    spec = preset_spec(name)
    if spec is not None:
        model_name, kwargs = spec
    else:
        if name not in timm.list_models():
            raise ValueError(
                f"Unknown model {name!r}: not a preset ({sorted(PRESETS)}) nor a timm model name.{suggest_preset(name)} "
                "List timm ViTs with timm.list_models('vit_*') or timm.list_models('deit*')."
            )
        model_name, kwargs = name, {}
    kwargs.update(overrides)
    create_kwargs = resolve_stem(kwargs)
    if pretrained_file is not None:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained_file {str(path)!r} does not exist")
        create_kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        pretrained = True
    vit = timm.create_model(model_name, pretrained=pretrained, **create_kwargs)
    return vit, model_name, kwargs


def _kept_indices(keep: Sequence[bool] | Sequence[int] | torch.Tensor, depth: int) -> list[int]:
    """Sorted kept block indices from a ``bool (depth,)`` mask (list, numpy or tensor) or a list of indices."""
    values = torch.as_tensor(keep.tolist() if hasattr(keep, "tolist") else list(keep))
    if values.dtype == torch.bool:
        if values.shape != (depth,):
            raise ValueError(f"a keep mask needs one bool per block ({depth}), got shape {tuple(values.shape)}")
        idx = values.nonzero().flatten().tolist()
    else:
        idx = sorted(set(values.flatten().tolist()))
        if any(not 0 <= i < depth for i in idx):
            raise ValueError(f"kept block indices must lie in [0, {depth - 1}], got {values.tolist()}")
    if not idx:
        raise ValueError("a pruned model needs at least one kept block")
    return [int(i) for i in idx]


def _infer_kwargs(vit: nn.Module) -> dict[str, Any]:
    """The main ``create_model`` overrides of a ViT instance (checked by strict loading later)."""
    blk = vit.blocks[0]
    size = vit.patch_embed.img_size
    patch = vit.patch_embed.patch_size
    return {
        "img_size": int(size[0] if isinstance(size, Sequence) else size),
        "patch_size": int(patch[0] if isinstance(patch, Sequence) else patch),
        "embed_dim": int(vit.embed_dim),
        "depth": len(vit.blocks),
        "num_heads": int(blk.attn.num_heads),
        "mlp_ratio": blk.mlp.fc1.out_features / vit.embed_dim,
        "num_classes": int(vit.num_classes),
    }


# Loading (``load_backbone``, ``backbone_from_config``) lives in ``loading``, which imports this module.
__all__ = ["FORMAT", "FORMAT_VERSION", "SkippableViT", "rows_per_block", "run_executing_rows"]
