"""train/joint.py (co-training + equal-budget baselines) and train/ppo.py --budget-range, end to end on tiny budgets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from vitskip_env import DynamicViT, SkippableViT
from vitskip_env.model import load_backbone

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--first-rl-steps", "2048", "--rl-steps", "1024", "--rounds", "2", "--backbone-steps", "4", "--batch-size", "16",
        "--num-envs", "64", "--val-images", "128", "--final-eval-images", "128", "--speed-batch-sizes", "8",
        "--speed-rounds", "1", "--threads", "1", "--subset-sizes", "1", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def micro_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("bb") / "micro.safetensors"
    SkippableViT("micro", num_classes=10).save(path, dataset="shapes")
    return str(path)


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory: pytest.TempPathFactory, micro_file: str) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    proc = run(["train/joint.py", "--backbone", micro_file, "--runs-dir", str(runs), *TINY])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = runs.iterdir()
    return run_dir


def test_joint_run_writes_every_contender(joint_run: Path, micro_file: str) -> None:
    d = joint_run
    assert d.name.startswith("ViTSkip-Shapes-v0__joint__1__")
    for name in ("args.yaml", "model.zip", "dynamic_vit.safetensors", "frozen_dynamic_vit.safetensors", "eval.parquet",
                 "summary.json", "comparison.csv", "comparison.md", "joint.json", "plots/joint_b8.png",
                 "baselines/full.safetensors", "baselines/subset-1.safetensors",
                 "baselines/subset-3.safetensors", "baselines/random.safetensors"):  # fmt: skip
        assert (d / name).is_file(), name
    table = pd.read_csv(d / "comparison.csv")
    assert {"static", "static, fine-tuned", "policy, frozen backbone", "policy, co-trained"} <= set(table["name"])
    assert set(table["family"]) == {"static", "static, fine-tuned", "static subsets", "random", "random, fine-tuned", "policy"}
    assert (table.loc[table["backbone_steps"] > 0, "backbone_steps"] == 4).all()  # equal budgets
    subsets = table[table["family"] == "static subsets"]
    assert sorted(subsets["executed_blocks"]) == [1.0, 3.0]
    report = json.loads((d / "joint.json").read_text())
    assert {"policy, co-trained", "policy, frozen backbone"} <= set(report["targets"])
    assert {"b8", "minus_full_finetuned"} <= set(report["targets"]["policy, co-trained"])
    # the co-trained model's backbone was trained; the frozen policy's is the backbone as it came
    teacher = load_backbone(micro_file)
    frozen = DynamicViT.load(d / "frozen_dynamic_vit.safetensors").backbone
    cotrained = DynamicViT.load(d / "dynamic_vit.safetensors").backbone
    start = list(teacher.state_dict().values())
    assert all(torch.equal(a, b) for a, b in zip(start, frozen.state_dict().values(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(start, cotrained.state_dict().values(), strict=True))


def test_resume_redoes_only_the_unfinished_phase_bit_exactly(joint_run: Path) -> None:
    d = joint_run
    state_file = d / "joint_state.json"
    state = json.loads(state_file.read_text())
    before = load_backbone(d / "baselines/random.safetensors").state_dict()
    seconds = dict(state["seconds"])
    state["done"].remove("baseline-random")  # as if Ctrl-C came during its training
    del state["seconds"]["baseline-random"]
    state_file.write_text(json.dumps(state))
    (d / "baselines/random.safetensors").unlink()
    proc = run(["train/joint.py", "--resume", str(d), "--threads", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed" in proc.stdout and "baseline-random:" in proc.stdout and "baseline-full:" not in proc.stdout
    after = json.loads(state_file.read_text())
    assert {k: v for k, v in after["seconds"].items() if k != "baseline-random"} == {
        k: v for k, v in seconds.items() if k != "baseline-random"
    }
    again = load_backbone(d / "baselines/random.safetensors").state_dict()
    assert all(torch.equal(before[k], v) for k, v in again.items())


@pytest.mark.parametrize(
    ("extra", "match"),
    [(["--backbone-steps", "1", "--rounds", "2"], "--backbone-steps (1) must be at least --rounds (2)"),
     (["--distill", "2"], "--distill must be in [0, 1]"), (["--subset-sizes", "0"], "--subset-sizes")],
)  # fmt: skip
def test_bad_arguments_are_clear_errors_before_anything_is_made(tmp_path: Path, extra: list[str], match: str) -> None:
    import tyro

    sys.path.insert(0, str(ROOT / "train"))
    import joint
    from rl import RunArgumentError

    args = tyro.cli(joint.JointArgs, args=["--runs-dir", str(tmp_path), *extra])
    with pytest.raises(RunArgumentError) as err:
        joint.run(args)
    assert match in str(err.value) and not list(tmp_path.iterdir())


def test_budget_conditioned_ppo_run_has_a_calibrated_knob(tmp_path: Path, micro_file: str) -> None:
    proc = run(["train/ppo.py", "--backbone", micro_file, "--runs-dir", str(tmp_path), "--budget-range", "0.01", "1.0",
                "--total-timesteps", "2048", "--num-envs", "64", "--eval-freq", "2048", "--eval-images", "64",
                "--final-eval-images", "128", "--speed-batch-sizes", "1", "--threads", "1"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (d,) = tmp_path.iterdir()
    summary = json.loads((d / "summary.json").read_text())
    curve = summary["budget_curve"]
    assert len(curve) == 13 and [p["compute_weight"] for p in curve] == sorted(p["compute_weight"] for p in curve)
    assert summary["compute_weight"] == pytest.approx(0.1)
    dyn = DynamicViT.load(d / "dynamic_vit.safetensors")
    assert dyn.budget_range == (0.01, 1.0) and dyn.compute_weight == pytest.approx(0.1)
    span = dyn.meta["budget_calibration"]["executed_frac"]
    dyn.set_budget((min(span) + max(span)) / 2)
    assert 0.01 <= dyn.compute_weight <= 1.0


def test_the_static_front_is_read_at_the_policys_speed() -> None:
    sys.path.insert(0, str(ROOT / "train"))
    from joint_report import front_at

    pts = pd.DataFrame({"speed": [100.0, 200.0, 400.0], "top1": [90.0, 89.0, 85.0]})
    assert front_at(pts, 300.0) == (pytest.approx(87.0), "interpolated")  # halfway between 89 and 85
    assert front_at(pts, 50.0) == (90.0, "at least as fast")  # slower than all: the best static point is faster
    top1, how = front_at(pts, 500.0)
    assert top1 == 85.0 and how.startswith("faster than every static point")
    # a slower static point that is less accurate than a faster one is not on the front
    pts = pd.DataFrame({"speed": [100.0, 200.0], "top1": [80.0, 89.0]})
    assert front_at(pts, 150.0)[0] == pytest.approx(89.0)
