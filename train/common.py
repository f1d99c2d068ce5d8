"""Helpers shared by the training scripts (written once here, not pasted into each script).

The scripts import the installed packages (``uv sync`` or ``pip install -e .`` installs them) and
each other by plain module name: ``python train/x.py`` puts ``train/`` on ``sys.path``. The device
flag is resolved by the package's one resolver, ``vitskip_env.runtime.resolve_device``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitskip_env.runtime import resolve_device

__all__ = [
    "changed_fields",
    "deferred_interrupt",
    "distributed_info",
    "make_run_dir",
    "newest_run",
    "parse_json_object",
    "resolve_device",
    "run_name",
    "seed_everything",
    "set_threads",
]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op threads (default: all cores; two beat one even at batch 1 here)."""
    if threads:
        torch.set_num_threads(threads)


def run_name(env_id: str, algo: str, seed: int) -> str:
    """CleanRL-style run name ``env__algo__seed__timestamp`` (:func:`make_run_dir` adds a unique suffix)."""
    return f"{env_id}__{algo}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def make_run_dir(runs_dir: Path, name: str) -> Path:
    """Create and return a new, empty ``runs_dir/name-<suffix>`` (a random suffix: runs started together never collide)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = runs_dir / f"{name}-{secrets.token_hex(3)}"
        try:
            path.mkdir(exist_ok=False)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"could not create a new run directory named {name}-* in {runs_dir}")


@contextlib.contextmanager
def deferred_interrupt(on_first: Callable[[], None]) -> Iterator[None]:
    """While inside: the first Ctrl-C (SIGINT) calls ``on_first`` instead of interrupting; a second one interrupts.

    Training uses it to finish the update in progress and checkpoint at the boundary, so that the
    checkpoint resumes exactly. Outside the main thread it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    pressed = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal pressed
        if pressed:
            raise KeyboardInterrupt
        pressed = True
        print("\nCtrl-C: stopping after the update in progress, with a checkpoint (Ctrl-C again to stop now and "
              "keep only the previous checkpoint)", file=sys.stderr, flush=True)  # fmt: skip
        on_first()

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def parse_json_object(text: str, flag: str, example: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object; ``ValueError`` naming ``flag`` and showing ``example`` otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{flag} is not valid JSON ({err.msg} at character {err.pos}); give a JSON object, "
                         f"e.g. {flag} {example}") from None  # fmt: skip
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, got {text!r}; e.g. {flag} {example}")
    return value


def changed_fields(given: Any, recorded: Any, defaults: Any, changeable: Iterable[str], ignore: Iterable[str] = ()) -> dict:
    """The fields of dataclass ``given`` to apply over ``recorded`` when a run is resumed.

    A field differing from ``defaults`` counts as given on the command line. Given fields named in
    ``changeable`` are returned; any other given field must equal the recorded value.

    Raises:
        ValueError: A given field that is not changeable differs from the recorded one (the message names the flag).
    """
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(given):
        value, old = getattr(given, f.name), getattr(recorded, f.name)
        if f.name in ignore or value in (getattr(defaults, f.name), old):
            continue
        if f.name not in changeable:
            flag = f"--{f.name.replace('_', '-')}"
            raise ValueError(f"{flag} {value!r} differs from the run's args.yaml ({old!r}); a resumed run keeps its "
                             f"settings: drop {flag}, or start a new run")  # fmt: skip
        changes[f.name] = value
    return changes


def distributed_info() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from torchrun's environment (``(0, 0, 1)`` otherwise)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def newest_run(runs_dir: str | Path, env_id: str | None = None) -> Path | None:
    """The most recently written run folder under ``runs_dir`` (of ``env_id``, if given) holding a
    ``dynamic_vit.safetensors``; None when there is none."""
    pattern = f"{env_id}__*/dynamic_vit.safetensors" if env_id else "*/dynamic_vit.safetensors"
    files = sorted(Path(runs_dir).glob(pattern), key=lambda p: p.stat().st_mtime)
    return files[-1].parent if files else None
