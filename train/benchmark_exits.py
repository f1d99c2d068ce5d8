"""``train/benchmark.py --exits FILE``: early-exit rules against the static backbone (and a skip-only run), measured.

Contenders, all on the same test images and timed interleaved in one process:

* ``static``: the exit model's backbone, every block;
* ``skip``: the ``DynamicViT`` of ``--run`` (skip-only RL), when given;
* ``RL skip+exit``: the ``SkipExitViT`` of each ``--exit-runs`` run (``train/ppo.py --actions
  skip_exit`` on the exit file's backbone, with its LGViT heads or ``linear`` exits);
* for the LGViT heads and for ``linear`` exits at the same positions (the backbone's own head at
  each depth; the ablation LGViT's baselines use): each of the four rules at LGViT's defaults, and
  each rule with the knob calibrated on ``val`` to the cheapest setting that reaches ``--match-top1``
  (default: the first skip+exit run's test top-1, else the skip-only run's, else the static top-1 minus 0.5).

Writes ``exits.csv`` and ``exits.md`` (top-1, mean blocks run, LGViT's proxy, FLOPs ratio and the
measured speed-up at every batch size) to ``--out``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import torch

from vitskip_env import make_dataset
from vitskip_env.deploy import RULES, DynamicViT, EarlyExitViT, ExitRule, SkipExitViT, calibrate
from vitskip_env.files import atomic_path, atomic_write_text, cache_dir
from vitskip_env.measure import score
from vitskip_env.measure.exits import ExitCosts, all_exit_logits, measure_exit_speed, rule_row, skip_exit_row


def exit_contenders(model: EarlyExitViT, val, test, match_top1: float, top1_images: int | None) -> list[dict]:
    """One row per (head set, rule, knob): the rule, its model, and its test accuracy and cost figures."""
    rows = []
    for heads_name, m in (("lgvit", model), ("linear", model.with_linear_exits())):
        costs = ExitCosts.of(m)
        val_logits = all_exit_logits(m, val)
        test_logits = all_exit_logits(m, test, top1_images)
        labels = test.labels[: test_logits.shape[1]]
        point_flops = costs.per_point(m.exits.positions)
        for kind in RULES:
            rules = {"default": ExitRule(kind).for_exits(m.n_points)}
            try:
                rules["matched"] = calibrate(
                    kind, val_logits, val.labels[: val_logits.shape[1]], point_flops, min_top1=match_top1
                )
            except ValueError as exc:
                print(f"  {heads_name} {kind}: {exc}; no matched contender", file=sys.stderr)
            for knob, rule in rules.items():
                row = {
                    "heads": heads_name,
                    "rule": rule.label(),
                    "knob": knob,
                    **rule_row(m, rule, test_logits, labels, costs),
                }
                row["model"] = m.with_rule(rule).eval()
                rows.append(row)
    return rows


def rl_exit_row(run: Path, model: EarlyExitViT, test, device: torch.device, top1_images: int | None) -> dict:
    """The RL skip+exit model of a ``train/ppo.py --actions skip_exit`` run, scored like the rules."""
    path = run / "skip_exit_vit.safetensors"
    if not path.is_file():
        raise SystemExit(
            f"error: --exit-runs {run}: no skip_exit_vit.safetensors there (train/ppo.py --actions skip_exit writes it)"
        )
    rl = SkipExitViT.load(path, device=device)
    if rl.backbone.config() != model.backbone.config() or not all(
        torch.equal(a, b) for a, b in zip(rl.backbone.state_dict().values(), model.backbone.state_dict().values(), strict=True)
    ):
        raise SystemExit(f"error: --exit-runs {run} was trained on another backbone than the exit file's; "
                         "train it with --backbone <the exit file>")  # fmt: skip
    heads = "linear" if set(rl.exits.kinds) == {"linear"} else "lgvit"
    costs = ExitCosts.of(EarlyExitViT(rl.backbone, rl.exits))
    weight = _run_compute_weight(run)
    row = {"heads": heads, "rule": f"RL skip+exit (cw {weight}, seed {rl.meta.get('seed', '?')})", "knob": "-"}
    row |= skip_exit_row(rl, test, costs, top1_images)
    row["model"] = rl.eval()
    return row


def _run_compute_weight(run: Path) -> str:
    """The run's ``compute_weight`` from its args.yaml (``?`` when it cannot be read): it tells RL rows apart."""
    import yaml

    try:
        return f"{yaml.safe_load((run / 'args.yaml').read_text(encoding='utf-8'))['compute_weight']:g}"
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return "?"


