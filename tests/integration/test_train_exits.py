"""train/exits.py on a micro backbone: the record, the two stages, an exact resume; the exit benchmark end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vitskip_env import EarlyExitViT, SkippableViT

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "train"))

import exits as train_exits  # noqa: E402


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    vit = SkippableViT("micro", num_classes=10)
    return vit.save(tmp_path_factory.mktemp("bb") / "micro-shapes.safetensors", dataset="shapes")


@pytest.fixture(scope="module")
def whole_run(backbone_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted tiny two-stage run (shared by the tests that compare against it)."""
    return train_exits.main(_args(backbone_file, tmp_path_factory.mktemp("whole") / "whole.safetensors"))


def _args(backbone: Path, out: Path, **overrides) -> train_exits.Args:
    base = dict(backbone=str(backbone), out=str(out), train_images=256, batch_size=64, eval_images=200,
                stage1_epochs=1, stage2_epochs=1, threads=1)  # fmt: skip
    base.update(overrides)
    return train_exits.Args(**base)


def test_two_stages_write_a_loadable_model_and_a_record(backbone_file: Path, whole_run: Path, tmp_path: Path) -> None:
    out = whole_run
    model = EarlyExitViT.load(out)
    assert model.exits.positions == (1, 2) and model.exits.kinds == ("local", "global2")  # the 4-block default
    record = out.with_suffix(".md").read_text()
    assert "| after block 2 (local) |" in record and "| final classifier |" in record
    assert "`confidence>0.8`" in record and "`patience=3`" in record  # patience lowered to the 3 exit points
    history = model.meta["training"]["history"]
    assert [h["stage"] for h in history] == [1, 2] and len(history[-1]["heads"]) == 3
    # stage 2 trains the heads only: the backbone after it is the stage-1 backbone
    stage1 = train_exits.main(_args(backbone_file, tmp_path / "s1.safetensors", stage2_epochs=0))
    a, b = load_file(str(out)), load_file(str(stage1))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("backbone."))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("exits."))


@pytest.mark.parametrize("at_step", [3, 6])  # in stage 1, in stage 2 (4 steps per epoch)
def test_an_interrupted_training_resumes_to_the_same_model(
    backbone_file: Path, whole_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at_step: int
) -> None:
    whole = whole_run
    real, calls = train_exits._step, []

    def interrupt(*a, **k):
        calls.append(1)
        if len(calls) == at_step:
            raise KeyboardInterrupt
        return real(*a, **k)

    out = tmp_path / "cut.safetensors"
    with monkeypatch.context() as m:
        m.setattr(train_exits, "_step", interrupt)
        with pytest.raises(SystemExit):
            train_exits.main(_args(backbone_file, out))
    assert out.with_suffix(".ckpt.pt").exists()
    train_exits.main(_args(backbone_file, out))
    a, b = load_file(str(whole)), load_file(str(out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"stage1_epochs": 0, "stage2_epochs": 0}, "nothing to train"),
        ({"block_drop": 1.0}, "--block-drop must be in"),
        ({"positions": [5], "kinds": ["local"]}, "outside this 4-block backbone"),
    ],
)
def test_bad_arguments_are_refused_before_any_file(backbone_file: Path, tmp_path: Path, overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        train_exits.main(_args(backbone_file, tmp_path / "x.safetensors", **overrides))
    assert not (tmp_path / "x.safetensors").exists()


def test_exit_benchmark_times_every_rule(backbone_file: Path, tmp_path: Path) -> None:
    model_file = train_exits.main(_args(backbone_file, tmp_path / "ee.safetensors", stage2_epochs=0))
    out = tmp_path / "bench"
    cmd = [sys.executable, "train/benchmark.py", "--exits", str(model_file), "--batch-sizes", "1", "16",
           "--rounds", "1", "--images-per-round", "32", "--top1-images", "200", "--match-top1", "0", "--threads", "1",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "exits.md").read_text()
    for rule in ("confidence>0.8", "entropy<0.6", "patience=3", "entropy<0.5x2"):
        assert table.count(f"`{rule}` | default") == 2  # LGViT heads and linear exits
    assert table.count("| matched |") == 8 and "static (every block)" in table


def test_a_skip_exit_run_is_benchmarked_beside_the_rules(backbone_file: Path, tmp_path: Path) -> None:
    """train/ppo.py --actions skip_exit on an exit file writes a SkipExitViT; --exit-runs scores and times it."""
    model_file = train_exits.main(_args(backbone_file, tmp_path / "ee.safetensors", stage2_epochs=0))
    train = [sys.executable, "train/ppo.py", "--actions", "skip_exit", "--backbone", str(model_file), "--num-envs", "16",
             "--total-timesteps", "512", "--eval-freq", "512", "--eval-images", "32", "--final-eval-images", "64",
             "--checkpoint-freq", "512", "--speed-batch-sizes", "1", "--threads", "1",
             "--runs-dir", str(tmp_path / "runs")]  # fmt: skip
    proc = subprocess.run(train, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "skip_exit_vit.safetensors").is_file() and "SkipExitViT" in (run / "summary.md").read_text()
    out = tmp_path / "bench"
    cmd = [sys.executable, "train/benchmark.py", "--exits", str(model_file), "--exit-runs", str(run),
           "--batch-sizes", "1", "--rounds", "1", "--images-per-round", "16", "--top1-images", "100", "--threads", "1",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in (out / "exits.md").read_text().splitlines() if "RL skip+exit (cw 0.1, seed 1)" in line]
    assert len(rows) == 1 and "nan" not in rows[0]  # scored and timed
