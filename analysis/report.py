"""``python -m analysis.report RUN_DIR [RUN_DIR ...]``: a markdown report of a run's skip patterns, with plots.

One run: ``RUN_DIR/report.md`` and ``RUN_DIR/plots/<name>.png`` (+ ``.svg``) for the names in
:data:`RUN_PLOTS`. Several runs: a comparison (table, Pareto plot of the runs, execute rates side by
side) followed by one section per run, written to ``--out`` (default: ``report__<time>`` beside the
first run). ``--front`` adds NSGA-II fronts to the Pareto plot. The throughput table and plot show
``--benchmark`` (``train/benchmark.py``'s table), else the run's own ``benchmark/benchmark.parquet``
when ``train/benchmark.py`` has measured the run, else the run's static-vs-dynamic comparison in ``summary.json``.

Every table is computed from ``eval.parquet`` with :mod:`analysis.stats`; the headline numbers are
shown beside ``summary.json``'s and any disagreement is written into the report. The training
scripts call :func:`write_report` when a run finishes.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from vitskip_env.files import atomic_write_text

from . import plots, stats
from .frames import read_eval
from .readers import read_benchmark, read_front, read_summary, runs_frame, speed_frame

#: Plots of one run, written as ``plots/<name>.png`` and ``.svg``.
RUN_PLOTS: tuple[str, ...] = ("class_block_heatmap", "depth_histogram", "accuracy_vs_depth", "throughput", "pareto")
#: Plots of a comparison of several runs (plus each run's :data:`RUN_PLOTS` under ``plots/<run>/``).
COMPARE_PLOTS: tuple[str, ...] = ("pareto", "block_rates")
REPORT_FILE = "report.md"
#: Where ``train/benchmark.py --run RUN_DIR`` writes its table; the report uses it when present.
BENCHMARK_FILE = "benchmark/benchmark.parquet"

Fronts = Mapping[str, pd.DataFrame] | Sequence[str | os.PathLike]


def write_report(
    run_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    *,
    fronts: Fronts = (),
    benchmark: str | os.PathLike | pd.DataFrame | None = None,
    formats: Sequence[str] = ("png", "svg"),
) -> Path:
    """Write ``report.md`` and its plots; returns the report's path.

    Args:
        run_dirs: Run directories of finished training runs (``eval.parquet`` + ``summary.json``).
        out_dir: Where to write; default the run directory (one run) or ``report__<time>`` beside
            the first run (several).
        fronts: NSGA-II fronts for the Pareto plot: ``name -> frame`` or paths (``front.parquet`` or its folder).
        benchmark: The benchmark table (path or frame) for the throughput plot and table (default:
            each run's ``benchmark/benchmark.parquet`` if there is one, else its ``summary.json`` speeds).
        formats: Image formats of every plot (the report embeds the PNGs).

    Raises:
        ValueError: No run directory, or a file is not what the report needs.
        FileNotFoundError: A run directory lacks ``eval.parquet`` or ``summary.json``.
    """
    runs = [Path(r) for r in run_dirs]
    if not runs:
        raise ValueError("write_report needs at least one run directory")
    if "png" not in formats:
        raise ValueError(f"formats must include 'png' (the report embeds PNGs); got {list(formats)}")
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        raise ValueError(f"run directories need distinct folder names (plots are filed under them); got {names}")
    if out_dir is None:
        out_dir = runs[0] if len(runs) == 1 else runs[0].parent / f"report__{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(out_dir)
    front_frames = _read_fronts(fronts)
    bench = read_benchmark(benchmark) if isinstance(benchmark, (str, os.PathLike)) else benchmark
    cmd = "python -m analysis.report " + " ".join(str(r) for r in runs)
    if len(runs) == 1:
        lines = [f"# Skip patterns: {runs[0].name}", "", f"Written by `{cmd}`.", ""]
        lines += _run_section(runs[0], out, out / "plots", "##", front_frames, bench, formats, pareto=True)
    else:
        lines = [f"# Skip patterns: {len(runs)} runs compared", "", f"Written by `{cmd}`.", ""]
        lines += _comparison(runs, out, front_frames, formats)
        for run in runs:
            lines += [f"## {run.name}", ""]
            lines += _run_section(run, out, out / "plots" / run.name, "###", front_frames, bench, formats, pareto=False)
    path = out / REPORT_FILE
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def _read_fronts(fronts: Fronts) -> dict[str, pd.DataFrame]:
    if isinstance(fronts, Mapping):
        return dict(fronts)
    named = {}
    for p in map(Path, fronts):
        name = p.name if p.is_dir() else (p.parent.name if p.stem == "front" else p.stem)
        named[name or str(p)] = read_front(p)
    return named


def _run_section(
    run: Path,
    out: Path,
    plot_dir: Path,
    h: str,
    fronts: Mapping[str, pd.DataFrame],
    bench: pd.DataFrame | None,
    formats: Sequence[str],
    *,
    pareto: bool,
) -> list[str]:
    frame, summary = read_eval(run), read_summary(run)
    head = stats.overall(frame)
    own_bench = run / BENCHMARK_FILE
    speed = bench if bench is not None else read_benchmark(own_bench) if own_bench.is_file() else speed_frame(summary)
    figures: dict[str, Any] = {
        "class_block_heatmap": lambda: plots.plot_class_block_heatmap(frame),
        "depth_histogram": lambda: plots.plot_depth_histogram(frame),
        "accuracy_vs_depth": lambda: plots.plot_accuracy_vs_depth(frame, static_top1=summary.get("top1_static")),
        "throughput": lambda: plots.plot_throughput(speed),
        "pareto": lambda: plots.plot_pareto(_static_front([summary]) | fronts, _dynamic_points([run])),
    }
    img = {name: _save(make(), plot_dir / name, out, formats) for name, make in figures.items() if pareto or name != "pareto"}
    sections: list[tuple[str, list[str]]] = [
        ("Headline", [_md(_headline(head, summary)), *_disagreements(frame, head, summary)]),
        ("Execute rate per block", [_md(_rates_table(frame, summary), "{:.4f}"), img["class_block_heatmap"]]),
        ("Depth", [_md(_depth_table(frame)), img["depth_histogram"], img["accuracy_vs_depth"]]),
        ("Per class", [_md(stats.class_depth(frame).set_axis(["images", "mean depth (blocks)", "top-1 (%)"], axis=1))]),
    ]
    by_difficulty = stats.depth_by_difficulty(frame)
    if len(by_difficulty):
        labels = pd.Index([f"{iv.left:.1f}-{iv.right:.1f}" for iv in by_difficulty.index], name="difficulty")
        by_difficulty = by_difficulty.set_axis(labels).set_axis(["images", "mean depth (blocks)", "top-1 (%)"], axis=1)
        corr = f"Spearman rank correlation of difficulty and executed blocks: {head['difficulty_corr']:+.3f}."
        sections.append(("Depth vs difficulty", [corr, _md(by_difficulty)]))
    paths = stats.common_paths(frame).assign(share=lambda t: 100 * t["share"]).set_index("path")
    paths.columns = ["images", "share (%)", "executed blocks", "top-1 (%)", "mean confidence"]
    sections.append(("Most common paths", ["Executed mask, block 0 first.", _md(paths)]))
    co = stats.coexecution(frame, "row")
    co = co.set_axis([f"block {b}" for b in co.index]).set_axis([f"block {b}" for b in co.columns], axis=1)
    note = "Row i, column j: the share of the images running block i that also run block j."
    sections.append(("Block co-execution", [note, _md(co.rename_axis("ran"))]))
    sections.append(("Throughput", [_md(_speed_table(speed), index=False), img["throughput"]]))
    if pareto:
        sections.append(("Accuracy vs compute", [img["pareto"]]))
    intro = (f"{summary['env']} · {summary['algo']} · seed {summary['seed']}: {head['images']:,} test images, "
             f"depth {head['depth']}, deterministic policy.")  # fmt: skip
    lines = [intro, ""]
    for title, parts in sections:
        lines += [f"{h} {title}", ""]
        for part in parts:
            lines += [part, ""]
    return lines


def _rates_table(frame: pd.DataFrame, summary: dict[str, Any]) -> pd.DataFrame:
    rates = stats.block_rates(frame)
    saved = list(summary.get("block_rates", []))[: len(rates)]  # a different depth is reported by _disagreements
    rows = [rates.to_numpy(), saved + [math.nan] * (len(rates) - len(saved))]
    table = pd.DataFrame(rows, index=["eval.parquet", "summary.json"], columns=[f"block {b}" for b in rates.index])
    return table.rename_axis("source")


def _depth_table(frame: pd.DataFrame) -> pd.DataFrame:
    depth = stats.top1_by_depth(frame).assign(share=lambda t: 100 * t["share"])
    depth.columns = ["images", "share (%)", "top-1 (%)", "mean confidence"]
    return depth.rename_axis("executed blocks")


def _speed_table(speed: pd.DataFrame) -> pd.DataFrame:
    names = {"device": "device", "dtype": "dtype", "threads": "threads", "batch": "batch", "model": "model",
             "images_per_s": "images/s", "ms_per_batch": "ms per batch", "speedup": "speed-up vs static"}  # fmt: skip
    table = speed[[c for c in names if c in speed.columns]].copy()
    if "images_per_s" in table:
        table["images_per_s"] = table["images_per_s"].round().astype("int64")
    if "speedup" in table:
        table["speedup"] = [_fmt(v, "{:.2f}x") for v in table["speedup"]]
    return table.rename(columns=names)


def _headline(head: dict[str, float], s: dict[str, Any]) -> pd.DataFrame:
    corr = s.get("difficulty_corr")
    rows = [
        ("test images", f"{head['images']:,}", f"{s.get('test_images', math.nan):,}"),
        ("top-1 (%)", f"{head['top1']:.2f}", f"{s['top1_dynamic']:.2f}"),
        ("top-1 of the static backbone (%)", "", f"{s['top1_static']:.2f}"),
        (f"executed blocks (mean, of {head['depth']})", f"{head['executed_blocks']:.3f}", f"{s['executed_blocks']:.3f}"),
        ("executed fraction", f"{head['executed_frac']:.3f}", f"{s['executed_frac']:.3f}"),
        ("difficulty vs depth (Spearman)", _fmt(head["difficulty_corr"], "{:+.3f}"), _fmt(corr, "{:+.3f}")),
        ("mean confidence", _fmt(head["mean_confidence"], "{:.3f}"), ""),
    ]
    return pd.DataFrame(rows, columns=["metric", "eval.parquet", "summary.json"]).set_index("metric")


def _disagreements(frame: pd.DataFrame, head: dict[str, float], s: dict[str, Any]) -> list[str]:
    checks = {
        "test images": (head["images"], s.get("test_images")),
        "top-1": (head["top1"], s.get("top1_dynamic")),
        "executed blocks": (head["executed_blocks"], s.get("executed_blocks")),
        "difficulty vs depth": (head["difficulty_corr"], s.get("difficulty_corr")),
    }
    rates, saved = stats.block_rates(frame).to_numpy(), s.get("block_rates")
    if saved is not None and len(saved) != len(rates):
        checks["number of blocks"] = (len(rates), len(saved))
    checks |= {f"execute rate of block {b}": (r, q) for b, (r, q) in enumerate(zip(rates, saved or [], strict=False))}
    bad = [name for name, (a, b) in checks.items() if not _close(a, b)]
    if not bad:
        return []
    return ["", f"**Warning:** eval.parquet and summary.json disagree on {', '.join(bad)} (summary.json measures the "
            "exported DynamicViT, eval.parquet the agent in the env; they should match exactly)."]  # fmt: skip


def _close(a: Any, b: Any) -> bool:
    a, b = (math.nan if v is None else float(v) for v in (a, b))
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def _comparison(runs: Sequence[Path], out: Path, fronts: Mapping[str, pd.DataFrame], formats: Sequence[str]) -> list[str]:
    table = runs_frame(runs).set_index("run")
    summaries = [read_summary(r) for r in runs]
    fig = plots.plot_pareto(_static_front(summaries) | dict(fronts), _dynamic_points(runs))
    pareto_img = _save(fig, out / "plots" / "pareto", out, formats)
    rates_img = _save(
        plots.plot_block_rates({r.name: read_eval(r) for r in runs}), out / "plots" / "block_rates", out, formats
    )
    points = _dynamic_points(runs).set_index("name")
    best = stats.pareto_front(points, "executed_blocks", "top1").index.tolist()
    return ["## Runs", "", _md(table), "", f"Non-dominated runs (fewer blocks, higher top-1): {', '.join(best)}.", "",
            pareto_img, "", rates_img, ""]  # fmt: skip


def _static_front(summaries: Sequence[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    rows = {(s["depth"], s["top1_static"]) for s in summaries}
    return {"static backbone": pd.DataFrame(sorted(rows), columns=["executed_blocks", "top1"])}


def _dynamic_points(runs: Sequence[Path]) -> pd.DataFrame:
    table = runs_frame(runs)
    names = [
        f"{a} s{s}" + ("" if math.isnan(w) else f" cw {w:g}")
        for a, s, w in zip(table.algo, table.seed, table.compute_weight, strict=True)
    ]
    return pd.DataFrame({"name": names, "executed_blocks": table.executed_blocks, "top1": table.top1_dynamic})


def _save(fig: Any, stem: Path, out: Path, formats: Sequence[str]) -> str:
    files = plots.save_figure(fig, stem, formats)
    png = next(f for f in files if f.suffix == ".png")
    return f"![{stem.name}]({png.relative_to(out).as_posix()})"


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else spec.format(value)


def _md(frame: pd.DataFrame, float_spec: str = "{:.2f}", index: bool = True) -> str:
    """A markdown table; floats with ``float_spec``, NaN as ``n/a``, numbers right-aligned."""
    data = frame.reset_index() if index else frame
    numeric = [pd.api.types.is_numeric_dtype(data[c]) and not pd.api.types.is_bool_dtype(data[c]) for c in data.columns]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return _fmt(v, float_spec)
        return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)

    rows = [[cell(v) for v in row] for row in data.astype(object).itertuples(index=False)]
    lines = [
        "| " + " | ".join(str(c) for c in data.columns) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m analysis.report RUN_DIR [RUN_DIR ...] [--out DIR] [--front PATH ...] [--benchmark PATH]``."""
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of finished training runs")
    parser.add_argument("--out", help="output folder (default: the run directory, or report__<time> beside the first run)")
    parser.add_argument("--front", action="append", default=[], metavar="PATH", help="NSGA-II front to add (repeatable)")
    parser.add_argument("--benchmark", metavar="PATH", help="train/benchmark.py's table for the throughput plot")
    parser.add_argument("--formats", nargs="+", default=["png", "svg"], help="image formats (default: png svg)")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.runs, args.out, fronts=args.front, benchmark=args.benchmark, formats=args.formats)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
