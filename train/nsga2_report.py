"""What ``train/nsga2.py --search layers`` reports beside its front: the run's dynamic policy
against the static subsets at equal mean executed blocks, and the Pareto plots of every search."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from vitskip_env.files import atomic_write_text

if TYPE_CHECKING:
    from nsga2 import Args


def comparison(dyn, problem, front: pd.DataFrame, test, args: Args, out: Path, run_dir: Path) -> dict[str, Any]:
    """The run's dynamic policy against the best static subsets on test, at equal mean executed blocks.

    The static reference is the exact front (every subset scored on val) when the depth is at most
    ``--exhaustive-max-depth``, else the NSGA-II front; which one, and where the two differ, is reported.
    """
    from agents.nsga2 import evaluate_subsets, str_to_mask
    from agents.nsga2.compare import compare_dynamic_static, comparison_markdown, static_envelope
    from agents.nsga2.joint import evaluate_joint

    depth, (tds, nt) = dyn.depth, test
    full = np.ones((1, depth), dtype=bool)
    on_val = evaluate_joint(dyn, full, problem.images, problem.labels, dataset=problem.dataset, batch_size=args.batch_size)
    on_test = evaluate_joint(dyn, full, tds.images[:nt], tds.labels[:nt], dataset=tds, batch_size=args.batch_size)
    dynamic = {
        "top1": float(on_val["top1"][0]), "top1_test": float(on_test["top1"][0]),
        "executed_blocks": float(on_test["executed_blocks"][0]), "executed_blocks_val": float(on_val["executed_blocks"][0]),
    }  # fmt: skip
    static, source, notes = front, "the NSGA-II front", ""
    if depth <= args.exhaustive_max_depth:
        every = np.array([[(i >> b) & 1 for b in range(depth)] for i in range(1, 2**depth)], dtype=bool)
        problem.objectives(every)  # scores the subsets the search did not visit
        static = problem.front()
        masks = np.stack([str_to_mask(k) for k in static["kept"]])
        static["top1_test"] = evaluate_subsets(dyn.backbone, masks, tds.images[:nt], tds.labels[:nt], dataset=tds,
                                               batch_size=args.batch_size)["top1"].numpy()  # fmt: skip
        source = f"the exact front (all {len(every)} subsets scored on val)"
        ga = static_envelope(front, depth).set_index("k")["top1"]
        exact = static_envelope(static, depth).set_index("k")["top1"]
        missed = [int(k) for k in exact.index if ga.get(k, -math.inf) < exact[k]]  # a tie on val is not a miss
        notes = f"The NSGA-II front missed the val-best subset of size(s) {missed}. " if missed else (
            "The NSGA-II front holds the val-best subset of every size. ")  # fmt: skip
    result = compare_dynamic_static(static, dynamic, depth)
    finetuned, note = None, f"NSGA-II front's subsets fine-tuned for {args.finetune_steps} steps"
    if args.finetune_steps:  # extra training the policy's backbone did not get: reported beside, not instead
        finetuned = compare_dynamic_static(
            front.assign(top1=front["top1_ft"], top1_test=front["top1_test_ft"]), dynamic, depth
        )
    nv = len(problem.labels)
    notes += f"Dynamic policy: `{run_dir.as_posix()}/dynamic_vit.safetensors`; {nt:,} test images, {nv:,} val images."
    text = comparison_markdown(result, title="Per-image skipping vs static subsets", source=source, finetuned=finetuned,
                               finetune_note=note, notes=notes)  # fmt: skip
    atomic_write_text(out / "comparison.md", text)
    curves = {"best static subset of each size (test)": result["envelope"]}
    if finetuned is not None:
        curves[f"... fine-tuned {args.finetune_steps} steps (test)"] = finetuned["envelope"]
    curves = {k: e.assign(top1=e["top1_test"], executed_blocks=e["kept_blocks"].astype(float)) for k, e in curves.items()}
    save_plot(curves, point("dynamic policy (test)", dynamic["executed_blocks"], dynamic["top1_test"]), out / "comparison.png")
    report = {**result, "envelope": result["envelope"].to_dict("records"), "static_source": source}
    if finetuned is not None:
        report["finetuned"] = {**finetuned, "envelope": finetuned["envelope"].to_dict("records"), "dynamic": None}
    return report


def point(name: str, blocks: float, top1: float) -> pd.DataFrame:
    """One labelled point for :func:`analysis.plots.plot_pareto`'s ``dynamic`` markers."""
    return pd.DataFrame([{"name": name, "executed_blocks": blocks, "top1": top1}])


def save_plot(fronts: dict[str, pd.DataFrame], dynamic: pd.DataFrame | None, path: Path, x: str = "executed_blocks") -> None:
    from analysis.plots import plot_pareto, save_figure

    save_figure(plot_pareto(fronts, dynamic, x=x, y="top1"), path, formats=("png",))
