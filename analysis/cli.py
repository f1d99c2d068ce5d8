"""The command-line end shared by the analysis tools (``python -m analysis.<tool>``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def print_written(write: Callable[..., Path], *args: Any) -> int:
    """Call ``write(*args)`` and print the markdown it wrote; a bad input is one ``error:`` line and status 2."""
    try:
        path = write(*args)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path.read_text(encoding="utf-8"))
    return 0
