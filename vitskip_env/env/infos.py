"""What ``ViTSkipEnv`` and ``ViTSkipVectorEnv`` share on the numpy side of a step:

- input checks: actions (:func:`check_action`, :func:`check_actions`), ``reset`` seeds
  (:func:`check_seed`) and options (:func:`check_reset_options`), and that each step's rewards
  are finite (:func:`check_rewards`);
- step infos: :func:`single_step_info` for one env, :func:`batched_step_info` / :func:`batched`
  for the vector env's dict-of-arrays;
- :class:`CoreAccess`: the ``backbone`` and ``dataset`` properties of both env classes.

Both env classes build their infos here from the same host arrays (``SkipCore.to_host``), so a
single env's info and the native vector env's dict-of-arrays hold the same values and dtypes that
``SyncVectorEnv`` would assemble from single envs (Python ``int`` -> ``int64``, ``float`` ->
``float64``, ``bool`` -> ``bool``, arrays stacked, each key with its ``_key`` mask).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..data import ImageDataset
from ..model import SkippableViT
from ..model.exits import ExitHeads
from .core import SkipCore

ACTION_HELP = "actions are 0 (skip the block) or 1 (execute it), as integers"
EXIT_ACTION_HELP = "actions are 0 (skip the block), 1 (execute it) or 2 (exit with the current exit head), as integers"
FINAL_INT = ("label", "prediction", "executed_blocks", "image_index", "exit_block")
FINAL_FLOAT = ("compute_ratio", "difficulty", "confidence", "compute_weight")


def _help(n_actions: int) -> str:
    return ACTION_HELP if n_actions == 2 else EXIT_ACTION_HELP


def check_action(action: Any, n_actions: int = 2) -> int:
    """A single env's action as an int in ``[0, n_actions)`` (``0`` / ``1``; ``2`` = exit with ``actions="skip_exit"``).

    Raises:
        ValueError: Anything but an integer (or bool) scalar equal to 0 or 1, including floats,
            NaN and arrays that are not 0-d.
    """
    value: Any = None
    scalar = isinstance(action, (bool, np.bool_, int, np.integer))
    array0d = isinstance(action, np.ndarray) and action.shape == () and action.dtype.kind in "biu"
    tensor0d = isinstance(action, torch.Tensor) and action.ndim == 0 and not action.is_floating_point()
    if scalar or array0d or tensor0d:
        value = int(action)
    if value not in range(n_actions) or (value == 2 and isinstance(action, (bool, np.bool_))):
        shape = getattr(action, "shape", None)
        what = f"{action!r}" if shape is None else f"{type(action).__name__} of shape {tuple(shape)} and dtype {action.dtype}"
        raise ValueError(f"invalid action {what}: {_help(n_actions)} (a Python int, numpy integer or 0-d integer array)")
    return value


def check_actions(actions: Any, num_envs: int, device: torch.device, n_actions: int = 2) -> torch.Tensor:
    """A vector env's actions as ``int64 (num_envs,)`` on ``device``.

    Raises:
        ValueError: Wrong shape, a non-integer dtype (floats, NaN) or a value outside ``[0, n_actions)``.
    """
    if isinstance(actions, torch.Tensor):
        if actions.is_floating_point() or actions.is_complex() or tuple(actions.shape) != (num_envs,):
            raise ValueError(
                f"invalid actions: tensor of shape {tuple(actions.shape)} and dtype {actions.dtype}; "
                f"need an integer tensor of shape ({num_envs},); {_help(n_actions)}"
            )
        out = actions.to(device=device, dtype=torch.long)
        if not bool(((out >= 0) & (out < n_actions)).all()):
            raise ValueError(f"invalid actions {actions.tolist()}: {_help(n_actions)}")
        return out
    arr = np.asarray(actions)
    if arr.dtype.kind not in "biu" or arr.shape != (num_envs,):
        raise ValueError(
            f"invalid actions: array of shape {arr.shape} and dtype {arr.dtype}; "
            f"need an integer array of shape ({num_envs},); {_help(n_actions)}"
        )
    if arr.dtype != np.bool_ and not ((arr >= 0) & (arr < n_actions)).all():
        raise ValueError(f"invalid actions {arr.tolist()}: {_help(n_actions)}")
    return torch.from_numpy(arr.astype(np.int64)).to(device)


def check_reset_options(options: Any, supported: tuple[str, ...]) -> dict[str, Any]:
    """``reset``'s ``options`` as a fresh dict (``None`` -> ``{}``).

    Raises:
        TypeError: ``options`` is not a mapping (the message lists the supported keys).
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(
            f"reset(options=...) must be a dict or None, got {type(options).__name__} {options!r}; "
            f"supported keys: {list(supported)}, e.g. options={{'image_index': 3}}"
        )
    return dict(options)


