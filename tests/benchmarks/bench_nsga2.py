"""Vectorised population scoring vs scoring the same population one individual at a time (``pytest -m benchmark``).

Writes ``benchmarks/results/nsga2_vectorised.{csv,md}``. Both sides call the same scorer,
:func:`agents.nsga2.evaluate_subsets`, on the same images with the same batch size: once with the
whole population, and once per individual. Rounds interleave the two (the order alternates), and the
speed-up is the median of the per-round ratios (the host drifts). The populations: a GA's first
generation (random masks), a late generation (NSGA-II's population after 10 generations), all subsets
of one size (what ``train/benchmark.py`` scores) and every subset of the depth (exhaustive). Run it
alone on an otherwise idle machine; ``VITSKIP_BENCH_THREADS`` / ``_IMAGES`` / ``_ROUNDS`` / ``_DEVICE``
change the settings, which are recorded in the output.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from agents.nsga2 import LayerSubsetProblem, binary_nsga2, evaluate_subsets, mask_to_str
from agents.nsga2.summaries import md_table
from agents.nsga2.trie import block_runs
from vitskip_env import make_dataset
from vitskip_env.env.options import resolve_backbone
from vitskip_env.files import atomic_path, atomic_write_text
from vitskip_env.runtime import resolve_device

#: Where the tables go (``VITSKIP_BENCH_RESULTS`` overrides it: ``benchmarks/gpu.sh`` writes ``*_cuda`` folders).
RESULTS = Path(os.environ.get("VITSKIP_BENCH_RESULTS", Path(__file__).resolve().parents[2] / "benchmarks" / "results"))
GOAL = 5.0


def tune_malloc() -> str:
    """Fixed glibc mmap and trim thresholds (1 GiB, as ``train/benchmark.py`` starts with), set with ``mallopt``.

    With glibc's defaults, freeing the large token states of one side returns memory to the system
    and the next side page-faults it back: which side ran before changed a side's time by up to 25%.
    """
    env = {k: os.environ[k] for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if k in os.environ}
    if env:
        return f"from the environment: {env}"
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "defaults (no glibc)"
    m_trim_threshold, m_mmap_threshold = -1, -3
    if libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30):
        return "mmap and trim thresholds 1 GiB (mallopt)"
    return "defaults (mallopt refused)"


def populations(problem: LayerSubsetProblem, depth: int, seed: int = 0) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """The populations timed (random = GA generation 1, NSGA-II after 10 generations, one size, exhaustive),
    and every batch of individuals that 10 generations of NSGA-II hand to ``_evaluate``."""
    from pymoo.optimize import minimize

    evaluated: list[np.ndarray] = []
    scorer = problem._evaluate

    def recording(x: np.ndarray, out: dict, *args, **kwargs) -> None:
        evaluated.append(np.asarray(x).astype(bool))
        scorer(x, out, *args, **kwargs)

    problem._evaluate = recording
    late = minimize(problem, binary_nsga2(24), ("n_gen", 10), seed=seed, verbose=False).pop.get("X").astype(bool)
    problem._evaluate = scorer
    size = depth * 3 // 8
    combos = np.array([[i in c for i in range(depth)] for c in itertools.combinations(range(depth), size)])
    every = np.array(list(itertools.product([False, True], repeat=depth)))[1:]
    shuffled = every[np.random.default_rng(seed).permutation(len(every))]  # distinct, as NSGA-II's first generation
    return {
        "GA generation 1 (24 random subsets)": shuffled[:24],
        "GA generation 1 (64 random subsets)": shuffled[:64],
        "NSGA-II population after 10 generations (24)": late,
        f"all subsets of {size} blocks ({len(combos)})": combos,
        f"exhaustive: every non-empty subset ({len(every)})": every,
    }, evaluated


def time_sides(sides: dict[str, Callable[[], list[int]]], rounds: int) -> dict[str, list[float]]:
    """Interleaved rounds of every side (the order rotates each round); the scores must agree. Seconds per side."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for r in range(rounds):
        results = {}
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            results[name] = sides[name]()
            times[name].append(time.perf_counter() - t0)
        first = next(iter(results.values()))
        assert all(v == first for v in results.values()), "the vectorised scores differ from scoring each individual alone"
    return times


