"""The parts of ``benchmarks/gpu.sh``, run in one Python process (one import of torch and timm for all of them).

See ``benchmarks/gpu.sh`` for the parts, the flags and what each writes. Every part is skipped when
its table exists (``--force`` redoes it), so an interrupted run resumes part by part.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("plane", "arch", "dynamic", "env", "nsga2")
NEEDED = ("torch", "timm", "torchvision", "numpy", "pandas", "pyarrow", "matplotlib", "gymnasium", "stable_baselines3",
          "sb3_contrib", "pymoo", "tyro", "yaml", "safetensors", "pytest")  # fmt: skip
#: glibc malloc settings the benchmark scripts start with (train/benchmark.py's MALLOC_ENV; set before torch loads).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def parse(argv: list[str]) -> tuple[bool, bool, list[str]]:
    """``(smoke, force, parts)``; exits with status 2 and the allowed values on anything else."""
    smoke, force, only = False, False, []
    it = iter(argv)
    for arg in it:
        if arg == "--smoke":
            smoke = True
        elif arg == "--force":
            force = True
        elif arg == "--only":
            part = next(it, "")
            if part not in PARTS:
                sys.exit(_usage(f"unknown part '{part}' (parts: {' '.join(PARTS)})"))
            only.append(part)
        else:
            sys.exit(_usage(f"unknown argument '{arg}' (allowed: --smoke, --force, --only PART)"))
    return smoke, force, only or list(PARTS)


def _usage(message: str) -> int:
    print(f"gpu.sh: {message}", file=sys.stderr)
    return 2


def script(path: str, *args: str) -> None:
    """Run ``train/<path>`` as ``__main__`` in this process, with ``args`` as its command line."""
    sys.argv = [path, *args]
    runpy.run_path(str(ROOT / path), run_name="__main__")


def bench(test: str, results: Path, device: str, *select: str) -> None:
    """Run one pytest benchmark in this process, writing its tables to ``results``."""
    import pytest

    os.environ.update(VITSKIP_BENCH_DEVICE=device, VITSKIP_BENCH_RESULTS=str(results))
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-m", "benchmark", str(ROOT / test), *select])
    if code != 0:
        raise SystemExit(f"gpu.sh: {test} failed (pytest status {int(code)})")


def main(argv: list[str]) -> None:
    """Check the imports and the device, then run each wanted part that is not written yet."""
    smoke, force, parts = parse(argv)
    import torch

    if not smoke and not torch.cuda.is_available():
        sys.exit("gpu.sh: no CUDA device here; --smoke runs every part on the CPU")
    sys.path[:0] = [str(ROOT), str(ROOT / "train")]
    device = "cpu" if smoke else "cuda"
    results = Path(tempfile.mkdtemp(prefix="gpu-smoke-")) if smoke else ROOT / "benchmarks" / "results"
    if smoke:
        os.environ.update(
            VITSKIP_BENCH_IMAGES="16",
            VITSKIP_BENCH_ROUNDS="1",
            VITSKIP_BENCH_THREADS="1",
            VITSKIP_BENCH_STEPS="64",
            VITSKIP_BENCH_SMOKE="1",
            VITSKIP_BENCH_CONFIGS="single,native64",
        )
        tiny = ["--rounds", "1", "--warmup", "0", "--threads", "1"]
        plane = ["--no-discover", "--no-exit-sweep", "--top1-images", "64", "--val-images", "64", "--tome-r", "1",
                 "--merge", "1", "--batch-sizes", "1", "4", "--images-per-round", "8", "--flops-images", "4",
                 "--no-memory", *tiny]  # fmt: skip
        arch = ["--arch", "micro", "--batch-sizes", "2", "--fractions", "0.5", "--images-per-round", "4", "--flops-images",
                "4", "--no-memory", *tiny]  # fmt: skip
        dyn = ["--arch", "micro", "--batch-sizes", "2", "--images-per-round", "4", *tiny]
        dtypes = ["fp32"]
    else:
        plane = ["--batch-sizes", "1", "8", "64", "256", "1024", "--rounds", "5"]
        arch = ["--arch", "vit_small_patch16_224", "--img-size", "224", "--batch-sizes", "1", "8", "64", "256", "--rounds",
                "5", "--fractions", "0.5", "0.33"]  # fmt: skip
        dyn = ["--arch", "vit_tiny_patch16_224", "--img-size", "224", "--batch-sizes", "1", "8", "64", "256", "1024",
               "--rounds", "5"]  # fmt: skip
        dtypes = ["fp32", "bf16"]
    tag = "smoke" if smoke else f"{device}_bf16"
    jobs = [(f"plane ({dt})", results / f"plane_shapes_{device}_{dt}" / "plane.md",
             lambda dt=dt: script("train/compare.py", "--device", device, "--dtype", dt, *plane, "--out",
                                  str(results / f"plane_shapes_{device}_{dt}")))
            for dt in dtypes]  # fmt: skip
    last = ["--device", device, "--dtype", dtypes[-1]]
    env_test, env_only = "tests/benchmarks/bench_env.py", "test_env_throughput and not skip_exit"
    jobs += [
        ("arch", results / f"plane_arch_{tag}" / "plane.md",
         lambda: script("train/compare.py", *last, *arch, "--out", str(results / f"plane_arch_{tag}"))),
        ("dynamic", results / f"arch_{tag}" / "benchmark.md",
         lambda: script("train/benchmark.py", *last, *dyn, "--out", str(results / f"arch_{tag}"))),
        ("env", results / f"env_{device}" / "env_throughput.md",
         lambda: bench(env_test, results / f"env_{device}", device, "-k", env_only)),
        ("nsga2", results / f"nsga2_{device}" / "nsga2_vectorised.md",
         lambda: bench("tests/benchmarks/bench_nsga2.py", results / f"nsga2_{device}", device)),
    ]  # fmt: skip
    try:
        for name, done, run in jobs:
            if name.split(" ")[0] not in parts:
                continue
            if done.is_file() and done.stat().st_size and not force:
                print(f"gpu.sh: {name} already written ({done}); --force redoes it", flush=True)
                continue
            print(f"gpu.sh: {name} -> {done} ({time.strftime('%H:%M:%S')})", flush=True)
            run()
    finally:
        if smoke:
            shutil.rmtree(results, ignore_errors=True)
    print(f"gpu.sh: done ({time.strftime('%H:%M:%S')}); results under {results}", flush=True)


def check_imports() -> None:
    """Exit naming every package this interpreter lacks (nothing is imported to find out)."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"gpu.sh: this Python ({sys.executable}) lacks {', '.join(missing)}: install them or put their wheels on "
                 "PYTHONPATH (see the GPU notes in the README), then run again")  # fmt: skip


if __name__ == "__main__":
    parse(sys.argv[1:])  # bad arguments first
    check_imports()
    if not all(k in os.environ for k in MALLOC_ENV):  # before torch is imported (see train/benchmark.py)
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **MALLOC_ENV})
    main(sys.argv[1:])
