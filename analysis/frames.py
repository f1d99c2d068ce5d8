"""Skip decisions as pandas frames: one row per image x block (tidy), or one row per image (wide).

The tidy *skip frame* is what a training run writes to ``eval.parquet`` and what every function in
:mod:`analysis.stats` and :mod:`analysis.plots` takes. Its columns, in this order, sorted by
``image_index`` then ``block`` (this table is their one documentation):

| column | dtype | meaning |
|---|---|---|
| ``image_index`` | int64 | index of the image in its dataset split |
| ``block`` | int16 | transformer block, 0 = the first |
| ``executed`` | bool | the image ran this block (``False``: skipped, no arithmetic) |
| ``label`` | int64 | true class |
| ``class_name`` | category | name of the true class; the categories are all classes of the dataset in label order |
| ``difficulty`` | float32 | the image's difficulty in [0, 1] (``shapes``); NaN where the dataset does not know it |
| ``prediction`` | int64 | predicted class (argmax of the logits) |
| ``correct`` | bool | ``prediction == label`` |
| ``confidence`` | float32 | softmax probability of the predicted class; NaN in runs written before it was recorded |
| ``executed_blocks`` | int16 | blocks the image executed (its depth); the same on all rows of the image |
| ``exit_block`` | int16 | blocks passed before leaving through an exit head (``actions="skip_exit"``); else the depth |

Every column after ``executed`` describes the image and repeats on each of its ``depth`` rows.
:func:`image_frame` keeps one row per image (plus ``path``, the executed mask as a string such as
``"11010000"``, block 0 first); :func:`wide_frame` adds one ``bool`` column per block
(``block_0``, ``block_1``, ...).

Reading a run directory needs only pandas and pyarrow; :func:`skip_frame` imports torch and the
``vitskip_env`` wings that use it only when it is given a ``DynamicViT`` to run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: The skip frame's columns and dtypes, in order (documented in the module docstring).
COLUMNS: dict[str, str] = {
    "image_index": "int64",
    "block": "int16",
    "executed": "bool",
    "label": "int64",
    "class_name": "category",
    "difficulty": "float32",
    "prediction": "int64",
    "correct": "bool",
    "confidence": "float32",
    "executed_blocks": "int16",
    "exit_block": "int16",
}
#: Columns a skip frame must have; the others are derived (``executed_blocks``, ``class_name``) or NaN.
REQUIRED: tuple[str, ...] = ("image_index", "block", "executed", "label", "prediction", "correct")
#: Columns that describe an image (all but ``block`` and ``executed``).
IMAGE_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c not in ("block", "executed"))
#: The file a training run writes its final evaluation to.
EVAL_FILE = "eval.parquet"


def skip_frame(source: Any, dataset: Any = None, *, n_images: int | None = None, batch_size: int = 512) -> pd.DataFrame:
    """The tidy skip frame of a training run or of a ``DynamicViT`` on a dataset.

    Args:
        source: A run directory (or its ``eval.parquet``), read with pandas alone; or a
            ``vitskip_env.DynamicViT``, run on ``dataset`` in batches without gradients.
        dataset: With a ``DynamicViT`` only: a ``vitskip_env`` dataset (``make_dataset(name, split)``)
            or a dataset name (its ``test`` split is loaded on the model's device).
        n_images: With a ``DynamicViT``: the first ``n_images`` images (default: the whole split).
        batch_size: With a ``DynamicViT``: images per forward pass.

    Returns:
        One row per image x block with the columns of :data:`COLUMNS`.

    Raises:
        FileNotFoundError: The run directory has no ``eval.parquet``.
        ValueError: The file is not a skip frame, or a ``DynamicViT`` came without a dataset.
        TypeError: ``source`` is neither a path nor a ``DynamicViT``.
    """
    if isinstance(source, (str, os.PathLike)):
        if dataset is not None:
            raise ValueError(
                "skip_frame(run_dir, dataset): a run directory's eval.parquet already holds labels, classes and "
                "difficulty; pass dataset only with a DynamicViT"
            )
        return read_eval(source)
    if callable(source) and hasattr(source, "backbone") and hasattr(source, "policy"):
        if dataset is None:
            raise ValueError("skip_frame(dynamic_vit, dataset) needs a dataset: make_dataset('shapes', 'test') or a name")
        return _run_dynamic(source, dataset, n_images, batch_size)
    raise TypeError(
        f"skip_frame takes a run directory (str or Path) or a DynamicViT, got {type(source).__name__}; "
        "for per-image arrays use analysis.frames.from_episodes"
    )


def read_eval(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check the ``eval.parquet`` of a run directory (or that file itself).

    Raises:
        FileNotFoundError: No such file (the message says what writes it).
        ValueError: The file is not a skip frame (see :func:`check_frame`).
    """
    p = Path(path)
    file = p / EVAL_FILE if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(
            f"no {EVAL_FILE} at {str(file)!r}: pass a run directory written by train/ppo.py, train/a2c.py or "
            f"train/reinforce.py (they write {EVAL_FILE} when training finishes; an interrupted run writes it after "
            "--resume completes)"
        )
    return check_frame(pd.read_parquet(file), source=str(file))


def from_episodes(episodes: Mapping[str, Any], classes: Sequence[str]) -> pd.DataFrame:
    """Build the skip frame from per-image arrays (what ``agents.evaluate_agent(..., return_episodes=True)`` returns).

    Args:
        episodes: ``executed_mask`` ``bool (n, depth)`` and, per image, ``image_index``, ``label``,
            ``prediction``, ``correct``; optional ``confidence`` and ``difficulty``. ``executed_blocks``
            is recomputed from the mask.
        classes: Class names in label order.

    Raises:
        ValueError: A required array is missing or the lengths disagree.
    """
    missing = [k for k in ("executed_mask", "image_index", "label", "prediction", "correct") if k not in episodes]
    if missing:
        raise ValueError(f"from_episodes needs the per-image arrays {missing}; got {sorted(episodes)}")
    mask = np.asarray(episodes["executed_mask"], dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"executed_mask must be bool (images, depth), got shape {mask.shape}")
    n, depth = mask.shape
    per_image = {k: np.asarray(v).reshape(-1) for k, v in episodes.items() if k != "executed_mask"}
    wrong = {k: len(v) for k, v in per_image.items() if len(v) != n}
    if wrong:
        raise ValueError(f"per-image arrays must have {n} entries (rows of executed_mask); got lengths {wrong}")
    nan = np.full(n, np.nan, dtype=np.float32)
    frame = pd.DataFrame({
        "image_index": np.repeat(per_image["image_index"], depth),
        "block": np.tile(np.arange(depth), n),
        "executed": mask.reshape(-1),
        "label": np.repeat(per_image["label"], depth),
        "difficulty": np.repeat(per_image.get("difficulty", nan), depth),
        "prediction": np.repeat(per_image["prediction"], depth),
        "correct": np.repeat(per_image["correct"], depth),
        "confidence": np.repeat(per_image.get("confidence", nan), depth),
        "executed_blocks": np.repeat(mask.sum(1), depth),
        "exit_block": np.repeat(per_image.get("exit_block", np.full(n, depth)), depth),
    })  # fmt: skip
    labels = frame["label"].to_numpy(dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        got = f"{labels.min()}..{labels.max()}"
        raise ValueError(f"labels must lie in [0, {len(classes)}) for the {len(classes)} classes given; got {got}")
    frame["class_name"] = pd.Categorical.from_codes(labels, categories=list(classes))
    return check_frame(frame)


def check_frame(frame: pd.DataFrame, source: str = "the frame") -> pd.DataFrame:
    """The frame with the documented columns, dtypes and order, sorted by image then block.

    Missing optional columns are filled in: ``executed_blocks`` from ``executed``, ``class_name``
    from ``label`` (as text), ``difficulty`` and ``confidence`` as NaN, ``exit_block`` as the depth
    (no early exit).

    Raises:
        ValueError: A required column is missing, an image lacks a block or has one twice, or
            ``executed_blocks`` disagrees with ``executed``.
    """
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{source} is not a skip frame: missing columns {missing}; a skip frame has {list(COLUMNS)} "
            f"(required: {list(REQUIRED)}); build one with analysis.frames.from_episodes"
        )
    out = frame.sort_values(["image_index", "block"], kind="stable").reset_index(drop=True)
    n_blocks = depth_of(out)
    counts = out.groupby("image_index", sort=False)["block"].agg(["size", "nunique", "min"])
    bad = counts[(counts["size"] != n_blocks) | (counts["nunique"] != n_blocks) | (counts["min"] != 0)]
    if len(bad):
        first = bad.index[0]
        raise ValueError(
            f"{source}: every image needs exactly one row per block 0..{n_blocks - 1}; {len(bad)} images do not "
            f"(e.g. {bad.index[:5].tolist()}; image {first} has blocks {out.loc[out.image_index == first, 'block'].tolist()})"
        )
    depth = out.groupby("image_index", sort=False)["executed"].transform("sum")
    if "executed_blocks" not in out.columns:
        out["executed_blocks"] = depth
    elif not (out["executed_blocks"].to_numpy() == depth.to_numpy()).all():
        raise ValueError(f"{source}: executed_blocks disagrees with the number of executed blocks of the image")
    if "class_name" not in out.columns:
        names = [str(v) for v in sorted(out["label"].unique())]
        out["class_name"] = pd.Categorical(out["label"].astype(str), categories=names)
    elif not isinstance(out["class_name"].dtype, pd.CategoricalDtype):
        pairs = out[["label", "class_name"]].drop_duplicates().sort_values("label")
        out["class_name"] = pd.Categorical(out["class_name"], categories=pairs["class_name"].astype(str).unique())
    for col in ("difficulty", "confidence"):
        if col not in out.columns:
            out[col] = np.float32("nan")
    if "exit_block" not in out.columns:  # no exit action: every image reached the final classifier
        out["exit_block"] = n_blocks
    elif (out["executed"] & (out["block"] >= out["exit_block"])).any():
        raise ValueError(f"{source}: a block at or after an image's exit_block is marked executed")
    return out[list(COLUMNS)].astype(COLUMNS)


def depth_of(frame: pd.DataFrame) -> int:
    """Number of blocks of the ViT the frame describes."""
    return int(frame["block"].max()) + 1 if len(frame) else 0


def executed_matrix(frame: pd.DataFrame) -> np.ndarray:
    """``bool (images, depth)``: the executed mask, rows in ``image_index`` order (a checked frame)."""
    depth = depth_of(frame)
    return frame["executed"].to_numpy(dtype=bool).reshape(-1, depth) if depth else np.zeros((0, 0), dtype=bool)


def image_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per image (index ``image_index``): the image columns of :data:`COLUMNS` and ``path``.

    ``path`` is the executed mask as a string, block 0 first (``"1101"``: blocks 0, 1 and 3 ran).
    """
    first = frame[frame["block"] == 0]
    images = first[list(IMAGE_COLUMNS)].set_index("image_index")
    mask = executed_matrix(frame)
    images["path"] = (mask.astype(np.uint8) + ord("0")).view(f"S{max(mask.shape[1], 1)}").ravel().astype(str)
    return images


def block_column(block: int) -> str:
    """Name of block ``block``'s column in :func:`wide_frame` (``"block_3"``)."""
    return f"block_{block}"


def wide_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per image: :func:`image_frame` plus one ``bool`` column per block (``block_0`` ...)."""
    images = image_frame(frame)
    mask = executed_matrix(frame)
    blocks = pd.DataFrame(mask, index=images.index, columns=[block_column(i) for i in range(mask.shape[1])])
    return pd.concat([images, blocks], axis=1)


def _run_dynamic(model: Any, dataset: Any, n_images: int | None, batch_size: int) -> pd.DataFrame:
    """Run a ``DynamicViT`` over ``dataset`` and return its skip frame (torch imported here only).

    The per-image predictions, confidences and executed blocks come from the one scorer,
    :func:`vitskip_env.measure.accuracy.score` (``per_image=True``).
    """
    if n_images is not None and int(n_images) < 0:
        raise ValueError(f"n_images must be >= 0 (images of the test split to run; None: all), got {n_images}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (images per forward pass), got {batch_size}")
    device = next(model.parameters()).device
    if isinstance(dataset, str):
        from vitskip_env import make_dataset

        dataset = make_dataset(dataset, "test", device=device)
    n = len(dataset.labels) if n_images is None else min(int(n_images), len(dataset.labels))
    if n == 0:  # the scorer refuses an empty split; an empty frame is still a frame
        episodes = {"executed_mask": np.zeros((0, model.depth), dtype=bool), "prediction": np.zeros(0),
                    "confidence": np.zeros(0), "correct": np.zeros(0, dtype=bool)}  # fmt: skip
    else:
        from vitskip_env.measure.accuracy import score

        s = score(model, dataset, n_images=n, batch_size=batch_size, per_image=True)
        parts = {"executed_mask": s.executed, "prediction": s.prediction, "confidence": s.confidence, "correct": s.correct}
        episodes = {key: value.cpu().numpy() for key, value in parts.items()}
    episodes |= {"image_index": np.arange(n), "label": dataset.labels[:n].cpu().numpy()}
    if getattr(dataset, "difficulty", None) is not None:
        episodes["difficulty"] = dataset.difficulty[:n].cpu().numpy()
    return from_episodes(episodes, list(dataset.classes))
