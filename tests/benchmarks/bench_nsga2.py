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

import itertools
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from agents.nsga2 import LayerSubsetProblem, binary_nsga2, evaluate_subsets
from agents.nsga2.summaries import md_table
from agents.nsga2.trie import block_runs
from vitskip_env import make_dataset
from vitskip_env._io import atomic_path, atomic_write_text
from vitskip_env.options import resolve_backbone

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
GOAL = 5.0


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


def time_population(vit, masks: np.ndarray | list[np.ndarray], ds, n: int, batch: int, rounds: int) -> dict[str, float]:
    """Interleaved rounds of (whole population in one call) and (one call per individual); medians.

    A list of populations (a whole search) is timed as the sum over its populations.
    """
    images, labels = ds.images[:n], ds.labels[:n]
    pops = masks if isinstance(masks, list) else [masks]
    masks = np.concatenate(pops)

    def score(m: np.ndarray) -> list[int]:
        return evaluate_subsets(vit, m, images, labels, dataset=ds, batch_size=batch)["correct"].tolist()

    vec_t, one_t, ratios = [], [], []
    for r in range(rounds):
        times = {}
        for side in ("vectorised", "one") if r % 2 == 0 else ("one", "vectorised"):
            t0 = time.perf_counter()
            if side == "vectorised":
                vec = [c for p in pops for c in score(p)]
            else:
                one = [score(m[None])[0] for m in masks]
            times[side] = time.perf_counter() - t0
        assert vec == one, "the vectorised scores differ from scoring each individual alone"
        vec_t.append(times["vectorised"])
        one_t.append(times["one"])
        ratios.append(times["one"] / times["vectorised"])
    unique = np.unique(masks, axis=0)
    return {
        "individuals": len(masks), "distinct": len(unique), "block_runs_one_at_a_time": int(masks.sum()),
        "block_runs_shared": sum(block_runs(np.unique(p, axis=0)) for p in pops), "vectorised_s": statistics.median(vec_t),
        "one_at_a_time_s": statistics.median(one_t), "speedup": statistics.median(ratios), "speedup_min": min(ratios),
        "speedup_max": max(ratios),
    }  # fmt: skip


@pytest.mark.benchmark
def test_vectorised_population_scoring() -> None:
    threads = int(os.environ.get("VITSKIP_BENCH_THREADS", "1"))
    n = int(os.environ.get("VITSKIP_BENCH_IMAGES", "256"))
    rounds = int(os.environ.get("VITSKIP_BENCH_ROUNDS", "3"))
    device = torch.device(os.environ.get("VITSKIP_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))
    batch = int(os.environ.get("VITSKIP_BENCH_BATCH", "256"))
    torch.set_num_threads(threads)
    ds = make_dataset("shapes", "val", device=device)
    vit = resolve_backbone("demo", "trained", ds, device).eval()
    pops, search = populations(LayerSubsetProblem(vit, ds.images[:n], ds.labels[:n], dataset=ds), vit.depth)
    pops[f"a whole search: the {len(search)} populations 10 NSGA-II generations evaluate ({sum(map(len, search))})"] = search
    rows = []
    for name, masks in pops.items():
        rows.append({"population": name, **time_population(vit, masks, ds, n, batch, rounds)})
        print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    with atomic_path(RESULTS / "nsga2_vectorised.csv") as tmp:
        frame.to_csv(tmp, index=False)
    table = md_table(
        ["population", "individuals (distinct)", "block evals / image: alone -> shared", "one at a time (s)", "vectorised (s)",
         f"speed-up (median, min-max; goal >= {GOAL:g}x)"],
        [[r.population, f"{r.individuals} ({r.distinct})", f"{r.block_runs_one_at_a_time} -> {r.block_runs_shared} "
          f"({r.block_runs_one_at_a_time / r.block_runs_shared:.2f}x)", f"{r.one_at_a_time_s:.2f}", f"{r.vectorised_s:.2f}",
          f"**{r.speedup:.2f}x** ({r.speedup_min:.2f}-{r.speedup_max:.2f}){'' if r.speedup >= GOAL else ' below goal'}"]
         for r in frame.itertuples()],
    )  # fmt: skip
    malloc = {k: os.environ[k] for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if k in os.environ}
    text = "\n".join([
        "# NSGA-II layer search: vectorised population scoring vs one individual at a time",
        "",
        f"`demo` backbone (shipped, {vit.depth} blocks) on {n} `val` images of `shapes`, batch {batch}, {device}, "
        f"{threads} torch thread(s), torch {torch.__version__}, {platform.machine()}; {rounds} interleaved rounds, medians; "
        f"malloc settings: {malloc or 'defaults'}. Both sides call `agents.nsga2.evaluate_subsets` on the same images with "
        "the same batch size (the whole population in one call, or one call per individual) and get identical scores.",
        "",
        *table,
        "",
        "Where the speed-up comes from: each chunk of images is embedded once instead of once per individual (the demo's conv "
        "stem costs about one block), a block runs once per distinct prefix of kept blocks instead of once per "
        "individual keeping it (column 3), and a block that is the last one of every subset below it in the prefix trie "
        "runs for the class token alone (`vitskip_env/class_token.py`: about a quarter of a block here). Scoring one "
        "individual alone also ends on such a block, so both sides gain that on their last block; the population "
        "gains it on every leaf of its trie. On a CPU the work is compute-bound, so the speed-up tracks the work "
        "shared; random populations share fewer prefixes than converged or exhaustive ones. The whole-search row sums "
        "the populations a real run scores (its first generation is random, later ones converge).",
        "",
    ])  # fmt: skip
    atomic_write_text(RESULTS / "nsga2_vectorised.md", text)
    print(text)
    assert (frame["speedup"] > 1).all()
