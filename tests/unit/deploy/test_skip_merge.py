"""SkipMergeViT: skipping and token merging together; r = 0 is the DynamicViT, all blocks + r = 0 the static model."""

from __future__ import annotations

import pytest
import torch
from test_dynamic import block_policy, varied_policy

from vitskip_env import DynamicViT, SkipMergeViT, SkippableViT, TokenMergingViT, ViTSkipVectorEnv
from vitskip_env.observations import encoder_for


@pytest.fixture
def micro(micro_kwargs: dict) -> tuple[SkippableViT, torch.Tensor]:
    env = ViTSkipVectorEnv(1, **micro_kwargs)
    ds = env.dataset
    return env.backbone.eval(), ds.normalize(ds.images[:24])


def test_all_blocks_and_r0_is_bit_identical_to_the_static_model(micro: tuple) -> None:
    vit, x = micro
    model = SkipMergeViT(DynamicViT(vit, block_policy(encoder_for(vit))), 0)
    with torch.inference_mode():
        logits, executed = model(x, return_mask=True)
        assert executed.all()
        assert torch.equal(logits, vit(x))
        assert torch.equal(model(x[:1]), vit(x[:1]))


def test_all_blocks_with_merging_is_tome(micro: tuple) -> None:
    vit, x = micro
    model = SkipMergeViT(DynamicViT(vit, block_policy(encoder_for(vit))), 2)
    with torch.inference_mode():
        assert torch.equal(model(x), TokenMergingViT(vit, 2)(x))


def test_r0_is_the_dynamic_vit(micro: tuple) -> None:
    vit, x = micro
    dyn = DynamicViT(vit, varied_policy(vit, x))
    with torch.inference_mode():
        ref, ref_mask = dyn(x, return_mask=True)
        out, mask = SkipMergeViT(dyn, 0)(x, return_mask=True)
    assert 0 < int(ref_mask.sum()) < ref_mask.numel()  # the policy really skips some blocks
    assert torch.equal(mask, ref_mask) and torch.equal(out, ref)


def test_skipped_blocks_do_no_work_and_tokens_shrink(micro: tuple) -> None:
    vit, x = micro
    model = SkipMergeViT(DynamicViT(vit, varied_policy(vit, x)), 2)
    rows: dict[int, list[int]] = {i: [] for i in range(vit.depth)}
    tokens: dict[int, list[int]] = {i: [] for i in range(vit.depth)}
    for i, blk in enumerate(vit.blocks):
        blk.attn.qkv.register_forward_pre_hook(lambda mod, inp, i=i: rows[i].append(inp[0].shape[0]))
        blk.mlp.register_forward_pre_hook(lambda mod, inp, i=i: tokens[i].append(inp[0].shape[1]))
    with torch.inference_mode():
        _, executed = model(x, return_mask=True)
    for i in range(vit.depth):
        n = int(executed[:, i].sum())
        assert rows[i] == ([n] if n else [])
        assert tokens[i] == ([vit.num_tokens - 2 * (i + 1)] if n else [])


def test_a_token_observing_policy_is_refused(micro_kwargs: dict) -> None:
    vit = ViTSkipVectorEnv(1, **micro_kwargs).backbone
    with pytest.raises(ValueError, match="obs_mode='tokens'"):
        SkipMergeViT(DynamicViT(vit, block_policy(encoder_for(vit, "tokens"))), 1)
