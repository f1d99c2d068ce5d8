"""train/patchdrop.py end to end on the micro backbone with the deterministic clock: every output, the
contenders' schedules, and a resume that redoes only what is missing, with the same results."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from train_scripts import load_train_script

from vitskip_env import make_dataset
from vitskip_env.measure import score
from vitskip_env.model import load_backbone


@pytest.fixture
def patchdrop(monkeypatch: pytest.MonkeyPatch):
    """``train/patchdrop.py`` loaded as ``train_patchdrop``."""
    return load_train_script("patchdrop", monkeypatch)


def test_every_contender_every_output_and_resume(tmp_path: Path, patchdrop) -> None:
    args = patchdrop.Args(
        backbone="micro", clock="tokens", budget=8.0, agent_budget=4.0, agent_steps=8, n_steps=4, minibatches_per_step=2,
        batch_size=16, val_images=32, seeds=(0,), runs_dir=str(tmp_path), threads=1, test_images=128, rounds=1,
    )  # fmt: skip
    run_dir = patchdrop.main(args)
    for name in ("runs.csv", "runs.parquet", "steps.parquet", "summary.md", "goals.json", "top1_vs_time.png", "agent-s0.csv"):
        assert (run_dir / name).stat().st_size > 0, name
    runs = pd.read_parquet(run_dir / "runs.parquet").set_index("contender")
    assert set(runs.index) == {"learned", "full", "random", "anneal", "agentvit"}
    assert runs.loc["random", "mean_keep"] == runs.loc["learned", "mean_keep"]  # PatchDropout at the learned mean
    assert runs.loc["full", "mean_keep"] == 1.0 and runs.loc["full", "time_to_full_share"] <= 1.0
    assert (runs["seconds"] >= 8.0).all() and (runs["seconds"] < 9.0).all()  # one budget for all
    steps = pd.read_parquet(run_dir / "steps.parquet")
    anneal = steps[steps["contender"] == "anneal"].dropna(subset=["keep_ratio"])
    assert anneal["keep_ratio"].is_monotonic_increasing and anneal["keep_ratio"].between(0.5, 1.0).all()
    assert len(pd.read_csv(run_dir / "agent-s0.csv")) >= 1  # agent episodes were logged
    assert "Learned schedule reaches the full-patch top-1" in (run_dir / "summary.md").read_text()
    vit = load_backbone(str(run_dir / "models" / "learned-s0.safetensors"))  # every trained ViT is kept
    assert vit.meta["dataset"] == "shapes" and vit.meta["training"]["contender"] == "learned"
    test = make_dataset("shapes", "test")
    top1 = score(vit, test, n_images=128).top1 / 100
    assert top1 == pytest.approx(runs.loc["learned", "test_top1"])  # the file is the model that was scored

    parts = run_dir / "parts"
    learned = json.loads((parts / "learned-s0.json").read_text())
    kept = {p.name: p.stat().st_mtime_ns for p in parts.iterdir() if not p.name.startswith(("learned", "random"))}
    for p in parts.glob("learned-s0.*"):
        p.unlink()  # as if interrupted after the agent's last checkpoint
    for p in parts.glob("random-s0.*"):
        p.unlink()
    patchdrop.main(patchdrop.Args(resume=str(run_dir)))
    again = json.loads((parts / "learned-s0.json").read_text())
    for key in ("val_top1", "test_top1", "mean_keep", "final_keep", "images_seen"):
        assert again[key] == learned[key], key  # the checkpointed agent gives the same schedule
    assert {p.name: p.stat().st_mtime_ns for p in parts.iterdir() if p.name in kept} == kept  # nothing else redone
    with pytest.raises(SystemExit, match=r"no args\.json"):
        patchdrop.main(patchdrop.Args(resume=str(tmp_path)))
