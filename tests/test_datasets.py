"""Loading every supported layout from tiny fake trees (16x16 / 32x32 PNGs, never a download)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ccad_tutorial.datasets import (
    ADDataset,
    Batch,
    DataError,
    Sample,
    collate_samples,
    ellipse_mask,
    list_categories,
    load_dataset,
    load_split,
)
from ccad_tutorial.layouts import Ellipse

SIZE = 16


def write(path: Path, array: np.ndarray, **save_kwargs) -> Path:
    """Write an uint8 (H, W) or (H, W, C) array as an image file, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save_kwargs)
    return path


def rgb(value: int, size: int = SIZE) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=np.uint8)


def square_mask(size: int = SIZE, top: int = 4, left: int = 4, side: int = 6, on: int = 255):
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top : top + side, left : left + side] = on
    return mask


def make_mvtec(root: Path, categories=("bottle", "wood"), defects=("crack", "hole")) -> Path:
    """<root>/<cat>/{train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}."""
    for cat in categories:
        for i in range(3):
            write(root / cat / "train" / "good" / f"{i:03d}.png", rgb(10 * i))
        write(root / cat / "test" / "good" / "000.png", rgb(50))
        for defect in defects:
            for i in range(2):
                write(root / cat / "test" / defect / f"{i:03d}.png", rgb(200))
                write(root / cat / "ground_truth" / defect / f"{i:03d}_mask.png", square_mask())
    return root


# ---------------------------------------------------------------- mvtec / minitex


def test_mvtec_counts_labels_and_defect_types(tmp_path):
    root = make_mvtec(tmp_path)
    train = load_dataset(root, "mvtec", "bottle", "train", image_size=SIZE)
    test = load_dataset(root, "mvtec", "bottle", "test", image_size=SIZE)
    assert len(train) == 3 and set(train.labels) == {0}
    assert len(test) == 5 and test.labels.count(1) == 4
    assert [r.defect_type for r in test.records] == ["crack", "crack", "good", "hole", "hole"]
    assert isinstance(train[0], Sample) and train[0].category == "bottle"


def test_mvtec_mask_matches_the_written_square(tmp_path):
    root = make_mvtec(tmp_path)
    test = load_dataset(root, "mvtec", "bottle", "test", image_size=SIZE)
    defect = test[0]
    assert defect.label == 1 and defect.mask.shape == (1, SIZE, SIZE)
    assert torch.equal(defect.mask[0], torch.from_numpy(square_mask() > 0).float())
    good = test[2]
    assert good.defect_type == "good" and good.mask.sum() == 0


def test_all_categories_when_category_is_none(tmp_path):
    root = make_mvtec(tmp_path)
    train = load_dataset(root, "mvtec", None, "train", image_size=SIZE)
    assert len(train) == 6 and train.categories == ["bottle", "wood"]


def test_minitex_is_read_as_the_mvtec_layout(tmp_path):
    root = make_mvtec(tmp_path, categories=("brick",))
    batch = load_split(root, "minitex", "brick", "test", image_size=SIZE)
    assert batch.labels.tolist() == [1, 1, 0, 1, 1]


def test_file_order_is_sorted_and_natural(tmp_path):
    for name in ("10.png", "2.png", "1.png"):
        write(tmp_path / "cat" / "train" / "good" / name, rgb(0))
    write(tmp_path / "cat" / "test" / "good" / "0.png", rgb(0))
    train = load_dataset(tmp_path, "mvtec", "cat", "train", image_size=SIZE)
    assert [Path(r.image).name for r in train.records] == ["1.png", "2.png", "10.png"]


def test_image_extensions_are_case_insensitive(tmp_path):
    for name in ("a.PNG", "b.jpg", "c.JPEG", "d.bmp", "e.tif", "notes.txt"):
        path = tmp_path / "cat" / "train" / "good" / name
        if name.endswith(".txt"):
            path.write_text("not an image")
        else:
            write(path, rgb(100))
    write(tmp_path / "cat" / "test" / "good" / "0.png", rgb(0))
    train = load_dataset(tmp_path, "mvtec", "cat", "train", image_size=SIZE)
    assert len(train) == 5


# ---------------------------------------------------------------- pixels


