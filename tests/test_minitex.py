"""MiniTex-AD: layout, exact masks, determinism, disjoint train/test crops and caching."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from ccad_tutorial import minitex
from ccad_tutorial.defects import DEFECT_AREA, DEFECT_TYPES, MIN_CHANGE, apply_defect
from ccad_tutorial.minitex import default_cache_dir, ensure_minitex, make_minitex
from ccad_tutorial.normal_images import (
    CATEGORIES,
    CROP_WINDOW,
    REGIONS,
    TEXTURE_CATEGORIES,
    render_normal,
)

SMALL = {"size": 64, "n_train": 2, "n_test_good": 2, "n_test_defect_per_type": 2}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return make_minitex(tmp_path_factory.mktemp("minitex"), seed=0, **SMALL)


def digests(root):
    """{relative path: sha256} of every file under root."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def boxes_overlap(a, b):
    """Two (top, left, bottom, right) boxes share at least one pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_layout_follows_mvtec_ad_with_the_requested_counts(small_set):
    for cat in CATEGORIES:
        assert sorted(p.name for p in (small_set / cat / "train" / "good").iterdir()) == [
            "000.png",
            "001.png",
        ]
        assert len(list((small_set / cat / "test" / "good").glob("*.png"))) == 2
        for kind in DEFECT_TYPES:
            images = sorted((small_set / cat / "test" / kind).glob("*.png"))
            masks = sorted((small_set / cat / "ground_truth" / kind).glob("*.png"))
            assert [f"{p.stem}_mask.png" for p in images] == [m.name for m in masks]
            assert len(images) == 2
    manifest = json.loads((small_set / "minitex.json").read_text())
    assert (manifest["size"], manifest["seed"], manifest["categories"]) == (64, 0, list(CATEGORIES))


def test_images_are_rgb_and_masks_are_single_channel_0_or_255(small_set):
    for path in small_set.rglob("*.png"):
        with Image.open(path) as im:
            assert im.size == (64, 64)
            if path.name.endswith("_mask.png"):
                assert im.mode == "L"
                values = np.unique(np.asarray(im))
                assert set(values) <= {0, 255} and 255 in values, path
            else:
                assert im.mode == "RGB", path


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_defect_mask_is_exactly_the_set_of_changed_pixels(category, kind):
    rng = np.random.default_rng(7)
    normal = render_normal(category, "test", 64, rng)
    clean = normal.image.copy()
    image, mask = apply_defect(normal.image, kind, rng, normal.region, category)
    np.testing.assert_array_equal(normal.image, clean)  # the input is not modified
    assert mask.dtype == bool and image.dtype == np.uint8 and image.shape == clean.shape
    change = np.abs(image.astype(int) - clean).max(axis=-1)
    np.testing.assert_array_equal(change > 0, mask)  # outside unchanged, inside changed
    assert change[mask].min() >= MIN_CHANGE
    assert DEFECT_AREA[0] <= mask.mean() <= DEFECT_AREA[1]
    assert not (mask & ~normal.region).any()  # on the nut, defects stay on the metal


@pytest.mark.parametrize("size", [128, 256])
def test_defects_are_exact_and_sized_at_larger_image_sizes(size):
    rng = np.random.default_rng(size)
    for category in ("brick", "hexnut"):
        normal = render_normal(category, "test", size, rng)
        for kind in DEFECT_TYPES:
            image, mask = apply_defect(normal.image, kind, rng, normal.region, category)
            np.testing.assert_array_equal(np.any(image != normal.image, axis=-1), mask)
            assert DEFECT_AREA[0] <= mask.mean() <= DEFECT_AREA[1]


def test_hexnut_defect_region_is_the_metal_not_the_whole_image():
    normal = render_normal("hexnut", "test", 64, np.random.default_rng(0))
    assert 0.1 < normal.region.mean() < 0.4
    assert not normal.region[0].any() and not normal.region[:, 0].any()  # the tray is off-limits


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    args = {**SMALL, "categories": ("gravel", "hexnut")}
    first = digests(make_minitex(tmp_path / "a", seed=5, **args))
    again = digests(make_minitex(tmp_path / "b", seed=5, **args))
    other = digests(make_minitex(tmp_path / "c", seed=6, **args))
    assert first == again
    images = [k for k in first if k.endswith(".png") and "ground_truth" not in k]
    assert all(first[k] != other[k] for k in images)


def test_a_category_does_not_depend_on_which_others_are_generated(small_set, tmp_path):
    alone = digests(make_minitex(tmp_path, seed=0, categories="grass", **SMALL))
    together = digests(small_set)
    grass = [k for k in alone if k.startswith("grass/")]
    assert grass and all(alone[k] == together[k] for k in grass)


def test_train_and_test_crops_come_from_disjoint_photo_regions(tmp_path):
    counts = {"n_train": 40, "n_test_good": 20, "n_test_defect_per_type": 5}
    root = make_minitex(tmp_path, size=64, categories=TEXTURE_CATEGORIES, **counts)
    sources = json.loads((root / "minitex.json").read_text())["sources"]
    for cat in TEXTURE_CATEGORIES:
        train = [s["box"] for k, s in sources.items() if k.startswith(f"{cat}/train/")]
        test = [s["box"] for k, s in sources.items() if k.startswith(f"{cat}/test/")]
        assert len(train) == 40 and len(test) == 20 + 4 * 5
        for box in train + test:
            assert box[2] - box[0] == box[3] - box[1] == CROP_WINDOW
            assert 0 <= min(box) and max(box) <= 512
        assert not any(boxes_overlap(a, b) for a in train for b in test)
    assert not any(boxes_overlap(a, b) for a in REGIONS["train"] for b in REGIONS["test"])


@pytest.mark.parametrize("category", ["gravel", "hexnut"])
def test_an_image_looks_the_same_at_every_size(category):
    small = render_normal(category, "train", 64, np.random.default_rng(3)).image
    large = render_normal(category, "train", 256, np.random.default_rng(3)).image
    shrunk = np.asarray(Image.fromarray(large).resize((64, 64), Image.Resampling.LANCZOS))
    assert np.abs(shrunk.astype(float) - small).mean() < 8  # same crop / pose, another size


def test_make_minitex_replaces_a_category_written_before(tmp_path):
    make_minitex(tmp_path, categories=["brick"], **{**SMALL, "n_train": 3})
    make_minitex(tmp_path, categories=["brick"], **SMALL)
    assert len(list((tmp_path / "brick" / "train" / "good").glob("*.png"))) == 2


def set_old_mtimes(root):
    for p in root.rglob("*"):
        os.utime(p, ns=(0, 0))


def test_ensure_minitex_generates_once_then_reuses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(minitex, "DEFAULT_COUNTS", {k: 1 for k in minitex.DEFAULT_COUNTS})
    monkeypatch.setenv("CCAD_CACHE", str(tmp_path))
    root = ensure_minitex(size=64, seed=1)
    assert root == tmp_path / "minitex-ad_s64_seed1"
    assert (root / "hexnut" / "ground_truth" / "cutpaste" / "000_mask.png").is_file()
    set_old_mtimes(root)
    assert ensure_minitex(size=64, seed=1) == root
    assert all(p.stat().st_mtime_ns == 0 for p in root.rglob("*"))  # nothing was rewritten


def test_ensure_minitex_regenerates_an_interrupted_or_outdated_generation(tmp_path, monkeypatch):
    monkeypatch.setattr(minitex, "DEFAULT_COUNTS", {k: 1 for k in minitex.DEFAULT_COUNTS})
    root = ensure_minitex(tmp_path / "mt", size=64)
    image = root / "brick" / "train" / "good" / "000.png"
    expected = image.read_bytes()
    (root / "minitex.json").unlink()  # what an interrupted run leaves behind
    image.write_bytes(b"half a png")
    ensure_minitex(root, size=64)
    assert (root / "minitex.json").is_file() and image.read_bytes() == expected
    manifest = json.loads((root / "minitex.json").read_text())
    manifest["generator_version"] = -1  # written by another version of the generator
    (root / "minitex.json").write_text(json.dumps(manifest))
    set_old_mtimes(root)
    ensure_minitex(root, size=64)
    assert image.stat().st_mtime_ns != 0


def test_default_cache_dir_honours_ccad_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CCAD_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("CCAD_CACHE")
    assert default_cache_dir() == default_cache_dir().home() / ".cache" / "ccad_tutorial"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": 32}, "multiple of 8 between 64 and 256"),
        ({"size": 100}, "multiple of 8 between 64 and 256"),
        ({"size": 264}, "multiple of 8 between 64 and 256"),
        ({"categories": ["carpet"]}, "valid categories are brick, grass, gravel, hexnut"),
        ({"n_train": 0}, "n_train must be an integer >= 1"),
        ({"n_test_defect_per_type": -2}, "n_test_defect_per_type must be"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_bad_arguments_raise_a_value_error_that_names_the_valid_values(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_minitex(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()  # validated before anything is written


def test_unknown_defect_type_lists_the_valid_ones():
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="scratch, hole, stain, cutpaste"):
        apply_defect(image, "crack", np.random.default_rng(0))
