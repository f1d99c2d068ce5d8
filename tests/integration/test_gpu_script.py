"""benchmarks/gpu.sh: the smoke run does every part at toy size on the CPU; bad arguments and missing imports are clear."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"


def _run(*args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": python}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def test_smoke_runs_every_part_on_the_cpu() -> None:
    proc = _run("--smoke")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for part in ("plane (fp32)", "arch", "dynamic", "env", "nsga2"):
        assert f"gpu.sh: {part} -> " in proc.stdout, part
    assert "gpu.sh: done" in proc.stdout and proc.stdout.count(" passed") == 2  # both pytest benchmarks ran and passed
    assert "Accuracy vs measured speed: shapes (cpu, fp32)" in proc.stdout  # the plane's table was printed
    assert not list((ROOT / "benchmarks" / "results").glob("*_cpu_fp32"))  # smoke output went to a temporary folder
    folder = Path(proc.stdout.split("results under ")[-1].strip())
    assert folder.name.startswith("gpu-smoke-") and not folder.exists()  # and was removed


def test_bad_arguments_and_missing_imports_are_named(tmp_path: Path) -> None:
    proc = _run("--only", "everything")
    assert proc.returncode == 2 and "unknown part 'everything' (parts: plane arch dynamic env nsga2)" in proc.stderr
    proc = _run("--fast")
    assert proc.returncode == 2 and "unknown argument '--fast'" in proc.stderr
    bare = tmp_path / "python"
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -S -I "$@"\n')  # no site-packages: nothing importable
    bare.chmod(0o755)
    proc = _run("--smoke", python=str(bare))
    assert proc.returncode != 0 and "lacks torch, timm" in proc.stderr
