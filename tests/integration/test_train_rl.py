"""train/ppo.py end to end on a tiny budget: the full run directory, interrupt + --resume, a module:Class agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from vitskip_env import DynamicViT, SkippableViT

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "train"))

import rl  # noqa: E402

TINY = dict(total_timesteps=4096, num_envs=64, eval_freq=2048, eval_images=128, final_eval_images=256,
            checkpoint_freq=2048, speed_batch_sizes=(1, 64), threads=1)  # fmt: skip


@pytest.fixture(scope="module")
def micro_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("bb") / "micro.safetensors"
    SkippableViT("micro", num_classes=10).save(path, dataset="shapes")
    return str(path)


def test_ppo_script_writes_the_full_run_directory(tmp_path: Path, micro_file: str) -> None:
    cmd = [sys.executable, "train/ppo.py", "--backbone", micro_file, "--runs-dir", str(tmp_path), "--total-timesteps", "4096",
           "--num-envs", "64", "--eval-freq", "2048", "--eval-images", "128", "--final-eval-images", "256",
           "--speed-batch-sizes", "1", "64", "--threads", "1"]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith("ViTSkip-Shapes-v0__ppo__1__")
    for name in ("args.yaml", "model.zip", "dynamic_vit.safetensors", "dynamic_vit.json", "progress.csv", "eval.parquet",
                 "summary.json", "summary.md", "checkpoint/checkpoint.json"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["top1_dynamic"] == pytest.approx(summary["agent_top1"])  # deployment = what the agent did
    frame = pd.read_parquet(run_dir / "eval.parquet")
    assert len(frame) == 256 * 4 and set(frame.columns) >= {"image_index", "block", "executed", "correct", "difficulty"}
    assert frame.groupby("image_index").executed.sum().mean() == pytest.approx(summary["executed_blocks"])
    dyn = DynamicViT.load(run_dir / "dynamic_vit.safetensors")
    assert dyn.depth == 4


def test_interrupt_then_resume_continues_from_the_checkpoint(tmp_path: Path, micro_file: str, monkeypatch) -> None:
    from agents import callbacks

    real = callbacks.SkipCheckpointCallback._on_step

    def interrupt(self) -> bool:
        if self.num_timesteps >= 2048:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(callbacks.SkipCheckpointCallback, "_on_step", interrupt)
    args = rl.RLArgs(backbone=micro_file, runs_dir=str(tmp_path), **TINY)
    with pytest.raises(SystemExit) as stop:
        rl.run(args)
    assert stop.value.code == 130
    (run_dir,) = tmp_path.iterdir()
    stopped_at = json.loads((run_dir / "checkpoint" / "checkpoint.json").read_text())["num_timesteps"]
    assert 2048 <= stopped_at < 4096
    monkeypatch.setattr(callbacks.SkipCheckpointCallback, "_on_step", real)
    rl.run(rl.RLArgs(resume=str(run_dir)))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["total_timesteps"] >= 4096
    progress = pd.read_csv(run_dir / "progress.csv")
    assert progress["time/total_timesteps"].max() >= 4096


def test_custom_algorithm_as_module_class(tmp_path: Path, micro_file: str) -> None:
    args = rl.RLArgs(backbone=micro_file, runs_dir=str(tmp_path), algo="agents.reinforce:Reinforce", **TINY)
    run_dir = rl.run(args)
    assert (run_dir / "dynamic_vit.safetensors").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["total_timesteps"] >= 4096
