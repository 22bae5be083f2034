"""The diffusers networks a ``CCADConfig`` describes: denoiser UNet, VAE, guidance copy.

``build_unet``, ``build_vae`` and ``build_guidance`` build them with random weights
(``model.CCAD.from_stable_diffusion`` loads Stable Diffusion's UNet and VAE instead);
``latent_factor`` says how much the VAE shrinks each side of an image, and
``guidance_numbers`` how many numbers per image each ``guidance`` option adds to the UNet
(chapter 5). The model that holds the networks is ``model.CCAD``.
"""

from __future__ import annotations

import math

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from torch import nn

from ccad_tutorial.presets import CCADConfig


def build_unet(cfg: CCADConfig) -> UNet2DConditionModel:
    """The denoiser: diffusers' SD UNet with our widths; input and output have x0's channels."""
    channels = cfg.latent_channels if cfg.latent else 3
    return UNet2DConditionModel(
        sample_size=cfg.image_size // (latent_factor(cfg) if cfg.latent else 1),
        in_channels=channels,
        out_channels=channels,
        block_out_channels=cfg.block_out_channels,
        down_block_types=cfg.down_block_types,
        up_block_types=cfg.up_block_types,
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=cfg.attention_heads,
        norm_num_groups=cfg.norm_num_groups,
    )


def build_vae(cfg: CCADConfig) -> AutoencoderKL:
    """A KL autoencoder (SD's first stage); tiny preset: no attention, 4x down."""
    n = len(cfg.vae_block_out_channels)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_block_out_channels,
        layers_per_block=cfg.vae_layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=min(32, cfg.vae_block_out_channels[0]),
        sample_size=cfg.image_size,
        mid_block_add_attention=cfg.preset == "sd15",
    )


def latent_factor(cfg: CCADConfig) -> int:
    """How much the VAE shrinks each side: 2 ** (number of VAE levels - 1)."""
    return 2 ** (len(cfg.vae_block_out_channels) - 1)


def build_guidance(
    cfg: CCADConfig, unet: UNet2DConditionModel, factor: int
) -> ControlNetModel | None:
    """DiAD's semantic-guidance copy: ControlNetModel.from_unet, fed the clean image.

    Its conditioning embedding must shrink the image by ``factor`` to x0's size: one
    stride-2 conv per factor of two (so V, factor 1, keeps full resolution).
    """
    if cfg.guidance == "none":
        return None
    n_levels = int(math.log2(factor)) + 1
    embed_channels = (16, 32, 96, 256)[:n_levels]
    copy = ControlNetModel.from_unet
    return copy(unet, conditioning_embedding_out_channels=embed_channels)


def guidance_numbers(cfg, unet: nn.Module, num_tokens: int) -> dict[str, int]:
    """How many numbers per image each ``guidance`` option adds to the UNet.

    Builds the guidance copy (``build_guidance`` with guidance="full") on the
    ``meta`` device, so it costs no memory, runs it on one image and counts the residuals
    it returns: {"none": 0, "bottleneck": the lowest-resolution residuals plus the middle
    one (the rule of ``CCAD.predict_noise``), "full": all of them, "x0": the numbers of
    x0, "image": the numbers of the input image}.
    """
    import dataclasses

    # the side x0 has at cfg.image_size: not unet.config.sample_size, which is SD v1.5's
    # 64 (512 px) for pretrained weights whatever size CCAD runs them at
    size, channels = cfg.image_size, unet.config.in_channels
    side = size // (latent_factor(cfg) if cfg.latent else 1)
    full = dataclasses.replace(cfg, guidance="full")
    with torch.device("meta"):
        copy = build_guidance(full, unet, size // side)
        down, mid = copy(
            torch.zeros(1, channels, side, side),
            torch.zeros(1),
            encoder_hidden_states=torch.zeros(1, num_tokens, unet.config.cross_attention_dim),
            controlnet_cond=torch.zeros(1, 3, size, size),
            return_dict=False,
        )
    lowest = min(r.shape[-1] for r in down)
    bottleneck = [r for r in down if r.shape[-1] == lowest] + [mid]
    return {
        "none": 0,
        "bottleneck": sum(r.numel() for r in bottleneck),
        "full": sum(r.numel() for r in [*down, mid]),
        "x0": channels * side**2,
        "image": 3 * size**2,
    }
