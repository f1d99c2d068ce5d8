"""Token merging (ToMe): a hand-worked matching, proportional attention, r = 0 bit-identical, real shrinking."""

from __future__ import annotations

import pytest
import timm
import torch

from vitskip_env import SkippableViT, TokenMergingViT
from vitskip_env.model.merging import (
    _attention_bias,
    _attention_with_keys,
    bipartite_soft_matching,
    merge_schedule,
    merge_weighted,
    run_block_merged,
)

SMALL = {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 48, "num_heads": 2}
FAMILIES = [
    "vit_tiny_patch16_224",  # class token
    "deit_tiny_distilled_patch16_224",  # two prefix tokens
    "deit3_small_patch16_224",  # LayerScale
    "vit_base_patch16_reg4_gap_256",  # register tokens, average pooling
]


def test_hand_worked_matching_and_weighted_merge() -> None:
    # one prefix token, then t0..t3: A = {t0, t2}, B = {t1, t3}.
    # cosine(t0, t1) = 0.995, cosine(t0, t3) = -0.98, cosine(t2, t1) = 0.0995, cosine(t2, t3) = 0.196:
    # t0's best partner is t1 (0.995), t2's is t3 (0.196); with r = 1 only t0 merges, into t1.
    metric = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.2]]])
    x = torch.tensor([[[100.0], [1.0], [2.0], [3.0], [4.0]]])
    merge = bipartite_soft_matching(metric, r=1, protected=1)
    assert merge is not None and merge.r == 1
    merged, size = merge_weighted(merge, x, None)
    # [prefix, unmerged A (t2), B (t0+t1 averaged, t3)]
    assert merged.flatten().tolist() == [100.0, 3.0, 1.5, 4.0]
    assert size.flatten().tolist() == [1.0, 1.0, 2.0, 1.0]
    # sizes weight the average: t0 already holds 1 patch, t1 holds 3 -> (1*1 + 2*3) / 4
    merged, size = merge_weighted(merge, x, torch.tensor([[[1.0], [1.0], [3.0], [1.0], [1.0]]]))
    assert merged.flatten().tolist() == [100.0, 3.0, 1.75, 4.0]
    assert size.flatten().tolist() == [1.0, 1.0, 4.0, 1.0]
    # r = 2: t2 merges into t3 as well; r is capped at |A| = 2
    merged, size = merge_weighted(bipartite_soft_matching(metric, r=5, protected=1), x, None)
    assert merged.flatten().tolist() == [100.0, 1.5, 3.5]
    assert size.flatten().tolist() == [1.0, 2.0, 2.0]
    assert bipartite_soft_matching(metric, r=0, protected=1) is None


def test_proportional_attention_equals_attention_over_the_duplicates() -> None:
    """Two identical tokens merged into one of size 2 are attended to exactly as the pair was."""
    torch.manual_seed(0)
    attn = timm.create_model("vit_tiny_patch16_224", **SMALL).blocks[0].attn.eval()
    x = torch.randn(1, 4, 48)
    dup = torch.cat([x, x[:, 3:]], dim=1)  # token 3 twice
    size = torch.tensor([[[1.0], [1.0], [1.0], [2.0]]])
    with torch.no_grad():
        ref, _ = _attention_with_keys(attn, dup, None)
        out, _ = _attention_with_keys(attn, x, _attention_bias(size))
        plain, _ = _attention_with_keys(attn, x, None)
    assert torch.allclose(out, ref[:, :4], atol=1e-6)
    assert not torch.allclose(plain, ref[:, :4], atol=1e-4)  # without the size term it differs


@pytest.mark.parametrize("family", FAMILIES)
def test_r0_is_bit_identical_to_timm(family: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(family, num_classes=7, **SMALL).eval()
    tome = TokenMergingViT(SkippableViT(model), 0)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(tome(x), model(x))


@pytest.mark.parametrize("family", FAMILIES)
def test_merging_really_shrinks_the_tokens(family: str) -> None:
    torch.manual_seed(0)
    vit = SkippableViT(timm.create_model(family, num_classes=7, **SMALL).eval())
    tome = TokenMergingViT(vit, 3)
    seen: list[int] = []
    for blk in vit.blocks:
        blk.mlp.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].shape[1]))
    with torch.no_grad():
        logits = tome(torch.randn(2, 3, 32, 32))
    p = vit.num_prefix_tokens
    # 16 patches: each block merges 3 before its MLP (at most half of the non-prefix tokens)
    assert seen == [p + 13, p + 10, p + 7] and tome.token_counts() == [p + 16, p + 13, p + 10]
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()


def test_schedule_caps_like_tome_and_rejects_bad_counts() -> None:
    assert merge_schedule(8, 4, 17, 1) == [8, 4, 2, 1]
    assert merge_schedule([0, 2, 0], 3, 17, 1) == [0, 2, 0]
    with pytest.raises(ValueError, match="one per block"):
        merge_schedule([1, 2], 3, 17, 1)
    with pytest.raises(ValueError, match="r >= 0"):
        merge_schedule(-1, 3, 17, 1)


def test_unsupported_blocks_are_refused_clearly() -> None:
    model = timm.create_model("vit_tiny_patch16_224", class_token=True, no_embed_class=False, **SMALL)
    from timm.models.vision_transformer import ResPostBlock

    model.blocks[1] = ResPostBlock(48, 2)
    with pytest.raises(TypeError, match="ResPostBlock"):
        TokenMergingViT(SkippableViT(model), 1)


def test_skipping_rows_merge_by_their_tokens_and_run_no_block() -> None:
    torch.manual_seed(0)
    vit = SkippableViT("micro", num_classes=10).eval()
    calls: list[int] = []
    for part in (vit.blocks[1].attn.qkv, vit.blocks[1].mlp):
        part.register_forward_pre_hook(lambda mod, inp: calls.append(inp[0].shape[0]))
    x = torch.randn(4, 3, 32, 32)
    execute = torch.tensor([True, False, True, False])
    with torch.no_grad():
        tokens, size = run_block_merged(vit, 0, vit.embed(x), None, 2)
        out, out_size = run_block_merged(vit, 1, tokens, size, 2, execute)
        assert calls == [2, 2]  # the block's attention and MLP saw the two executing rows only
        none, _ = run_block_merged(vit, 1, tokens, size, 2, torch.zeros(4, dtype=torch.bool))
        assert calls == [2, 2]  # no executing row: the block is not called
        alone, alone_size = run_block_merged(vit, 1, tokens[execute], size[execute], 2)
        skipped = merge_weighted(bipartite_soft_matching(tokens[~execute], 2, 1), tokens[~execute], size[~execute])
    assert out.shape == (4, 13, 32) and none.shape == (4, 13, 32)
    assert torch.equal(out[execute], alone) and torch.equal(out_size[execute], alone_size)
    assert torch.equal(out[~execute], skipped[0]) and torch.equal(out_size[~execute], skipped[1])
