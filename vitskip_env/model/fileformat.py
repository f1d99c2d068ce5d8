"""Reading vitskip safetensors files without trusting what their header says.

A vitskip file is a safetensors file whose header holds a JSON config (under ``"vitskip"``). The
header is data written by whoever made the file, so nothing it says may run code, reach the
network or size an allocation before it is checked:

* the header is bounded (:data:`MAX_HEADER_BYTES`) and parsed as JSON only (no pickle);
* the config's ``format`` and ``format_version`` are checked before anything else is read;
* backbone ``model_kwargs`` are limited to architecture arguments (:data:`ARCH_KWARGS`), with
  their types and ranges checked, so a file can never ask timm for pretrained weights or a
  checkpoint path;
* every size is compared with the stored tensors on the ``meta`` device (:func:`check_shapes`)
  before a single real parameter is allocated.

Every problem is a :class:`VitskipFileError` (a ``ValueError``) that names the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

#: The largest safetensors header read (vitskip configs are a few KiB; the header also lists the tensors).
MAX_HEADER_BYTES = 16 * 2**20
#: The largest integer size a backbone file may state (classes, widths, tokens...).
MAX_SIZE = 2**20
#: The largest image side a backbone file may state (no stored tensor bounds it for ``dynamic_img_size`` models).
MAX_IMG_SIZE = 4096
#: The side files every vitskip file has beside it: ``<name>.json`` (the readable config).
SUFFIX = ".safetensors"

#: The loader of each vitskip file format, named when a file of another kind is passed.
LOADERS: dict[str, str] = {
    "vitskip-backbone": "vitskip_env.load_backbone",
    "vitskip-dynamic": "vitskip_env.DynamicViT.load",
    "vitskip-exits": "vitskip_env.deploy.EarlyExitViT.load",
}

_GLOBAL_POOLS = ("", "avg", "avgmax", "max", "token", "map")
#: The ``timm.create_model`` arguments a backbone file may set: the architecture, never where weights come from.
#: Value: ``"size"`` (positive int, or ``[h, w]``), ``"int"`` (positive), ``"count"`` (>= 0), ``"ratio"`` (float > 0),
#: ``"rate"`` (float in [0, 1)), ``"bool"``, ``"scale"`` (float or null), ``"bool?"`` (bool or null) or a tuple of choices.
ARCH_KWARGS: dict[str, str | tuple[Any, ...]] = {
    "img_size": "size",
    "patch_size": "size",
    "in_chans": "int",
    "num_classes": "count",
    "global_pool": _GLOBAL_POOLS,
    "embed_dim": "int",
    "depth": "int",
    "num_heads": "int",
    "mlp_ratio": "ratio",
    "qkv_bias": "bool",
    "qk_norm": "bool",
    "proj_bias": "bool",
    "scale_attn_norm": "bool",
    "scale_mlp_norm": "bool",
    "init_values": "scale",
    "class_token": "bool",
    "pos_embed": ("", "none", "learn"),
    "no_embed_class": "bool",
    "reg_tokens": "count",
    "pre_norm": "bool",
    "final_norm": "bool",
    "fc_norm": "bool?",
    "pool_include_prefix": "bool",
    "dynamic_img_size": "bool",
    "dynamic_img_pad": "bool",
    "drop_rate": "rate",
    "pos_drop_rate": "rate",
    "patch_drop_rate": "rate",
    "proj_drop_rate": "rate",
    "attn_drop_rate": "rate",
    "drop_path_rate": "rate",
    "weight_init": ("", "jax", "jax_nlhb", "moco", "reset", "skip"),
    "fix_init": "bool",
    "stem": ("patch", "conv", "conv_lite"),
}


class _MetaFactories(torch.overrides.TorchFunctionMode):
    """Tensor factories without a device build on ``meta``; ``linspace`` stays on the CPU (timm < 1.0.20
    turns its drop-path ``linspace`` into floats with ``.item()``, which ``meta`` tensors refuse)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in _FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = "cpu" if func is torch.linspace else "meta"
        return func(*args, **kwargs)


def _factories() -> frozenset:
    from torch.utils._device import _device_constructors  # the set torch.device("meta") itself uses

    return frozenset(_device_constructors())


_FACTORIES = _factories()


def on_meta() -> contextlib.AbstractContextManager:
    """Build modules inside this context to get their parameter shapes without allocating them."""
    return _MetaFactories()


class VitskipFileError(ValueError):
    """A vitskip file that is malformed, tampered with, of an unknown version or inconsistent; the message names it."""


