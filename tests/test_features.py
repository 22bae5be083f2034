"""The frozen feature extractor, as examples (small images, random-init resnet18)."""

import huggingface_hub.constants
import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from ccad_tutorial.features import FeatureExtractor, flatten_patches


def images(count: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    """(count, 3, size, size) random images in [0, 1]."""
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
    )


def test_image_pool_gives_one_global_vector_per_image():
    extractor = FeatureExtractor("resnet18", pool="image")
    features = extractor(images())
    assert features.shape == (4, 128 + 256) and extractor.dim == 384


def test_patch_pool_gives_a_vector_per_position_on_the_layer2_grid():
    extractor = FeatureExtractor("resnet18", pool="patch")
    maps = extractor(images(size=64))
    assert maps.shape == (4, 384, 8, 8)  # layer2 has stride 8
    assert flatten_patches(maps).shape == (4 * 8 * 8, 384)


def test_flatten_patches_lists_positions_image_by_image_row_by_row():
    maps = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)  # (B, D, h, w)
    vectors = flatten_patches(maps)
    assert torch.equal(vectors[1], maps[0, :, 0, 1]) and torch.equal(vectors[4], maps[1, :, 0, 0])


def test_vae_backbone_uses_the_latent_mean():
    vae = tiny_vae()
    maps = FeatureExtractor("vae", pool="patch", vae=vae)(images(size=32))
    assert maps.shape == (4, 4, 16, 16)
    expected = vae.encode(images(size=32) * 2 - 1).latent_dist.mean
    torch.testing.assert_close(maps, expected)
    assert FeatureExtractor("vae", pool="image", vae=vae)(images(size=32)).shape == (4, 4)


def test_calibrate_re_estimates_batchnorm_statistics():
    extractor = FeatureExtractor("resnet18", pool="image")
    norm = extractor.backbone.layer2[0].bn1
    before, features_before = norm.running_mean.clone(), extractor(images())
    extractor.calibrate(images(count=6), batch_size=4)
    assert not torch.allclose(norm.running_mean, before)
    assert norm.momentum == 0.1 and not extractor.backbone.training  # settings restored
    assert not torch.allclose(extractor(images()), features_before)


def test_extractor_is_frozen():
    extractor = FeatureExtractor("resnet18", pool="patch")
    extractor.train()  # a parent module's .train() must not unfreeze BatchNorm
    assert not extractor.training and not extractor.backbone.training
    assert not any(p.requires_grad for p in extractor.parameters())
    assert not extractor(images(count=2)).requires_grad


def test_extract_in_batches_equals_one_forward():
    extractor = FeatureExtractor("resnet18", pool="image")
    torch.testing.assert_close(
        extractor.extract(images(count=5), batch_size=2), extractor(images(count=5))
    )


def test_random_init_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = FeatureExtractor("resnet18", seed=1)
    assert torch.equal(torch.rand(1), expected_next)
    second = FeatureExtractor("resnet18", seed=1)
    assert torch.equal(first.backbone.conv1.weight, second.backbone.conv1.weight)


def test_weights_file_is_loaded(tmp_path):
    source = FeatureExtractor("resnet18", seed=5)
    path = tmp_path / "resnet18.safetensors"
    save_file(source.backbone.state_dict(), str(path))
    loaded = FeatureExtractor("resnet18", weights=path, seed=6)
    assert loaded.pretrained
    torch.testing.assert_close(loaded(images()), source(images()))


def test_missing_or_mismatched_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.safetensors"):
        FeatureExtractor("resnet18", weights=tmp_path / "nothere.safetensors")
    path = tmp_path / "other.safetensors"
    save_file({"conv1.weight": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match="does not fit"):
        FeatureExtractor("resnet18", weights=path)


def test_pretrained_offline_explains_how_to_provide_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        FeatureExtractor("resnet18", pretrained=True)
    message = str(error.value)
    assert "Colab" in message and "weights=" in message and "random initialisation" in message


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backbone": "resnet18", "pool": "pixel"}, "pool must be one of"),
        ({"backbone": "not_a_model"}, "Unknown backbone"),
        ({"backbone": "vae"}, "needs vae="),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FeatureExtractor(**kwargs)


def test_wrong_image_shape_is_explained():
    with pytest.raises(ValueError, match="\\(B, 3, H, W\\)"):
        FeatureExtractor("resnet18")(torch.rand(2, 1, 32, 32))


def test_category_separation_tells_clusters_from_noise_and_sees_scale():
    from ccad_tutorial.features import category_separation

    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    x = torch.cat([centres[0] + torch.randn(20, 3, generator=gen) * 0.3,
                   centres[1] + torch.randn(20, 3, generator=gen) * 0.3])  # fmt: skip
    labels = ["a"] * 20 + ["b"] * 20
    apart = category_separation(x, labels)
    mixed = category_separation(torch.randn(40, 3, generator=gen), labels)
    assert apart["nn_accuracy"] == 1.0 and apart["silhouette"] > 0.6
    assert mixed["silhouette"] < 0.2 and mixed["nn_accuracy"] < 0.8
    scaled = x * torch.tensor([100.0, 1.0, 1.0])  # one dimension dominates raw distances
    assert category_separation(scaled, labels)["scale_spread"] > 50 * apart["scale_spread"]


def test_pretrained_backbone_is_read_from_the_local_weights_folder(tmp_path, monkeypatch):
    """$CCAD_BACKBONE_WEIGHTS: timm loads <dir>/<name>.safetensors as its pretrained file."""
    import timm

    torch.manual_seed(123)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "resnet18.safetensors"))
    monkeypatch.setenv("CCAD_BACKBONE_WEIGHTS", str(tmp_path))
    extractor = FeatureExtractor("resnet18", (2, 3), pretrained=True)
    loaded = dict(extractor.backbone.named_parameters())["layer2.0.conv1.weight"]
    assert torch.equal(loaded, state["layer2.0.conv1.weight"])
    assert extractor.pretrained


def test_a_weights_folder_without_the_backbone_names_the_files_it_expects(tmp_path, monkeypatch):
    monkeypatch.setenv("CCAD_BACKBONE_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"resnet18\.safetensors.*CCAD_BACKBONE_WEIGHTS"):
        FeatureExtractor("resnet18", pretrained=True)
