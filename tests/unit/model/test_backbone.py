"""SkippableViT: equivalence to timm, real skipping, row-subset exactness, persistence errors."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from vitskip_env import SkippableViT, load_backbone, rows_per_block

SMALL = {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 48, "num_heads": 2}
FAMILIES = [
    "vit_tiny_patch16_224",  # plain ViT, class token
    "deit_tiny_distilled_patch16_224",  # distillation token + second head
    "deit3_small_patch16_224",  # LayerScale
    "vit_base_patch16_reg4_gap_256",  # register tokens, average pooling
]


@pytest.fixture(params=FAMILIES)
def pair(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, SkippableViT]:
    torch.manual_seed(0)
    kwargs = dict(SMALL)
    if request.param.startswith("deit3"):
        kwargs["init_values"] = 0.5  # a LayerScale far from identity, so losing it would show
    model = timm.create_model(request.param, num_classes=7, **kwargs).eval()
    return model, SkippableViT(model)


def test_execute_all_reproduces_timm(pair: tuple[torch.nn.Module, SkippableViT]) -> None:
    model, vit = pair
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(vit(x), ref, atol=1e-6, rtol=1e-5)
        full = torch.ones(5, vit.depth, dtype=torch.bool)
        assert torch.allclose(vit(x, execute_mask=full), ref, atol=1e-6, rtol=1e-5)


def test_row_subset_equals_running_those_images_alone(pair: tuple[torch.nn.Module, SkippableViT]) -> None:
    _, vit = pair
    torch.manual_seed(1)
    x = torch.randn(6, 3, 32, 32)
    mask = torch.rand(6, vit.depth) > 0.4
    with torch.no_grad():
        batched = vit(x, execute_mask=mask)
        for b in range(6):
            alone = vit(x[b : b + 1], execute_mask=mask[b : b + 1])
            assert torch.allclose(batched[b], alone[0], atol=1e-5, rtol=1e-5)


def test_skipped_blocks_are_not_called_and_see_only_executing_rows() -> None:
    vit = SkippableViT("micro", num_classes=3).eval()
    seen: dict[int, list[int]] = {i: [] for i in range(vit.depth)}
    for i, blk in enumerate(vit.blocks):
        blk.register_forward_pre_hook(lambda mod, inp, i=i: seen[i].append(inp[0].shape[0]))
    mask = torch.tensor([[True, False, False, True], [True, True, False, False], [True, False, False, False]])
    with torch.no_grad():
        vit(torch.randn(3, 3, 32, 32), execute_mask=mask)
    assert seen == {0: [3], 1: [1], 2: [], 3: [1]}


def test_skipping_a_block_is_identity_for_that_row() -> None:
    vit = SkippableViT("micro", num_classes=3).eval()
    tokens = torch.randn(4, vit.num_tokens, vit.embed_dim)
    rows = torch.tensor([0, 2])
    with torch.no_grad():
        out = vit.run_block(1, tokens, rows)
        ref = vit.blocks[1](tokens[rows])
    assert torch.equal(out[[1, 3]], tokens[[1, 3]])
    assert torch.allclose(out[rows], ref, atol=1e-6)
    bool_rows = torch.tensor([True, False, True, False])
    assert torch.equal(vit.run_block(1, tokens, bool_rows), out)


def test_gradients_flow_only_through_executed_blocks() -> None:
    vit = SkippableViT("micro", num_classes=3)
    mask = torch.tensor([[True, False, True, True], [True, False, False, True]])
    vit(torch.randn(2, 3, 32, 32), execute_mask=mask).sum().backward()
    assert all(p.grad is None for p in vit.blocks[1].parameters())
    assert all(p.grad is not None for p in vit.blocks[0].parameters())


def test_rows_per_block_matches_nonzero() -> None:
    mask = torch.rand(9, 5) > 0.5
    for i, rows in enumerate(rows_per_block(mask)):
        assert torch.equal(rows, mask[:, i].nonzero().squeeze(1))


def test_bad_mask_is_rejected_with_shape_in_message() -> None:
    vit = SkippableViT("micro", num_classes=3)
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        vit(torch.randn(2, 3, 32, 32), execute_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        vit(torch.randn(2, 3, 32, 32), execute_mask=torch.ones(2, 4))


def test_block_flops_match_analytic_count() -> None:
    vit = SkippableViT("micro", num_classes=3)
    t, d, h = vit.num_tokens, vit.embed_dim, int(vit.embed_dim * 2.0)
    matmuls = 2 * t * (3 * d * d + d * d + 2 * d * h)  # qkv, proj, fc1 + fc2
    attention = 2 * 2 * t * t * d  # q @ k^T and attn @ v
    assert vit.block_flops() == [matmuls + attention] * vit.depth


def test_unsupported_model_says_so() -> None:
    with pytest.raises(TypeError, match="not supported"):
        SkippableViT(timm.create_model("resnet18", num_classes=3))
    with pytest.raises(ValueError, match="Did you mean 'demo'"):
        SkippableViT("dmeo")


def test_save_load_roundtrip_and_config(tmp_path) -> None:
    torch.manual_seed(0)
    vit = SkippableViT("micro", num_classes=5).eval()
    path = vit.save(tmp_path / "bb.safetensors", dataset="shapes", mean=[0.5] * 3, std=[0.5] * 3)
    loaded = load_backbone(path, num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(vit(x), loaded(x))
    assert loaded.meta["dataset"] == "shapes"
    assert json.loads((tmp_path / "bb.json").read_text())["num_classes"] == 5
    assert not list(tmp_path.glob(".*.tmp"))


def test_load_errors_are_clear(tmp_path) -> None:
    vit = SkippableViT("micro", num_classes=5)
    path = vit.save(tmp_path / "bb.safetensors", dataset="shapes")
    with pytest.raises(ValueError, match="trained for 5 classes"):
        load_backbone(path, num_classes=100)
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated"):
        load_backbone(truncated)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="not written by vitskip"):
        load_backbone(foreign)
    with pytest.raises(FileNotFoundError, match=r"train/backbone\.py"):
        load_backbone(tmp_path / "missing.safetensors")


def test_pretrained_weights_from_local_file(tmp_path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(3)
    src = timm.create_model("vit_tiny_patch16_224", num_classes=4, **SMALL)
    file = tmp_path / "timm_weights.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(file))
    vit = SkippableViT("vit_tiny_patch16_224", pretrained_file=file, num_classes=4, **SMALL)
    assert torch.equal(vit.vit.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("name", ["model.json", "w.md", "weights", "bb.safetensors.json"])
def test_save_refuses_paths_that_are_not_safetensors(name: str, tmp_path) -> None:
    vit = SkippableViT("micro", num_classes=3)
    with pytest.raises(ValueError, match=r"must end in '\.safetensors'"):
        vit.save(tmp_path / name, dataset="shapes")
    assert list(tmp_path.iterdir()) == [] and "dataset" not in vit.meta


def test_pruned_model_loads_without_building_its_source(tmp_path) -> None:
    torch.manual_seed(0)
    source = SkippableViT("micro", num_classes=3, drop_path_rate=0.3)
    pruned = source.pruned([0, 2, 3]).eval()
    loaded = load_backbone(pruned.save(tmp_path / "p.safetensors"))
    assert loaded.kept_blocks == [0, 2, 3] and loaded.model_kwargs == pruned.model_kwargs
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    rates = [[getattr(b.drop_path1, "drop_prob", 0.0) for b in m.blocks] for m in (pruned.vit, loaded.vit)]
    assert rates[0] == rates[1] and rates[0][0] == 0.0 and rates[0][1] > 0
