"""Exit heads: LGViT's layouts, each head's shapes and gradients, the losses, and the file format's checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vitskip_env import EarlyExitViT, ExitHeads, SkippableViT
from vitskip_env.model import HEAD_KINDS, VitskipFileError, backbone_fingerprint, default_layout, load_exit_heads
from vitskip_env.model.exit_training import exit_outputs, stage1_loss, stage2_loss

MICRO = {"num_classes": 5}  # 4 blocks, 32x32 images, 4x4 patch grid


@pytest.fixture
def vit() -> SkippableViT:
    torch.manual_seed(0)
    return SkippableViT("micro", **MICRO)


def test_default_layouts_follow_lgvit() -> None:
    positions, kinds = default_layout(12)  # LGViT's exact layout for ViT-B / DeiT-B
    assert positions == (3, 4, 5, 6, 7, 8, 9, 10)
    assert kinds == ("local", "local", "local_light", "local_light", "global2", "global2", "global3", "global3")
    assert default_layout(8) == ((3, 4, 5, 6), ("local", "local_light", "global2", "global3"))  # the later half


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_each_head_kind_gives_logits_and_passes_gradients(vit: SkippableViT, kind: str) -> None:
    heads = ExitHeads(vit, positions=[1], kinds=[kind])
    tokens = vit.embed(torch.randn(3, 3, 32, 32)).detach().requires_grad_(True)
    logits = heads.logits(0, tokens, vit)
    assert logits.shape == (3, 5)
    logits.square().sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0  # the head reads the token state
    own = list(heads.parameters())
    if kind == "linear":
        assert own == []  # the backbone's own norm + classifier
        assert vit.vit.head.weight.grad is not None
    else:
        assert own and all(p.grad is not None and p.grad.abs().sum() > 0 for p in own)


def test_global_heads_subsample_the_grid(vit: SkippableViT) -> None:
    heads = ExitHeads(vit, positions=[1, 2], kinds=["global2", "global3"])
    tokens = vit.embed(torch.randn(2, 3, 32, 32))
    _, feats2 = heads.logits_and_features(0, tokens, vit)
    _, feats3 = heads.logits_and_features(1, tokens, vit)
    assert feats2.shape[1] == 4 and feats3.shape[1] == 4  # a 4x4 grid: stride 2 -> 2x2, stride 3 -> 2x2


@pytest.mark.parametrize(
    ("positions", "kinds", "match"),
    [
        ([3], ["local"], r"outside this 4-block backbone.*0 <= p <= 2"),
        ([-1], ["local"], "outside"),
        ([2, 1], ["local", "local"], "strictly increasing"),
        ([1], ["conv"], "unknown exit head kinds"),
        ([1, 2], ["local"], "2 exit positions"),
        ([], [], "empty"),
    ],
)
def test_bad_layouts_say_what_is_allowed(vit: SkippableViT, positions, kinds, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ExitHeads(vit, positions=positions, kinds=kinds)


def test_stage1_alternates_and_weights_by_depth(vit: SkippableViT) -> None:
    heads = ExitHeads(vit, positions=[0, 2], kinds=["local", "global2"])
    labels = torch.tensor([0, 1, 2])
    logits, _, _ = exit_outputs(vit, heads, torch.randn(3, 3, 32, 32))
    assert len(logits) == 3
    ce = [torch.nn.functional.cross_entropy(z, labels) for z in logits]
    torch.testing.assert_close(stage1_loss(logits, labels, heads, call=0), ce[-1])
    weighted = (1 * ce[0] + 3 * ce[1] + 4 * ce[2]) / (1 + 3 + 4)  # exits after blocks 1 and 3, final at depth 4
    torch.testing.assert_close(stage1_loss(logits, labels, heads, call=1), weighted)


def test_stage2_trains_heads_and_leaves_the_backbone_bit_identical(vit: SkippableViT) -> None:
    heads = ExitHeads(vit, positions=[0, 1, 2], kinds=["local", "local_light", "global2"])
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    heads_before = {k: v.clone() for k, v in heads.state_dict().items()}
    opt = torch.optim.AdamW(heads.parameters(), lr=1e-2)
    x, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 5
    for _ in range(2):
        logits, feats, last = exit_outputs(vit, heads, x, frozen=True)
        loss = stage2_loss(logits, feats, last, labels, heads)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())
    assert all(p.grad is None for p in vit.parameters())
    assert any(not torch.equal(heads_before[k], v) for k, v in heads.state_dict().items())


def _saved(tmp_path: Path, vit: SkippableViT) -> Path:
    heads = ExitHeads(vit, positions=[1, 2], kinds=["local", "global3"])
    return EarlyExitViT(vit, heads).save(tmp_path / "ee.safetensors", dataset="shapes")


def test_exit_file_round_trip(tmp_path: Path, vit: SkippableViT) -> None:
    model = EarlyExitViT(vit, ExitHeads(vit, positions=[1, 2], kinds=["local", "global3"])).eval()
    path = model.save(tmp_path / "ee.safetensors", dataset="shapes")
    loaded = EarlyExitViT.load(path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.exit_logits(x), model.exit_logits(x))
    assert loaded.meta["dataset"] == "shapes" and loaded.rule == model.rule
    heads = load_exit_heads(path, vit)  # onto the very backbone they were trained on
    assert heads.positions == (1, 2)
    assert json.loads(path.with_suffix(".json").read_text())["backbone_sha256"] == backbone_fingerprint(vit)


def test_heads_refuse_another_backbone(tmp_path: Path, vit: SkippableViT) -> None:
    path = _saved(tmp_path, vit)
    torch.manual_seed(1)
    other = SkippableViT("micro", **MICRO)  # same shapes, other weights
    with pytest.raises(VitskipFileError, match=r"trained on another backbone.*train/exits.py"):
        load_exit_heads(path, other)
    wider = SkippableViT("micro", num_classes=7)
    with pytest.raises(VitskipFileError, match="another backbone"):
        load_exit_heads(path, wider)
    with pytest.raises(ValueError, match=r"exit heads for a 4-block.*cannot read"):
        EarlyExitViT(wider, ExitHeads(vit))


def test_a_backbone_file_is_not_an_exit_file(tmp_path: Path, vit: SkippableViT) -> None:
    path = vit.save(tmp_path / "bb.safetensors")
    with pytest.raises(VitskipFileError, match=r"load it with vitskip_env\.load_backbone"):
        EarlyExitViT.load(path)


def test_tampered_exit_positions_are_refused(tmp_path: Path, vit: SkippableViT) -> None:
    path = _saved(tmp_path, vit)
    with safe_open(str(path), framework="pt") as fh:
        config = json.loads(fh.metadata()["vitskip"])
        state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    config["exits"]["positions"] = [1, 9]
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata={"vitskip": json.dumps(config)})
    with pytest.raises(VitskipFileError, match="outside this 4-block backbone"):
        EarlyExitViT.load(bad)
