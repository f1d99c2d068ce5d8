"""The reward-weighting search (agents.nsga2.rewards), tiny budgets: a 2-worker local Dask cluster, serial runs, Ctrl-C."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from agents.nsga2 import FRONT_COLUMNS, non_dominated, read_front
from agents.nsga2 import reward_worker as rw
from agents.nsga2.rewards import VARIABLES, search_rewards
from vitskip_env import DynamicViT, SkippableViT, make_dataset

PARAMS = ["compute_weight", "accuracy_weight", "confidence_weight", "ent_coef"]
#: What must be identical between two runs with the same seed (not timings or worker names).
SAME = ["individual", "generation", "seed", *PARAMS, "top1", "executed_frac", "compute"]


@pytest.fixture(scope="module")
def micro_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("bb") / "micro.safetensors"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        SkippableViT("micro", num_classes=10).save(path, dataset="shapes")
    return str(path)


def tiny(micro_file: str, **overrides) -> dict:
    """A 4 x 2 search of 1024-step PPO runs on 256 training images of a 4-block random ViT."""
    kw = dict(pop_size=4, n_gen=2, seed=0, device="cpu", budget_steps=1024, num_envs=32, val_images=128,
              env_kwargs={"backbone": micro_file, "num_images": 256})  # fmt: skip
    return {**kw, **overrides}


def check_front(out: Path, front: pd.DataFrame) -> None:
    """The front on disk is the returned one, well formed, and every member's model reproduces its row on val."""
    on_disk = read_front(out)
    pd.testing.assert_frame_equal(on_disk, front)
    assert set(front.columns) >= {*FRONT_COLUMNS, *PARAMS, "model", "top1_test", "executed_frac_test", "individual"}
    assert (front["search"] == "rewards").all() and (front["split"] == "val").all()
    assert np.allclose(front["error"], 100 - front["top1"])
    assert non_dominated(front, ("error", "executed_frac")).all()
    assert front["compute_weight"].between(VARIABLES["compute_weight"].low, VARIABLES["compute_weight"].high).all()
    val = make_dataset("shapes", "val")
    for row in front.itertuples():
        dyn = DynamicViT.load(out / row.model)
        assert dyn.meta["params"]["compute_weight"] == pytest.approx(row.compute_weight)
        score = rw.score_dynamic(dyn, val, 128)
        assert score["executed_frac"] == pytest.approx(row.executed_frac)
        assert score["top1"] == pytest.approx(row.top1)
    assert sorted(p.name for p in (out / "models").glob("*.safetensors")) == sorted(Path(m).name for m in front["model"])


@pytest.mark.slow  # a local Dask cluster of two worker processes (~20 s): `uv run pytest -m slow`
def test_search_on_a_two_worker_local_dask_cluster(tmp_path: Path, micro_file: str, monkeypatch) -> None:
    from distributed import Client

    shipped: list[int] = []
    real_submit = Client.submit

    def submit(self, fn, *args, **kwargs):
        shipped.append(len(pickle.dumps(args)))  # what one task sends to a worker
        return real_submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(Client, "submit", submit)
    progress: list[tuple[int, int]] = []
    out = tmp_path / "dask"
    front = search_rewards(**tiny(micro_file), out_dir=out, n_workers=2, callback=lambda g, f: progress.append((g, len(f))))

    assert [g for g, _ in progress] == [1, 2] and all(n >= 1 for _, n in progress)
    check_front(out, front)
    evals = read_front(out / "evaluations.parquet")
    assert len(evals) == 8 and evals["individual"].tolist() == list(range(8))
    # The model and data are loaded once per worker process (a counter per process), never shipped with a task.
    assert (evals["backbone_loads"] == 1).all()
    # 8 training tasks (an index, a seed, 3 values) and a test-score task per front member (its trained policy, not the ViT).
    assert len(shipped) == 8 + len(front) and max(shipped[:8]) < 1_000
    policy_bytes = len(pickle.dumps(rw.policy_payload(DynamicViT.load(out / front["model"][0]).policy)))
    assert max(shipped[8:]) < policy_bytes + 1_000

    # Evaluation i trains with seed (search seed, i) wherever it runs: serial in-process gives the same individuals.
    serial = search_rewards(**tiny(micro_file), out_dir=tmp_path / "serial", n_workers=0)
    pd.testing.assert_frame_equal(read_front(tmp_path / "serial" / "evaluations.parquet")[SAME], evals[SAME])
    pd.testing.assert_frame_equal(serial.drop(columns="train_seconds"), front.drop(columns="train_seconds"))


