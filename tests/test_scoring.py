"""Tests of the anomaly maps (ccad_tutorial/scoring.py)."""

import pytest
import torch

from ccad_tutorial.scoring import AnomalyScorer, gaussian_smooth, smoothing_sigma


def _images(n: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth striped 'textures' in [0, 1], (n, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    freq = 0.3 + 0.2 * torch.rand(n, 3, 1, 1, generator=g)
    phase = 6.28 * torch.rand(n, 3, 1, 1, generator=g)
    return 0.5 + 0.4 * torch.sin(freq * (xs + 0.5 * ys) + phase)


def _with_square(images: torch.Tensor, y: int, x: int, half: int = 4) -> torch.Tensor:
    """A copy of images with a flat dark square centred at (y, x): a local 'defect'."""
    out = images.clone()
    out[:, :, y - half : y + half, x - half : x + half] = 0.05
    return out


@pytest.fixture(scope="module")
def feature_scorer() -> AnomalyScorer:
    torch.manual_seed(0)
    return AnomalyScorer(backbone="resnet18").calibrate(_images(8, seed=1))


def test_identical_images_give_a_zero_l1_map():
    images = _images()
    maps = AnomalyScorer(mode="l1")(images, images)
    assert maps.shape == (4, 1, 64, 64)
    assert maps.abs().max() == 0


def test_identical_images_give_a_zero_feature_map(feature_scorer):
    images = _images()
    with torch.no_grad():
        maps = feature_scorer(images, images)
    assert maps.shape == (4, 1, 64, 64)
    assert maps.abs().max() < 1e-4


@pytest.mark.parametrize("mode", ["l1", "feature"])
def test_local_change_peaks_at_its_location(mode, feature_scorer):
    scorer = feature_scorer if mode == "feature" else AnomalyScorer(mode="l1")
    images = _images(2)
    with torch.no_grad():
        maps = scorer(_with_square(images, y=44, x=18), images)
    for m in maps[:, 0]:
        y, x = divmod(int(m.argmax()), m.shape[-1])
        assert abs(y - 44) <= 6 and abs(x - 18) <= 6


def test_maps_keep_a_non_square_image_size(feature_scorer):
    images = _images(2, size=64)[..., :48]
    with torch.no_grad():
        assert feature_scorer(images, images.flip(-1)).shape == (2, 1, 64, 48)


def test_default_scorer_compares_three_resnet50_levels():
    scorer = AnomalyScorer()
    assert scorer.extractor.backbone.feature_info.channels() == [256, 512, 1024]


def test_smoothing_sigma_scales_with_image_size():
    assert smoothing_sigma(256) == 4.0
    assert smoothing_sigma(128) == 2.0
    assert smoothing_sigma(512, sigma_at_256=2.0) == 4.0


def test_blur_of_a_point_widens_with_sigma():
    def spread(size: int) -> float:
        delta = torch.zeros(1, 1, size, size)
        delta[..., size // 2, size // 2] = 1.0
        row = gaussian_smooth(delta, smoothing_sigma(size))[0, 0, size // 2]
        xs = torch.arange(size, dtype=torch.float32)
        mean = (row * xs).sum() / row.sum()
        return float(((row * (xs - mean) ** 2).sum() / row.sum()).sqrt())

    assert spread(64) == pytest.approx(1.0, rel=0.05)  # sigma 4 * 64 / 256
    assert spread(128) == pytest.approx(2 * spread(64), rel=0.05)


def test_image_score_is_the_map_maximum():
    maps = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    maps[1, 0, 2, 5] = 7.0
    scores = AnomalyScorer.image_scores(maps)
    assert scores.shape == (3,)
    assert scores[1] == 7.0
    assert torch.equal(scores, maps.amax(dim=(1, 2, 3)))


def test_calibrate_sets_batchnorm_statistics_and_train_keeps_backbone_frozen(feature_scorer):
    bn = feature_scorer.extractor.backbone.bn1
    assert bn.running_mean.abs().sum() > 0  # fresh BatchNorm has mean 0
    feature_scorer.train()
    assert not feature_scorer.extractor.backbone.training
    assert not any(p.requires_grad for p in feature_scorer.extractor.backbone.parameters())
    feature_scorer.eval()


def test_scorer_rejects_unknown_mode_and_mismatched_shapes():
    with pytest.raises(ValueError, match="mode='ssim'"):
        AnomalyScorer(mode="ssim")
    with pytest.raises(ValueError, match=r"same shape \(B, 3, H, W\)"):
        AnomalyScorer(mode="l1")(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        AnomalyScorer(backbone="resnet18", weights=tmp_path / "missing.safetensors")