def test_grayscale_image_becomes_three_equal_channels(tmp_path):
    write(tmp_path / "cat" / "train" / "good" / "0.png", np.full((SIZE, SIZE), 128, np.uint8))
    write(tmp_path / "cat" / "test" / "good" / "0.png", rgb(0))
    image = load_dataset(tmp_path, "mvtec", "cat", "train", image_size=SIZE)[0].image
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
    assert torch.allclose(image, torch.full_like(image, 128 / 255))


def test_image_size_resizes_image_and_keeps_mask_binary(tmp_path):
    root = make_mvtec(tmp_path, categories=("cat",))
    sample = load_dataset(root, "mvtec", "cat", "test", image_size=40)[0]
    assert sample.image.shape == (3, 40, 40) and sample.mask.shape == (1, 40, 40)
    assert set(sample.mask.unique().tolist()) == {0.0, 1.0}
    # the 6x6 square at (4, 4) of a 16x16 mask covers 15x15 pixels at 40x40 (nearest neighbour)
    assert sample.mask.sum().item() == 15 * 15
    assert 0.0 <= sample.image.min() and sample.image.max() <= 1.0


def test_bilinear_resize_averages_fine_stripes(tmp_path):
    stripes = np.zeros((32, 32, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: antialiased downsampling gives grey
    write(tmp_path / "cat" / "train" / "good" / "0.png", stripes)
    write(tmp_path / "cat" / "test" / "good" / "0.png", rgb(0))
    image = load_dataset(tmp_path, "mvtec", "cat", "train", image_size=8)[0].image
    assert torch.allclose(image, torch.full_like(image, 0.5), atol=0.05)


def test_collate_and_load_split_shapes(tmp_path):
    root = make_mvtec(tmp_path)
    dataset = load_dataset(root, "mvtec", "bottle", "test", image_size=SIZE)
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate_samples)))
    assert isinstance(batch, Batch) and len(batch) == 4
    assert batch.images.shape == (4, 3, SIZE, SIZE) and batch.masks.shape == (4, 1, SIZE, SIZE)
    assert batch.labels.dtype == torch.long and batch.labels.shape == (4,)
    whole = load_split(root, "mvtec", None, "test", image_size=8)
    assert whole.images.shape == (10, 3, 8, 8) and whole.categories.count("wood") == 5
    assert whole.defect_types[:3] == ["crack", "crack", "good"]


def test_collate_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        collate_samples([])


def test_list_categories_in_natural_order(tmp_path):
    root = make_mvtec(tmp_path, categories=("zipper", "Class10", "Class2", "bottle"))
    (tmp_path / "notes").mkdir()
    assert list_categories(root) == ["bottle", "Class2", "Class10", "zipper"]


def test_unknown_layout_split_and_category_are_explained(tmp_path):
    root = make_mvtec(tmp_path)
    with pytest.raises(ValueError, match="Unknown layout 'kitti'"):
        load_dataset(root, "kitti", "bottle")
    with pytest.raises(ValueError, match="choose 'train' or 'test'"):
        load_dataset(root, "mvtec", "bottle", "val")
    with pytest.raises(DataError, match="categories there are: bottle, wood"):
        load_dataset(root, "mvtec", "cable")
    with pytest.raises(ValueError, match="positive int"):
        ADDataset([], image_size=0)


# ---------------------------------------------------------------- visa


