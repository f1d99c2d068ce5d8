"""The plane's contenders: each spec kind rebuilds the model it names, FLOPs are counted, memory is probed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fakemodels import micro_files

from vitskip_env import DynamicViT, EarlyExitViT, ExitRule, TokenMergingViT, make_dataset
from vitskip_env.measure.plane import build, count_flops, evaluate, file_format, peak_memory, time_points


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    return micro_files(tmp_path)


def test_every_kind_rebuilds_the_model_it_names(files: dict[str, str]) -> None:
    ds = make_dataset("shapes", "test")
    x = ds.normalize(ds.images[:16])
    vit = DynamicViT.load(files["dynamic"]).backbone
    dyn = DynamicViT.load(files["dynamic"])
    keep = torch.tensor([True, False, True, False])
    with torch.inference_mode():
        assert torch.equal(build({"kind": "backbone", "file": files["backbone"]})(x), vit(x))
        sub = build({"kind": "backbone", "file": files["dynamic"], "keep": "1010"})
        assert torch.equal(sub(x), vit(x, execute_mask=keep.expand(16, -1)))
        assert torch.equal(build({"kind": "backbone", "file": files["backbone"], "r": 2})(x), TokenMergingViT(vit, 2)(x))
        assert torch.equal(build({"kind": "dynamic", "file": files["dynamic"]})(x), dyn(x))
        executed = dyn(x, return_mask=True)[1]
        assert 16 < int(executed.sum()) < 64  # the policy's depth differs between images
        rnd = build({"kind": "random", "file": files["backbone"], "policy": files["dynamic"], "seed": 3})
        with pytest.raises(RuntimeError, match="prepare"):
            rnd(x)
        rnd.prepare([x])
        mask = next(iter(rnd.prepared.values()))
        assert torch.equal(mask.sum(1), executed.sum(1))  # as many blocks per image as the policy, elsewhere
        assert not torch.equal(mask, executed)
        assert torch.equal(rnd(x), vit(x, execute_mask=mask))
        rule = {"kind": "confidence", "threshold": 0.2}
        ee = build({"kind": "exit", "file": files["exit"], "heads": "lgvit", "rule": rule})
        ref = EarlyExitViT.load(files["exit"]).with_rule(ExitRule(**rule))
        assert torch.equal(ee(x), ref(x))
        _, blocks = ee.scored(x)
        assert torch.equal(blocks, ref(x, return_exits=True)[1].float())
    assert file_format(files["dynamic"]) == "vitskip-dynamic" and file_format(files["exit"]) == "vitskip-exits"
    with pytest.raises(ValueError, match="unknown contender kind"):
        build({"kind": "nope"})


def test_scores_flops_and_speed_of_the_same_computation(files: dict[str, str]) -> None:
    ds = make_dataset("shapes", "test")
    static = build({"kind": "backbone", "file": files["backbone"]})
    two = build({"kind": "backbone", "file": files["backbone"], "keep": "1100"})
    dyn = build({"kind": "dynamic", "file": files["dynamic"]})
    a, b = evaluate(static, ds, n_images=40, batch_size=16), evaluate(dyn, ds, n_images=40, batch_size=16)
    assert a["blocks"] == 4.0 and 1.0 <= b["blocks"] < 4.0 and a["test_images"] == 40
    x = ds.normalize(ds.images[:8])
    full, half = count_flops(static, x), count_flops(two, x)
    vit = DynamicViT.load(files["dynamic"]).backbone
    blocks = sum(vit.block_flops())
    assert half == pytest.approx(full - blocks / 2, rel=1e-6)  # two of four equal blocks fewer, counted
    speed = time_points({"static": static, "two": two}, ds, 4, baseline="static", rounds=1, warmup=0, images_per_round=8)
    assert speed["static"]["speedup"] == 1.0 and speed["two"]["images_per_s"] > 0


def test_peak_memory_of_every_contender_and_batch_size_in_a_child_process(files: dict[str, str]) -> None:
    specs = {
        "tome": {"kind": "backbone", "file": files["backbone"], "r": 1},
        "dyn": {"kind": "dynamic", "file": files["dynamic"]},
    }
    peaks = peak_memory(specs, [64, 2], dataset="shapes", threads=1)
    assert sorted(peaks) == ["dyn", "tome"] and all(sorted(p) == [2, 64] for p in peaks.values())
    assert all(v >= 0 for p in peaks.values() for v in p.values())
    assert peaks["tome"][64] > peaks["tome"][2]  # activations grow with the batch
    with pytest.raises(FileNotFoundError, match="contender 'x': no such file"):
        peak_memory({"x": {"kind": "backbone", "file": "missing.safetensors"}}, [1], dataset="shapes")
