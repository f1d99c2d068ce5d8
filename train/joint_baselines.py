"""The equal-budget baselines of ``train/joint.py``: every one fine-tuned with the co-training's recipe.

Same steps, batch size, learning rate, schedule, augmentation, distillation teacher and seed as
the co-trained backbone; only the paths differ (``agents.cotraining``):

- ``full``: every block (extra training alone, so it is never mistaken for the policy's merit);
- ``subset-<k>``: the best static subset of ``k`` blocks (top-1 of the raw subset on the val split,
  every subset of that size scored), run as a shorter ViT;
- ``random``: random blocks per image, as many as the co-trained policy executes on the val split
  (its per-image depth histogram).

Each baseline is a phase of the run (``baseline-<name>``), saved under ``baselines/<name>.safetensors``.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from pathlib import Path
from typing import Any

import torch


def default_sizes(executed_blocks: float, depth: int) -> list[int]:
    """Subset sizes around a policy's mean depth: floor, ceil and one more (within ``1..depth - 1``)."""
    low = max(1, math.floor(executed_blocks))
    return sorted({min(k, depth - 1) for k in (low, math.ceil(executed_blocks), math.ceil(executed_blocks) + 1)})


def best_subsets(backbone: Any, val: Any, sizes: list[int], n_images: int) -> dict[int, tuple[torch.Tensor, float]]:
    """``{k: (bool (depth,) mask, val top-1)}``: the best raw subset of each size, every subset of that size scored
    on the first ``n_images`` of ``val``."""
    from agents.nsga2 import evaluate_subsets

    depth, best = backbone.depth, {}
    for k in sizes:
        masks = torch.zeros(math.comb(depth, k), depth, dtype=torch.bool)
        for row, kept in enumerate(itertools.combinations(range(depth), k)):
            masks[row, list(kept)] = True
        scored = evaluate_subsets(backbone, masks, val.images[:n_images], val.labels[:n_images], dataset=val)
        i = int(torch.as_tensor(scored["top1"]).argmax())
        best[k] = (masks[i], float(torch.as_tensor(scored["top1"])[i]))
    return best


def baseline_plan(args: Any, run_dir: Path, state: Any, teacher: Any, dataset: str) -> list[tuple[str, Any]]:
    """``[(name, paths)]`` in training order; picks the subsets (recorded in the run state) the first time."""
    from agents.cotraining import depth_histogram
    from agents.nsga2 import mask_to_str
    from vitskip_env import DynamicViT, make_dataset
    from vitskip_env.measure import score

    if "baseline_paths" not in state.data:
        device = next(teacher.parameters()).device
        dyn = DynamicViT.load(run_dir / "dynamic_vit.safetensors", device=device)
        val = make_dataset(dataset, "val", args.data_root, False, device)
        n = min(args.val_images, len(val))
        executed = score(dyn, val, n_images=n, per_image=True).executed
        assert executed is not None
        sizes = list(args.subset_sizes) or default_sizes(float(executed.sum(1).double().mean()), teacher.depth)
        best = best_subsets(teacher, val, sizes, n)
        state.data["baseline_paths"] = {
            "histogram": depth_histogram(executed).tolist(),
            "subsets": {str(k): {"mask": mask_to_str(m), "val_top1": top1} for k, (m, top1) in best.items()},
        }
    paths = state.data["baseline_paths"]
    plan: list[tuple[str, Any]] = [("full", None)]
    plan += [(f"subset-{k}", entry["mask"]) for k, entry in paths["subsets"].items()]
    plan.append(("random", torch.tensor(paths["histogram"], dtype=torch.float64)))
    return plan


def train_baselines(args: Any, run_dir: Path, state: Any, teacher: Any, train: Any, recipe: Any) -> None:
    """Fine-tune every baseline not yet finished (one phase each), from the teacher's weights."""
    from agents.cotraining import PathTrainer, random_depth_masks
    from agents.nsga2 import str_to_mask

    plan = baseline_plan(args, run_dir, state, teacher, train.name)
    out = run_dir / "baselines"
    out.mkdir(exist_ok=True)
    for name, paths in plan:
        phase = f"baseline-{name}"
        if state.done(phase):
            continue
        t = time.perf_counter()
        mask_fn = None
        if name.startswith("subset-"):
            model = teacher.pruned(str_to_mask(paths))
        else:
            model = copy.deepcopy(teacher)
            if name == "random":
                mask_fn = random_depth_masks(paths, teacher.depth, seed=args.seed)
        model.requires_grad_(True)
        trainer = PathTrainer(model, train, recipe, teacher=teacher if recipe.distill > 0 else None, seed=args.seed)
        trainer.run(recipe.steps, mask_fn)
        model.save(out / f"{name}.safetensors")
        state.finish(phase, time.perf_counter() - t)
        print(f"{phase}: {recipe.steps} steps in {time.perf_counter() - t:.0f} s, loss {trainer.last_loss:.3f}")
