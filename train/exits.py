"""Train LGViT exit heads on a backbone: stage 1 end to end, stage 2 heads only with distillation.

Stage 1 fine-tunes the backbone and the heads together with LGViT's alternating loss (final
classifier alone on even steps, the depth-weighted mean over every exit on odd steps); by default
every block is also dropped with probability ``--block-drop`` as in ``train/backbone.py``, so the
backbone stays skip-robust and the heads learn to read skipped paths too. Stage 2 freezes the
backbone (bit for bit) and trains the heads with cross-entropy, distillation from the final
classifier (T = 2) and LGViT's feature distillation (``vitskip_env/model/exit_training.py``).

    python train/exits.py                                      # demo-shapes backbone, default layout
    python train/exits.py --dataset relations                  # the shipped relations backbone
    python train/exits.py --backbone my.safetensors --positions 3 5 --kinds local global2

Writes ``<out>.safetensors`` (an ``EarlyExitViT``: backbone + heads + rule; default
``$VITSKIP_HOME/exits/<backbone>-exits.safetensors``), ``<out>.md`` (the record: per-exit test
top-1 of the LGViT heads against linear exits, before and after each stage, and the four rules at
LGViT's defaults), ``<out>.log.csv`` and a resumable ``<out>.ckpt.pt`` (read with
``weights_only=True``). Ctrl-C saves the checkpoint; the same command resumes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import backbone_checks
import common
import torch
import tyro
from backbone import lr_factor
from tqdm import tqdm

from vitskip_env import make_dataset
from vitskip_env.data.augment import augment_kwargs, random_crop_flip
from vitskip_env.deploy import RULES, EarlyExitViT, ExitRule
from vitskip_env.files import atomic_path, atomic_write_text
from vitskip_env.measure.exits import ExitCosts, all_exit_logits, rule_row
from vitskip_env.model import ExitHeads, find_backbone, load_backbone
from vitskip_env.model.exit_file import default_exit_path
from vitskip_env.model.exit_training import exit_outputs, stage1_loss, stage2_loss


@dataclass
class Args:
    dataset: str = "shapes"
    """dataset the heads learn (and the backbone was trained on)"""
    backbone: str | None = None
    """backbone file (default: the trained demo backbone of --dataset)"""
    positions: list[int] | None = None
    """blocks (0-based) after which an exit reads the tokens (default: LGViT's layout for the depth)"""
    kinds: list[str] | None = None
    """head per position: local, local_light, global2, global3, linear (default: LGViT's order)"""
    stage1_epochs: int = 3
    """stage 1 passes over the training split (backbone + heads; 0 skips it)"""
    stage2_epochs: int = 6
    """stage 2 passes (heads only, backbone frozen; 0 skips it)"""
    stage1_lr: float = 1e-4
    """stage 1 peak learning rate of the backbone (the heads take --heads-lr)"""
    heads_lr: float = 1e-3
    """peak learning rate of the heads in both stages"""
    batch_size: int = 128
    """images per step"""
    weight_decay: float = 0.05
    """AdamW weight decay"""
    label_smoothing: float = 0.1
    """stage 1 cross-entropy label smoothing"""
    block_drop: float = 0.2
    """stage 1: per-image probability of skipping each block (keeps the backbone skip-robust; 0 = LGViT)"""
    augment: bool = True
    """random crop (+ flip where the labels allow it)"""
    train_images: int | None = None
    """use only the first N images of the (shuffled) training split"""
    eval_images: int | None = None
    """score only the first N test images (default: all)"""
    seed: int = 0
    """random seed"""
    device: str = "auto"
    """cpu, cuda or auto"""
    threads: int | None = None
    """CPU threads (default: all)"""
    out: str | None = None
    """file to write (default: $VITSKIP_HOME/exits/<backbone stem>-exits.safetensors)"""
    resume: bool = True
    """continue an interrupted training from <out>.ckpt.pt"""
    overwrite: bool = False
    """replace files already at --out"""


def check_args(args: Args) -> None:
    """Refuse arguments out of range before any work (flag, what is allowed, the value)."""
    rules = [
        ("stage1-epochs", args.stage1_epochs, args.stage1_epochs >= 0, ">= 0"),
        ("stage2-epochs", args.stage2_epochs, args.stage2_epochs >= 0, ">= 0"),
        ("batch-size", args.batch_size, args.batch_size >= 1, ">= 1"),
        ("stage1-lr", args.stage1_lr, math.isfinite(args.stage1_lr) and args.stage1_lr >= 0, ">= 0"),
        ("heads-lr", args.heads_lr, math.isfinite(args.heads_lr) and args.heads_lr > 0, "> 0"),
        ("label-smoothing", args.label_smoothing, 0 <= args.label_smoothing < 1, "in [0, 1)"),
        ("block-drop", args.block_drop, 0 <= args.block_drop < 1, "in [0, 1) (0 disables)"),
        ("seed", args.seed, args.seed >= 0, ">= 0"),
    ]
    rules += [
        (f, v, v is None or v >= 1, ">= 1")
        for f, v in (("train-images", args.train_images), ("eval-images", args.eval_images))
    ]
    for flag, value, ok, allowed in rules:
        if not ok:
            raise ValueError(f"--{flag} must be {allowed}, got {value!r}")
    if args.stage1_epochs + args.stage2_epochs == 0:
        raise ValueError("--stage1-epochs and --stage2-epochs are both 0: there is nothing to train")


def resolve_backbone(args: Args) -> Path:
    """The backbone file: ``--backbone``, else the demo backbone trained on ``--dataset``."""
    if args.backbone:
        return Path(args.backbone).expanduser()
    found = find_backbone("demo", args.dataset)
    if found is None:
        raise FileNotFoundError(
            f"no trained demo backbone for {args.dataset!r}; train one (python train/backbone.py --dataset {args.dataset}) "
            "or give --backbone <file>"
        )
    return found


def _optimizer(stage: int, backbone, heads: ExitHeads, args: Args, total: int):
    groups = [{"params": list(heads.parameters()), "lr": args.heads_lr}]
    if stage == 1 and args.stage1_lr > 0:
        groups.append({"params": list(backbone.parameters()), "lr": args.stage1_lr})
    opt = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    warmup = max(1, total // 20)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total, warmup, 0.02))


def evaluate(model: EarlyExitViT, data, limit: int | None) -> dict:
    """Per-exit top-1 of the heads and of linear exits at the same positions, and each rule at LGViT's defaults."""
    was = model.training
    model.eval()
    logits = all_exit_logits(model, data, limit)
    lin_logits = all_exit_logits(model.with_linear_exits(), data, limit)
    model.train(was)
    labels = data.labels[: logits.shape[1]]
    top1 = lambda z: [round(100 * (p.argmax(-1) == labels).float().mean().item(), 2) for p in z]  # noqa: E731
    costs = ExitCosts.of(model)
    rules = {}
    for kind in RULES:
        rule = ExitRule(kind).for_exits(model.n_points)
        rules[rule.label()] = {k: round(v, 3) for k, v in rule_row(model, rule, logits, labels, costs).items()}
    return {"heads": top1(logits), "linear": top1(lin_logits), "rules": rules}


def main(args: Args) -> Path:
    """Train; write the ``EarlyExitViT`` file and its record at ``--out``; return its path."""
    check_args(args)
    src = resolve_backbone(args)
    out = Path(args.out).expanduser() if args.out else default_exit_path(src)
    outputs = backbone_checks.Outputs.at(out)
    total_epochs = args.stage1_epochs + args.stage2_epochs
    plan = SimpleNamespace(**asdict(args), epochs=total_epochs)
    ckpt = backbone_checks.plan_run(outputs, plan)
    device = common.resolve_device(args.device)
    common.set_threads(args.threads)
    common.seed_everything(args.seed)
    train = make_dataset(args.dataset, "train", None, False, device)
    test = make_dataset(args.dataset, "test", None, False, device)
    backbone = load_backbone(src, num_classes=train.num_classes, device=device)
    heads = ExitHeads(backbone, args.positions, args.kinds).to(device)
    model = EarlyExitViT(backbone, heads, ExitRule("confidence").for_exits(len(heads) + 1))
    n_train = len(train) if args.train_images is None else min(args.train_images, len(train))
    steps = n_train // args.batch_size
    if steps < 1:
        raise ValueError(f"{n_train} training images make no full batch of {args.batch_size}")
    state = {"epoch": 0, "step": 0, "history": [], "elapsed": 0.0, "baseline": None}
    if ckpt is not None:
        backbone.vit.load_state_dict(ckpt.pop("model"))
        heads.load_state_dict(ckpt.pop("heads"))
    if ckpt is None or ckpt.get("baseline") is None:
        state["baseline"] = evaluate(model, test, args.eval_images)["linear"]
        print(f"linear exits before training: {state['baseline']}", flush=True)
    stage = lambda e: 1 if e < args.stage1_epochs else 2  # noqa: E731
    n_stage = lambda s: args.stage1_epochs if s == 1 else args.stage2_epochs  # noqa: E731
    opt_stage = stage(0) if ckpt is None else int(ckpt.pop("opt_stage"))
    opt, sched = _optimizer(opt_stage, backbone, heads, args, steps * n_stage(opt_stage))
    if ckpt is not None:
        opt.load_state_dict(ckpt.pop("opt"))
        sched.load_state_dict(ckpt.pop("sched"))
        state.update({k: ckpt[k] for k in (*state, "rng") if k in ckpt})
        print(f"resumed from {outputs.checkpoint} at epoch {state['epoch']} step {state['step']} of {total_epochs}")
    g = torch.Generator(device=device)

    def save_checkpoint() -> None:
        with atomic_path(outputs.checkpoint) as tmp:
            torch.save(
                {"model": backbone.vit.state_dict(), "heads": heads.state_dict(), "opt": opt.state_dict(),
                 "sched": sched.state_dict(), "opt_stage": opt_stage, "epochs": total_epochs, "args": asdict(args), **state},
                tmp,
            )  # fmt: skip

    t0 = time.perf_counter()
    try:
        while state["epoch"] < total_epochs:
            epoch, t0 = state["epoch"], time.perf_counter()
            s = stage(epoch)
            if s == 2 and opt_stage == 1:
                opt_stage = 2
                opt, sched = _optimizer(2, backbone, heads, args, steps * args.stage2_epochs)
            g.manual_seed(args.seed * 1000 + epoch)
            perm = torch.randperm(len(train), device=device, generator=g)[:n_train]
            if state["step"] and "rng" in state:  # mid-epoch resume: the same crops and block drops as without it
                g.set_state(state["rng"].cpu())
            backbone.train(s == 1)
            heads.train()
            backbone.requires_grad_(s == 1)
            bar = tqdm(range(state["step"], steps), desc=f"stage {s} epoch {epoch + 1}/{total_epochs}", leave=False)
            for step in bar:
                idx = perm[step * args.batch_size : (step + 1) * args.batch_size]
                loss = _step(s, step + epoch * steps, backbone, heads, opt, train, idx, args, g)
                sched.step()
                state["step"], state["rng"] = step + 1, g.get_state()
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss:.3f}")
            state["elapsed"] += time.perf_counter() - t0
            state.update(epoch=epoch + 1, step=0)
            state.pop("rng", None)
            if state["epoch"] in (args.stage1_epochs, total_epochs):
                row = {"stage": s, "epoch": state["epoch"], "minutes": round(state["elapsed"] / 60, 2)}
                row.update(evaluate(model, test, args.eval_images))
                state["history"].append(row)
                print(f"stage {s} done: heads {row['heads']} linear {row['linear']}", flush=True)
                _write_outputs(model, outputs, args, src, state, train)
            save_checkpoint()
    except KeyboardInterrupt:
        state["elapsed"] += time.perf_counter() - t0
        save_checkpoint()
        print(f"\ninterrupted: checkpoint in {outputs.checkpoint}; run the same command again to resume")
        raise SystemExit(130) from None
    print(f"exit model written to {out}")
    return out


def _step(stage: int, call: int, backbone, heads: ExitHeads, opt, train, idx, args: Args, g) -> float:
    images = train.images[idx]
    if args.augment:
        images = random_crop_flip(images, generator=g, **augment_kwargs(train.name))
    x, labels = train.normalize(images), train.labels[idx]
    if stage == 1:
        mask = None
        if args.block_drop > 0:
            mask = torch.rand(idx.numel(), backbone.depth, device=x.device, generator=g) >= args.block_drop
        logits, _, _ = exit_outputs(backbone, heads, x, mask)
        loss = stage1_loss(logits, labels, heads, call, args.label_smoothing)
    else:
        logits, feats, last = exit_outputs(backbone, heads, x, frozen=True)
        loss = stage2_loss(logits, feats, last, labels, heads)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for grp in opt.param_groups for p in grp["params"]], 1.0)
    opt.step()
    return loss.item()


