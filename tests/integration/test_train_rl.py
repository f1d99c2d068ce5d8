"""train/ppo.py end to end on a tiny budget: the run directory and its report, interrupt + --resume, a module:Class agent."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from analysis import plots
from analysis.report import RUN_PLOTS
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
    assert frame["confidence"].dtype == np.float32 and frame["confidence"].between(0.1, 1.0).all()  # 10 classes: p >= 1/10
    dyn = DynamicViT.load(run_dir / "dynamic_vit.safetensors")
    assert dyn.depth == 4
    _check_report(run_dir, summary)
    assert f"report: {run_dir / 'report.md'}" in proc.stdout


def _check_report(run_dir: Path, summary: dict) -> None:
    """report.md exists, embeds every plot (non-empty PNGs of figsize x dpi) and its tables agree with summary.json."""
    text = (run_dir / "report.md").read_text()
    for name in RUN_PLOTS:
        png = run_dir / "plots" / f"{name}.png"
        assert f"](plots/{name}.png)" in text and (run_dir / "plots" / f"{name}.svg").stat().st_size > 0
        image = matplotlib.image.imread(png)
        assert image.shape[:2] == (round(plots.FIGSIZE[1] * plots.DPI), round(plots.FIGSIZE[0] * plots.DPI)), name
        assert image[..., :3].std() > 0.01, name
    assert "Warning" not in text
    head = _md_table(text, "## Headline")
    half_cent = 0.005 + 1e-9  # the report prints 2 decimals: 9.375 -> "9.38" is 0.005 away, plus float error
    assert float(head.loc["top-1 (%)", "eval.parquet"]) == pytest.approx(summary["top1_dynamic"], abs=half_cent)
    assert float(head.loc["top-1 of the static backbone (%)", "summary.json"]) == pytest.approx(
        summary["top1_static"], abs=half_cent
    )
    blocks = head.loc[f"executed blocks (mean, of {summary['depth']})", "eval.parquet"]
    assert float(blocks) == pytest.approx(summary["executed_blocks"], abs=0.0005)
    assert float(head.loc["executed fraction", "eval.parquet"]) == pytest.approx(summary["executed_frac"], abs=0.0005)
    corr = head.loc["difficulty vs depth (Spearman)", "eval.parquet"]
    expected = summary["difficulty_corr"]  # NaN (or None) when the micro policy gives every image the same depth
    if corr == "n/a":
        assert expected is None or math.isnan(expected)
    else:
        assert float(corr) == pytest.approx(expected, abs=5e-4)
    assert int(head.loc["test images", "eval.parquet"].replace(",", "")) == summary["test_images"]
    rates = _md_table(text, "## Execute rate per block").loc["eval.parquet"].astype(float)
    np.testing.assert_allclose(rates, summary["block_rates"], atol=5e-5)
    depth = _md_table(text, "## Depth\n")
    assert sum(int(v.replace(",", "")) for v in depth["images"]) == summary["test_images"]
    speed = _md_table(text, "## Throughput")
    assert speed["batch"].astype(int).tolist() == [int(b) for b in summary["speed"] for _ in ("static", "dynamic")]


def _md_table(text: str, heading: str) -> pd.DataFrame:
    """The first markdown table after ``heading``, as strings, indexed by its first column."""
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in itertools.takewhile(lambda x: x.startswith("|"), lines[start:])
    ]
    return pd.DataFrame(rows[2:], columns=rows[0]).set_index(rows[0][0])


def test_a_failing_report_does_not_lose_the_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "eval.parquet").write_text("not parquet")
    assert rl.write_run_report(tmp_path) is None
    err = capsys.readouterr().err
    assert "the run itself is complete" in err and f"python -m analysis.report {tmp_path}" in err


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
