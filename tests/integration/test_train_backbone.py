"""train/backbone.py: a tiny run writes a loadable backbone; interrupt + resume loses nothing; torchrun DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitskip_env import load_backbone

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "train"))

import backbone as train_backbone  # noqa: E402

TINY = [
    "--preset",
    "micro",
    "--train-images",
    "256",
    "--batch-size",
    "64",
    "--eval-images",
    "128",
    "--eval-every",
    "1",
    "--warmup-epochs",
    "0.5",
    "--threads",
    "1",
]


def _args(out: Path, **overrides) -> train_backbone.Args:
    base = dict(
        preset="micro",
        train_images=256,
        batch_size=64,
        eval_images=128,
        eval_every=1,
        warmup_epochs=0.5,
        threads=1,
        epochs=2,
        out=str(out),
    )
    base.update(overrides)
    return train_backbone.Args(**base)


def test_tiny_run_writes_a_loadable_backbone_and_log(tmp_path: Path) -> None:
    out = tmp_path / "bb.safetensors"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "train/backbone.py", *TINY, "--epochs", "1", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    vit = load_backbone(out, num_classes=10)
    assert vit.depth == 4 and vit.meta["dataset"] == "shapes"
    history = vit.meta["training"]["history"]
    assert history[0]["epoch"] == 1 and {"top1", "top1_skip25", "top1_skip50"} <= set(history[0])
    assert (tmp_path / "bb.log.csv").read_text().startswith("epoch,minutes,loss,top1")
    assert (tmp_path / "bb.ckpt.pt").exists()


def test_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    ref = load_backbone(train_backbone.main(_args(tmp_path / "ref.safetensors")))

    real_step = train_backbone._train_step
    calls = {"n": 0}

    def interrupting_step(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # mid second epoch (4 steps per epoch)
            raise KeyboardInterrupt
        return real_step(*a, **k)

    monkeypatch.setattr(train_backbone, "_train_step", interrupting_step)
    out = tmp_path / "run.safetensors"
    with pytest.raises(SystemExit) as stop:
        train_backbone.main(_args(out))
    assert stop.value.code == 130
    ckpt = torch.load(out.with_suffix(".ckpt.pt"), weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 1)

    monkeypatch.setattr(train_backbone, "_train_step", real_step)
    resumed = load_backbone(train_backbone.main(_args(out)))
    for (name, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_block_drop_really_skips_blocks_in_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = train_backbone._train_step

    def spy(ddp, model, *a, **k):
        if not seen:
            for blk in model.blocks:
                blk.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].shape[0]))
        return real(ddp, model, *a, **k)

    monkeypatch.setattr(train_backbone, "_train_step", spy)
    train_backbone.main(_args(tmp_path / "bb.safetensors", epochs=1, block_drop=0.5, eval_images=64))
    train_rows = seen[: 4 * 4]  # 4 steps x 4 blocks, before evaluation starts
    assert all(0 < r < 64 for r in train_rows), train_rows


@pytest.mark.slow  # two torchrun processes (~20 s): `uv run pytest -m slow`
@pytest.mark.timeout(600)
def test_torchrun_two_processes_complete(tmp_path: Path) -> None:
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29517",
        "train/backbone.py",
        *TINY,
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_backbone(out).meta["training"]["history"][0]["epoch"] == 1


@pytest.mark.parametrize("stem", ["patch", "conv_lite"])
def test_init_with_a_new_stem_keeps_the_blocks_and_trains(tmp_path: Path, stem: str) -> None:
    """--init FILE --stem S: the file's blocks, position embedding and head under a fresh stem, then fine-tuned."""
    torch.manual_seed(0)
    first = tmp_path / "conv.safetensors"
    train_backbone.main(_args(first, epochs=1, stem="conv"))
    source = load_backbone(first)
    model = train_backbone.build_model(_args(tmp_path / "x.safetensors", init=str(first), stem=stem), 10, torch.device("cpu"))
    assert model.model_kwargs["stem"] == stem and model.training
    new, old = model.vit.state_dict(), source.vit.state_dict()
    assert all(torch.equal(new[k], v) for k, v in old.items() if not k.startswith("patch_embed."))
    shapes = [{k: tuple(v.shape) for k, v in sd.items() if k.startswith("patch_embed.")} for sd in (new, old)]
    assert shapes[0] != shapes[1]  # a different stem, not the file's
    out = train_backbone.main(_args(tmp_path / "restemmed.safetensors", init=str(first), stem=stem, epochs=1))
    assert load_backbone(out).model_kwargs["stem"] == stem


def test_the_lite_conv_stem_is_a_quarter_of_the_conv_stem() -> None:
    from vitskip_env import SkippableViT

    conv, lite = (SkippableViT("demo", num_classes=10, stem=s).vit.patch_embed for s in ("conv", "conv_lite"))
    macs = [sum(m.weight.numel() for m in pe.modules() if isinstance(m, torch.nn.Conv2d)) for pe in (conv, lite)]
    assert macs[1] < 0.35 * macs[0]
    with torch.no_grad():
        assert lite(torch.randn(2, 3, 32, 32)).shape == conv(torch.randn(2, 3, 32, 32)).shape == (2, 16, 128)


def test_a_fresh_model_takes_the_datasets_image_size(tmp_path: Path) -> None:
    """Presets are written for 32x32; Tiny-ImageNet's 64x64 images get a 64x64 model, and --init must match."""
    model = train_backbone.build_model(_args(tmp_path / "x.safetensors"), 200, torch.device("cpu"), image_size=64)
    assert model.img_size == 64
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 200)
    small = model.__class__("micro", num_classes=200)
    path = small.save(tmp_path / "small.safetensors", dataset="tinyimagenet")
    with pytest.raises(ValueError, match="takes 32x32 images"):
        train_backbone.build_model(_args(tmp_path / "y.safetensors", init=str(path)), 200, torch.device("cpu"), image_size=64)
