"""The built-in relations dataset: labels that are true of the scene, determinism, disjoint splits,
balance, a difficulty that follows the generator's factors, and a cache that repairs itself."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from vitskip_env import make_dataset
from vitskip_env.data import relations
from vitskip_env.data.augment import augment_kwargs, random_crop_flip
from vitskip_env.data.shapes import SHAPE_CLASSES

N = 96


@pytest.fixture(scope="module")
def scenes() -> dict[str, np.ndarray]:
    return relations.render_scenes(1080, seed=11)


def test_format_balance_and_class_names(scenes: dict[str, np.ndarray]) -> None:
    images, labels = scenes["images"], scenes["labels"]
    assert images.shape == (1080, 3, 32, 32) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert np.bincount(labels, minlength=36).tolist() == [30] * 36
    assert len(set(relations.RELATION_CLASSES)) == 36
    assert relations.class_name(0) == "nearest to red: green circle, right"
    assert relations.class_name(35) == "nearest to red: yellow star, left"
    with pytest.raises(ValueError, match=r"0\.\.35"):
        relations.decode(36)


def test_every_label_is_true_of_the_drawn_scene(scenes: dict[str, np.ndarray]) -> None:
    """Red first; the second key is nearer to it than the third; its kind, colour and side are the label's."""
    xy, kinds, colours, labels = scenes["key_xy"], scenes["key_kind"], scenes["key_colour"], scenes["labels"]
    kind, colour, left = (np.array(v) for v in zip(*map(relations.decode, labels.tolist()), strict=True))
    d_near, d_far = (np.linalg.norm(xy[:, k] - xy[:, 0], axis=1) for k in (1, 2))
    assert (d_near < d_far).all()
    assert (colours[:, 0] == 0).all() and (colours[:, 1] == colour).all()
    assert (
        len({tuple(row) for row in colours.tolist()}) > 1 and (np.sort(colours, 1)[:, 1:] != np.sort(colours, 1)[:, :-1]).all()
    )
    assert (kinds[:, 1] == np.asarray(relations.KEY_KINDS)[kind]).all()
    assert ((xy[:, 1, 0] < xy[:, 0, 0]) == left).all()
    # The keys are drawn where the scene says, in their colour (checked on the clean images).
    easy = np.flatnonzero(scenes["factors"][:, [3, 4]].max(1) < 0.2)  # little noise, little fading
    assert easy.size > 20
    for i in easy:
        for key in range(3):
            if SHAPE_CLASSES[kinds[i, key]] in ("ring", "plus", "star"):  # the centre pixel may be background
                continue
            x, y = np.clip(xy[i, key].round().astype(int), 0, 31)
            pixel = scenes["images"][i, :, y, x] / 255.0
            assert np.abs(pixel - relations.PALETTE[colours[i, key]].numpy()).max() < 0.25, (i, key)


def test_keys_never_cover_each_other(scenes: dict[str, np.ndarray]) -> None:
    xy, radius = scenes["key_xy"], scenes["key_radius"]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert (np.linalg.norm(xy[:, a] - xy[:, b], axis=1) >= 1.9 * radius.max(1) - 1e-4).all()
    lo, hi = radius.max(1)[:, None] + 1 - 1e-4, 31 - radius.max(1)[:, None] + 1e-4
    assert ((xy >= lo[:, :, None]) & (xy <= hi[:, :, None])).all()  # whole keys, inside the image


def test_difficulty_is_the_mean_of_the_factors_and_follows_them(scenes: dict[str, np.ndarray]) -> None:
    factors = scenes["factors"]
    _, _, difficulty = relations.render(1080, 11)
    assert np.allclose(difficulty, factors.mean(1), atol=1e-6)
    assert difficulty.min() >= 0 and difficulty.max() <= 1 and difficulty.std() > 0.15
    f = dict(zip(relations.FACTORS, factors.T, strict=True))
    xy = scenes["key_xy"]
    ratio = np.linalg.norm(xy[:, 2] - xy[:, 0], axis=1) / np.linalg.norm(xy[:, 1] - xy[:, 0], axis=1)
    assert np.allclose(f["margin"], np.clip((2.0 - ratio) / 0.85, 0, 1), atol=1e-5)  # the margin drawn, not asked
    assert f["margin"].std() > 0.2  # and it still spans easy and hard images
    assert _spearman(f["size"], scenes["key_radius"].mean(1)) < -0.8  # smaller keys
    assert _spearman(f["clutter"], scenes["distractors"]) > 0.8  # more distractors
    x = scenes["images"].astype(np.float32) / 255
    assert _spearman(f["noise"], np.abs(np.diff(x, axis=-1)).mean(axis=(1, 2, 3))) > 0.4  # noisier pixels


def test_splits_are_disjoint_and_seeded_apart_from_shapes() -> None:
    splits = {s: relations.GENERATOR.split(s, n=600, use_disk_cache=False)[0] for s in ("train", "val", "test")}
    digests = [{hashlib.sha1(img.tobytes()).hexdigest() for img in imgs} for imgs in splits.values()]
    assert len(set.union(*digests)) == sum(len(d) for d in digests)
    from vitskip_env.data import shapes

    assert not set(relations.SPLIT_SEEDS.values()) & set(shapes.SPLIT_SEEDS.values())


def test_registered_and_loaded_like_the_other_datasets(tmp_path: Path) -> None:
    ds = make_dataset("relations", "val", root=tmp_path)
    assert len(ds) == 5000 and ds.classes == list(relations.RELATION_CLASSES)
    assert ds.num_classes == 36 and ds.difficulty is not None and ds.difficulty.shape == (5000,)
    assert make_dataset("Relations", "val") is ds  # root is ignored: rendered, not read from a folder


def test_training_augmentation_keeps_the_label() -> None:
    """A horizontal flip would swap left and right of red: relations trains without one."""
    kwargs = augment_kwargs("relations")
    assert kwargs == {"pad": 2, "flip": False} and augment_kwargs("shapes")["flip"] is True
    images = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    images[..., 12:20, 2:8] = 255  # an object near the left edge
    out = random_crop_flip(images, generator=torch.Generator().manual_seed(0), **kwargs)
    assert (out[..., :, 16:].float().sum((1, 2, 3)) == 0).all()  # never moved to the right half


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])
