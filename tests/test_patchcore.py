"""The PatchCore baseline on a tiny synthetic texture set, as an example."""

import pytest
import torch

from ccad_tutorial.baselines import PatchCore, nearest_distances
from ccad_tutorial.features import FeatureExtractor


def textures(count: int, seed: int, size: int = 64) -> torch.Tensor:
    """(count, 3, size, size) grey noise textures around 0.5."""
    generator = torch.Generator().manual_seed(seed)
    grey = 0.5 + 0.1 * torch.randn(count, 1, size, size, generator=generator)
    return grey.expand(-1, 3, -1, -1).clamp(0, 1).contiguous()


def with_bright_blob(images: torch.Tensor, centre: tuple[int, int] = (40, 20)) -> torch.Tensor:
    """The same images with a bright disc of radius 6 px (the defect)."""
    yy, xx = torch.meshgrid(
        torch.arange(images.shape[-2]), torch.arange(images.shape[-1]), indexing="ij"
    )
    disc = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= 36
    return torch.where(disc, torch.ones_like(images), images)


@pytest.fixture(scope="module")
def fitted() -> PatchCore:
    return PatchCore(coreset_ratio=0.1).fit(textures(12, seed=0))


def test_defective_images_score_higher_than_normal_ones(fitted):
    normal = textures(4, seed=1)
    scores, maps = fitted.predict(torch.cat([normal, with_bright_blob(normal)]))
    assert scores.shape == (8,) and maps.shape == (8, 1, 64, 64)
    assert scores[4:].min() > scores[:4].max()


def test_anomaly_map_peaks_on_the_defect(fitted):
    _, maps = fitted.predict(with_bright_blob(textures(2, seed=2)))
    peaks = maps.flatten(1).argmax(dim=1)
    rows, cols = peaks // 64, peaks % 64
    assert ((rows - 40).abs() <= 8).all() and ((cols - 20).abs() <= 8).all()


def test_memory_bank_keeps_ten_percent_of_the_training_patches(fitted):
    assert fitted.bank.source_count == 12 * 8 * 8  # 64 px through layer2 (stride 8)
    assert len(fitted.bank) == round(0.1 * 12 * 8 * 8)


def test_nearest_distances_is_the_distance_to_the_closest_bank_row():
    bank = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    queries = torch.tensor([[1.0, 0.0], [7.0, 4.0], [10.0, 0.0]])
    torch.testing.assert_close(
        nearest_distances(queries, bank, chunk_size=2), torch.tensor([1.0, 5.0, 0.0])
    )


def test_predict_before_fit_is_explained():
    with pytest.raises(ValueError, match="before fit"):
        PatchCore().predict(textures(1, seed=0))


def test_patchcore_needs_patch_features():
    with pytest.raises(ValueError, match="pool='patch'"):
        PatchCore(FeatureExtractor("resnet18", pool="image"))


def test_run_patchcore_reports_the_book_metrics(minitex_root):
    from ccad_tutorial.baselines import run_patchcore

    result = run_patchcore(minitex_root, "brick", image_size=64)  # conftest: 16 train, 14 test
    assert {"image_auroc", "pixel_auroc", "aupro", "f1_max"} <= set(result)
    assert result["backbone"] == "resnet18" and result["n_train"] == 16 and result["n_test"] == 14
    assert 0.0 <= result["pixel_auroc"] <= 1.0
