"""One accuracy-vs-measured-speed plane: every contender described by a JSON spec, built, scored, counted and timed alike.

A contender is a :class:`Point`: a name, a family, whether it is a vitskip method, and a ``spec``
that rebuilds it anywhere (this process, the fresh memory-probe process, another machine):

==============  ==========================================================================
spec ``kind``   what runs
==============  ==========================================================================
``backbone``    ``file``: a backbone (or a ``DynamicViT`` / exit file's backbone); ``keep``: a
                0/1 string of kept blocks, run as a shorter ViT; ``r``: ToMe merges per block
``random``      ``file``'s backbone, each image running as many blocks as the ``DynamicViT`` of
                ``policy`` gives it, at blocks drawn at random (``seed``); masks are prepared
                before timing, so they cost nothing
``dynamic``     a ``DynamicViT`` file; ``compute_weight`` (budget-conditioned models); ``r``:
                ToMe in the blocks it runs (:class:`~vitskip_env.deploy.SkipMergeViT`)
``exit``        an early-exit file (``EarlyExitViT``) with ``rule`` (an ``ExitRule`` config) and
                ``heads`` (``lgvit`` or ``linear``)
``skip_exit``   a ``SkipExitViT`` file (RL skip + exit)
==============  ==========================================================================

Speed only, at any timm geometry: with ``arch`` and ``img_size`` instead of files, ``backbone`` is
a random-weight ViT (seeded) and ``dynamic`` / ``random`` use a random-weight ``DynamicViT``
executing ``fraction`` of its blocks (:mod:`vitskip_env.measure.synthetic`), calibrated on the first
:data:`CALIBRATION_IMAGES` (16 from 128 pixels up) real test images of ``calibration`` (default ``shapes``) resized to its
input, the images it is then timed on.

Every point gets top-1 on the test split (:func:`evaluate`: the model's own forward, batched),
mean blocks run, FLOPs per image *counted* while a sample of real test images runs through it
(:func:`count_flops`: what executed, with gathers, merged tokens and exited images, not a model of
it), images/s at each batch size from one interleaved :func:`~vitskip_env.measure.compare_speed`
call, and peak working memory in a fresh process (:func:`peak_memory`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import ImageDataset
from ..data.augment import random_block_mask
from ..deploy import DynamicViT, EarlyExitViT, ExitRule, SkipExitViT, SkipMergeViT
from ..model import SkippableViT, TokenMergingViT, load_backbone
from .peak import peak_of
from .speed import compare_speed, timing_batches

KINDS = ("backbone", "random", "dynamic", "exit", "skip_exit")
#: Real test images a random-weight ``DynamicViT`` is calibrated on (resized to its input size); 16 from 128 pixels up.
CALIBRATION_IMAGES = 64


@dataclass
class Point:
    """One contender of the plane: its name, family, whether it is a vitskip method, and how to rebuild it."""

    name: str
    family: str
    vitskip: bool
    spec: dict[str, Any]
    setting: str
    training: str = "none"

    @property
    def speed_key(self) -> str:
        """Points with the same key compute the same thing (e.g. a fine-tuned subset and its raw subset): timed once."""
        return self.spec.get("speed_key") or json.dumps(self.spec, sort_keys=True)


class Runner:
    """A built contender: ``runner(x)`` is what gets timed; :meth:`scored` also says how many blocks each image ran."""

    def __init__(self, forward: Callable[[torch.Tensor], Any], blocks: Callable[[torch.Tensor], tuple[Any, Any]]) -> None:
        self.forward, self.blocks = forward, blocks
        self.prepared: dict[tuple[int, int], torch.Tensor] = {}

    def __call__(self, x: torch.Tensor) -> Any:
        return self.forward(x)

    def scored(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, C), blocks run per image (B,) float)``."""
        return self.blocks(x)

    def prepare(self, batches: list[torch.Tensor]) -> None:
        """Precompute what must not be timed for these batches (random masks)."""


