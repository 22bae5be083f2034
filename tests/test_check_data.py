"""check_dataset and the errors a student meets with real data folders (and the download path)."""

from __future__ import annotations

import io
import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ccad_tutorial import download
from ccad_tutorial.checks import check_dataset
from ccad_tutorial.datasets import DataError, list_categories, load_dataset, read_image

SIZE = 16


def write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_mvtec(root: Path, categories=("bottle", "screw")) -> Path:
    """Two categories: 3 train images, 1 good + 2 'crack' test images with masks."""
    image = np.full((SIZE, SIZE, 3), 120, np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[2:6, 2:6] = 255
    for cat in categories:
        for i in range(3):
            write(root / cat / "train" / "good" / f"{i:03d}.png", image)
        write(root / cat / "test" / "good" / "000.png", image)
        for i in range(2):
            write(root / cat / "test" / "crack" / f"{i:03d}.png", image)
            write(root / cat / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask)
    return root


# ---------------------------------------------------------------- a good folder


def test_check_dataset_counts_every_category(tmp_path):
    report = check_dataset(make_mvtec(tmp_path), "mvtec")
    assert [c.name for c in report.categories] == ["bottle", "screw"]
    bottle = report.categories[0]
    assert (bottle.train_good, bottle.test_good, bottle.test_defect, bottle.masks) == (3, 1, 2, 2)
    assert bottle.test == {"crack": 2, "good": 1} and bottle.image_sizes == [(SIZE, SIZE)]
    assert report.totals() == {"train_good": 6, "test_good": 2, "test_defect": 4, "masks": 4}


def test_report_format_is_an_aligned_table(tmp_path):
    text = check_dataset(make_mvtec(tmp_path), "mvtec").format()
    lines = text.splitlines()
    assert "2 categories" in lines[0] and str(tmp_path) in lines[0]
    assert lines[1].split()[:3] == ["category", "train", "good"]
    assert lines[2].split() == ["bottle", "3", "1", "2", "2", "16x16", "crack", "2"]
    assert lines[-1].split() == ["total", "6", "2", "4", "4"]
    assert len({line.index("16x16") for line in lines[2:4]}) == 1  # columns line up


def test_report_to_dict_is_json_ready(tmp_path):
    report = check_dataset(make_mvtec(tmp_path), "mvtec").to_dict()
    again = json.loads(json.dumps(report))
    assert again["layout"] == "mvtec" and again["totals"]["train_good"] == 6
    assert again["categories"]["screw"]["test"] == {"crack": 2, "good": 1}


# ---------------------------------------------------------------- wrong folders


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DataError, match="does not exist") as err:
        check_dataset(tmp_path / "nowhere", "mvtec")
    assert str(tmp_path / "nowhere") in str(err.value)


def test_root_one_level_too_high_names_the_folder_to_use(tmp_path):
    make_mvtec(tmp_path / "mvtec_anomaly_detection")
    with pytest.raises(DataError, match="one level too high") as err:
        check_dataset(tmp_path, "mvtec")
    assert f"point --data at {tmp_path / 'mvtec_anomaly_detection'}" in str(err.value)


def test_root_one_level_too_low_names_the_parent(tmp_path):
    make_mvtec(tmp_path)
    with pytest.raises(DataError, match="one level too low") as err:
        list_categories(tmp_path / "bottle", "mvtec")
    assert f"point --data at its parent {tmp_path}" in str(err.value)


def test_folder_of_another_layout_lists_what_it_holds(tmp_path):
    (tmp_path / "holiday_photos").mkdir()
    with pytest.raises(DataError, match="does not look like the visa layout") as err:
        check_dataset(tmp_path, "visa")
    assert "holiday_photos" in str(err.value) and "Data/Images" in str(err.value)


def test_empty_train_good_is_named(tmp_path):
    root = make_mvtec(tmp_path)
    for image in (root / "screw" / "train" / "good").iterdir():
        image.unlink()
    with pytest.raises(DataError, match="holds no images") as err:
        check_dataset(root, "mvtec")
    assert str(root / "screw" / "train" / "good") in str(err.value)


def test_missing_mask_names_the_expected_file(tmp_path):
    root = make_mvtec(tmp_path)
    (root / "bottle" / "ground_truth" / "crack" / "001_mask.png").unlink()
    expected = root / "bottle" / "ground_truth" / "crack" / "001_mask.png"
    for action in (
        lambda: check_dataset(root),
        lambda: load_dataset(root, "mvtec", "bottle", "test"),
    ):
        with pytest.raises(DataError, match="has no mask") as err:
            action()
        assert str(expected) in str(err.value)


