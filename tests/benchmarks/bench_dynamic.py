"""DynamicViT decision overhead per block (``pytest -m benchmark tests/benchmarks/bench_dynamic.py -s``).

What the policy costs on top of the blocks: per decided block, the observation (pooling,
standardisation, one-hot), the policy network (the agents' default: block embedding + MLP 128 ->
128 -> 64 -> 2), the deterministic rule and the ``nonzero`` that sizes the gather. Measured
directly (``decide`` + ``nonzero`` in a loop) and end to end (``DynamicViT(x)`` against the backbone
run with the same execute mask, which needs no decisions and one ``nonzero`` for all blocks),
interleaved call by call, medians; also the speedup over the static backbone and the efficiency
(speedup / ideal speedup ``depth / blocks per image``). ``VITSKIP_BENCH_COMPILE=1`` adds the
``DynamicViT.compiled()`` path (about a minute of compilation); ``VITSKIP_BENCH_PRESET`` picks the
backbone (default ``demo``). Run it alone on an idle machine
(see docs/architecture.md). Writes ``benchmarks/results/dynamic_decision.md``.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from vitskip_env import DynamicViT
from vitskip_env.files import atomic_write_text
from vitskip_env.measure import synthetic_dynamic_vit

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def _median_us(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e6 * statistics.median(times)


def typical_image(dyn: DynamicViT, x: torch.Tensor) -> torch.Tensor:
    """The image of ``x`` whose executed count is closest to the batch mean (the batch-1 input)."""
    with torch.inference_mode():
        counts = dyn(x, return_mask=True)[1].sum(1).float()
    return x[(counts - counts.mean()).abs().argmin()][None]


def measure(dyn: DynamicViT, x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Decision cost per block, and DynamicViT against the static backbone (full, and with the same mask)."""
    vit = dyn.backbone
    batch = x.shape[0]
    with torch.inference_mode():
        tokens = vit.embed(x)
        executed = torch.zeros(batch, vit.depth, dtype=torch.bool)
        executed[:, :3] = True
        decision = _median_us(lambda: dyn.decide(3, tokens, executed).nonzero(), 20 * rounds)
        block = _median_us(lambda: vit.run_block(3, tokens), rounds)
        _, mask = dyn(x, return_mask=True)
        times: dict[str, list[float]] = {"dynamic": [], "same_mask": [], "static": []}
        calls = {"dynamic": lambda: dyn(x), "same_mask": lambda: vit(x, execute_mask=mask), "static": lambda: vit(x)}
        for _ in range(rounds):  # interleaved call by call (the host drifts)
            for name, fn in calls.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    med = {k: 1e6 * statistics.median(v) for k, v in times.items()}
    blocks = float(mask.sum()) / batch
    speedup = med["static"] / med["dynamic"]
    return {
        "batch": batch,
        "decision_us": decision,
        "block_us": block,
        "overhead_us": (med["dynamic"] - med["same_mask"]) / vit.depth,
        "blocks": blocks,
        "speedup": speedup,
        "efficiency": speedup / (vit.depth / blocks),
    }


@pytest.mark.benchmark
def test_decision_overhead_per_block() -> None:
    threads = int(os.environ.get("VITSKIP_BENCH_THREADS", "1"))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    preset = os.environ.get("VITSKIP_BENCH_PRESET", "demo")
    x = torch.randn(256, 3, 32, 32)
    # random weights, the default policy's network, calibrated to execute half the blocks away from ties
    dyn = synthetic_dynamic_vit(preset, x[:64], execute_fraction=0.5, num_classes=10)
    vit = dyn.backbone
    one = typical_image(dyn, x)
    exact = copy.deepcopy(dyn)
    exact.folded = None  # the policy network layer by layer, as the env computes it
    configs = [("exact", exact), ("folded", dyn)]
    if os.environ.get("VITSKIP_BENCH_COMPILE") == "1":
        configs.append(("compiled", copy.deepcopy(dyn).compiled()))
    rows = [(name, measure(model, images, 200 if len(images) == 1 else 15)) for name, model in configs for images in (one, x)]
    shape = f"{vit.depth} blocks, D={vit.embed_dim}, {vit.num_tokens} tokens"
    lines = [
        f"# DynamicViT decision cost, {preset} preset ({shape}), CPU, {threads} thread(s), random weights "
        "(`vitskip_env.measure.synthetic`, half the blocks executed)",
        "",
        "`uv run pytest -m benchmark tests/benchmarks/bench_dynamic.py -s`; medians. *exact*: the policy network "
        "layer by layer (what the env computes); *folded*: `vitskip_env.deploy.folded` (NumPy on the host up to 16 images; "
        "token features kept across skips in `forward`), the default on CPU, with the same decisions"
        + (
            "; *compiled*: `DynamicViT.compiled()` (every block and the exact decision through `torch.compile`, "
            "dynamic shapes; compilation not counted)."
            if any(name == "compiled" for name, _ in configs)
            else "."
        ),
        "",
        "| mode | batch | decide + nonzero / block (us) | block, all rows (us) | end-to-end overhead / block (us) "
        "| blocks / image | speedup vs static | efficiency |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['batch']} | {r['decision_us']:.1f} | {r['block_us']:.1f} | {r['overhead_us']:.1f} | "
            f"{r['blocks']:.2f} | {r['speedup']:.2f} | {r['efficiency']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    atomic_write_text(RESULTS / "dynamic_decision.md", text)
    assert all(r["blocks"] < vit.depth for _, r in rows)  # the timed models really skip blocks
