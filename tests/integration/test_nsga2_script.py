"""train/nsga2.py end to end on a micro backbone: layers (+ fine-tune, comparison), joint, Ctrl-C, missing run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import tyro
import yaml

from agents.nsga2 import SubsetDynamicViT, read_front, str_to_mask
from vitskip_env import DynamicViT, SkippableViT, SkipPolicy, load_backbone, make_dataset
from vitskip_env.observations import encoder_for

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "train"))

import nsga2  # noqa: E402

TINY = dict(val_images=64, test_images=64, pop_size=8, n_gen=2, threads=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder holding one micro 'training run': a DynamicViT and its args.yaml."""
    torch.manual_seed(0)
    vit = SkippableViT("micro", num_classes=10)
    enc = encoder_for(vit)
    policy = SkipPolicy(torch.nn.Sequential(torch.nn.Linear(enc.obs_dim, 2)), enc, always_execute=(0,))
    run = tmp_path_factory.mktemp("runs") / "ViTSkip-Shapes-v0__ppo__1__20260101-000000"
    run.mkdir()
    DynamicViT(vit, policy).save(run / "dynamic_vit.safetensors", env="ViTSkip-Shapes-v0")
    (run / "args.yaml").write_text(yaml.safe_dump({"compute_weight": 0.2, "accuracy_weight": 1.0}))
    return run.parent


def test_layers_script_writes_front_models_and_comparison(tmp_path: Path, runs: Path, capsys) -> None:
    out = tmp_path / "layers"
    argv = ["--runs-dir", str(runs), "--out", str(out), "--val-images", "64", "--test-images", "64", "--pop-size", "8",
            "--n-gen", "2", "--finetune-steps", "2", "--threads", "1"]  # fmt: skip
    nsga2.main(tyro.cli(nsga2.Args, args=argv))  # the command line as the script parses it, in this process
    stdout = capsys.readouterr().out
    assert "gen 1/2 |" in stdout and "gen 2/2 |" in stdout
    for name in ("args.yaml", "front.parquet", "front.csv", "front.png", "summary.md", "summary.json", "comparison.md",
                 "comparison.png"):  # fmt: skip
        assert (out / name).is_file(), name
    front = read_front(out)
    assert front["search"].eq("layers").all()
    assert {"kept", "top1_test", "top1_ft", "top1_test_ft", "model"} <= set(front.columns)
    summary = json.loads((out / "summary.json").read_text())
    text = (out / "comparison.md").read_text()
    assert f"| {summary['comparison']['gain_interpolated']:+.2f} |" in text  # the table shows the computed gain
    assert "dynamic minus static" in text and "the exact front (all 15 subsets scored on val)" in text
    assert "fine-tuned for 2 steps" in text  # the fine-tuned static subsets are compared beside, not instead
    # every front subset is a loadable pruned model, here fine-tuned (2 steps), with its kept blocks in the config
    row = front.iloc[0]
    model = load_backbone(out / row["model"])
    assert model.kept_blocks == list(np.flatnonzero(str_to_mask(row["kept"])))
    ds = make_dataset("shapes", "test")
    with torch.inference_mode():
        top1 = 100 * (model(ds.normalize(ds.images[:64])).argmax(1) == ds.labels[:64]).double().mean().item()
    assert top1 == pytest.approx(row["top1_test_ft"])


def test_joint_script_reports_removed_blocks_and_saves_the_chosen_models(tmp_path: Path, runs: Path) -> None:
    out = nsga2.main(nsga2.Args(search="joint", runs_dir=str(runs), out=str(tmp_path / "joint"), **TINY))
    front = pd.read_parquet(out / "front.parquet")
    assert front["search"].eq("joint").all() and {"reward", "top1_test", "executed_blocks_test", "model"} <= set(front.columns)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["weights"] == {"correct": 1.0, "confidence": 0.0, "compute": 0.2}
    best = summary["best_reward"]
    assert best["reward"] == pytest.approx(front["reward"].max())
    model = SubsetDynamicViT.load(out / best["model"])
    assert model.kept_blocks == list(np.flatnonzero(str_to_mask(best["kept"])))
    assert "removes" in (out / "summary.md").read_text()


def test_ctrl_c_writes_the_current_front_and_exits_130(tmp_path: Path, runs: Path, monkeypatch, capsys) -> None:
    from agents.nsga2.layers import LayerSubsetProblem

    real = LayerSubsetProblem.objectives
    calls = []

    def interrupt(self, masks):
        calls.append(len(masks))
        if len(calls) == 3:  # during generation 3: generations 1 and 2 are complete
            raise KeyboardInterrupt
        return real(self, masks)

    monkeypatch.setattr(LayerSubsetProblem, "objectives", interrupt)
    out = tmp_path / "stopped"
    with pytest.raises(SystemExit) as stop:
        nsga2.main(nsga2.Args(runs_dir=str(runs), out=str(out), **{**TINY, "n_gen": 5}))
    assert stop.value.code == 130
    assert "interrupted: the front after generation 2" in capsys.readouterr().out
    front = read_front(out)
    assert len(front) >= 1 and front["split"].eq("val").all()
    assert not (out / "summary.json").exists()


def test_command_line_flags(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        tyro.cli(nsga2.Args, args=["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--search", "--pop-size", "--n-gen", "--seed", "--device", "--out", "--run", "--finetune-steps",
                 "--dask-scheduler", "--budget-steps", "--cache-mb"):  # fmt: skip
        assert flag in text, flag
    with pytest.raises(SystemExit):
        tyro.cli(nsga2.Args, args=["--search", "everything"])


def test_negative_cache_budget_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--cache-mb must be >= 0"):
        nsga2.main(nsga2.Args(cache_mb=-1, runs_dir=str(tmp_path / "empty"), out=str(tmp_path / "o"), **TINY))
    assert not (tmp_path / "o").exists()


def test_a_used_out_folder_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "front.parquet").write_bytes(b"a user's earlier front")
    with pytest.raises(FileExistsError, match=r"give a new --out"):
        nsga2.main(nsga2.Args(runs_dir=str(tmp_path / "empty"), out=str(out), **TINY))
    assert (out / "front.parquet").read_bytes() == b"a user's earlier front" and sorted(p.name for p in out.iterdir()) == [
        "front.parquet"
    ]


def test_a_run_of_another_env_is_refused(tmp_path: Path, runs: Path) -> None:
    run = next(runs.iterdir())
    with pytest.raises(ValueError, match=r"trained on ViTSkip-Shapes-v0.*--env ViTSkip-CIFAR10-v0"):
        nsga2.main(nsga2.Args(env="ViTSkip-CIFAR10-v0", run=str(run), out=str(tmp_path / "o"), **TINY))


def test_joint_without_a_run_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train/ppo\.py"):
        nsga2.main(nsga2.Args(search="joint", runs_dir=str(tmp_path / "empty"), out=str(tmp_path / "o"), **TINY))