def test_same_seed_same_search_other_seed_other_individuals(tmp_path: Path, micro_file: str) -> None:
    kw = tiny(micro_file, pop_size=3, n_gen=2, budget_steps=512)
    first = search_rewards(**kw, out_dir=tmp_path / "a", n_workers=0)
    again = search_rewards(**kw, out_dir=tmp_path / "b", n_workers=0)
    pd.testing.assert_frame_equal(first.drop(columns="train_seconds"), again.drop(columns="train_seconds"))
    a, b = (read_front(tmp_path / d / "evaluations.parquet")[SAME] for d in ("a", "b"))
    pd.testing.assert_frame_equal(a, b)
    other = search_rewards(**{**kw, "n_gen": 1, "seed": 1}, out_dir=tmp_path / "c", n_workers=0)
    c = read_front(tmp_path / "c" / "evaluations.parquet")
    assert not np.allclose(c["compute_weight"], a["compute_weight"][: len(c)])
    front_of_c = c[non_dominated(c, ("error", "executed_frac")).to_numpy()]  # the front is that search's own,
    front_of_c = front_of_c.sort_values("individual").drop_duplicates(["error", "executed_frac"])  # one per score
    assert sorted(other["individual"]) == sorted(front_of_c["individual"])


def test_ctrl_c_writes_the_current_front_and_reraises(tmp_path: Path, micro_file: str, monkeypatch) -> None:
    real_train, calls = rw.RewardWorker.train, []

    def train(self, task):
        calls.append(task["index"])
        if len(calls) == 6:  # the second generation's second individual
            raise KeyboardInterrupt
        return real_train(self, task)

    monkeypatch.setattr(rw.RewardWorker, "train", train)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        search_rewards(**tiny(micro_file, pop_size=4, budget_steps=512), out_dir=out, n_workers=0)
    evals = read_front(out / "evaluations.parquet")
    assert evals["individual"].tolist() == [0, 1, 2, 3, 4]  # everything finished before the interrupt, mid-generation too
    front = read_front(out)
    assert set(front["individual"]) <= set(evals["individual"]) and "top1_test" not in front  # test scores come at the end
    for model in front["model"]:
        assert DynamicViT.load(out / model).depth == 4


def test_bad_inputs_say_what_to_do(tmp_path: Path, micro_file: str, monkeypatch) -> None:
    kw = tiny(micro_file)
    with pytest.raises(ValueError, match=r"compute_weight.*searched"):
        search_rewards(**{**kw, "env_kwargs": {**kw["env_kwargs"], "compute_weight": 0.1}}, out_dir=tmp_path, n_workers=0)
    with pytest.raises(ValueError, match="frozen"):
        search_rewards(**{**kw, "env_kwargs": {**kw["env_kwargs"], "backbone_mode": "cotrain"}}, out_dir=tmp_path, n_workers=0)
    with pytest.raises(TypeError, match=r"compute_wieght.*Did you mean 'compute_weight'"):
        search_rewards(**{**kw, "env_kwargs": {"compute_wieght": 0.1}}, out_dir=tmp_path, n_workers=0)
    with pytest.raises(ValueError, match="pop_size"):
        search_rewards(**{**kw, "pop_size": 0}, out_dir=tmp_path, n_workers=0)
    monkeypatch.setitem(__import__("sys").modules, "agents.nsga2.dask_workers", None)  # as if dask were not installed
    with pytest.raises(ImportError, match="uv sync --extra dask"):
        search_rewards(**kw, out_dir=tmp_path, n_workers=2)


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path: Path, micro_file: str, monkeypatch) -> None:
    from agents.nsga2 import dask_workers

    monkeypatch.setattr(dask_workers, "CONNECT_TIMEOUT_S", 1)
    with pytest.raises(ConnectionError, match=r"cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'"):
        search_rewards(**tiny(micro_file), out_dir=tmp_path, dask_scheduler="tcp://127.0.0.1:9")