def make_visa(root: Path, mask_on: int = 1) -> Path:
    """VisA: Data/Images/{Normal,Anomaly}/*.JPG, Data/Masks/Anomaly/*.png, split_csv/1cls.csv."""
    rows = ["object,split,label,image,mask"]
    for cat in ("candle", "pcb1"):
        base = root / cat / "Data"
        for i in range(4):
            write(base / "Images" / "Normal" / f"{i:04d}.JPG", rgb(100))
            split = "train" if i < 3 else "test"
            rows.append(f"{cat},{split},normal,{cat}/Data/Images/Normal/{i:04d}.JPG,")
        for i in range(2):
            write(base / "Images" / "Anomaly" / f"{i:03d}.JPG", rgb(200))
            write(base / "Masks" / "Anomaly" / f"{i:03d}.png", square_mask(on=mask_on))
            mask = f"{cat}/Data/Masks/Anomaly/{i:03d}.png"
            rows.append(f"{cat},test,anomaly,{cat}/Data/Images/Anomaly/{i:03d}.JPG,{mask}")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_split_comes_from_the_csv_and_0_1_masks_count(tmp_path):
    root = make_visa(tmp_path, mask_on=1)
    assert list_categories(root, "visa") == ["candle", "pcb1"]
    train = load_dataset(root, "visa", "candle", "train", image_size=SIZE)
    test = load_dataset(root, "visa", "candle", "test", image_size=SIZE)
    assert len(train) == 3 and len(test) == 3 and test.labels.count(1) == 2
    anomaly = next(test[i] for i in range(len(test)) if test[i].label == 1)
    assert anomaly.defect_type == "anomaly" and anomaly.mask.sum().item() == 36


def test_visa_accepts_an_explicit_split_csv(tmp_path):
    root = make_visa(tmp_path / "visa")
    moved = tmp_path / "elsewhere.csv"
    (root / "split_csv" / "1cls.csv").rename(moved)
    assert len(load_dataset(root, "visa", "pcb1", "train", split_csv=moved)) == 3