# ---------------------------------------------------------------- broken files


def test_truncated_png_is_named(tmp_path):
    root = make_mvtec(tmp_path)
    broken = root / "bottle" / "test" / "crack" / "000.png"
    noisy = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    write(broken, noisy)
    broken.write_bytes(broken.read_bytes()[:-60])  # header intact, pixel data cut
    with pytest.raises(DataError, match="Cannot read the image") as err:
        check_dataset(root)
    assert str(broken) in str(err.value)
    test = load_dataset(root, "mvtec", "bottle", "test", image_size=SIZE)
    with pytest.raises(DataError, match="truncated"):
        test[0]


def test_truncated_jpeg_is_caught_by_the_check(tmp_path):
    root = make_mvtec(tmp_path)
    broken = root / "bottle" / "train" / "good" / "009.jpg"
    noisy = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    broken.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noisy).save(broken, quality=95)
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    with pytest.raises(DataError, match=str(broken)):
        check_dataset(root)


def test_file_that_is_not_an_image_is_named(tmp_path):
    root = make_mvtec(tmp_path)
    fake = root / "screw" / "train" / "good" / "003.png"
    fake.write_text("this is not a PNG")
    with pytest.raises(DataError, match="Cannot read") as err:
        check_dataset(root)
    assert str(fake) in str(err.value)


def test_mask_of_another_size_names_both_files(tmp_path):
    root = make_mvtec(tmp_path)
    mask = write(
        root / "bottle" / "ground_truth" / "crack" / "000_mask.png", np.zeros((8, 12), np.uint8)
    )
    image = root / "bottle" / "test" / "crack" / "000.png"
    for action in (
        lambda: check_dataset(root),
        lambda: load_dataset(root, "mvtec", "bottle", "test")[0],
    ):
        with pytest.raises(DataError, match="a mask must have the size of its image") as err:
            action()
        message = str(err.value)
        assert str(mask) in message and str(image) in message
        assert "12x8" in message and "16x16" in message


# ---------------------------------------------------------------- unusual but valid pixels


def test_rgba_png_keeps_its_colour_and_drops_alpha(tmp_path):
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = 64  # mostly transparent: the colour is still what we want
    image = read_image(write(tmp_path / "rgba.png", rgba))
    assert image.shape == (3, SIZE, SIZE)
    expected = torch.tensor([200, 100, 50]) / 255
    assert torch.allclose(image[:, 0, 0], expected)


def test_16_bit_png_is_scaled_to_unit_range(tmp_path):
    ramp = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    image = read_image(path)
    assert image.shape == (3, 4, 4)
    assert torch.allclose(image[0, 0], torch.tensor([0, 1000, 32768, 65535]) / 65535)
    assert torch.equal(image[0], image[2])


def test_16_bit_images_load_through_the_dataset(tmp_path):
    root = make_mvtec(tmp_path, categories=("plate",))
    Image.fromarray(np.full((SIZE, SIZE), 65535, np.uint16)).save(
        root / "plate" / "train" / "good" / "000.png"
    )
    sample = load_dataset(root, "mvtec", "plate", "train", image_size=8)[0]
    assert torch.allclose(sample.image, torch.ones(3, 8, 8))


# ---------------------------------------------------------------- download (never really downloads)


def test_download_failure_prints_manual_instructions(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as err:
        download.download_mvtec_ad(tmp_path / "mvtec")
    message = str(err.value)
    assert "no network" in message and download.MVTEC_AD.page in message
    assert "CC BY-NC-SA 4.0" in message and f"--data {tmp_path / 'mvtec'}" in message
    assert "DATA_ROOT" in message


def test_download_with_wrong_checksum_is_refused(tmp_path, monkeypatch):
    class FakeResponse(io.BytesIO):
        headers = {"Content-Length": "5"}

    monkeypatch.setattr(download.urllib.request, "urlopen", lambda *a, **k: FakeResponse(b"hello"))
    with pytest.raises(DataError, match="SHA-256") as err:
        download.download_mvtec_ad(tmp_path)
    assert download.MVTEC_AD.sha256 in str(err.value) and "by hand" in str(err.value)


def test_download_skips_a_complete_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(download.urllib.request, "urlopen", pytest.fail)
    root = make_mvtec(tmp_path / "mvtec_anomaly_detection", categories=download.MVTEC_CATEGORIES)
    assert download.download_mvtec_ad(tmp_path) == root