def main_exits(args, device: torch.device, dtype: torch.dtype) -> Path:
    """Measure every exit contender; write ``exits.csv`` / ``exits.md`` under ``--out``."""
    model = EarlyExitViT.load(args.exits, device=device)
    dataset = args.dataset or model.meta.get("dataset", "shapes")
    test = make_dataset(dataset, "test", args.data_root, False, device)
    val = make_dataset(dataset, "val", args.data_root, False, device)
    static_top1 = score(model.backbone, test, n_images=args.top1_images).top1
    skip = None
    if args.run:
        skip = DynamicViT.load(Path(args.run) / "dynamic_vit.safetensors", device=device)
        s = score(skip, test, n_images=args.top1_images)
        proxy = skip.depth / s.executed_blocks if s.executed_blocks else float("inf")
        skip_row = {"heads": "-", "rule": "skip-only RL (--run)", "knob": "-", "top1": s.top1,
                    "mean_blocks": s.executed_blocks, "lgvit_proxy": proxy, "flops_ratio": float("nan")}  # fmt: skip
    rl_rows = [rl_exit_row(Path(run), model, test, device, args.top1_images) for run in args.exit_runs]
    if args.match_top1 is not None:
        target = args.match_top1
    elif rl_rows:
        target = rl_rows[0]["top1"]
    else:
        target = skip_row["top1"] if skip else static_top1 - 0.5
    out = Path(args.out) if args.out else Path(args.exits).with_suffix("") / "benchmark"
    print(f"exit benchmark of {args.exits} on {dataset} test, {device} {args.dtype}, {torch.get_num_threads()} threads; "
          f"static top-1 {static_top1:.2f}, matched thresholds target {target:.2f} on val -> {out}")  # fmt: skip
    rows = exit_contenders(model, val, test, target, args.top1_images)
    static_row = {"heads": "-", "rule": "static (every block)", "knob": "-", "top1": static_top1,
                  "mean_blocks": float(model.backbone.depth), "lgvit_proxy": 1.0, "flops_ratio": 1.0}  # fmt: skip
    table = [static_row] + ([skip_row] if skip else []) + rl_rows + rows
    for r in table:
        print(f"  {r['heads']:6s} {r['rule']:24s} {r['knob']:8s} top-1 {r['top1']:6.2f}  blocks {r['mean_blocks']:.2f}  "
              f"proxy {r['lgvit_proxy']:.2f}x  flops {r['flops_ratio']:.2f}x")  # fmt: skip
    names = {f"{r['heads']}|{r['rule']}|{r['knob']}": r for r in rl_rows + rows}
    if len(names) != len(rl_rows) + len(rows):
        raise SystemExit("error: two contenders have the same name (the same run given twice?); give each run once")
    contenders = {name: r["model"] for name, r in names.items()}
    if skip is not None:
        contenders["skip"] = skip
    model.backbone.to(dtype)
    if skip is not None:
        skip.backbone.to(dtype)
    for r in rl_rows:
        r["model"].backbone.to(dtype)
    for bs in args.batch_sizes:
        speed = measure_exit_speed(contenders, model.backbone, test, bs, images_per_round=args.images_per_round,
                                   rounds=args.rounds, warmup=args.warmup, dtype=dtype)  # fmt: skip
        static_row[f"speedup_{bs}"] = 1.0
        static_row[f"img_s_{bs}"] = speed["static"]["images_per_s"]
        if skip is not None:
            skip_row[f"speedup_{bs}"] = speed["skip"]["speedup"]
        for name, r in names.items():
            r[f"speedup_{bs}"] = speed[name]["speedup"]
        print(f"  batch {bs}: static {speed['static']['images_per_s']:.0f} img/s; "
              + ", ".join(f"{n} x{s['speedup']:.2f}" for n, s in speed.items() if n != "static"))  # fmt: skip
    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "model"} for r in table])
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "exits.csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    command = "python " + " ".join(["train/benchmark.py", *sys.argv[1:]])
    command = command.replace(str(cache_dir()), "$VITSKIP_HOME")  # no machine path in a committed table
    atomic_write_text(out / "exits.md", markdown(frame, args, dataset, device, command, target, len(test)))
    print((out / "exits.md").read_text(encoding="utf-8"))
    return out


def markdown(frame: pd.DataFrame, args, dataset: str, device: torch.device, command: str, target: float, n_test: int) -> str:
    """The README-ready table."""
    sizes = list(args.batch_sizes)
    head = "| exits | rule | knob | top-1 (%) | mean blocks | LGViT proxy | FLOPs ratio | " + " | ".join(
        f"speed-up b{bs}" for bs in sizes) + " |"  # fmt: skip
    lines = [
        f"# Early exit vs static: {dataset}, {device.type} {args.dtype}, {torch.get_num_threads()} threads",
        "",
        f"Exit model `{Path(args.exits).name}`"
        + (f", skip-only run `{Path(args.run).name}`" if args.run else "")
        + (f", skip+exit runs {', '.join(f'`{Path(r).name}`' for r in args.exit_runs)}" if args.exit_runs else "")
        + f"; top-1 on {args.top1_images or n_test:,} test images. Regenerate with `{command}`. *matched*: the "
        f"cheapest knob whose `val` top-1 reaches {target:.2f}. *LGViT proxy* = depth / mean blocks run (heads free); "
        "*FLOPs ratio* counts the heads; speed-ups are measured: medians of per-round ratios to the static backbone, "
        "every contender interleaved call by call in one process, exited images really leaving the batch.",
        "",
        head,
        "|---|---|---|---:|---:|---:|---:|" + "---:|" * len(sizes),
    ]
    for _, r in frame.iterrows():
        flops = "-" if pd.isna(r["flops_ratio"]) else f"{r['flops_ratio']:.2f}x"
        speeds = " | ".join(f"{r[f'speedup_{bs}']:.2f}x" for bs in sizes)
        lines.append(f"| {r['heads']} | `{r['rule']}` | {r['knob']} | {r['top1']:.2f} | {r['mean_blocks']:.2f} "
                     f"| {r['lgvit_proxy']:.2f}x | {flops} | {speeds} |")  # fmt: skip
    return "\n".join(lines) + "\n"
