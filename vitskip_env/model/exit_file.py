"""The early-exit file format: a backbone and its exit heads in one safetensors file (no pickle).

``<name>.safetensors`` holds ``backbone.vit.*`` (the timm weights), ``exits.*`` (the heads) and, in
its header, a JSON config: the backbone's config, the heads' layout and the SHA-256 of the backbone
weights the heads were trained on. :class:`~vitskip_env.deploy.EarlyExitViT` reads and writes it;
:func:`load_exit_heads` takes only the heads, for a backbone already in memory, and refuses heads
trained on other weights (an exit head reads one backbone's token states; on another it predicts
nonsense without an error).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from ..files import cache_dir
from .backbone import SkippableViT
from .exits import ExitHeads
from .fileformat import VitskipFileError, check_save_path, check_shapes, read_vitskip_file, require, where_of
from .loading import backbone_from_config

FORMAT = "vitskip-exits"
FORMAT_VERSION = 1
MISSING = "train/exits.py writes one (python train/exits.py --backbone <file or preset>)."
RESAVE = "Re-save it with EarlyExitViT.save, or train the heads again with train/exits.py."


def backbone_fingerprint(backbone: SkippableViT) -> str:
    """SHA-256 of the backbone's weights (every tensor's name, dtype, shape and bytes, in key order)."""
    digest = hashlib.sha256()
    for key, value in sorted(backbone.vit.state_dict().items()):
        tensor = value.detach().contiguous().cpu()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def read_exit_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """The config and the tensors of an exit file, grouped by prefix (``backbone.vit.``, ``exits.``, ``policy.``).

    Raises:
        FileNotFoundError: No such file.
        VitskipFileError: Not an exit file, a newer version, or a tensor that belongs to none of the groups.
    """
    where = where_of(Path(path).expanduser())
    config, state = read_vitskip_file(path, FORMAT, version=FORMAT_VERSION, missing=MISSING, resave=RESAVE)
    groups: dict[str, dict[str, torch.Tensor]] = {"backbone.vit.": {}, "exits.": {}, "policy.": {}}
    for key, value in state.items():
        prefix = next((p for p in groups if key.startswith(p)), None)
        if prefix is None:
            raise VitskipFileError(f"{where}: unexpected tensor {key!r} (only 'backbone.vit.*', 'exits.*' and 'policy.*')")
        groups[prefix][key[len(prefix) :]] = value
    return config, groups


def heads_from_file(config: dict[str, Any], tensors: dict[str, torch.Tensor], backbone: SkippableViT, where: str) -> ExitHeads:
    """The heads an exit file describes, built on ``backbone`` and loaded strictly (shapes checked first)."""
    heads_config = require(config, "exits", dict, where)
    try:
        heads = ExitHeads.from_config(heads_config, backbone)
    except (KeyError, TypeError) as exc:
        raise VitskipFileError(f"{where}: its exits config is malformed ({exc!r}). {RESAVE}") from exc
    except ValueError as exc:
        raise VitskipFileError(f"{where}: {exc}") from exc
    check_shapes(heads.state_dict(), tensors, where)
    heads.load_state_dict(tensors, strict=True)
    return heads


def load_exit_heads(path: str | os.PathLike, backbone: SkippableViT) -> ExitHeads:
    """The exit heads stored in ``path``, for ``backbone``, which must hold the weights they were trained on.

    Raises:
        FileNotFoundError: No such file.
        ValueError: (``VitskipFileError``) the heads were trained on another backbone (other shape or
            other weights), or the file is malformed; the message says what to load instead.
    """
    where = where_of(Path(path).expanduser())
    config, groups = read_exit_file(path)
    stored = require(config, "backbone_sha256", str, where)
    if stored != backbone_fingerprint(backbone):
        raise VitskipFileError(
            f"{where}: its exit heads were trained on another backbone (weights SHA-256 {stored[:12]}..., this backbone's "
            f"is {backbone_fingerprint(backbone)[:12]}...). Load the backbone stored with them "
            "(vitskip_env.deploy.EarlyExitViT.load(path)), or train heads for this backbone: "
            "python train/exits.py --backbone <its file>."
        )
    return heads_from_file(config, groups["exits."], backbone, where).to(next(backbone.parameters()).device)


def default_exit_path(backbone_file: str | os.PathLike) -> Path:
    """Where ``train/exits.py`` writes the heads of a backbone file: ``$VITSKIP_HOME/exits/<stem>-exits.safetensors``."""
    return cache_dir() / "exits" / f"{Path(backbone_file).stem}-exits.safetensors"


def exit_file_config(backbone: SkippableViT, heads: ExitHeads) -> dict[str, Any]:
    """The header entries every exit file has: format, version, the backbone's config and SHA-256, the heads' layout."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": backbone.config(),
        "backbone_sha256": backbone_fingerprint(backbone),
        "exits": heads.config(),
    }


def write_exit_file(
    path: str | os.PathLike, config: dict[str, Any], backbone: SkippableViT, heads: ExitHeads, **groups: torch.nn.Module
) -> Path:
    """Write an exit file atomically: ``backbone.vit.*``, ``exits.*`` and ``<group>.*`` per extra module (``policy``),
    the config in the header and in a readable ``<stem>.json`` beside it.

    Raises:
        ValueError: ``path`` does not end in ``.safetensors`` (nothing is written).
    """
    import json

    from safetensors.torch import save_file

    from ..files import atomic_path, atomic_write_text

    path = check_save_path(path)
    text = json.dumps(config, indent=2, sort_keys=True)
    modules = {"backbone.vit": backbone.vit, "exits": heads, **groups}
    state = {f"{name}.{k}": v.detach().contiguous().cpu() for name, m in modules.items() for k, v in m.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"vitskip": text})
    atomic_write_text(path.with_suffix(".json"), text + "\n")
    return path


def is_exit_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a vitskip exit file (its header says so; no tensor is read)."""
    import json

    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file() or path.suffix != ".safetensors":
        return False
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = (fh.metadata() or {}).get("vitskip")
        return isinstance(header, str) and json.loads(header).get("format") == FORMAT
    except Exception:  # not safetensors, not JSON: not an exit file (the backbone loader says what it is)
        return False


def load_exit_model(
    path: str | os.PathLike,
) -> tuple[dict[str, Any], SkippableViT, ExitHeads, dict[str, torch.Tensor]]:
    """The config, the backbone, the heads and the ``policy.*`` tensors (if any) of an exit file (CPU, eval mode; no pickle).

    Raises:
        FileNotFoundError: No such file.
        VitskipFileError: (a ``ValueError``) Not an exit file, or weights that do not match its config.
    """
    where = where_of(Path(path).expanduser())
    config, groups = read_exit_file(path)
    backbone = backbone_from_config(require(config, "backbone", dict, where), groups["backbone.vit."], where)
    heads = heads_from_file(config, groups["exits."], backbone, where)
    return config, backbone.eval(), heads.eval(), groups["policy."]


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "backbone_fingerprint",
    "default_exit_path",
    "exit_file_config",
    "heads_from_file",
    "is_exit_file",
    "load_exit_heads",
    "load_exit_model",
    "read_exit_file",
    "write_exit_file",
]
