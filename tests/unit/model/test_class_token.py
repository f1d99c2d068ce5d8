"""The class-token-only last block (``vitskip_env.model.class_token``) and where the layer search uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.nsga2.trie import walk_trie
from vitskip_env import SkippableViT, load_backbone
from vitskip_env.model import class_token_ready, run_block_class_token
from vitskip_env.model.presets import ASSETS_DIR


@pytest.mark.parametrize("preset", ["micro", "demo"])
def test_class_token_output_equals_the_full_blocks_token_0(preset: str) -> None:
    torch.manual_seed(0)
    vit = load_backbone(ASSETS_DIR / "demo-shapes.safetensors") if preset == "demo" else SkippableViT(preset).eval()
    assert class_token_ready(vit)
    with torch.inference_mode():
        tokens = vit.embed(torch.randn(16, 3, 32, 32))
        for i in range(vit.depth):
            full = vit.run_block(i, tokens)
            cls = run_block_class_token(vit, i, tokens)
            assert cls.shape == (16, 1, tokens.shape[2])
            torch.testing.assert_close(cls, full[:, :1], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(vit.head(cls), vit.head(full), rtol=1e-5, atol=1e-5)
            tokens = full


def test_other_heads_keep_the_full_block() -> None:
    assert not class_token_ready(SkippableViT("micro", global_pool="avg"))
    assert not class_token_ready(SkippableViT("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=2))


def test_trie_leaves_run_the_last_step() -> None:
    masks = np.array([[1, 1, 0, 1], [1, 1, 1, 0], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=bool)
    steps, lasts, finished = [], [], []
    walk_trie(
        masks,
        (torch.zeros(2, 1),),
        lambda i, s: (steps.append(i), s)[1],
        lambda s, k: finished.append(k),
        lambda i, s: (lasts.append(i), s)[1],
    )
    # prefix 11 ends subset 1100 but continues in 1101 and 1110: a full step there
    assert sorted(steps) == [0, 1, 1] and sorted(lasts) == [2, 3, 3] and sorted(finished) == [0, 1, 2, 3]
