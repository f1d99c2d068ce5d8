"""train/compare.py end to end on micro models: every output, scores that agree with the scorer, resume, speed-only mode."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from fakemodels import micro_files
from train_scripts import load_train_script

from vitskip_env import make_dataset
from vitskip_env.measure import score
from vitskip_env.model import load_backbone


@pytest.fixture
def compare(monkeypatch: pytest.MonkeyPatch):
    """``train/compare.py`` loaded as ``train_compare``."""
    return load_train_script("compare", monkeypatch)


def _args(compare, files: dict[str, str], out: Path, **kw):
    base = dict(backbone=files["backbone"], skip_runs=(files["dynamic"],), exits=files["exit"], discover=False,
                tome_r=(1,), merge=("1",), val_images=64, batch_sizes=(1, 4), rounds=1, warmup=0,
                images_per_round=8, memory=False, flops_images=8, top1_images=64, threads=1, out=str(out))  # fmt: skip
    return compare.Args(**(base | kw))


def test_every_contender_on_one_plane(tmp_path: Path, compare, monkeypatch: pytest.MonkeyPatch) -> None:
    files = micro_files(tmp_path)
    monkeypatch.setattr("compare_points.EXIT_SWEEP", {"confidence": [0.5, 0.99]})
    out = compare.main(_args(compare, files, tmp_path / "cmp"))
    for name in ("plane.csv", "plane.parquet", "plane.md", "plane_b1.png", "plane_b4.png"):
        assert (out / name).stat().st_size > 0, name
    frame = pd.read_parquet(out / "plane.parquet")
    names = {"static backbone", "ToMe r=1", "exit confidence>0.5", "exit confidence>0.99",
             "RL skip, dyn", "RL skip + ToMe 1, dyn"}  # fmt: skip
    assert names <= set(frame["name"]) and len(frame) == 2 * frame["name"].nunique()
    p = frame[frame["batch"] == 4].set_index("name")
    ds = make_dataset("shapes", "test")
    assert p.loc["static backbone", "top1"] == score(load_backbone(files["backbone"]), ds, n_images=64).top1
    assert p.loc["static backbone", "speedup"] == 1.0 and p.loc["static backbone", "blocks"] == 4
    subsets = p[p["family"] == "static subset"]
    assert sorted(subsets["blocks"]) == [1.0, 2.0, 3.0] and (subsets["gflops"] < p.loc["static backbone", "gflops"]).all()
    assert p.loc["ToMe r=1", "gflops"] < p.loc["static backbone", "gflops"] and p.loc["ToMe r=1", "blocks"] == 4
    assert 1 < p.loc["RL skip, dyn", "blocks"] < 4 and p.loc["RL skip, dyn", "vitskip"]
    assert p.loc["RL skip + ToMe 1, dyn", "gflops"] < p.loc["RL skip, dyn", "gflops"]
    assert p.loc["exit confidence>0.5", "blocks"] <= p.loc["exit confidence>0.99", "blocks"]
    assert not p.loc["ToMe r=1", "vitskip"] and (frame["images_per_s"] > 0).all()
    md = (out / "plane.md").read_text()
    assert "## At equal top-1" in md and "Batch 4:" in md and "batch 1: >= 1.8x static" in md
    assert all(f"| {n} |" in md for n in names)

    def no_second_time(*args, **kwargs):
        raise AssertionError("a finished part was measured again")

    monkeypatch.setattr("vitskip_env.measure.plane.time_points", no_second_time)
    monkeypatch.setattr("vitskip_env.measure.plane.evaluate", no_second_time)
    compare.main(_args(compare, files, tmp_path / "cmp", resume=True))
    again = pd.read_parquet(out / "plane.parquet")
    pd.testing.assert_frame_equal(again, frame)
    with pytest.raises(SystemExit, match="other contenders or settings"):
        compare.main(_args(compare, files, tmp_path / "cmp", resume=True, tome_r=(2,)))


def test_bad_arguments_are_refused_before_anything_runs(tmp_path: Path, compare) -> None:
    files = {"backbone": "bb.safetensors", "dynamic": "dyn.safetensors", "exit": "e.safetensors"}
    with pytest.raises(ValueError, match="--dtype must be fp32 or bf16"):
        compare.check(_args(compare, files, tmp_path, dtype="fp16"))
    with pytest.raises(FileNotFoundError, match=r"--skip-runs dyn\.safetensors"):
        compare.check(_args(compare, files, tmp_path))
    with pytest.raises(ValueError, match="--batch-sizes"):
        compare.check(_args(compare, files, tmp_path, skip_runs=(), batch_sizes=(0,)))
    with pytest.raises(ValueError, match="r@i,j"):
        compare.main(_args(compare, micro_files(tmp_path), tmp_path / "x", merge=("2@9",)))


def test_speed_only_at_matched_flops(tmp_path: Path, compare) -> None:
    args = compare.Args(arch="micro", batch_sizes=(2,), fractions=(0.5,), rounds=1, warmup=0, images_per_round=4,
                        memory=False, flops_images=8, threads=1, out=str(tmp_path / "a"))  # fmt: skip
    out = compare.main(args)
    frame = pd.read_csv(out / "plane.csv")
    by = {fam: g.iloc[0] for fam, g in frame[frame["batch"] == 2].groupby("family")}
    assert set(by) == {"static", "static subset", "random skip", "vitskip: RL skip", "token merging (ToMe)",
                       "vitskip: skip + ToMe"}  # fmt: skip
    assert frame["top1"].isna().all() and "At equal top-1" not in (out / "plane.md").read_text()
    # every method matched to the policy's counted FLOPs (calibrated on the real images it runs on)
    dyn = by["vitskip: RL skip"]["gflops"]
    for fam in ("static subset", "token merging (ToMe)"):
        assert abs(by[fam]["gflops"] / dyn - 1) < 0.35, fam
    assert by["random skip"]["blocks"] == by["vitskip: RL skip"]["blocks"] and 0 < by["vitskip: RL skip"]["blocks"] < 4
    assert torch.isfinite(torch.tensor(frame["images_per_s"].to_numpy())).all()
