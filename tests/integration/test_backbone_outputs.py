"""train/backbone.py keeps what a user made: a used --out, a side-file collision, another architecture's
checkpoint and out-of-range numbers are refused before any work; an interrupted training is still resumed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import tyro

from vitskip_env import load_backbone

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "train"))

import backbone as train_backbone  # noqa: E402
import backbone_checks  # noqa: E402
from test_train_backbone import _args as tiny_args  # noqa: E402


def _args(out: Path, **overrides) -> train_backbone.Args:
    """The tiny run of ``test_train_backbone``, shorter still (one epoch on 128 images)."""
    return tiny_args(out, **{"train_images": 128, "eval_images": 64, "epochs": 1, **overrides})


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _interrupted(out: Path, monkeypatch: pytest.MonkeyPatch, at_step: int = 1, **overrides) -> Path:
    """Start a training at ``out`` and interrupt it at its ``at_step``-th step; return its checkpoint."""
    real, calls = train_backbone._train_step, []

    def interrupt(*a, **k):
        calls.append(1)
        if len(calls) == at_step:
            raise KeyboardInterrupt
        return real(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(train_backbone, "_train_step", interrupt)
        with pytest.raises(SystemExit):
            train_backbone.main(_args(out, **overrides))
    return out.with_suffix(".ckpt.pt")


def test_a_run_writes_the_backbone_and_four_distinct_side_files(tmp_path: Path) -> None:
    out = train_backbone.main(_args(tmp_path / "bb.safetensors", augment=False))
    outputs = backbone_checks.Outputs.at(out)
    assert sorted(tmp_path.iterdir()) == sorted(outputs.all())
    assert load_backbone(out).depth == 4
    record = outputs.record.read_text()
    assert record.startswith("# Backbone `bb`") and "--no-augment" in record and "--augment False" not in record


@pytest.mark.parametrize("name", ["w.safetensors", "a.b.safetensors", ".hidden.safetensors", "x y.safetensors"])
def test_side_files_never_collide_with_the_backbone_or_each_other(tmp_path: Path, name: str) -> None:
    paths = backbone_checks.Outputs.at(tmp_path / name).all()
    assert paths[0] == tmp_path / name
    assert len({p.name.lower() for p in paths}) == 5 and all(p.parent == tmp_path for p in paths)


@pytest.mark.parametrize("name", ["w.md", "w.json", "w.log.csv", "w.ckpt.pt", "w", "w.SAFETENSORS", ".safetensors"])
def test_an_out_that_is_not_a_safetensors_file_is_refused_before_any_work(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"must end in \.safetensors.*give e\.g\. --out"):
        train_backbone.main(_args(tmp_path / "new" / name))
    assert not (tmp_path / "new").exists()


def test_the_command_line_says_in_one_line_what_out_is_allowed(tmp_path: Path) -> None:
    cmd = [sys.executable, "train/backbone.py", "--preset", "micro", "--epochs", "1", "--out", str(tmp_path / "w.md")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: --out") and "w.md" in last and "must end in .safetensors" in last
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("existing", ["bb.safetensors", "bb.json", "bb.md", "bb.log.csv"])
def test_a_used_out_is_refused_and_left_as_it_is(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_bytes(b"a user's earlier work")
    before = _snapshot(tmp_path)
    with pytest.raises(FileExistsError, match=rf"already holds {existing}; give a new --out, or pass --overwrite"):
        train_backbone.main(_args(tmp_path / "bb.safetensors"))
    assert _snapshot(tmp_path) == before


def test_overwrite_replaces_a_used_out(tmp_path: Path) -> None:
    out = tmp_path / "bb.safetensors"
    out.write_bytes(b"not a backbone")
    train_backbone.main(_args(out, overwrite=True))
    assert load_backbone(out).meta["training"]["history"][0]["epoch"] == 1
    assert "--overwrite" not in out.with_suffix(".md").read_text()


def test_a_finished_training_is_not_trained_over_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "bb.safetensors"
    train_backbone.main(_args(out))
    before = _snapshot(tmp_path)
    for epochs in (1, 2):  # the same command again, or more epochs: both would replace the finished backbone
        with pytest.raises(
            FileExistsError, match=r"bb\.ckpt\.pt holds a finished training \(1 epochs\).*--init .*--overwrite"
        ):
            train_backbone.main(_args(out, epochs=epochs))
    assert _snapshot(tmp_path) == before
    train_backbone.main(_args(out, epochs=2, overwrite=True))  # starts over: two fresh epochs
    assert [r["epoch"] for r in load_backbone(out).meta["training"]["history"]] == [1, 2]


def test_an_interrupted_training_resumes_but_no_resume_needs_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "bb.safetensors"
    ckpt = _interrupted(out, monkeypatch)
    before = _snapshot(tmp_path)
    with pytest.raises(
        FileExistsError,
        match=r"--no-resume would start over .*bb\.ckpt\.pt; drop --no-resume to continue the training in bb\.ckpt\.pt",
    ):
        train_backbone.main(_args(out, resume=False))
    assert _snapshot(tmp_path) == before
    assert train_backbone.main(_args(out)) == out  # the same command resumes, with no --overwrite
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1 and load_backbone(out).depth == 4


def test_the_same_overwrite_command_after_an_interruption_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bb.safetensors"
    train_backbone.main(_args(out))
    _interrupted(out, monkeypatch, at_step=3, epochs=2, overwrite=True)  # the new training, stopped in its epoch 2
    capsys.readouterr()
    train_backbone.main(_args(out, epochs=2, overwrite=True))  # the shell's last command again
    assert f"resumed from {out.with_suffix('.ckpt.pt')} at epoch 1" in capsys.readouterr().out
    assert [r["epoch"] for r in load_backbone(out).meta["training"]["history"]] == [1, 2]


def test_an_interrupted_training_past_a_lower_epochs_says_how_to_finish_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "bb.safetensors"
    _interrupted(out, monkeypatch, at_step=3, epochs=2)  # 2 steps per epoch: stopped at the start of epoch 2
    before = _snapshot(tmp_path)
    with pytest.raises(FileExistsError, match=r"at epoch 1 of 2, past --epochs 1; pass --epochs 2 to finish it"):
        train_backbone.main(_args(out, epochs=1))
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("batch_size", 32, "--batch-size 32"),
        ("seed", 5, "--seed 5"),
        ("lr", 1e-3, "--lr 0.001"),
        ("block_drop", 0.0, "--block-drop 0.0"),
    ],
)
def test_an_interrupted_training_is_not_resumed_under_other_training_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str, value, flag: str
) -> None:
    out = tmp_path / "bb.safetensors"
    _interrupted(out, monkeypatch)
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match=rf"made with other training arguments: {flag} \(was .*--no-resume --overwrite"):
        train_backbone.main(_args(out, **{field: value}))  # would silently change the image order or the schedule
    assert _snapshot(tmp_path) == before
    assert train_backbone.main(_args(out, eval_images=32, threads=1)) == out  # evaluation-only flags may change


def test_an_out_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bb.safetensors").mkdir()
    with pytest.raises(ValueError, match=r"is a folder; give the backbone file to write"):
        train_backbone.main(_args(tmp_path / "bb.safetensors"))
    assert list((tmp_path / "bb.safetensors").iterdir()) == []


def test_a_checkpoint_of_another_preset_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bb.safetensors"
    ckpt = _interrupted(out, monkeypatch)
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError) as err:
        train_backbone.main(_args(out, preset="demo"))
    message = str(err.value)
    assert str(ckpt) in message and "another architecture" in message
    assert "--preset micro --dataset shapes: 4 blocks of width 32" in message
    assert "--preset demo --dataset shapes: 8 blocks of width 128" in message
    assert "resume it with the flags it was made with" in message and "--no-resume --overwrite" in message
    assert _snapshot(tmp_path) == before


class _Planted:
    """Unpickling this runs ``Path.touch(marker)``: what an untrusted checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("content", ["planted object", "garbage", "foreign dict"])