def _write_outputs(model: EarlyExitViT, outputs, args: Args, src: Path, state: dict, train) -> None:
    model.save(
        outputs.weights,
        dataset=args.dataset,
        mean=list(train.mean),
        std=list(train.std),
        training={"script": "train/exits.py", "args": asdict(args), "source_backbone": str(src.name),
                  "history": state["history"], "baseline_linear": state["baseline"],
                  "minutes": round(state["elapsed"] / 60, 2), "torch": torch.__version__},
    )  # fmt: skip
    keys = ["stage", "epoch", "minutes"]
    lines = [",".join(keys + [f"heads_{k}" for k in range(len(model.exits) + 1)])]
    lines += [",".join([str(r[k]) for k in keys] + [str(v) for v in r["heads"]]) for r in state["history"]]
    atomic_write_text(outputs.log, "\n".join(lines) + "\n")
    atomic_write_text(outputs.record, _record(model, args, src, state))


def _record(model: EarlyExitViT, args: Args, src: Path, state: dict) -> str:
    flags = " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in asdict(args).items()
        if v != getattr(Args, k, None) and k not in ("resume", "overwrite") and not isinstance(v, bool)
    )
    exits = model.exits
    names = [f"after block {p + 1} ({k})" for p, k in zip(exits.positions, exits.kinds, strict=True)] + ["final classifier"]
    last = state["history"][-1]
    rows = ["| exit point | linear exit, source backbone | " + " | ".join(
        f"stage {r['stage']}: linear | stage {r['stage']}: LGViT heads" for r in state["history"]) + " |"]  # fmt: skip
    rows.append("|---|---:|" + "---:|---:|" * len(state["history"]))
    for k, name in enumerate(names):
        cells = [f"{state['baseline'][k]:.2f}"] + [f"{r['linear'][k]:.2f} | {r['heads'][k]:.2f}" for r in state["history"]]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    rule_rows = [
        "| rule | top-1 | mean blocks run | LGViT's proxy (depth / mean exit layer) | FLOPs ratio (heads counted) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, m in last["rules"].items():
        rule_rows.append(
            f"| `{label}` | {m['top1']:.2f} | {m['mean_blocks']:.2f} | {m['lgvit_proxy']:.2f}x | {m['flops_ratio']:.2f}x |"
        )
    return (
        f"# Exit heads on `{src.name}`\n\nMade by:\n\n```bash\npython train/exits.py {flags}\n```\n\n"
        f"{args.dataset} test split ({args.eval_images or 'all'} images), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {state['elapsed'] / 60:.1f} min of training. Top-1 (%) at every exit "
        "point with every block run. The final classifier is the backbone's own; in the LGViT columns it is the one "
        "trained with the heads.\n\n" + "\n".join(rows) + "\n\nThe four rules at LGViT's defaults (patience lowered to "
        f"the {model.n_points} exit points where it is larger), LGViT heads, every block run until the exit. "
        "LGViT's proxy counts layers, not time; measured speed: `train/benchmark.py`.\n\n" + "\n".join(rule_rows) + "\n"
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