def ratio(times: dict[str, list[float]], slow: str, fast: str) -> tuple[float, float, float]:
    """Median, min and max of the per-round ratios ``slow / fast`` (the host drifts between rounds)."""
    ratios = [a / b for a, b in zip(times[slow], times[fast], strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def time_population(vit, masks: np.ndarray | list[np.ndarray], ds, n: int, batch: int, rounds: int) -> dict[str, float]:
    """The whole population in one :func:`evaluate_subsets` call vs one call per individual; medians.

    A list of populations (a whole search) is timed as the sum over its populations.
    """
    images, labels = ds.images[:n], ds.labels[:n]
    pops = masks if isinstance(masks, list) else [masks]
    masks = np.concatenate(pops)

    def score(m: np.ndarray) -> list[int]:
        return evaluate_subsets(vit, m, images, labels, dataset=ds, batch_size=batch)["correct"].tolist()

    times = time_sides({
        "vectorised": lambda: [c for p in pops for c in score(p)],
        "one": lambda: [score(m[None])[0] for m in masks],
    }, rounds)  # fmt: skip
    speedup, low, high = ratio(times, "one", "vectorised")
    return {
        "individuals": len(masks), "distinct": len(np.unique(masks, axis=0)), "block_runs_one_at_a_time": int(masks.sum()),
        "block_runs_shared": sum(block_runs(np.unique(p, axis=0)) for p in pops),
        "vectorised_s": statistics.median(times["vectorised"]), "one_at_a_time_s": statistics.median(times["one"]),
        "speedup": speedup, "speedup_min": low, "speedup_max": high,
    }  # fmt: skip


def time_search(vit, search: list[np.ndarray], ds, n: int, batch: int, rounds: int) -> list[dict[str, float]]:
    """A whole search as ``LayerSubsetProblem`` scores it (each distinct subset once, prefix states kept between
    generations, or not: ``cache_mb=0``) vs one individual at a time (every evaluation, or each distinct subset once)."""
    images, labels = ds.images[:n], ds.labels[:n]
    masks = np.concatenate(search)
    distinct = list({m.tobytes(): m for m in masks}.values())  # in the order a search first meets them
    problems: dict[str, LayerSubsetProblem] = {}

    def through_problem(cache_mb: float) -> list[int]:
        problem = problems[str(cache_mb)] = LayerSubsetProblem(vit, images, labels, dataset=ds, batch_size=batch,
                                                               cache_mb=cache_mb)  # fmt: skip
        for pop in search:
            problem.objectives(pop)
        return [problem.scores[mask_to_str(m)][0] for m in distinct]

    def one(m: np.ndarray) -> int:
        return int(evaluate_subsets(vit, m[None], images, labels, dataset=ds, batch_size=batch)["correct"][0])

    def every_evaluation() -> list[int]:
        scores = {m.tobytes(): one(m) for m in masks}  # 240 calls; the dict keeps the last, all equal
        return [scores[m.tobytes()] for m in distinct]

    times = time_sides({
        "problem": lambda: through_problem(1024.0),
        "problem_no_cache": lambda: through_problem(0.0),
        "one": every_evaluation,
        "one_memo": lambda: [one(m) for m in distinct],
    }, rounds)  # fmt: skip
    chunks = -(-n // batch)
    rows = []
    for side, label in (("problem", "with the prefix cache"), ("problem_no_cache", "no prefix cache (`cache_mb=0`)")):
        calls = problems[str(1024.0 if side == "problem" else 0.0)].block_calls / chunks
        for base, base_label, runs, count in (("one", "every evaluation", int(masks.sum()), len(masks)),
                                              ("one_memo", "each distinct subset once", int(sum(m.sum() for m in distinct)),
                                               len(distinct))):  # fmt: skip
            speedup, low, high = ratio(times, base, side)
            rows.append({
                "population": f"a whole search through `LayerSubsetProblem`, {label}, vs one at a time, {base_label}",
                "individuals": count, "distinct": len(distinct), "block_runs_one_at_a_time": runs,
                "block_runs_shared": calls, "vectorised_s": statistics.median(times[side]),
                "one_at_a_time_s": statistics.median(times[base]), "speedup": speedup, "speedup_min": low,
                "speedup_max": high,
            })  # fmt: skip
    return rows


@pytest.mark.benchmark
def test_vectorised_population_scoring() -> None:
    threads = int(os.environ.get("VITSKIP_BENCH_THREADS", "1"))
    n = int(os.environ.get("VITSKIP_BENCH_IMAGES", "256"))
    rounds = int(os.environ.get("VITSKIP_BENCH_ROUNDS", "3"))
    device = resolve_device(os.environ.get("VITSKIP_BENCH_DEVICE", "auto"))
    batch = int(os.environ.get("VITSKIP_BENCH_BATCH", "256"))
    torch.set_num_threads(threads)
    malloc = tune_malloc()
    ds = make_dataset("shapes", "val", device=device)
    vit = resolve_backbone("demo", "trained", ds, device).eval()
    pops, search = populations(LayerSubsetProblem(vit, ds.images[:n], ds.labels[:n], dataset=ds), vit.depth)
    pops[f"a whole search: the {len(search)} populations 10 NSGA-II generations evaluate ({sum(map(len, search))})"] = search
    smoke = bool(os.environ.get("VITSKIP_BENCH_SMOKE"))  # benchmarks/gpu.sh --smoke: one population, no search rows
    if smoke:
        pops = dict(list(pops.items())[:1])
    rows = []
    for name, masks in pops.items():
        rows.append({"population": name, **time_population(vit, masks, ds, n, batch, rounds)})
        print(rows[-1], flush=True)
    if not smoke:
        rows += time_search(vit, search, ds, n, batch, rounds)
    print(*rows[-4:], sep="\n", flush=True)
    frame = pd.DataFrame(rows)
    with atomic_path(RESULTS / "nsga2_vectorised.csv") as tmp:
        frame.to_csv(tmp, index=False)
    table = md_table(
        ["population", "individuals (distinct)", "block evals / image: alone -> shared", "one at a time (s)", "vectorised (s)",
         f"speed-up (median, min-max; goal >= {GOAL:g}x)"],
        [[r.population, f"{r.individuals} ({r.distinct})", f"{r.block_runs_one_at_a_time} -> {r.block_runs_shared:g} "
          f"({r.block_runs_one_at_a_time / r.block_runs_shared:.2f}x)", f"{r.one_at_a_time_s:.2f}", f"{r.vectorised_s:.2f}",
          f"**{r.speedup:.2f}x** ({r.speedup_min:.2f}-{r.speedup_max:.2f}){'' if r.speedup >= GOAL else ' below goal'}"]
         for r in frame.itertuples()],
    )  # fmt: skip
    with torch.inference_mode():
        prefix_mib = n * vit.embed(ds.normalize(ds.images[:1])).numel() * 4 / 2**20
    text = "\n".join([
        "# NSGA-II layer search: vectorised population scoring vs one individual at a time",
        "",
        f"`demo` backbone (shipped, {vit.depth} blocks) on {n} `val` images of `shapes`, batch {batch}, {device}, "
        f"{threads} torch thread(s), torch {torch.__version__}, {platform.machine()}; {rounds} interleaved rounds, medians; "
        f"malloc: {malloc}. Both sides call `agents.nsga2.evaluate_subsets` on the same images with "
        "the same batch size (the whole population in one call, or one call per individual) and get identical scores.",
        "",
        *table,
        "",
        "Where the speed-up comes from: each chunk of images is embedded once instead of once per individual (the demo's conv "
        "stem costs about one block), a block runs once per distinct prefix of kept blocks instead of once per "
        "individual keeping it (column 3), and a block that is the last one of every subset below it in the prefix trie "
        "runs for the class token alone (`vitskip_env/model/class_token.py`: about a quarter of a block here). Scoring one "
        "individual alone also ends on such a block, so both sides gain that on their last block; the population "
        "gains it on every leaf of its trie. On a CPU the work is compute-bound, so the speed-up tracks the work "
        "shared; random populations share fewer prefixes than converged or exhaustive ones. The whole-search row sums "
        "the populations a real run scores (its first generation is random, later ones converge).",
        "",
        "The last four rows time that search as the product runs it: `LayerSubsetProblem.objectives` on each population in "
        "turn, which scores each distinct subset once and keeps the token state of every kept-block prefix from one "
        "generation to the next (`agents/nsga2/cache.py`, within `cache_mb`, here 1,024 MiB; "
        f"{prefix_mib:.1f} MiB per prefix for {n} images), so a later generation runs only the prefixes no earlier one "
        "ran, and embeds nothing. The baselines score one individual at a time: every evaluation pymoo requests, or "
        "each distinct subset once (a per-individual problem that remembers its scores). "
        "Column 3 then counts the blocks run over the whole search.",
        "",
    ])  # fmt: skip
    atomic_write_text(RESULTS / "nsga2_vectorised.md", text)
    print(text)
    if not smoke:  # toy sizes: the ratios mean nothing
        assert (frame["speedup"] > 1).all()
