"""The frozen visual encoder: images -> global or patch feature vectors.

CCAD compares images in the feature space of a frozen, pretrained network. We read two
intermediate stages of a timm CNN (default ``wide_resnet50_2``, layers 2 and 3, as PatchCore
does) and pool them in one of two ways:

* ``pool="image"`` (default, the paper's "global features"): global average pooling of each
  layer, concatenated: ONE vector per image, (B, D).
* ``pool="patch"`` (PatchCore's "locally aware patch features"): 3x3 average pooling of each
  layer, the deeper layer upsampled to the first layer's grid, concatenated: a vector per
  position, (B, D, h, w).

``backbone="vae"`` uses the latent encoder of a diffusers ``AutoencoderKL`` instead (the
paper's open question: WideResNet50 or the LDM encoder?).

Offline there are no ImageNet weights. Random-init CNNs are still usable if (1) timm builds
them with ``zero_init_last=False`` (otherwise every residual block starts as the identity)
and (2) their BatchNorm statistics are re-estimated on the training images
(``FeatureExtractor.calibrate``): without it the features are meaningless.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

FULL_BACKBONE = "wide_resnet50_2"  # full mode (GPU, pretrained ImageNet weights)
FAST_BACKBONE = "resnet18"  # fast mode (CPU, random init + calibrate)
POOLS = ("image", "patch")
# A folder of local ImageNet checkpoints, one per timm name: <dir>/<name>.safetensors (or
# .pth / .bin), or the Hugging Face layout <dir>/<name>/model.safetensors. Set it where the
# machine has no internet; full mode then loads the backbones from there.
BACKBONE_WEIGHTS_ENV = "CCAD_BACKBONE_WEIGHTS"


def flatten_patches(maps: torch.Tensor) -> torch.Tensor:
    """Patch maps (B, D, h, w) -> patch vectors (B * h * w, D), image by image, row by row."""
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


def _load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a (weights-only) torch checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Backbone weights file {path} does not exist. Pass weights=<path to a .safetensors "
            "file or a timm checkpoint (.pth/.bin)> holding the backbone's state dict."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    for key in ("state_dict", "model"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {name.removeprefix("module."): value for name, value in state.items()}


def _pretrained_error(name: str, error: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"Could not load ImageNet weights for the timm backbone '{name}' "
        f"({type(error).__name__}: {str(error)[:200]}). In Colab (with internet) they download "
        "automatically. Offline, either put the timm weights into the Hugging Face cache "
        "(~/.cache/huggingface/hub, copied from a machine that downloaded them; set "
        "HF_HUB_OFFLINE=1 to skip network retries), or set $CCAD_BACKBONE_WEIGHTS to a folder "
        f"holding {name}.safetensors, or pass weights=<path to a .safetensors file or a timm "
        "checkpoint>. Fast mode needs no weights: it uses random initialisation "
        "(pretrained=False) followed by extractor.calibrate(train_images)."
    )


def local_backbone_file(name: str) -> Path | None:
    """The local checkpoint of timm model ``name`` under ``$CCAD_BACKBONE_WEIGHTS`` (None: unset).

    Raises FileNotFoundError naming the expected files when the folder is set but lacks it.
    """
    folder = os.environ.get(BACKBONE_WEIGHTS_ENV)
    if not folder:
        return None
    folder = Path(folder).expanduser()
    names = [f"{name}.safetensors", f"{name}.pth", f"{name}.bin", f"{name}/model.safetensors"]
    for candidate in (folder / n for n in names):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"${BACKBONE_WEIGHTS_ENV}={folder} holds no weights for the timm backbone '{name}': "
        f"expected one of {', '.join(names)} there. Copy the file in (timm's ImageNet weights, "
        f"e.g. from the Hugging Face repo timm/{name}.tv_in1k), or unset {BACKBONE_WEIGHTS_ENV} "
        "to download them."
    )


def _timm_backbone(
    name: str, layers: Sequence[int], pretrained: bool, weights: str | os.PathLike | None
) -> nn.Module:
    """A timm ``features_only`` model returning the feature maps of ``layers``."""
    if not timm.is_model(name):
        raise ValueError(
            f"Unknown backbone '{name}': use a timm model name such as '{FULL_BACKBONE}' or "
            f"'{FAST_BACKBONE}' (see timm.list_models()), or backbone='vae' with vae=<AutoencoderKL>."
        )
    kwargs = dict(features_only=True, out_indices=tuple(layers), zero_init_last=False)
    if pretrained and weights is None:
        local = local_backbone_file(name)
        if local is not None:  # timm's own loading, from a file instead of the hub
            kwargs["pretrained_cfg_overlay"] = dict(file=str(local))
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as error:  # hub/network errors come in many types
            raise _pretrained_error(name, error) from error
    model = timm.create_model(name, pretrained=False, **kwargs)
    if weights is not None:
        try:  # unexpected keys (fc, layer4) are normal: features_only drops those layers
            missing, _ = model.load_state_dict(_load_state_dict(weights), strict=False)
        except RuntimeError as error:  # shape mismatches
            missing = [str(error).splitlines()[-1].strip()]
        if missing:
            raise ValueError(
                f"Weights file {weights} does not fit timm backbone '{name}': "
                f"{len(missing)} problem(s), e.g. {missing[:3]}. Pass the state dict of a '{name}'."
            )
    return model


class FeatureExtractor(nn.Module):
    """Frozen feature extractor: images (B, 3, H, W) in [0, 1] -> features.

    backbone: a timm model name (default ``wide_resnet50_2``) or ``"vae"`` (then pass
        ``vae=<diffusers AutoencoderKL>``; its latent mean is the feature).
    layers: timm stage indices to read (2, 3 = ResNet layer2 and layer3, strides 8 and 16).
    pool: ``"image"`` -> (B, D) global vectors; ``"patch"`` -> (B, D, h, w) patch vectors.
    pretrained: ImageNet weights through timm (downloads in Colab, or read from the folder
        ``$CCAD_BACKBONE_WEIGHTS``); ``weights``: a local .safetensors / checkpoint file
        instead. Random init otherwise: call ``calibrate``.
    seed: seed of the random initialisation (the global RNG is left untouched).
    """

    def __init__(
        self,
        backbone: str = FULL_BACKBONE,
        layers: Sequence[int] = (2, 3),
        pool: str = "image",
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        vae: nn.Module | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}; got pool={pool!r}.")
        self.backbone_name, self.layers, self.pool = backbone, tuple(layers), pool
        self.pretrained = bool(pretrained or weights is not None)
        if backbone == "vae":
            if vae is None:
                raise ValueError(
                    "backbone='vae' needs vae=<diffusers AutoencoderKL> to encode with."
                )
            self.backbone = vae
            self.dim = int(vae.config.latent_channels)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.backbone = _timm_backbone(backbone, self.layers, pretrained, weights)
            self.dim = int(sum(self.backbone.feature_info.channels()))
        self.register_buffer(
            "mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False
        )
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Always stays in eval mode: the extractor is frozen (BatchNorm statistics included)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """The one place where inputs are normalised: ImageNet mean/std, or [-1, 1] for a VAE."""
        if self.backbone_name == "vae":
            return images * 2 - 1
        return (images - self.mean) / self.std

    def _feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """List of (B, C_l, h_l, w_l) maps, one per chosen layer (one latent map for a VAE)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"FeatureExtractor expects images of shape (B, 3, H, W) in [0, 1]; got "
                f"{tuple(images.shape)}."
            )
        x = self.normalize(images.to(self.device, self.mean.dtype))
        if self.backbone_name == "vae":
            return [self.backbone.encode(x).latent_dist.mean]
        return self.backbone(x)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> (B, D) if pool="image", (B, D, h, w) if pool="patch"."""
        maps = self._feature_maps(images)
        if self.pool == "image":
            return torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1)
        if self.backbone_name == "vae":
            return maps[0]  # the latent map itself: (B, latent_channels, H / 8, W / 8) for SD's VAE
        # PatchCore's local aggregation (anomalib: AvgPool2d(3, 1, 1) + bilinear upsampling)
        maps = [F.avg_pool2d(m, kernel_size=3, stride=1, padding=1) for m in maps]
        size = maps[0].shape[-2:]
        maps = [
            m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear")
            for m in maps
        ]
        return torch.cat(maps, dim=1)

    @torch.no_grad()
    def extract(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """``forward`` over (N, 3, H, W) images in batches; result on the extractor's device."""
        return torch.cat([self(batch) for batch in images.split(batch_size)], dim=0)

    @torch.no_grad()
    def calibrate(
        self,
        images: torch.Tensor,
        batch_size: int = 32,
    ) -> FeatureExtractor:
        """Re-estimate every BatchNorm's running mean/var on (N, 3, H, W) images.

        For random-init backbones (pretrained ones already carry ImageNet
        statistics). Mirrors ``torch.optim.swa_utils.update_bn``: reset the
        statistics, momentum=None (a cumulative average over batches), forward
        the images in train mode, back to eval.
        """
        batchnorm = nn.modules.batchnorm._BatchNorm
        norms = [m for m in self.backbone.modules() if isinstance(m, batchnorm)]
        if not norms:  # e.g. a VAE (GroupNorm only): nothing to re-estimate
            return self
        momenta = [m.momentum for m in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
        self.backbone.train()
        try:
            for batch in images.split(batch_size):
                self._feature_maps(batch)
        finally:
            self.backbone.eval()
            for norm, momentum in zip(norms, momenta, strict=True):
                norm.momentum = momentum
        return self


def category_separation(features: torch.Tensor, labels: Sequence[str]) -> dict[str, float]:
    """How well (N, D) global features separate the categories ``labels`` (N,).

    On standardised features (every dimension to zero mean and unit variance):
    ``silhouette``, sklearn's silhouette score (1: tight, far-apart clusters, 0: mixed),
    and ``nn_accuracy``, the fraction of images whose nearest other image has their
    category (leave-one-out 1-nearest-neighbour). On the raw features: ``scale_spread``,
    the largest per-dimension standard deviation over the smallest, which says how much a
    few dimensions dominate plain Euclidean distances (what PatchCore and the coreset use).
    """
    import numpy as np
    from sklearn.metrics import silhouette_score

    x = features.detach().double().cpu()
    std = x.std(0)
    z = (x - x.mean(0)) / (std + 1e-6)
    distances = torch.cdist(z, z).fill_diagonal_(float("inf"))
    names = np.asarray(labels)
    nearest = names[distances.argmin(1).numpy()]
    return {
        "silhouette": float(silhouette_score(z.numpy(), names)),
        "nn_accuracy": float((nearest == names).mean()),
        "scale_spread": float(std.max() / std.min().clamp_min(1e-12)),
    }
