"""train/benchmark.py end to end on a micro DynamicViT: every contender, every output file, tables that agree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from train_scripts import load_train_script

from vitskip_env import DynamicViT, SkippableViT, SkipPolicy
from vitskip_env.observations import encoder_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    vit = SkippableViT("micro", num_classes=10)
    enc = encoder_for(vit)
    net = nn.Sequential(nn.Linear(enc.obs_dim, 16), nn.Tanh(), nn.Linear(16, 2))
    with torch.no_grad():
        net[0].weight.mul_(4.0)
    dyn = DynamicViT(vit, SkipPolicy(net, enc, always_execute=(0,)))
    return dyn.save(tmp_path_factory.mktemp("dyn") / "dyn.safetensors", env="ViTSkip-Shapes-v0")


def test_benchmark_writes_every_table_and_plot(tmp_path: Path, model_file: Path) -> None:
    out = tmp_path / "bench"
    cmd = [sys.executable, "train/benchmark.py", "--model", str(model_file), "--batch-sizes", "1", "32", "--rounds", "1",
           "--images-per-round", "64", "--top1-images", "256", "--val-images", "256", "--threads", "1", "--no-memory",
           "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MALLOC_MMAP_THRESHOLD_" in proc.stdout  # restarted with the malloc settings, and says so
    for name in ("benchmark.csv", "benchmark.parquet", "benchmark.md", "benchmark.png", "benchmark.svg"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    frame = pd.read_parquet(out / "benchmark.parquet")
    assert sorted(frame["batch"].unique()) == [1, 32]
    assert set(frame["model"]) == {"static", "dynamic", "random", "static_subset"}
    assert (frame["device"] == "cpu").all() and (frame["dtype"] == "fp32").all() and (frame["threads"] == 1).all()
    assert frame["images_per_s"].gt(0).all() and "peak_mem_mib" not in frame  # memory: tests/unit/measure/test_contenders.py
    static = frame[frame["model"] == "static"]
    assert (static["speedup"] == 1.0).all() and (static["executed_blocks"] == 4).all()
    subset = frame["subset"].iloc[0]
    assert len(subset) == 4 and set(subset) <= {"0", "1"}
    assert (frame.loc[frame["model"] == "static_subset", "top1_blocks"] == subset.count("1")).all()
    csv = pd.read_csv(out / "benchmark.csv", dtype={"subset": str})
    assert len(csv) == len(frame) == 8
    md = (out / "benchmark.md").read_text()
    dyn_row = frame[(frame["model"] == "dynamic") & (frame["batch"] == 32)].iloc[0]
    assert f"| dynamic | {dyn_row['top1']:.2f} | {dyn_row['top1_blocks']:.2f} |" in md
    assert f"| 32 | {static.iloc[1]['images_per_s']:,.0f} | {dyn_row['images_per_s']:,.0f} | {dyn_row['speedup']:.2f}x" in md


def test_bad_arguments_are_explained(tmp_path: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    benchmark = load_train_script("benchmark", monkeypatch)  # in process: no two interpreter start-ups
    args = benchmark.Args(model=str(model_file), subset="101", memory=False, batch_sizes=(1,), rounds=1, top1_images=8,
                          out=str(tmp_path))  # fmt: skip
    with pytest.raises(ValueError, match="--subset has 3 bits but the model has 4 blocks"):
        benchmark.main(args)
    with pytest.raises(FileNotFoundError, match=r"dynamic_vit\.safetensors"):
        benchmark.main(benchmark.Args(run=str(tmp_path / "nope")))


def test_arch_mode_measures_a_random_weight_geometry(tmp_path: Path) -> None:
    out = tmp_path / "arch"
    cmd = [sys.executable, "train/benchmark.py", "--arch", "micro", "--img-size", "48", "--execute-fraction", "0.5",
           "--batch-sizes", "1", "16", "--rounds", "1", "--images-per-round", "32", "--threads", "1",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    frame = pd.read_parquet(out / "benchmark.parquet")
    assert set(frame["model"]) == {"static", "dynamic", "random"} and (frame["arch"] == "micro").all()
    dyn = frame[frame["model"] == "dynamic"]
    assert dyn["executed_blocks"].between(0.5, 3.5).all()  # calibrated near half of the 4 blocks
    assert "48x48" in (out / "benchmark.md").read_text() and (out / "benchmark.png").is_file()


def test_bf16_with_the_automatic_subset(tmp_path: Path, model_file: Path) -> None:
    out = tmp_path / "bf16"
    cmd = [sys.executable, "train/benchmark.py", "--model", str(model_file), "--dtype", "bf16", "--batch-sizes", "8",
           "--rounds", "1", "--images-per-round", "16", "--top1-images", "64", "--val-images", "64", "--threads", "1",
           "--no-memory", "--no-malloc-tuning", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]  # the subset is chosen in float32, then the backbone is cast
    frame = pd.read_parquet(out / "benchmark.parquet")
    assert (frame["dtype"] == "bf16").all() and set(frame["model"]) == {"static", "dynamic", "random", "static_subset"}
