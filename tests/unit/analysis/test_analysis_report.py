"""analysis.report on hand-made run directories: tables agree with summary.json, every plot is written, runs compare."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
import yaml
from test_analysis_frames import CLASSES, episodes

from analysis import plots
from analysis.frames import from_episodes
from analysis.report import COMPARE_PLOTS, RUN_PLOTS, main, write_report

REPO = Path(__file__).resolve().parents[3]


def summary(**change) -> dict:
    """summary.json of the hand-made frame (4 images, paths 1100 1111 1010 1100, 3 correct)."""
    speed = {
        str(b): {
            "static": {"images_per_s": 100.0 * b, "ms_per_batch": 10.0, "speedup": 1.0},
            "dynamic": {"images_per_s": 150.0 * b, "ms_per_batch": 6.7, "speedup": 1.5},
        }
        for b in (1, 64)
    }
    return {"env": "ViTSkip-Shapes-v0", "algo": "ppo", "seed": 1, "total_timesteps": 4096, "depth": 4, "test_images": 4,
            "top1_static": 80.0, "top1_dynamic": 75.0, "executed_blocks": 2.5, "executed_frac": 0.625, "agent_top1": 75.0,
            "difficulty_corr": 3 / math.sqrt(15), "block_rates": [1.0, 0.75, 0.5, 0.25], "speed": speed, "threads": 1,
            "device": "cpu"} | change  # fmt: skip


def make_run(path: Path, compute_weight: float = 0.1, **change) -> Path:
    path.mkdir(parents=True)
    from_episodes(episodes(), CLASSES).to_parquet(path / "eval.parquet", index=False)
    (path / "summary.json").write_text(json.dumps(summary(**change)))
    (path / "args.yaml").write_text(yaml.safe_dump({"compute_weight": compute_weight}))
    return path


def table(report: str, heading: str) -> pd.DataFrame:
    """The first markdown table after ``heading``, as strings, indexed by its first column."""
    lines = report[report.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    block = itertools.takewhile(lambda line: line.startswith("|"), lines[start:])
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in block]
    return pd.DataFrame(rows[2:], columns=rows[0]).set_index(rows[0][0])


def test_single_run_report(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    path = write_report([run])
    assert path == run / "report.md"
    text = path.read_text()
    for name in RUN_PLOTS:
        png = run / "plots" / f"{name}.png"
        assert f"]({png.relative_to(run).as_posix()})" in text and (run / "plots" / f"{name}.svg").stat().st_size > 0
        size = (round(plots.FIGSIZE[1] * plots.DPI), round(plots.FIGSIZE[0] * plots.DPI))
        assert matplotlib.image.imread(png).shape[:2] == size  # height, width
    head = table(text, "## Headline")
    assert head.loc["top-1 (%)"].tolist() == ["75.00", "75.00"]
    assert head.loc["executed blocks (mean, of 4)"].tolist() == ["2.500", "2.500"]
    assert head.loc["executed fraction"].tolist() == ["0.625", "0.625"]
    assert head.loc["difficulty vs depth (Spearman)"].tolist() == ["+0.775", "+0.775"]
    assert head.loc["mean confidence", "eval.parquet"] == "0.725"
    assert "Warning" not in text
    rates = table(text, "## Execute rate per block")
    assert rates.loc["eval.parquet"].tolist() == rates.loc["summary.json"].tolist() == ["1.0000", "0.7500", "0.5000", "0.2500"]
    depth = table(text, "## Depth\n")
    assert depth["images"].tolist() == ["3", "1"] and depth["top-1 (%)"].tolist() == ["100.00", "0.00"]
    per_class = table(text, "## Per class")
    assert per_class.index.tolist() == ["cat", "dog"] and per_class["mean depth (blocks)"].tolist() == ["2.00", "3.00"]
    assert table(text, "## Depth vs difficulty")["images"].tolist() == ["1", "1", "1", "0", "1"]
    paths = table(text, "## Most common paths")
    assert paths.index.tolist() == ["1100", "1010", "1111"] and paths["share (%)"].tolist() == ["50.00", "25.00", "25.00"]
    co = table(text, "## Block co-execution")
    assert co.loc["block 1"].tolist() == ["1.00", "1.00", "0.33", "0.33"]
    speed = table(text, "## Throughput")
    assert speed["images/s"].tolist() == ["100", "150", "6,400", "9,600"]
    assert speed["speed-up vs static"].tolist() == ["1.00x", "1.50x", "1.00x", "1.50x"]


def test_disagreement_with_summary_is_reported(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", top1_dynamic=74.0, block_rates=[1.0, 0.75, 0.5, 0.5])
    text = write_report([run], formats=("png",)).read_text()
    assert "**Warning:** eval.parquet and summary.json disagree on top-1, execute rate of block 3" in text


@pytest.mark.parametrize("saved", [[1.0, 0.75, 0.5], [1.0, 0.75, 0.5, 0.25, 0.5]])
def test_summary_of_another_depth_is_reported_not_a_crash(tmp_path: Path, saved: list[float]) -> None:
    run = make_run(tmp_path / "run", block_rates=saved)
    text = write_report([run], formats=("png",)).read_text()
    assert "disagree on number of blocks" in text


def test_several_runs_are_compared(tmp_path: Path) -> None:
    a = make_run(tmp_path / "runs" / "a", compute_weight=0.1)
    b = make_run(tmp_path / "runs" / "b", compute_weight=0.5, seed=2, top1_dynamic=70.0, executed_blocks=3.0)  # dominated
    front = pd.DataFrame({"search": "layers", "top1": [70.0, 80.0], "error": [30.0, 20.0], "executed_blocks": [2.0, 4.0],
                          "executed_frac": [0.5, 1.0], "compute": [0.5, 1.0], "split": "val",
                          "kept": ["1100", "1111"]})  # fmt: skip
    front.to_parquet(tmp_path / "front.parquet")
    path = write_report([a, b], fronts=[tmp_path / "front.parquet"], formats=("png",))
    assert path.parent.parent == tmp_path / "runs" and path.parent.name.startswith("report__")
    text = path.read_text()
    runs = table(text, "## Runs")
    assert runs.index.tolist() == ["a", "b"] and runs["compute_weight"].tolist() == ["0.10", "0.50"]
    assert runs["top1_dynamic"].tolist() == ["75.00", "70.00"]
    assert "Non-dominated runs (fewer blocks, higher top-1): ppo s1 cw 0.1." in text
    for name in COMPARE_PLOTS:
        assert (path.parent / "plots" / f"{name}.png").stat().st_size > 0
    for run in ("a", "b"):
        assert f"## {run}\n" in text
        for name in RUN_PLOTS:
            assert (path.parent / "plots" / run / f"{name}.png").is_file() == (name != "pareto")
    out = write_report([a, b], tmp_path / "cmp", fronts={"layers": front}, formats=("png",))
    assert out == tmp_path / "cmp" / "report.md" and not list((tmp_path / "cmp").rglob("*.svg"))


def test_benchmark_table_replaces_the_run_speed(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    bench = pd.DataFrame({"device": "cpu", "dtype": "float32", "threads": 2, "batch": [1, 1, 8, 8],
                          "model": ["static", "random", "static", "random"], "images_per_s": [10.0, 12.0, 40.0, 60.0],
                          "speedup": [1.0, 1.2, 1.0, 1.5]})  # fmt: skip
    bench.to_csv(tmp_path / "bench.csv", index=False)
    text = write_report([run], benchmark=tmp_path / "bench.csv", formats=("png",)).read_text()
    assert table(text, "## Throughput")["model"].tolist() == ["static", "random", "static", "random"]
    (run / "benchmark").mkdir()
    bench.assign(model="dynamic").to_parquet(run / "benchmark" / "benchmark.parquet")  # the run's own benchmark
    assert set(table(write_report([run], formats=("png",)).read_text(), "## Throughput")["model"]) == {"dynamic"}
    bench.drop(columns="model").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"not a benchmark table: missing columns \['model'\]"):
        write_report([run], benchmark=tmp_path / "bad.csv")


def test_bad_input_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one run"):
        write_report([])
    run = make_run(tmp_path / "run")
    with pytest.raises(ValueError, match="must include 'png'"):
        write_report([run], formats=("svg",))
    with pytest.raises(FileNotFoundError, match="no NSGA-II front"):
        write_report([run], fronts=[tmp_path / "nowhere"])
    pd.DataFrame({"top1": [1.0]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"not an NSGA-II front: missing columns \['search'"):
        write_report([run], fronts=[tmp_path / "bad.parquet"])
    (tmp_path / "run" / "summary.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no summary\.json"):
        write_report([run])


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert "no eval.parquet" in capsys.readouterr().err
    run = make_run(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "analysis.report", str(run), "--formats", "png"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and (run / "report.md").is_file() and not list(run.rglob("*.svg"))