def test_visa_missing_csv_says_where_it_is_expected(tmp_path):
    root = make_visa(tmp_path)
    (root / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(DataError) as err:
        load_dataset(root, "visa", "candle", "train")
    message = str(err.value)
    assert str(root / "split_csv" / "1cls.csv") in message and "VisA repository" in message


# ---------------------------------------------------------------- loco


def test_loco_mask_is_the_union_of_all_masks(tmp_path):
    cat = tmp_path / "breakfast_box"
    write(cat / "train" / "good" / "000.png", rgb(0))
    write(cat / "test" / "good" / "000.png", rgb(0))
    for kind in ("logical_anomalies", "structural_anomalies"):
        write(cat / "test" / kind / "000.png", rgb(0))
        write(cat / "ground_truth" / kind / "000" / "000.png", square_mask(top=0, left=0, side=4))
        write(cat / "ground_truth" / kind / "000" / "001.png", square_mask(top=8, left=8, side=4))
    test = load_dataset(tmp_path, "loco", "breakfast_box", "test", image_size=SIZE)
    assert [r.defect_type for r in test.records] == [
        "good",
        "logical_anomalies",
        "structural_anomalies",
    ]
    mask = test[1].mask[0]
    assert mask.sum().item() == 32 and mask[0, 0] == 1 and mask[9, 9] == 1 and mask[5, 5] == 0


# ---------------------------------------------------------------- mvtec3d


def test_mvtec3d_reads_rgb_and_gt_and_ignores_xyz(tmp_path):
    cat = tmp_path / "bagel"
    write(cat / "train" / "good" / "rgb" / "000.png", rgb(10))
    (cat / "train" / "good" / "xyz").mkdir(parents=True)
    (cat / "train" / "good" / "xyz" / "000.tiff").write_bytes(b"point cloud, never read")
    write(cat / "test" / "good" / "rgb" / "000.png", rgb(10))
    write(cat / "test" / "crack" / "rgb" / "000.png", rgb(90))
    write(cat / "test" / "crack" / "gt" / "000.png", square_mask())
    train = load_dataset(tmp_path, "mvtec3d", "bagel", "train", image_size=SIZE)
    test = load_dataset(tmp_path, "mvtec3d", "bagel", "test", image_size=SIZE)
    assert len(train) == 1 and test.labels == [1, 0]
    assert test[0].defect_type == "crack" and test[0].mask.sum().item() == 36


# ---------------------------------------------------------------- mtd


def test_mtd_is_one_category_called_magnetic_tile(tmp_path):
    for i in range(2):
        write(tmp_path / "Train" / "good" / f"exp{i}.png", np.zeros((SIZE, SIZE), np.uint8))
    write(tmp_path / "Test" / "good" / "exp9.png", np.zeros((SIZE, SIZE), np.uint8))
    write(tmp_path / "Test" / "anomal" / "blowhole1.png", np.zeros((SIZE, SIZE), np.uint8))
    write(tmp_path / "Ground_Truth" / "anomal" / "blowhole1.png", square_mask())
    assert list_categories(tmp_path, "mtd") == ["magnetic_tile"]
    test = load_split(tmp_path, "mtd", None, "test", image_size=SIZE)
    assert test.labels.tolist() == [1, 0] and test.categories == ["magnetic_tile"] * 2
    assert test.images.shape == (2, 3, SIZE, SIZE) and test.masks[0].sum() == 36


# ---------------------------------------------------------------- dagm


def test_dagm_reorganised_jpeg_masks_are_thresholded_at_128(tmp_path):
    cls = tmp_path / "Class1_defect"
    write(cls / "train" / "good" / "0001.png", np.zeros((32, 32), np.uint8))
    write(cls / "test" / "good" / "0002.png", np.zeros((32, 32), np.uint8))
    write(cls / "test" / "anomal" / "0003.png", np.zeros((32, 32), np.uint8))
    mask = np.zeros((32, 32), np.uint8)
    mask[16:, :16] = 100  # below 128: JPEG-grey, not defect
    mask[16:, 16:] = 200  # defect
    write(cls / "ground_truth" / "anomal" / "0003.jpg", mask, quality=90)
    test = load_dataset(tmp_path, "dagm", "Class1_defect", "test", image_size=32)
    assert test.labels == [1, 0]
    loaded = test[0].mask[0]
    assert loaded[:16].sum() == 0 and loaded[20:28, 4:12].sum() == 0  # ~100 stays normal
    assert loaded[20:28, 20:28].min() == 1  # ~200 is defect
    assert 14 * 14 <= loaded.sum() <= 18 * 18


def make_dagm_original(root: Path) -> Path:
    """Class1/{Train,Test}/NNNN.PNG with Label/Labels.txt ellipse rows."""
    for folder, defective in (("Train", {2}), ("Test", {1, 3})):
        base = root / "Class1" / folder
        lines = ["header line: index flag filename a b rotation x y"]
        for i in range(1, 5):
            write(base / f"{i:04d}.PNG", np.full((32, 32), 60, np.uint8))
            if i in defective:
                lines.append(f"{i}\t1\t{i:04d}.PNG\t8.0\t3.0\t0.0\t20.0\t10.0")
            else:
                lines.append(f"{i}\t0\t{i:04d}.PNG\t0")
        (base / "Label").mkdir()
        (base / "Label" / "Labels.txt").write_text("\n".join(lines) + "\n")
    return root


def test_dagm_original_train_leaves_out_defective_images(tmp_path):
    root = make_dagm_original(tmp_path)
    assert list_categories(root, "dagm") == ["Class1"]
    train = load_dataset(root, "dagm", "Class1", "train", image_size=32)
    assert [Path(r.image).name for r in train.records] == ["0001.PNG", "0003.PNG", "0004.PNG"]
    test = load_dataset(root, "dagm", "Class1", "test", image_size=32)
    assert test.labels == [1, 0, 1, 0] and test.records[0].defect_type == "anomal"


def test_dagm_original_ellipse_mask_lies_around_its_centre(tmp_path):
    root = make_dagm_original(tmp_path)
    mask = load_dataset(root, "dagm", "Class1", "test", image_size=32)[0].mask[0]
    rows, cols = torch.nonzero(mask, as_tuple=True)
    assert mask[10, 20] == 1  # centre (x=20, y=10)
    assert cols.min() >= 12 and cols.max() <= 28  # semi-major 8 along x
    assert rows.min() >= 7 and rows.max() <= 13  # semi-minor 3 along y
    assert abs(mask.sum().item() - math.pi * 8 * 3) < 15


def test_ellipse_rotation_is_counter_clockwise_on_screen():
    up_right = Ellipse(semi_major=12, semi_minor=2, rotation=math.pi / 4, x=20, y=20)
    mask = ellipse_mask((41, 41), up_right)
    assert mask[12, 28] and mask[28, 12]  # top-right and bottom-left of the centre
    assert not mask[12, 12] and not mask[28, 28]
    vertical = ellipse_mask((41, 41), Ellipse(12, 2, math.pi / 2, 20, 20))
    assert vertical[:, 20].sum() > 20 and vertical[20, :].sum() < 6