def test_a_checkpoint_is_read_without_unpickling_objects(tmp_path: Path, content: str) -> None:
    out = tmp_path / "bb.safetensors"
    ckpt, marker = out.with_suffix(".ckpt.pt"), tmp_path / "marker"
    if content == "planted object":
        torch.save({"model": {}, "epoch": 0, "step": 0, "payload": _Planted(marker)}, ckpt)
    elif content == "garbage":
        ckpt.write_bytes(b"\x00not a checkpoint")
    else:
        torch.save({"weights": torch.zeros(2)}, ckpt)
    with pytest.raises(ValueError, match=r"bb\.ckpt\.pt.*move it away, or pass --no-resume --overwrite"):
        train_backbone.main(_args(out))
    assert not marker.exists() and ckpt.exists()


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("epochs", 0, "--epochs"),
        ("batch_size", 0, "--batch-size"),
        ("batch_size", -64, "--batch-size"),
        ("eval_every", 0, "--eval-every"),
        ("lr", 0.0, "--lr"),
        ("lr", float("nan"), "--lr"),
        ("warmup_epochs", -1.0, "--warmup-epochs"),
        ("min_lr_ratio", 1.5, "--min-lr-ratio"),
        ("weight_decay", -0.1, "--weight-decay"),
        ("label_smoothing", 1.0, "--label-smoothing"),
        ("block_drop", 1.0, "--block-drop"),
        ("block_drop", -0.2, "--block-drop"),
        ("curriculum_epochs", -1, "--curriculum-epochs"),
        ("curriculum_start", 2.0, "--curriculum-start"),
        ("train_images", 0, "--train-images"),
        ("eval_images", -5, "--eval-images"),
        ("threads", -1, "--threads"),
        ("seed", -1, "--seed"),
    ],
)
def test_numbers_out_of_range_are_refused_before_any_file(tmp_path: Path, field: str, value, flag: str) -> None:
    with pytest.raises(ValueError, match=rf"^{flag} must be .*, got {value!r}$"):
        train_backbone.main(_args(tmp_path / "new" / "bb.safetensors", **{field: value}))
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_a_command_line_flag() -> None:
    assert tyro.cli(train_backbone.Args, args=["--overwrite"]).overwrite is True
    assert tyro.cli(train_backbone.Args, args=[]).overwrite is False
