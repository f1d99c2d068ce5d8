"""Peak working memory of one contender's forward, measured alone in this process (run by ``contenders``).

    python -m vitskip_env.measure.memprobe MODEL_FILE {static,dynamic,random,static_subset} BATCH --dataset shapes

Loads the ``DynamicViT`` and the data, prepares the input batch (and the skip masks, in small chunks)
and measures one forward with :func:`vitskip_env.measure.peak.peak_of` (warm-up, ``malloc_trim``,
peak-RSS counter reset, measured forward). The parent starts it with ``MALLOC_MMAP_THRESHOLD_``
fixed (64 KiB) so that the resident set follows the live memory. Prints one JSON line: ``peak_mib``
= peak resident set during the forward minus the resident set just before it (on CUDA: the
allocator's peak minus what was allocated before it), and ``method``. The plane's contenders have
their own probe (``python -m vitskip_env.measure.plane --spec ...``).
"""

from __future__ import annotations

import argparse
import json

import torch

from ..data import make_dataset
from ..deploy import DynamicViT
from .contenders import CONTENDERS, random_masks_like
from .peak import peak_of

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _contender_fn(a: argparse.Namespace, device: torch.device, dtype: torch.dtype, x: torch.Tensor):
    dyn = DynamicViT.load(a.model_file, device=device)
    dyn.backbone.to(dtype)
    vit = dyn.backbone
    if a.contender == "static":
        return vit
    if a.contender == "dynamic":
        return dyn
    if a.contender == "random":
        counts = torch.cat([dyn(x[i : i + 16], return_mask=True)[1] for i in range(0, x.shape[0], 16)])
        mask = random_masks_like(counts, a.seed)
        return lambda images: vit(images, execute_mask=mask)
    if a.subset is None:
        raise SystemExit("static_subset needs --subset (kept blocks as a 0/1 string)")
    keep = torch.tensor([c == "1" for c in a.subset], device=device).expand(x.shape[0], -1)
    return lambda images: vit(images, execute_mask=keep)


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
    ds = make_dataset(a.dataset, a.split, a.data_root, False, device)
    x = ds.normalize(ds.images[: a.batch], dtype)
    with torch.inference_mode():
        peak, method = peak_of(_contender_fn(a, device, dtype, x), x, device)
    out: dict[str, float | str] = {"peak_mib": round(max(peak, 0.0), 3), "method": method}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
