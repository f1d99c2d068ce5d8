"""train/ppo.py end to end on a tiny budget: the run directory and its report, interrupt + --resume, a module:Class agent."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch

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


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, steps: int, hard: bool = False) -> None:
    """Press Ctrl-C (a real SIGINT; ``hard``: twice) once training passes ``steps``, in the middle of a rollout."""
    from agents import callbacks

    real = callbacks.SkipCheckpointCallback._on_step
    sent = []

    def on_step(self) -> bool:
        if self.num_timesteps >= steps and not sent:
            sent.append(self.num_timesteps)
            for _ in range(2 if hard else 1):
                signal.raise_signal(signal.SIGINT)
        return real(self)

    monkeypatch.setattr(callbacks.SkipCheckpointCallback, "_on_step", on_step)


def _final_parameters(run_dir: Path) -> dict:
    meta = json.loads((run_dir / "checkpoint" / "checkpoint.json").read_text())
    state = torch.load(run_dir / "checkpoint" / meta["files"]["state"], weights_only=True)
    return {k: v for k, v in state.items() if k.startswith("agent/")}


def test_interrupt_then_resume_reproduces_the_uninterrupted_run(tmp_path: Path, micro_file: str, monkeypatch) -> None:
    """Ctrl-C in the middle of a rollout: the run finishes that update, checkpoints and exits 130; resuming it ends
    with exactly the parameters (and optimizer state) of the run that was never interrupted, on CPU."""
    tiny = {**TINY, "total_timesteps": 6144, "eval_freq": 4096, "speed_batch_sizes": (1,), "device": "cpu"}
    straight = rl.run(rl.RLArgs(backbone=micro_file, runs_dir=str(tmp_path / "straight"), **tiny))
    _interrupt_at(monkeypatch, 2048 + 640)  # inside the second rollout (2048 steps each)
    with pytest.raises(SystemExit) as stop:
        rl.run(rl.RLArgs(backbone=micro_file, runs_dir=str(tmp_path / "cut"), **tiny))
    assert stop.value.code == 130
    (run_dir,) = (tmp_path / "cut").iterdir()
    assert json.loads((run_dir / "checkpoint" / "checkpoint.json").read_text())["num_timesteps"] == 4096  # the boundary
    monkeypatch.undo()
    rl.run(rl.RLArgs(resume=str(run_dir)))
    expected, got = _final_parameters(straight), _final_parameters(run_dir)
    assert expected.keys() == got.keys() and expected
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    summary, reference = (json.loads((d / "summary.json").read_text()) for d in (run_dir, straight))
    assert summary["total_timesteps"] == reference["total_timesteps"] == 6144
    assert summary["block_rates"] == reference["block_rates"] and summary["agent_top1"] == reference["agent_top1"]


def test_a_second_ctrl_c_stops_now_and_keeps_the_last_checkpoint(tmp_path: Path, micro_file: str, monkeypatch) -> None:
    _interrupt_at(monkeypatch, 2048 + 640, hard=True)
    with pytest.raises(SystemExit) as stop:
        rl.run(rl.RLArgs(backbone=micro_file, runs_dir=str(tmp_path), **{**TINY, "total_timesteps": 6144}))
    assert stop.value.code == 130
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "checkpoint" / "checkpoint.json").read_text())["num_timesteps"] == 2048  # periodic one
    monkeypatch.undo()
    rl.run(rl.RLArgs(resume=str(run_dir)))
    assert json.loads((run_dir / "summary.json").read_text())["total_timesteps"] == 6144


def test_resume_keeps_progress_and_adds_up_the_time(tmp_path: Path, micro_file: str, monkeypatch) -> None:
    """progress.csv keeps every row across an interrupt + resume and across resuming a finished run;
    train_minutes adds up; --total-timesteps extends a finished run; summary.json is strict JSON (no NaN)."""
    _interrupt_at(monkeypatch, 2048 + 640)
    with pytest.raises(SystemExit):
        rl.run(rl.RLArgs(backbone=micro_file, runs_dir=str(tmp_path), **{**TINY, "total_timesteps": 6144}))
    (run_dir,) = tmp_path.iterdir()
    rows_before = pd.read_csv(run_dir / "progress.csv")
    seconds = json.loads((run_dir / "checkpoint" / "checkpoint.json").read_text())["extra"]["train_seconds"]
    assert len(rows_before) >= 2 and seconds > 0
    monkeypatch.undo()
    rl.run(rl.RLArgs(resume=str(run_dir)))
    rows_done = pd.read_csv(run_dir / "progress.csv")
    assert len(rows_done) > len(rows_before)
    pd.testing.assert_frame_equal(rows_done.iloc[: len(rows_before)][rows_before.columns], rows_before)
    assert rows_done["time/total_timesteps"].max() == 6144
    summary = json.loads((run_dir / "summary.json").read_text(), parse_constant=_no_nan)
    assert summary["train_minutes"] >= round(seconds / 60, 2)  # minutes in 2 decimals: a short first part may round to 0
    rl.run(rl.RLArgs(resume=str(run_dir)))  # a finished run: nothing to train, every row and minute kept
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "progress.csv"), rows_done)
    again = json.loads((run_dir / "summary.json").read_text(), parse_constant=_no_nan)
    assert again["train_minutes"] == summary["train_minutes"]
    rl.run(rl.RLArgs(resume=str(run_dir), total_timesteps=8192))  # a bigger budget extends the run
    assert json.loads((run_dir / "summary.json").read_text())["total_timesteps"] == 8192
    assert len(pd.read_csv(run_dir / "progress.csv")) > len(rows_done)
    with pytest.raises(rl.RunArgumentError, match="below the 8,192 steps"):
        rl.run(rl.RLArgs(resume=str(run_dir), total_timesteps=4096))
    with pytest.raises(rl.RunArgumentError, match="--num-envs 32 differs"):
        rl.run(rl.RLArgs(resume=str(run_dir), num_envs=32))


def test_resuming_a_run_past_its_budget_redoes_only_the_end(tmp_path: Path, micro_file: str) -> None:
    """PPO completes its last rollout, so a run ends past a budget that is not a whole number of rollouts;
    resuming it without a new budget (e.g. after a crash in the final evaluation) redoes the end."""
    rl.run(rl.RLArgs(backbone=micro_file, runs_dir=str(tmp_path), **{**TINY, "total_timesteps": 2500}))
    (run_dir,) = tmp_path.iterdir()
    done = json.loads((run_dir / "checkpoint" / "checkpoint.json").read_text())["num_timesteps"]
    assert done > 2500
    (run_dir / "summary.json").unlink()
    rl.run(rl.RLArgs(resume=str(run_dir)))
    assert json.loads((run_dir / "summary.json").read_text())["total_timesteps"] == done
    with pytest.raises(rl.RunArgumentError, match="below the"):
        rl.run(rl.RLArgs(resume=str(run_dir), total_timesteps=2400))  # a budget given below the steps done


def _no_nan(name: str) -> None:
    raise AssertionError(f"summary.json holds {name}, which is not JSON")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"total_timesteps": -5}, "--total-timesteps must be a positive integer"),
        ({"speed_batch_sizes": (0,)}, "--speed-batch-sizes must be one or more positive integers"),
        ({"speed_batch_sizes": ()}, "--speed-batch-sizes must be one or more positive integers"),
        ({"num_envs": 0}, "--num-envs must be a positive integer"),
        ({"eval_freq": 0}, "--eval-freq must be a positive integer"),
        ({"checkpoint_freq": -1}, "--checkpoint-freq must be a positive integer"),
        ({"agent_kwargs": "{bad"}, r"--agent-kwargs is not valid JSON .* e\.g\. --agent-kwargs '\{\"learning_rate\""),
        ({"agent_kwargs": "[1]"}, "--agent-kwargs must be a JSON object"),
        ({"env": "ViTSkip-Shapez-v0"}, "--env 'ViTSkip-Shapez-v0' is not a registered environment id"),
        ({"algo": "ppoo"}, "--algo: unknown algorithm 'ppoo'. Did you mean 'ppo'"),
        ({"obs_mode": "pixels"}, "obs_mode must be one of"),
    ],
)
def test_bad_arguments_fail_before_any_folder_is_made(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(rl.RunArgumentError, match=message):
        rl.run(rl.RLArgs(runs_dir=str(tmp_path / "runs"), **{**TINY, **change}))
    assert not (tmp_path / "runs").exists()


def test_the_command_line_reports_a_bad_argument_in_one_line(tmp_path: Path) -> None:
    cmd = [sys.executable, "train/ppo.py", "--runs-dir", str(tmp_path), "--agent-kwargs", "{bad"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: --agent-kwargs is not valid JSON") and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


def test_run_directories_never_collide(tmp_path: Path) -> None:
    import common

    name = common.run_name("ViTSkip-Shapes-v0", "ppo", 1)
    made = {common.make_run_dir(tmp_path, name) for _ in range(50)}  # same second, same seed
    assert len(made) == 50 and all(p.is_dir() and p.name.startswith(name) for p in made)


def test_custom_algorithm_as_module_class(tmp_path: Path, micro_file: str) -> None:
    args = rl.RLArgs(backbone=micro_file, runs_dir=str(tmp_path), algo="agents.reinforce:Reinforce", **TINY)
    run_dir = rl.run(args)
    assert (run_dir / "dynamic_vit.safetensors").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["total_timesteps"] >= 4096
