"""Peak working memory of one contender's forward, measured alone in this process (run by ``contenders``).

    python -m vitskip_env.measure.memprobe MODEL_FILE {static,dynamic,random,static_subset} BATCH --dataset shapes

Loads the ``DynamicViT`` and the data, prepares the input batch (and the skip masks, in small chunks),
runs one warm-up forward, returns freed heap memory to the kernel (``malloc_trim``), resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``) and runs the measured forward. The parent
starts it with ``MALLOC_MMAP_THRESHOLD_`` fixed (64 KiB) so that large activations are mapped and
unmapped as they live and die, and the resident set follows the live memory. Prints one JSON
line: ``peak_mib`` = peak resident set during the forward minus the resident set just before it
(on CUDA: the allocator's peak minus what was allocated before it), and ``method``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import resource
from pathlib import Path

import torch

from ..data import make_dataset
from ..deploy import DynamicViT
from .contenders import CONTENDERS, random_masks_like

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Hand freed heap memory back to the kernel (glibc ``malloc_trim``), so RSS counts live memory only."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> dict[str, float | str]:
    """Parse arguments, measure, print and return ``{"peak_mib", "method"}``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_file")
    p.add_argument("contender", choices=CONTENDERS)
    p.add_argument("batch", type=int)
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--data-root", default=None)
    p.add_argument("--subset", default=None, help="kept blocks as a 0/1 string (static_subset)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    dyn = DynamicViT.load(a.model_file, device=device)
    dyn.backbone.to(dtype)
    vit = dyn.backbone
    ds = make_dataset(a.dataset, a.split, a.data_root, False, device)
    x = ds.normalize(ds.images[: a.batch], dtype)
    with torch.inference_mode():
        if a.contender == "static":
            fn = vit
        elif a.contender == "dynamic":
            fn = dyn
        elif a.contender == "random":
            counts = torch.cat([dyn(x[i : i + 16], return_mask=True)[1] for i in range(0, x.shape[0], 16)])
            mask = random_masks_like(counts, a.seed)
            fn = lambda images: vit(images, execute_mask=mask)  # noqa: E731
        else:
            if a.subset is None:
                raise SystemExit("static_subset needs --subset (kept blocks as a 0/1 string)")
            keep = torch.tensor([c == "1" for c in a.subset], device=device).expand(x.shape[0], -1)
            fn = lambda images: vit(images, execute_mask=keep)  # noqa: E731
        fn(x)  # warm-up: one-time allocations are not working memory
        gc.collect()
        _release_free_memory()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            fn(x)
            torch.cuda.synchronize(device)
            peak, method = (torch.cuda.max_memory_allocated(device) - before) / 2**20, "cuda allocator peak"
        elif _reset_peak() and _status_kib("VmRSS") is not None:
            before_kib = _status_kib("VmRSS") or 0
            fn(x)
            peak, method = ((_status_kib("VmHWM") or 0) - before_kib) / 1024, "peak RSS (VmHWM reset) - RSS before"
        else:
            before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            fn(x)
            after_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak, method = (after_kib - before_kib) / 1024, "ru_maxrss growth (lower bound)"
    out: dict[str, float | str] = {"peak_mib": round(max(peak, 0.0), 3), "method": method}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
