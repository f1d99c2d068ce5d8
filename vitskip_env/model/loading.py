"""Loading a backbone file: every size its header states is checked before anything is allocated.

:func:`load_backbone` reads a file written by :meth:`SkippableViT.save`; :func:`backbone_from_config`
builds the backbone a config describes (also the one inside a ``DynamicViT`` file). The config's
``model_kwargs`` may only hold architecture arguments, timm is always called with
``pretrained=False``, and the architecture is first built on the ``meta`` device and compared with
the stored tensors (see :mod:`vitskip_env.model.fileformat`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbone import FORMAT, FORMAT_VERSION, SkippableViT
from .fileformat import (
    MAX_SIZE,
    VitskipFileError,
    check_model_kwargs,
    check_shapes,
    check_version,
    file_errors,
    on_meta,
    read_vitskip_file,
    require,
    stored_block_count,
    where_of,
)
from .presets import preset_spec

__all__ = ["backbone_from_config", "load_backbone"]


def backbone_from_config(config: dict[str, Any], state: dict[str, torch.Tensor], where: str) -> SkippableViT:
    """Build the backbone a :meth:`SkippableViT.config` describes and load ``state`` (timm keys) strictly.

    Nothing the config says is trusted (see :mod:`vitskip_env.model.fileformat`): its format version, its
    ``model_kwargs`` (architecture arguments only; timm is always called with ``pretrained=False``)
    and every size are checked against the stored tensors on the ``meta`` device before a real
    parameter is allocated. A pruned model is built with its kept blocks only.

    Raises:
        VitskipFileError: A malformed config or weights that do not match it (``where`` names the file).
    """
    name, kwargs, kept = _checked_config(config, state, where)
    probe = _build(name, kwargs, kept, where, meta=True)
    check_shapes(probe.vit.state_dict(), state, where)
    for key, size in (("num_classes", probe.num_classes), ("depth", probe.depth), ("embed_dim", probe.embed_dim)):
        stated = require(config, key, int, where, "backbone config")
        if stated != size:
            raise VitskipFileError(f"{where}: its config says {key} = {stated} but its weights have {size}. Re-save the file.")
    vit = _build(name, kwargs, kept, where)
    vit.vit.load_state_dict(state, strict=True)  # every key and shape was checked above
    structural = {"format", "format_version", "model_name", "model_kwargs", "num_classes", "depth", "embed_dim", "kept_blocks"}
    vit.meta = {k: v for k, v in config.items() if k not in structural}
    return vit


def _checked_config(
    config: dict[str, Any], state: dict[str, torch.Tensor], where: str
) -> tuple[str, dict[str, Any], list[int] | None]:
    """``(model_name, model_kwargs, kept_blocks)`` of a backbone config; its depth must be the stored one."""
    what = "backbone config"
    check_version(config, FORMAT, FORMAT_VERSION, where, what)
    name = require(config, "model_name", str, where, what)
    kwargs = check_model_kwargs(require(config, "model_kwargs", dict, where, what), where)
    kept = config.get("kept_blocks")
    if kept is not None:
        ok = isinstance(kept, list) and kept and all(isinstance(i, int) and not isinstance(i, bool) for i in kept)
        if not ok or kept[0] < 0 or sorted(set(kept)) != kept or kept[-1] >= kwargs.get("depth", MAX_SIZE):
            raise VitskipFileError(
                f"{where}: 'kept_blocks' must be increasing block indices below the source depth "
                f"{kwargs.get('depth', '?')}, got {kept!r}. Re-save the file."
            )
    depth = len(kept) if kept is not None else kwargs.get("depth")
    stored = stored_block_count(state)
    if depth is not None and depth != stored:  # checked before building: every block costs time even on 'meta'
        raise VitskipFileError(
            f"{where}: its config describes {depth} blocks but {stored} are stored; the file is corrupt or its header "
            "was edited. Re-save it."
        )
    return name, kwargs, kept


def _build(name: str, kwargs: dict[str, Any], kept: list[int] | None, where: str, *, meta: bool = False) -> SkippableViT:
    """The checked architecture (its kept blocks only for a pruned model), never with pretrained weights."""
    build = kwargs if kept is None else {**kwargs, "depth": len(kept)}
    if meta:  # a config timm or SkippableViT rejects is a malformed file; found here, before anything is allocated
        with file_errors(where, "backbone config"), on_meta():
            vit = SkippableViT(name, pretrained=False, pretrained_file=None, **build)
    else:
        vit = SkippableViT(name, pretrained=False, pretrained_file=None, **build)
    if kept is not None:  # what .pruned(kept) of the source architecture gives, without building the source
        spec = preset_spec(name)
        vit.model_kwargs = {**(spec[1] if spec else {}), **kwargs}
        vit.kept_blocks = list(kept)
        _source_drop_path(vit, vit.model_kwargs, kept)
    return vit


def _source_drop_path(vit: SkippableViT, kwargs: dict[str, Any], kept: list[int]) -> None:
    """Give the kept blocks the stochastic-depth rates they had in the source model (timm's linear rule)."""
    rate, depth = kwargs.get("drop_path_rate", 0.0), kwargs.get("depth")
    if not rate or depth is None:
        return
    from timm.layers import DropPath

    rates = torch.linspace(0, rate, depth).tolist()
    for blk, i in zip(vit.blocks, kept, strict=True):
        for attr in ("drop_path1", "drop_path2"):
            if hasattr(blk, attr):
                setattr(blk, attr, DropPath(rates[i]) if rates[i] > 0 else nn.Identity())


def load_backbone(
    path: str | os.PathLike, *, num_classes: int | None = None, device: str | torch.device = "cpu"
) -> SkippableViT:
    """Load a backbone written by :meth:`SkippableViT.save` (no pickle is ever read).

    Args:
        path: The ``.safetensors`` file.
        num_classes: When given, the file must have exactly this many classes.
        device: Where to put the model (returned in eval mode).

    Raises:
        FileNotFoundError: No such file.
        ValueError: Wrong class count.
        VitskipFileError: Not a valid vitskip backbone (truncated, foreign, a newer format version, a
            malformed or tampered header, weights that do not match it); the message names the file.
    """
    where = where_of(Path(path).expanduser())
    config, state = read_vitskip_file(
        path,
        FORMAT,
        version=FORMAT_VERSION,
        missing="Train a backbone with `python train/backbone.py` or pass a preset name.",
        resave="Re-save it with SkippableViT.save or re-train with train/backbone.py.",
    )
    classes = require(config, "num_classes", int, where, "backbone config")
    if num_classes is not None and classes != num_classes:
        raise ValueError(
            f"{where} was trained for {classes} classes (dataset {config.get('dataset', '?')!r}), "
            f"but {num_classes} are needed. Train a backbone for this dataset with `python train/backbone.py --dataset ...`."
        )
    return backbone_from_config(config, state, where).to(device).eval()
