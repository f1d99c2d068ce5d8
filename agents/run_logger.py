"""A Stable-Baselines3 logger whose ``progress.csv`` keeps the rows of earlier sessions of a run.

SB3's own CSV writer opens ``progress.csv`` with mode ``"w"``: resuming a run would erase its
history. :class:`AppendingCSVFormat` appends instead, and when a row brings keys the header does
not have yet, it rewrites the file once with the wider header (earlier rows get empty cells),
atomically, so an interruption never leaves a half-written file.
"""

from __future__ import annotations

import csv
import io
import numbers
import os
from pathlib import Path
from typing import Any

from stable_baselines3.common.logger import KVWriter, Logger, make_output_format

from vitskip_env.files import atomic_write_text


class AppendingCSVFormat(KVWriter):
    """Write logged values to a CSV file, appending to what is already there.

    Args:
        path: The CSV file (created if missing; its header and rows are kept if present).

    Raises:
        ValueError: ``path`` is a symbolic link (rows would be appended to the file it points to).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.is_symlink():  # appending would write wherever the link points, outside the run
            raise ValueError(
                f"{self.path} is a symbolic link: progress.csv is appended to, so it must be a plain file of the run; "
                "replace it by a copy of the file it points to"
            )
        self.keys: list[str] = []
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, newline="", encoding="utf-8") as f:
                self.keys = next(csv.reader(f), [])

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        """Append one row (keys excluded from ``"csv"`` are left out)."""
        row = {
            k: v
            for k, v in key_values.items()
            if not (key_excluded.get(k) is not None and "csv" in key_excluded[k]) and isinstance(v, (numbers.Number, str))
        }
        new = [k for k in sorted(row) if k not in self.keys]
        if new:
            self._widen(new)
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(["" if row.get(k) is None else row[k] for k in self.keys])

    def _widen(self, new: list[str]) -> None:
        rows: list[list[str]] = []
        if self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))[1:]
        self.keys = [*self.keys, *new]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(self.keys)
        writer.writerows(r + [""] * (len(self.keys) - len(r)) for r in rows)
        atomic_write_text(self.path, buf.getvalue())

    def close(self) -> None:
        """Nothing is held open between rows."""


def run_logger(folder: str | os.PathLike, formats: tuple[str, ...] = ("stdout", "csv", "tensorboard")) -> Logger:
    """An SB3 ``Logger`` writing to ``folder`` whose ``csv`` output appends to ``folder/progress.csv``."""
    folder = str(folder)
    Path(folder).mkdir(parents=True, exist_ok=True)
    outputs = [
        AppendingCSVFormat(Path(folder) / "progress.csv") if f == "csv" else make_output_format(f, folder) for f in formats
    ]
    return Logger(folder=folder, output_formats=outputs)
