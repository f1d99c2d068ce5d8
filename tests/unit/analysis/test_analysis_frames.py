"""analysis.frames: the tidy skip frame (schema, checks, run directories, DynamicViT) and its wide forms."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from analysis import frames
from analysis.frames import COLUMNS, check_frame, from_episodes, image_frame, skip_frame, wide_frame

REPO = Path(__file__).resolve().parents[3]
CLASSES = ["cat", "dog", "bird"]


def episodes() -> dict[str, np.ndarray]:
    """4 images x 4 blocks, paths 1100, 1111, 1010, 1100 (the frame every analysis test uses)."""
    return {
        "image_index": np.array([10, 11, 12, 13]),
        "label": np.array([0, 1, 0, 1]),
        "prediction": np.array([0, 0, 0, 1]),
        "correct": np.array([True, False, True, True]),
        "confidence": np.array([0.9, 0.5, 0.7, 0.8], dtype=np.float32),
        "difficulty": np.array([0.1, 1.0, 0.5, 0.3], dtype=np.float32),
        "executed_mask": np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 1, 0], [1, 1, 0, 0]], dtype=bool),
    }


def test_from_episodes_has_the_documented_columns_dtypes_and_order() -> None:
    frame = from_episodes(episodes(), CLASSES)
    assert list(frame.columns) == list(COLUMNS)
    assert {c: str(t) for c, t in frame.dtypes.items()} == COLUMNS
    assert len(frame) == 16
    assert frame["image_index"].tolist() == [10] * 4 + [11] * 4 + [12] * 4 + [13] * 4
    assert frame["block"].tolist() == [0, 1, 2, 3] * 4
    assert frame["executed"].tolist() == [True, True, False, False, True, True, True, True,
                                          True, False, True, False, True, True, False, False]  # fmt: skip
    assert frame.groupby("image_index")["executed_blocks"].first().tolist() == [2, 4, 2, 2]
    assert list(frame["class_name"].cat.categories) == CLASSES  # all classes, also those without images
    assert frame.loc[frame.block == 0, "class_name"].tolist() == ["cat", "dog", "cat", "dog"]
    assert frame.loc[frame.block == 3, "confidence"].tolist() == pytest.approx([0.9, 0.5, 0.7, 0.8])


def test_every_column_is_documented_once_in_the_module_docstring() -> None:
    doc = frames.__doc__
    for name, dtype in COLUMNS.items():
        assert f"| ``{name}`` | {dtype} |" in doc, name


def test_image_and_wide_frames() -> None:
    frame = from_episodes(episodes(), CLASSES)
    images = image_frame(frame)
    assert images.index.tolist() == [10, 11, 12, 13] and images.index.name == "image_index"
    assert images["path"].tolist() == ["1100", "1111", "1010", "1100"]
    assert images["executed_blocks"].tolist() == [2, 4, 2, 2]
    assert images["correct"].tolist() == [True, False, True, True]
    wide = wide_frame(frame)
    assert [c for c in wide.columns if c.startswith("block_")] == ["block_0", "block_1", "block_2", "block_3"]
    assert wide["block_2"].tolist() == [False, True, True, False] and wide["block_2"].dtype == bool
    assert wide.loc[12, "difficulty"] == pytest.approx(0.5)


def test_check_frame_fills_optional_columns_and_sorts() -> None:
    frame = from_episodes(episodes(), CLASSES)
    bare = frame[["image_index", "block", "executed", "label", "prediction", "correct"]].iloc[::-1]  # reversed order
    checked = check_frame(bare)
    assert list(checked.columns) == list(COLUMNS)
    assert checked["executed_blocks"].tolist() == frame["executed_blocks"].tolist()
    assert list(checked["class_name"].cat.categories) == ["0", "1"]  # names unknown: the labels as text
    assert checked["confidence"].isna().all() and checked["confidence"].dtype == np.float32
    assert checked["difficulty"].isna().all()
    named = frame.assign(class_name=frame["class_name"].astype(str))  # plain strings become categories in label order
    assert list(check_frame(named)["class_name"].cat.categories) == ["cat", "dog"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda f: f.drop(columns="executed"), r"missing columns \['executed'\]"),
        (lambda f: f[f.block != 2], r"one row per block"),
        (lambda f: pd.concat([f, f.iloc[:1]]).drop(f.index[1]), r"one row per block"),
        (lambda f: f.assign(executed_blocks=3), r"executed_blocks disagrees"),
    ],
)
def test_check_frame_rejects_broken_frames(change, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_frame(change(from_episodes(episodes(), CLASSES)))


def test_from_episodes_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"needs the per-image arrays \['prediction'\]"):
        from_episodes({k: v for k, v in episodes().items() if k != "prediction"}, CLASSES)
    with pytest.raises(ValueError, match=r"must have 4 entries"):
        from_episodes({**episodes(), "label": np.array([0, 1])}, CLASSES)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\)"):
        from_episodes(episodes(), ["cat"])


def test_skip_frame_reads_a_run_directory(tmp_path: Path) -> None:
    frame = from_episodes(episodes(), CLASSES)
    frame.to_parquet(tmp_path / "eval.parquet", index=False)
    for source in (tmp_path, str(tmp_path), tmp_path / "eval.parquet"):
        pd.testing.assert_frame_equal(skip_frame(source), frame)
    old = frame.drop(columns=["confidence"])  # runs written before confidence was recorded
    old.to_parquet(tmp_path / "eval.parquet", index=False)
    read = skip_frame(tmp_path)
    assert read["confidence"].isna().all() and read["confidence"].dtype == np.float32


def test_skip_frame_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no eval.parquet .* train/ppo.py"):
        skip_frame(tmp_path)
    with pytest.raises(ValueError, match=r"pass dataset only with a DynamicViT"):
        skip_frame(tmp_path, "shapes")
    with pytest.raises(TypeError, match=r"run directory .* or a DynamicViT, got int"):
        skip_frame(3)
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "eval.parquet")
    with pytest.raises(ValueError, match=r"not a skip frame: missing columns"):
        skip_frame(tmp_path)


def test_skip_frame_of_a_dynamic_vit_matches_the_backbone() -> None:
    from vitskip_env import DynamicViT, SkippableViT, SkipPolicy, make_dataset
    from vitskip_env.observations import encoder_for

    torch.manual_seed(0)
    vit = SkippableViT("micro", num_classes=10).eval()
    enc = encoder_for(vit)
    lin = nn.Linear(enc.obs_dim, 2)
    with torch.no_grad():  # skip block 2 (read from the block one-hot), execute the others
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor([0.0, 0.5]))
        lin.weight[0, enc.embed_dim + 2] = 1.0
    dyn = DynamicViT(vit, SkipPolicy(lin, enc)).train()
    ds = make_dataset("shapes", "test")
    frame = skip_frame(dyn, ds, n_images=10, batch_size=4)  # 3 batches, the last one short
    assert list(frame.columns) == list(COLUMNS) and len(frame) == 10 * 4
    images = image_frame(frame)
    assert images.index.tolist() == list(range(10)) and set(images["path"]) == {"1101"}
    mask = torch.tensor([[True, True, False, True]] * 10)
    with torch.no_grad():
        logits = vit(ds.normalize(ds.images[:10]), execute_mask=mask)
    assert images["prediction"].tolist() == logits.argmax(1).tolist()
    np.testing.assert_allclose(images["confidence"], logits.softmax(1).max(1).values.numpy(), rtol=1e-5)
    assert images["label"].tolist() == ds.labels[:10].tolist()
    assert images["correct"].tolist() == (logits.argmax(1) == ds.labels[:10]).tolist()
    np.testing.assert_allclose(images["difficulty"], ds.difficulty[:10].numpy())
    assert list(frame["class_name"].cat.categories) == list(ds.classes)
    assert dyn.training is True  # ran in eval mode, then the caller's mode was restored
    with pytest.raises(ValueError, match=r"needs a dataset"):
        skip_frame(dyn)
    with pytest.raises(ValueError, match=r"n_images must be >= 0"):
        skip_frame(dyn, ds, n_images=-3)
    with pytest.raises(ValueError, match=r"batch_size must be >= 1"):
        skip_frame(dyn, ds, batch_size=0)


def test_analysis_writes_files_with_the_package_writer() -> None:
    import vitskip_env.files
    from analysis import plots, report

    assert plots.atomic_path is vitskip_env.files.atomic_path
    assert report.atomic_write_text is vitskip_env.files.atomic_write_text
    assert not (REPO / "analysis" / "_io.py").exists() and not (REPO / "analysis" / "files.py").exists()


def test_analysis_imports_neither_torch_nor_training_code() -> None:
    # vitskip_env's torch-free face and its atomic writer are allowed; no wing that imports torch is.
    code = (
        "import sys; import analysis.frames, analysis.stats, analysis.plots, analysis.readers, analysis.report; "
        "bad = [m for m in ('torch', 'timm', 'agents', 'stable_baselines3', 'matplotlib.pyplot') if m in sys.modules]; "
        "bad += [m for m in sys.modules if m.startswith('vitskip_env.') and m != 'vitskip_env.files']; "
        "bad += [m for m in ('vitskip_env', 'vitskip_env.files') if m not in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_exit_block_is_kept_defaulted_and_checked() -> None:
    plain = from_episodes(episodes(), CLASSES)
    assert (plain["exit_block"] == 4).all()  # no exit action: every image reached the final classifier
    exited = from_episodes({**episodes(), "exit_block": np.array([2, 4, 4, 3])}, CLASSES)
    assert image_frame(exited)["exit_block"].tolist() == [2, 4, 4, 3]
    with pytest.raises(ValueError, match="exit_block is marked executed"):
        from_episodes({**episodes(), "exit_block": np.array([1, 4, 4, 3])}, CLASSES)  # image 10 ran block 1
