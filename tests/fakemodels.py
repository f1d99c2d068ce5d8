"""Small saved models for the comparison tests: a micro backbone, a DynamicViT whose depth varies per image, exit heads."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vitskip_env import DynamicViT, EarlyExitViT, ExitHeads, SkippableViT, SkipPolicy, make_dataset
from vitskip_env.observations import encoder_for


def micro_files(folder: Path) -> dict[str, str]:
    """``{"backbone", "dynamic", "exit"}`` files on one micro backbone (4 blocks, shapes' 10 classes).

    The policy runs block 0, then thresholds a random projection of the class token at its median
    over 64 test images, so images differ in depth.
    """
    torch.manual_seed(0)
    vit = SkippableViT("micro", num_classes=10).eval()
    enc = encoder_for(vit)
    ds = make_dataset("shapes", "test")
    w = torch.randn(enc.embed_dim)
    with torch.inference_mode():
        x = ds.normalize(ds.images[:64])
        feat = enc.pack(vit.run_block(0, vit.embed(x)), 1, torch.zeros(64))[:, : enc.embed_dim]
    lin = nn.Linear(enc.obs_dim, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[1, : enc.embed_dim] = w
        lin.weight[1, enc.embed_dim] = 100.0  # block 0 always runs
        lin.bias[1] = -(feat @ w).median()
    dyn = DynamicViT(vit, SkipPolicy(lin, enc))
    heads = ExitHeads(vit, positions=[0, 1, 2], kinds=["linear", "linear", "linear"])
    return {
        "backbone": str(vit.save(folder / "bb.safetensors", dataset="shapes")),
        "dynamic": str(dyn.save(folder / "dyn.safetensors", env="ViTSkip-Shapes-v0")),
        "exit": str(EarlyExitViT(vit, heads).save(folder / "exit.safetensors")),
    }
