"""How much a backbone needs its depth: the best static block subset at every depth, raw and fine-tuned.

    python train/depth_curve.py --dataset relations          # the env's backbone for relations
    python train/depth_curve.py --backbone my.safetensors --dataset shapes --finetune-steps 300

Every non-empty subset of the blocks (2^depth - 1 of them; at most 12 blocks) is scored on
``--val-images`` images of ``val`` in one prefix-sharing pass; at each depth the best subset *on val*
is then scored on the whole ``test`` split, overall and per difficulty bin, before and after a short
fine-tune of ``--finetune-steps`` (the same AdamW fine-tune as ``train/nsga2.py --finetune-steps``).
The full model gets the same fine-tune, so both sides of the comparison have had equal extra
training. Selection never looks at ``test``.

Writes ``--out`` (default: beside the backbone, ``<name>.depth.json`` and ``<name>.depth.md``), atomically.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch
import tyro

from vitskip_env import make_dataset
from vitskip_env.files import atomic_write_text

#: Difficulty bins of the record (right-open, the last one closed).
BINS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_EXHAUSTIVE_DEPTH = 12


@dataclass
class Args:
    dataset: str = "relations"
    """dataset (its val split selects the subsets, its test split scores them)"""
    backbone: str | None = None
    """backbone file or preset (default: the one the environments load for the dataset)"""
    finetune_steps: int = 300
    """AdamW steps of the fine-tune given to the best subset at each depth and to the full model (0: none)"""
    finetune_lr: float = 3e-4
    """peak learning rate of the fine-tune (cosine to 0)"""
    val_images: int = 2000
    """val images scoring the exhaustive search"""
    test_images: int | None = None
    """test images (default: the whole split)"""
    seed: int = 0
    """fine-tune seed"""
    device: str = "auto"
    """cpu, cuda or auto"""
    threads: int | None = None
    """CPU threads (default: all)"""
    out: str | None = None
    """output path without suffix (default: the backbone's path without .safetensors, plus .depth)"""


def all_subsets(depth: int) -> np.ndarray:
    """Every non-empty subset of ``depth`` blocks as ``bool (2^depth - 1, depth)``, True = kept."""
    if not 1 <= depth <= MAX_EXHAUSTIVE_DEPTH:
        raise ValueError(
            f"an exhaustive depth curve needs 1..{MAX_EXHAUSTIVE_DEPTH} blocks, the backbone has {depth}; "
            "use train/nsga2.py --search layers for deeper models"
        )
    rows = [bits for bits in itertools.product((False, True), repeat=depth) if any(bits)]
    return np.array(rows, dtype=bool)


def bin_labels(difficulty: torch.Tensor | None) -> list[tuple[str, torch.Tensor]]:
    """``(name, index tensor)`` per difficulty bin of :data:`BINS` (empty when the dataset has none)."""
    if difficulty is None:
        return []
    out = []
    for lo, hi in itertools.pairwise(BINS):
        upper = difficulty <= hi if hi == BINS[-1] else difficulty < hi
        idx = ((difficulty >= lo) & upper).nonzero().squeeze(1)
        out.append((f"{lo:.2f}-{hi:.2f}", idx))
    return out


def score_bins(model, masks: np.ndarray, test, n: int) -> list[dict[str, float]]:
    """Test top-1 of each mask, overall and per difficulty bin (percent)."""
    from agents.nsga2 import evaluate_subsets

    images, labels = test.images[:n], test.labels[:n]
    rows = [{"top1": float(t)} for t in evaluate_subsets(model, masks, images, labels, dataset=test)["top1"]]
    diff = None if test.difficulty is None else test.difficulty[:n]
    for name, idx in bin_labels(diff):
        if idx.numel() == 0:
            continue
        top1 = evaluate_subsets(model, masks, images[idx], labels[idx], dataset=test)["top1"]
        for row, t in zip(rows, top1, strict=True):
            row[f"bin {name}"] = float(t)
    return rows


def depth_curve(args: Args) -> dict[str, Any]:
    """Run the exhaustive search, the test scoring and the fine-tunes; returns the record."""
    from agents.nsga2 import evaluate_subsets, finetune, mask_to_str
    from vitskip_env.env.options import resolve_backbone

    device = common.resolve_device(args.device)
    val, test = make_dataset(args.dataset, "val", device=device), make_dataset(args.dataset, "test", device=device)
    backbone = resolve_backbone(args.backbone, "trained", val, device).to(device).eval()
    n_test = len(test) if args.test_images is None else min(args.test_images, len(test))
    masks = all_subsets(backbone.depth)
    started = time.perf_counter()
    n_val = min(args.val_images, len(val))
    val_top1 = evaluate_subsets(backbone, masks, val.images[:n_val], val.labels[:n_val], dataset=val)["top1"]
    kept = masks.sum(1)
    chosen = [int(np.flatnonzero(kept == k)[val_top1[kept == k].argmax()]) for k in range(1, backbone.depth + 1)]
    raw = score_bins(backbone, masks[chosen], test, n_test)
    train = make_dataset(args.dataset, "train", device=device) if args.finetune_steps else None
    rows = []
    for k, (i, raw_row) in enumerate(zip(chosen, raw, strict=True), start=1):
        row: dict[str, Any] = {"blocks": k, "kept": mask_to_str(masks[i]), "val_top1": float(val_top1[i])}
        row |= {f"raw {key}": value for key, value in raw_row.items()}
        if train is not None:
            model = finetune(backbone.pruned(masks[i]), train, steps=args.finetune_steps, lr=args.finetune_lr, seed=args.seed)
            ones = np.ones((1, model.depth), dtype=bool)
            row |= {f"ft {key}": value for key, value in score_bins(model, ones, test, n_test)[0].items()}
        rows.append(row)
        print(f"{k} blocks `{row['kept']}`: val {row['val_top1']:.2f}, test {row['raw top1']:.2f}"
              + (f", fine-tuned {row['ft top1']:.2f}" if train is not None else ""), flush=True)  # fmt: skip
    return {
        "dataset": args.dataset,
        "backbone": str(args.backbone or f"default for {args.dataset}"),
        "depth": backbone.depth,
        "subsets_scored": len(masks),
        "val_images": n_val,
        "test_images": n_test,
        "args": asdict(args),
        "minutes": round((time.perf_counter() - started) / 60, 2),
        "rows": rows,
        "summary": summary(rows, backbone.depth, args.finetune_steps),
    }


def summary(rows: list[dict[str, Any]], depth: int, finetune_steps: int) -> dict[str, float]:
    """The full model against the best half-depth subset (fine-tuned when there was a fine-tune)."""
    key = "ft top1" if finetune_steps else "raw top1"
    full, half = rows[depth - 1], rows[max(1, depth // 2) - 1]
    return {
        "full_top1": full[key],
        "half_depth_top1": half[key],
        "gap_full_minus_half": round(full[key] - half[key], 2),
        "scored": key,
    }


def markdown(record: dict[str, Any]) -> str:
    """The record as a readable table."""
    rows = record["rows"]
    cols = [c for c in rows[0] if c not in ("blocks", "kept")]
    lines = [
        f"# Depth curve: {record['dataset']}, {record['depth']} blocks",
        "",
        f"All {record['subsets_scored']} block subsets scored on {record['val_images']} val images; at each depth the "
        f"best on val, scored on {record['test_images']} test images (top-1 %), raw and after a "
        f"{record['args']['finetune_steps']}-step fine-tune (the full model gets the same fine-tune). Bins are by "
        "the dataset's per-image difficulty.",
        "",
        "| blocks | kept | " + " | ".join(cols) + " |",
        "|---:|:--|" + "---:|" * len(cols),
    ]
    for row in rows:
        lines.append(f"| {row['blocks']} | `{row['kept']}` | " + " | ".join(f"{row[c]:.2f}" for c in cols) + " |")
    s = record["summary"]
    lines += ["", f"Full depth {s['full_top1']:.2f} vs best half-depth subset {s['half_depth_top1']:.2f} ({s['scored']}): "
              f"gap {s['gap_full_minus_half']:+.2f} pt.", ""]  # fmt: skip
    return "\n".join(lines)


def main(args: Args) -> dict[str, Any]:
    """Compute the depth curve and write ``<out>.json`` / ``<out>.md``."""
    common.set_threads(args.threads)
    if args.finetune_steps < 0 or args.val_images < 1:
        raise SystemExit(
            f"--finetune-steps must be >= 0 and --val-images >= 1, got {args.finetune_steps} and {args.val_images}"
        )
    record = depth_curve(args)
    if args.out:
        base = Path(args.out)
    elif args.backbone and args.backbone.endswith(".safetensors"):
        base = Path(args.backbone[: -len(".safetensors")] + ".depth")
    else:
        base = Path("runs") / f"depth-{args.dataset}"
    atomic_write_text(base.with_name(base.name + ".json"), json.dumps(record, indent=2) + "\n")
    atomic_write_text(base.with_name(base.name + ".md"), markdown(record))
    print(f"wrote {base}.json and {base}.md")
    return record


if __name__ == "__main__":
    main(tyro.cli(Args))