def check_seed(seed: Any, num_envs: int | None = None) -> int | list[int | None] | None:
    """``reset``'s ``seed`` as ``None``, a Python ``int`` or (vector envs, ``num_envs`` given) a list.

    Raises:
        TypeError: Anything else (floats, strings, bools, a list holding a non-integer).
        ValueError: A list whose length is not ``num_envs``.
    """
    allowed = "None or an int" + ("" if num_envs is None else f", or a list of num_envs={num_envs} ints (or None)")
    if seed is None:
        return None
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
        return int(seed)
    if num_envs is not None and isinstance(seed, (list, tuple, np.ndarray)):
        seeds = list(seed)
        for s in seeds:
            if s is not None and (not isinstance(s, (int, np.integer)) or isinstance(s, (bool, np.bool_))):
                raise TypeError(f"reset(seed=...) must be {allowed}; the list holds {type(s).__name__} {s!r}")
        if len(seeds) != num_envs:
            raise ValueError(f"a list of seeds must have num_envs={num_envs} entries, got {len(seeds)}")
        return [None if s is None else int(s) for s in seeds]
    raise TypeError(f"reset(seed=...) must be {allowed}, got {type(seed).__name__} {seed!r}")


def check_rewards(host: dict[str, np.ndarray], custom: bool) -> None:
    """Refuse a step whose reward is NaN or infinite, naming the components that are not finite.

    Raises:
        ValueError: A non-finite reward (from ``reward_fn`` when ``custom``, else from the backbone).
    """
    if np.isfinite(host["reward"]).all():
        return
    bad = [name for name in component_names(host) if not np.isfinite(host[f"components/{name}"]).all()]
    if custom:
        raise ValueError(
            f"reward_fn returned a non-finite reward (NaN or inf) in component(s) {bad}: every component must be a "
            "finite (N,) tensor; check reward_fn for divisions by zero and log(0)"
        )
    raise ValueError(
        f"the reward is not finite (NaN or inf) in component(s) {bad}: the backbone's logits are not finite or a "
        "reward weight is too large; check the backbone file and the *_weight arguments"
    )


def component_names(host: dict[str, np.ndarray]) -> list[str]:
    """Reward component names in a host step dict, in order."""
    return [k.split("/", 1)[1] for k in host if k.startswith("components/")]


# ---------------------------------------------------------------------------------------- single env
def single_step_info(host: dict[str, np.ndarray], j: int = 0) -> dict[str, Any]:
    """Info of row ``j`` as a single env returns it (Python scalars, fresh arrays)."""
    info: dict[str, Any] = {
        "reward_components": {name: float(host[f"components/{name}"][j]) for name in component_names(host)},
        "action_overridden": bool(host["overridden"][j]),
    }
    if "final/label" in host:
        for key in [k.split("/", 1)[1] for k in host if k.startswith("final/")]:
            value = host[f"final/{key}"][j]
            if key == "executed_mask":
                info[key] = np.array(value, dtype=bool)
            elif key in FINAL_INT:
                info[key] = int(value)
            elif key in FINAL_FLOAT:
                info[key] = float(value)
            else:
                info[key] = bool(value)
        info["is_success"] = info["correct"]
    return info


