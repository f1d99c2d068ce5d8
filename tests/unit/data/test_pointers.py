"""The built-in pointers dataset: every label is where the red path ends, paths of 1-6 hops, decoys
that rule out shortcuts, determinism, disjoint splits, and a cache that repairs itself."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from vitskip_env import make_dataset
from vitskip_env.data import pointers
from vitskip_env.data.augment import augment_kwargs

N = 64


@pytest.fixture(scope="module")
def scenes() -> dict[str, np.ndarray]:
    return pointers.render_scenes(960, seed=4)


def test_format_and_balance(scenes: dict[str, np.ndarray]) -> None:
    assert scenes["images"].shape == (960, 3, 32, 32) and scenes["images"].dtype == np.uint8
    assert np.bincount(scenes["labels"], minlength=16).tolist() == [60] * 16
    assert pointers.POINTER_CLASSES[6] == "path ends at row 1, column 2"


def test_every_label_is_where_the_red_path_ends(scenes: dict[str, np.ndarray]) -> None:
    for i in range(len(scenes["labels"])):
        end, hops = pointers.follow(scenes["kind"][i], scenes["direction"][i], int(scenes["start"][i]))
        assert (end, hops) == (scenes["labels"][i], scenes["hops"][i])
    assert set(np.unique(scenes["hops"])) == set(range(1, pointers.MAX_HOPS + 1))  # every length occurs
    assert (scenes["kind"][np.arange(960), scenes["start"]] == pointers.ARROW).all()


def test_the_red_arrow_is_drawn_red_at_its_cell(scenes: dict[str, np.ndarray]) -> None:
    clean = np.flatnonzero(scenes["factors"][:, 2:].max(1) < 0.15)  # little jitter, noise and fading
    assert clean.size > 20
    for i in clean:
        row, col = divmod(int(scenes["start"][i]), pointers.GRID)
        patch = scenes["images"][i, :, row * 8 : row * 8 + 8, col * 8 : col * 8 + 8].reshape(3, -1) / 255.0
        redness = patch[0] - patch[1:].max(0)
        assert redness.max() > 0.5, i


def test_decoys_rule_out_the_obvious_shortcuts(scenes: dict[str, np.ndarray]) -> None:
    kind, labels = scenes["kind"], scenes["labels"]
    circles = (kind == pointers.CIRCLE).sum(1)
    assert (circles >= 2).mean() > 0.4  # often more than one circle to choose from
    # A decoy circle that an arrow also leads to (so "the circle an arrow points at" is not the answer).
    pointed = 0
    for i in np.flatnonzero(circles >= 2):
        ends = set()
        for c in np.flatnonzero(kind[i] == pointers.ARROW):
            try:
                ends.add(pointers.follow(kind[i], scenes["direction"][i], int(c))[0])
            except ValueError:
                continue
        pointed += len(ends - {labels[i]}) > 0
    assert pointed > 0.3 * (circles >= 2).sum()


def test_difficulty_follows_the_factors(scenes: dict[str, np.ndarray]) -> None:
    f = dict(zip(pointers.FACTORS, scenes["factors"].T, strict=True))
    assert np.allclose(f["hops"], (scenes["hops"] - 1) / (pointers.MAX_HOPS - 1))  # the hops drawn, not asked
    _, _, difficulty = pointers.render(960, 4)
    assert np.allclose(difficulty, scenes["factors"].mean(1), atol=1e-6) and difficulty.std() > 0.15
    objects = (scenes["kind"] != pointers.EMPTY).sum(1)
    assert _spearman(f["clutter"], objects - scenes["hops"]) > 0.5  # more decoys and strays
    assert _spearman(difficulty, scenes["hops"]) > 0.5


def test_follow_refuses_paths_that_leave_the_grid_or_loop() -> None:
    kind, direction = np.zeros(16, dtype=np.int64), np.zeros(16, dtype=np.int64)
    kind[0], direction[0] = pointers.ARROW, 0  # up from the top row
    with pytest.raises(ValueError, match="off the grid"):
        pointers.follow(kind, direction, 0)
    kind[1], direction[0], direction[1] = pointers.ARROW, 1, 3  # right then back left
    with pytest.raises(ValueError, match="loop"):
        pointers.follow(kind, direction, 0)


def test_splits_are_disjoint() -> None:
    splits = [pointers.GENERATOR.split(s, n=400, use_disk_cache=False)[0] for s in ("train", "val", "test")]
    digests = [{hashlib.sha1(img.tobytes()).hexdigest() for img in imgs} for imgs in splits]
    assert len(set.union(*digests)) == sum(len(d) for d in digests)


def test_registered_without_flips() -> None:
    ds = make_dataset("pointers", "val")
    assert len(ds) == 5000 and ds.num_classes == 16 and ds.difficulty is not None
    assert augment_kwargs("pointers")["flip"] is False  # a flip would move the answer's cell


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])