def _all_blocks(model: Callable[[torch.Tensor], torch.Tensor], depth: int) -> Callable[[torch.Tensor], tuple[Any, Any]]:
    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return logits, torch.full((x.shape[0],), float(depth), device=logits.device)

    return run


def _masked(model: Any) -> Callable[[torch.Tensor], tuple[Any, Any]]:
    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, mask = model(x, return_mask=True)
        return logits, mask.sum(1).float()

    return run


def _exits(model: Any) -> Callable[[torch.Tensor], tuple[Any, Any]]:
    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(x, return_exits=True)
        return out[0], out[-1].float()

    return run


class _RandomRunner(Runner):
    """Random skipping at the policy's per-image depth; masks prepared per batch (keyed by the batch's storage)."""

    def __init__(self, vit: SkippableViT, dyn: DynamicViT, seed: int) -> None:
        super().__init__(self._forward, self._blocks)
        self.vit, self.dyn, self.seed, self.calls = vit, dyn, seed, 0

    def masks_for(self, x: torch.Tensor) -> torch.Tensor:
        executed = self.dyn(x, return_mask=True)[1]
        g = torch.Generator().manual_seed(self.seed + self.calls)
        self.calls += 1
        counts = executed.sum(1, keepdim=True).cpu()
        return random_block_mask(x.shape[0], self.vit.depth, counts, "cpu", g).to(x.device)

    def prepare(self, batches: list[torch.Tensor]) -> None:
        for x in batches:
            self.prepared[(x.data_ptr(), x.shape[0])] = self.masks_for(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.prepared.get((x.data_ptr(), x.shape[0]))
        if mask is None:
            raise RuntimeError("random-skip masks are prepared before timing: call prepare(batches) first")
        return self.vit(x, execute_mask=mask)

    def _blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.masks_for(x)
        return self.vit(x, execute_mask=mask), mask.sum(1).float()


def build(spec: dict[str, Any], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Runner:
    """The contender ``spec`` describes, in eval mode on ``device`` (backbone in ``dtype``; policies stay float32).

    Raises:
        ValueError: An unknown ``kind``.
    """
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown contender kind {kind!r}; one of {list(KINDS)}")
    r = spec.get("r", 0)
    if kind == "backbone":
        vit = _backbone(spec, device).to(dtype)
        if spec.get("keep"):
            vit = vit.pruned([c == "1" for c in spec["keep"]])
        model: Any = TokenMergingViT(vit, r).eval() if r else vit
        return Runner(model, _masked(model) if r else _all_blocks(model, vit.depth))
    if kind == "random":
        dyn = _dynamic(spec, device, "policy")
        dyn.backbone.to(dtype)
        vit = dyn.backbone if "arch" in spec else _backbone(spec, device).to(dtype)
        return _RandomRunner(vit, dyn, int(spec.get("seed", 0)))
    if kind == "dynamic":
        dyn = _dynamic(spec, device, "file")
        dyn.backbone.to(dtype)
        if spec.get("compute_weight") is not None:
            dyn.set_compute_weight(float(spec["compute_weight"]))
        model = SkipMergeViT(dyn, r).eval() if r else dyn.eval()
        return Runner(model, _masked(model))
    if kind == "exit":
        ee = EarlyExitViT.load(spec["file"], device=device)
        if spec.get("heads") == "linear":
            ee = ee.with_linear_exits()
        ee = ee.with_rule(ExitRule(**spec["rule"])).eval()
        ee.backbone.to(dtype)
        ee.exits.to(dtype)
        return Runner(ee, _exits(ee))
    se = SkipExitViT.load(spec["file"], device=device).eval()
    se.backbone.to(dtype)
    se.exits.to(dtype)
    return Runner(se, _exits(se))


def _backbone(spec: dict[str, Any], device: torch.device | str) -> SkippableViT:
    """The spec's backbone: random weights of ``arch`` (seeded), or the one stored in a backbone / dynamic / exit file."""
    if "arch" in spec:
        torch.manual_seed(int(spec.get("seed", 0)))
        return SkippableViT(spec["arch"], img_size=spec["img_size"]).to(device).eval()
    path = spec["file"]
    fmt = file_format(path)
    if fmt == "vitskip-dynamic":
        return DynamicViT.load(path, device=device).backbone.eval()
    if fmt == "vitskip-exits":
        return EarlyExitViT.load(path, device=device).backbone.eval()
    return load_backbone(path, device=device).eval()


_SYNTHETIC: dict[str, DynamicViT] = {}


def _dynamic(spec: dict[str, Any], device: torch.device | str, key: str) -> DynamicViT:
    """The spec's ``DynamicViT``: the file under ``key``, or a random-weight one of ``arch`` running ``fraction``."""
    if "arch" not in spec:
        return DynamicViT.load(spec[key], device=device)
    from ..data import make_dataset
    from .synthetic import synthetic_dynamic_vit

    memo = json.dumps({k: spec.get(k) for k in ("arch", "img_size", "seed", "fraction", "calibration")}, sort_keys=True)
    if memo not in _SYNTHETIC:  # the calibration runs the model many times: once per process and setting
        source = make_dataset(spec.get("calibration", "shapes"), "test", None, False, "cpu")
        calib = resized(source, int(spec["img_size"]), CALIBRATION_IMAGES if spec["img_size"] < 128 else 16)
        images = calib.normalize(calib.images)
        _SYNTHETIC[memo] = synthetic_dynamic_vit(spec["arch"], images, execute_fraction=float(spec["fraction"]),
                                                 seed=int(spec.get("seed", 0)), img_size=spec["img_size"])  # fmt: skip
    return copy.deepcopy(_SYNTHETIC[memo]).to(device).eval()


def file_format(path: str | os.PathLike) -> str | None:
    """The ``format`` a vitskip safetensors file's header states (``None``: not a vitskip file); reads no tensor."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return json.loads(meta.get("vitskip", "{}")).get("format")
    except Exception:  # not safetensors, unreadable: the loaders give the clear error
        return None


def resized(ds: ImageDataset, size: int, n: int | None = None) -> ImageDataset:
    """The first ``n`` images of ``ds`` resized to ``size`` x ``size`` (bilinear, uint8): speed at other geometries."""
    import torch.nn.functional as F

    n = len(ds) if n is None else min(n, len(ds))
    images = ds.images[:n]
    if size != images.shape[-1]:
        images = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)
        images = images.to(torch.uint8)
    return ImageDataset(ds.name, ds.split, images, ds.labels[:n], ds.classes, ds.mean, ds.std)


@torch.inference_mode()
def evaluate(runner: Runner, ds: ImageDataset, *, n_images: int | None = None, batch_size: int = 500,
             dtype: torch.dtype = torch.float32) -> dict[str, float]:  # fmt: skip
    """``{"top1", "blocks", "test_images"}`` of a contender on the first ``n_images`` of ``ds`` (its own forward)."""
    n = len(ds) if n_images is None else min(n_images, len(ds))
    hits, blocks = 0, 0.0
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        logits, run = runner.scored(ds.normalize(ds.images[start:stop], dtype))
        hits += int((logits.argmax(1) == ds.labels[start:stop].to(logits.device)).sum())
        blocks += float(run.sum())
    return {"top1": 100.0 * hits / n, "blocks": blocks / n, "test_images": n}


@torch.inference_mode()
def count_flops(runner: Runner, images: torch.Tensor) -> float:
    """FLOPs per image, counted by torch's FLOP counter while ``images`` (normalised) run through the contender.

    What is counted is the timed computation itself (a policy's decisions included; random masks are
    prepared first, as before timing).
    """
    from torch.utils.flop_counter import FlopCounterMode

    runner.prepare([images])
    counter = FlopCounterMode(display=False)
    with counter:
        runner(images)
    return counter.get_total_flops() / images.shape[0]


def time_points(
    runners: dict[str, Runner],
    ds: ImageDataset,
    batch_size: int,
    *,
    baseline: str,
    rounds: int = 5,
    warmup: int = 1,
    images_per_round: int = 2048,
    dtype: torch.dtype = torch.float32,
) -> dict[str, dict[str, float]]:
    """Images/s of every runner at ``batch_size``, interleaved call by call on the same real test batches (medians)."""
    batches = timing_batches(ds, batch_size, images_per_round=images_per_round, dtype=dtype)
    with torch.inference_mode():
        for runner in runners.values():
            runner.prepare(batches)
        return compare_speed(runners, batches, rounds=rounds, warmup=warmup, baseline=baseline)


def peak_memory(
    specs: dict[str, dict[str, Any]],
    batch_sizes: list[int],
    *,
    dataset: str,
    data_root: str | os.PathLike | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    threads: int | None = None,
) -> dict[str, dict[int, float]]:
    """Peak working memory (MiB) of one forward of each contender at each batch size, measured in a child process.

    The child (this module's command line, :func:`main`) imports once, then for each contender in
    turn builds it and measures its batch sizes in ascending order with
    :func:`vitskip_env.measure.peak.peak_of`: warm-up, freed heap returned to the kernel, the
    kernel's peak counter reset, then the measured forward's peak above the resident set before it
    (so what earlier contenders left loaded is not counted). On CUDA: the allocator's peak.

    Returns:
        ``{key: {batch: MiB}}`` for the keys of ``specs``.

    Raises:
        FileNotFoundError: A spec names a file that does not exist (checked before the child starts).
        RuntimeError: The child process failed (its error output is included).
    """
    import tempfile

    for key, spec in specs.items():
        for field_name in ("file", "policy"):
            if field_name in spec and not Path(spec[field_name]).is_file():
                raise FileNotFoundError(f"contender {key!r}: no such {field_name} {spec[field_name]!r}")

    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / "specs.json"
        spec_file.write_text(json.dumps(specs), encoding="utf-8")
        sizes = ",".join(str(b) for b in sorted(batch_sizes))
        cmd = [sys.executable, "-m", "vitskip_env.measure.plane", "--specs", str(spec_file), "--batch-sizes", sizes,
               "--dataset", dataset, "--device", device, "--dtype", dtype]  # fmt: skip
        if data_root is not None:
            cmd += ["--data-root", str(data_root)]
        if threads:
            cmd += ["--threads", str(threads)]
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe of {list(specs)} failed:\n{proc.stderr[-2000:]}")
    out: dict[str, dict[int, float]] = {key: {} for key in specs}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            out[d["key"]][int(d["batch"])] = float(d["peak_mib"])
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m vitskip_env.measure.plane --specs FILE --batch-sizes 1,64 --dataset shapes``: a JSON line per measure."""
    from ..data import make_dataset

    p = argparse.ArgumentParser(description="Peak working memory of the plane's contenders, per batch size.")
    p.add_argument("--specs", required=True, help="a JSON file: {key: spec} (see the module docstring)")
    p.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    specs = json.loads(Path(a.specs).read_text(encoding="utf-8"))
    sizes = sorted(int(b) for b in a.batch_sizes.split(","))
    source = make_dataset(a.dataset, "test", a.data_root, False, device)
    for key, spec in specs.items():
        ds = resized(source, int(spec["img_size"]), max(sizes)) if "img_size" in spec else source
        with torch.inference_mode():
            runner = build(spec, device, dtype)
            for batch in sizes:
                x = ds.normalize(ds.images[:batch], dtype)
                runner.prepare([x])
                peak, method = peak_of(runner, x, device)
                line = {"key": key, "batch": batch, "peak_mib": round(max(peak, 0.0), 3), "method": method}
                print(json.dumps(line), flush=True)
        del runner


__all__ = [
    "KINDS",
    "Point",
    "Runner",
    "build",
    "count_flops",
    "evaluate",
    "file_format",
    "peak_memory",
    "resized",
    "time_points",
]


if __name__ == "__main__":
    main()