# ---------------------------------------------------------------------------------------- vector env
def _masked(values: dict[str, Any], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        out[key] = _masked(value, n) if isinstance(value, dict) else value
        out[f"_{key}"] = np.ones(n, dtype=bool)
    return out


def batched_step_info(host: dict[str, np.ndarray]) -> dict[str, Any]:
    """Infos of all rows as Gymnasium's dict-of-arrays with ``_key`` masks."""
    n = host["reward"].shape[0]
    values: dict[str, Any] = {
        "reward_components": {name: host[f"components/{name}"].astype(np.float64) for name in component_names(host)},
        "action_overridden": host["overridden"].astype(bool),
    }
    if "final/label" in host:
        for key in [k.split("/", 1)[1] for k in host if k.startswith("final/")]:
            value = host[f"final/{key}"]
            if key in FINAL_INT:
                values[key] = value.astype(np.int64)
            elif key in FINAL_FLOAT:
                values[key] = value.astype(np.float64)
            else:
                values[key] = value.astype(bool)
        values["is_success"] = values["correct"].copy()
    return _masked(values, n)


def row_step_info(host: dict[str, np.ndarray], stepped: np.ndarray, ended: np.ndarray) -> dict[str, Any]:
    """Infos of a step where only some rows stepped and some episodes ended (``actions="skip_exit"``).

    The step's fields are masked to ``stepped``, the episode-end fields to ``ended``; masked rows
    hold zeros and a key no row has is left out, as ``SyncVectorEnv`` assembles single envs' infos.
    """
    full = (
        batched_step_info(host)
        if ended.any()
        else batched_step_info({k: v for k, v in host.items() if not k.startswith("final/")})
    )
    step_keys = {"reward_components", "action_overridden"}
    masks = {key: (stepped if key in step_keys else ended) for key in full if not key.startswith("_")}
    return select_rows(full, masks)


def select_rows(infos: dict[str, Any], rows: np.ndarray | dict[str, np.ndarray]) -> dict[str, Any]:
    """``infos`` (dict-of-arrays with ``_key`` masks) kept on ``rows`` only (one mask, or one per key).

    Every mask is and-ed with the rows, the other rows' values become zeros, and keys left with no
    row are dropped.
    """
    out: dict[str, Any] = {}
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        keep = rows[key] if isinstance(rows, dict) else rows
        mask = infos[f"_{key}"] & keep
        if not mask.any():
            continue
        if isinstance(value, dict):
            out[key] = select_rows(value, mask)
        elif value.dtype == object:
            out[key] = np.where(mask, value, None)
        else:
            value = value.copy()
            value[~mask] = 0
            out[key] = value
        out[f"_{key}"] = mask
    return out


def merge_infos(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two dict-of-arrays infos of disjoint rows as one (values taken where each one's mask holds)."""
    out = dict(a)
    for key, value in b.items():
        if key.startswith("_"):
            continue
        if key not in out:
            out[key], out[f"_{key}"] = value, b[f"_{key}"]
            continue
        mask = b[f"_{key}"]
        if isinstance(value, dict):
            out[key] = merge_infos(out[key], value)
        else:
            merged = out[key].copy()
            merged[mask] = value[mask]
            out[key] = merged
        out[f"_{key}"] = out[f"_{key}"] | mask
    return out


def batched(values: dict[str, Any], n: int) -> dict[str, Any]:
    """Wrap ``{key: (n, ...) array}`` as dict-of-arrays with all-true ``_key`` masks."""
    return _masked(values, n)


class CoreAccess:
    """``backbone``, ``dataset`` and ``exit_heads`` of the single and the vector env (both hold ``self.core``)."""

    core: SkipCore

    @property
    def backbone(self) -> SkippableViT:
        """The ``SkippableViT`` this env runs."""
        return self.core.backbone

    @property
    def dataset(self) -> ImageDataset:
        """The dataset split the images come from."""
        return self.core.dataset

    @property
    def exit_heads(self) -> ExitHeads | None:
        """The exit heads of ``actions="skip_exit"`` (``None`` for skip-only envs)."""
        return getattr(self.core, "heads", None)