def where_of(path: str | os.PathLike) -> str:
    """How error messages name a file: its path, quoted."""
    return repr(str(path))


def check_save_path(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path`` if it ends in ``.safetensors`` (so its ``.json`` side file is another file).

    Raises:
        ValueError: Another suffix (``model.json`` would be overwritten by its own side file).
    """
    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(
            f"save path {str(path)!r} must end in {SUFFIX!r}: the weights go there and the readable config beside it "
            f"({path.stem}.json). Use {str(path.with_suffix(SUFFIX))!r}."
        )
    return path


@contextlib.contextmanager
def file_errors(where: str, what: str = "config") -> Iterator[None]:
    """Turn the errors a malformed config raises (missing key, wrong type, bad value) into :class:`VitskipFileError`."""
    try:
        yield
    except VitskipFileError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ArithmeticError, AssertionError, RuntimeError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise VitskipFileError(f"{where}: its {what} is malformed or was tampered with ({detail}). Re-save the file.") from exc


def require(config: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, what: str = "config") -> Any:
    """``config[key]``, which must exist and be of ``kind`` (``bool`` never counts as an ``int``)."""
    if not isinstance(config, Mapping):
        raise VitskipFileError(f"{where}: its {what} must be a JSON object, got {type(config).__name__}. Re-save the file.")
    if key not in config:
        raise VitskipFileError(f"{where}: its {what} has no {key!r} entry. Re-save the file.")
    value = config[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise VitskipFileError(f"{where}: {what} entry {key!r} must be {names}, got {value!r}. Re-save the file.")
    return value


def _check_format(got: Any, fmt: str, where: str) -> None:
    if got != fmt:
        loader = LOADERS.get(got, "the matching loader") if isinstance(got, str) else "the matching loader"
        raise VitskipFileError(f"{where} holds a {got!r}, not a {fmt!r}; load it with {loader}.")


def check_version(config: Mapping[str, Any], fmt: str, version: int, where: str, what: str = "config") -> None:
    """``config`` must say ``format == fmt`` and an integer ``format_version`` in ``[1, version]``."""
    _check_format(require(config, "format", str, where, what), fmt, where)
    v = require(config, "format_version", int, where, what)
    if v > version:
        raise VitskipFileError(
            f"{where} has {fmt} format version {v}, newer than this vitskip reads ({version}); upgrade vitskip."
        )
    if v < 1:
        raise VitskipFileError(f"{where} has {fmt} format version {v}; valid versions are 1..{version}. Re-save the file.")


def _header_size(path: Path, where: str, resave: str) -> None:
    with path.open("rb") as fh:
        head = fh.read(8)
    if len(head) < 8:
        raise VitskipFileError(f"{where} is not a readable safetensors file (only {len(head)} bytes). {resave}")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES:
        raise VitskipFileError(
            f"{where} declares a {n:,}-byte header, more than the {MAX_HEADER_BYTES:,} a vitskip file may have; "
            f"it is corrupt or not a vitskip file. {resave}"
        )


def read_vitskip_file(
    path: str | os.PathLike, fmt: str, *, missing: str, resave: str, version: int | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON config and the tensors of a vitskip safetensors file of format ``fmt`` (no pickle is read).

    Args:
        path: The ``.safetensors`` file.
        fmt: The expected ``config["format"]``.
        missing: The sentence after "No such file ..." (how to make one).
        resave: How to write a valid file again (ends the "truncated" message).
        version: When given, the newest ``format_version`` accepted (see :func:`check_version`).

    Raises:
        FileNotFoundError: No such file.
        VitskipFileError: Truncated or not safetensors, an oversized header, not written by vitskip,
            a config that is not JSON, another vitskip format or an unknown version.
    """
    from safetensors import safe_open

    path = Path(path).expanduser()
    where = where_of(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such file {str(path)!r}. {missing}")
    _header_size(path, where, resave)
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:  # safetensors raises its own error type for truncated / non-safetensors files
        raise VitskipFileError(
            f"{where} is not a readable safetensors file ({exc}); it may be truncated or of another format. {resave}"
        ) from exc
    if "vitskip" not in header:
        raise VitskipFileError(
            f"{where} is a safetensors file but was not written by vitskip (no 'vitskip' config in its header). "
            "For plain timm weights use SkippableViT(name, pretrained_file=path)."
        )
    try:
        config = json.loads(header["vitskip"])
    except (ValueError, RecursionError) as exc:
        raise VitskipFileError(f"{where}: its header config is not valid JSON ({exc}). {resave}") from exc
    if not isinstance(config, dict):
        raise VitskipFileError(f"{where}: its header config must be a JSON object, got {type(config).__name__}. {resave}")
    if version is None:
        _check_format(config.get("format"), fmt, where)
    else:
        check_version(config, fmt, version, where)
    return config, state


def _check_arg(key: str, value: Any, rule: str | tuple[Any, ...]) -> str | None:
    """Why ``value`` is not allowed for ``key`` (``None`` when it is)."""
    if isinstance(rule, tuple):
        return None if isinstance(value, str) and value in rule else f"one of {list(rule)}"
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    top = MAX_IMG_SIZE if key in ("img_size", "patch_size") else MAX_SIZE
    if rule == "size":
        sides = value if isinstance(value, list) and len(value) == 2 else [value]
        ok = all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= top for s in sides)
        return None if ok else f"an integer in [1, {top}] or a list of two"
    if rule in ("int", "count"):
        low = 1 if rule == "int" else 0
        return None if is_int and low <= value <= top else f"an integer in [{low}, {top}]"
    if rule == "ratio":
        return None if is_num and 0 < value <= 64 else "a number in (0, 64]"
    if rule == "rate":
        return None if is_num and 0 <= value < 1 else "a number in [0, 1)"
    if rule == "scale":
        return None if value is None or (is_num and abs(value) <= 1e6) else "a number or null"
    if rule == "bool?":
        return None if value is None or isinstance(value, bool) else "true, false or null"
    return None if isinstance(value, bool) else "true or false"


def check_model_kwargs(kwargs: Any, where: str) -> dict[str, Any]:
    """A file's ``model_kwargs``, checked against :data:`ARCH_KWARGS` (keys, types and ranges).

    Raises:
        VitskipFileError: Not an object, a key outside the architecture arguments (``pretrained``,
            ``checkpoint_path``, ``pretrained_file``...) or a value of the wrong type or range.
    """
    if not isinstance(kwargs, dict):
        got = type(kwargs).__name__
        raise VitskipFileError(f"{where}: 'model_kwargs' must be a JSON object, got {got}. Re-save the file.")
    for key, value in kwargs.items():
        rule = ARCH_KWARGS.get(key)
        if rule is None:
            raise VitskipFileError(
                f"{where}: model_kwargs key {key!r} is not allowed in a file: only architecture arguments are "
                f"({sorted(ARCH_KWARGS)}); weights always come from the file itself. Re-save it with SkippableViT.save."
            )
        why = _check_arg(key, value, rule)
        if why is not None:
            raise VitskipFileError(f"{where}: model_kwargs {key!r} must be {why}, got {value!r}. Re-save the file.")
    return dict(kwargs)


def stored_block_count(state: Mapping[str, torch.Tensor], prefix: str = "blocks.") -> int:
    """How many distinct ``<prefix><i>.`` blocks the stored tensors hold."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for m in map(pattern.match, state) if m})


def shape_mismatches(expected: Mapping[str, torch.Tensor], stored: Mapping[str, torch.Tensor]) -> str:
    """What differs between the expected tensors (a ``state_dict``, e.g. built on ``meta``) and the stored ones.

    Returns:
        ``""`` when every expected key is stored with the same shape and none other is; else the
        missing, unexpected and differently shaped keys (the first few of each).
    """
    missing = [k for k in expected if k not in stored]
    unexpected = [k for k in stored if k not in expected]
    wrong = [
        f"{k}: config {tuple(v.shape)} vs stored {tuple(stored[k].shape)}"
        for k, v in expected.items()
        if k in stored and tuple(v.shape) != tuple(stored[k].shape)
    ]
    parts = [
        f"{label} {items[:4]}{' ...' if len(items) > 4 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
        if items
    ]
    return "; ".join(parts)


def check_shapes(
    expected: Mapping[str, torch.Tensor], stored: Mapping[str, torch.Tensor], where: str, what: str = "weights"
) -> None:
    """Every expected tensor (a ``state_dict`` built on the ``meta`` device) is stored with the same shape, and no other.

    Raises:
        VitskipFileError: Missing, unexpected or differently shaped tensors (the first few are named).
    """
    problems = shape_mismatches(expected, stored)
    if problems:
        raise VitskipFileError(
            f"{where}: the {what} do not match the architecture in its config ({problems}); "
            "the file is corrupt or its header was edited. Re-save it."
        )
