"""Every choice the sources leave open, in one dataclass, and the two presets that fill it.

``CCADConfig`` is to CCAD what nanoGPT's ``GPTConfig`` is to GPT: one flat record of every
number the model and its training need. Fields marked "our reading" are decisions of this
book, not of the paper (the reading page lists them); the book switches them to measure
their effect.

Presets:

* ``tiny``: runs on two CPU cores in minutes. Small random-init UNet and VAE (the VAE is
  trained on the normals first), random-init resnet18 features, 128 px, feature anomaly
  maps from a random-init ResNet-50 whose BatchNorm statistics are calibrated on the normals.
* ``sd15``: the DiAD/CCAD setting. Stable Diffusion v1.5's UNet and VAE architecture at
  256 px (weights from ``--pretrained``, else random), pretrained ResNet-50 feature maps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

VARIANTS = ("V", "C", "F", "uncond")
PRESETS = ("tiny", "sd15")
GUIDANCE = ("none", "bottleneck", "full")
BANK_MODES = ("shared", "retrieved", "category")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
# read by CCAD at inference, so an evaluation may change them on a trained run
INFERENCE_FIELDS = ("t_start", "ddim_steps", "eta", "clip_sample", "guidance_scale", "tile")


@dataclass
class CCADConfig:
    """All settings of one CCAD run (saved as the run's ``config.json``)."""

    # --- what is built ---
    variant: str = "F"  # "V" pixels + CFB, "C" latent + CFB, "F" latent + CFB + FCM, "uncond"
    preset: str = "tiny"
    image_size: int = 128  # test images are resized to image_size x image_size
    # --- global features and the Coarse Feature Bank (CFB) ---
    backbone: str = "resnet18"  # timm name of the frozen feature extractor
    feature_layers: tuple[int, ...] = (2, 3)
    pool: str = "image"  # our reading: "image" = one global vector per image, "patch" = PatchCore
    pretrained_backbone: bool = False
    xi: float = 0.1  # coreset ratio of the CFB
    min_bank: int = 8  # never fewer bank tokens than this
    # our reading: which part of the bank conditions an image.
    # "shared": every image sees the whole bank (the paper's figure; the default per category)
    # "retrieved": the retrieve_k bank entries nearest to the image's global feature
    # "category": the whole CFB of the image's category (the label in training; at test time
    #   the category of the bank entry nearest to the image's global feature). Multi-category
    #   runs default to it (MULTICLASS_DEFAULTS below; chapter 8 measures all three).
    bank_mode: str = "shared"
    retrieve_k: int = 3  # bank_mode="retrieved": how many nearest bank entries condition an image
    # our reading, multi-category runs only: one coreset per category (each keeps xi of its
    # own features) instead of one over the pooled features, which starves tight categories
    balanced_bank: bool = False
    # --- Fine Compression Module (variant F) ---
    num_queries: int = 64  # K, the FCM's learnable query tokens (our reading)
    fcm_heads: int = 4
    # --- classifier-free guidance on the bank (Ho and Salimans, 2022) ---
    # training: each image's condition is replaced by the learned null token with this
    # probability, so one network learns eps(x_t | bank) and eps(x_t | null)
    cond_dropout: float = 0.0
    # inference: eps = eps_null + w (eps_bank - eps_null); w = 0 is the unconditioned model
    # with the same weights, w = 1 the plain conditioned model, w > 1 amplifies the bank
    guidance_scale: float = 1.0
    # --- denoiser: diffusers UNet2DConditionModel ---
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    down_block_types: tuple[str, ...] = (
        "DownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
    )
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    layers_per_block: int = 1
    cross_attention_dim: int = 64
    attention_heads: int = 4  # diffusers calls this `attention_head_dim` (a historical misnomer)
    norm_num_groups: int = 16
    # --- autoencoder (variants C, F, uncond) ---
    vae_block_out_channels: tuple[int, ...] = (16, 32, 64)  # 2 ** (len - 1) = 4x down
    vae_layers_per_block: int = 1
    latent_channels: int = 4
    scaling_factor: float | None = None  # None: 1 / std of the normals' latents (SD: 0.18215)
    vae_steps: int = 300  # stage 1 for a random-init VAE (0 with pretrained weights)
    vae_kl_weight: float = 1e-6
    vae_lr: float = 1e-3
    # --- semantic guidance (DiAD's SG network, diffusers ControlNetModel.from_unet) ---
    guidance: str = "none"  # our reading: "none" | "bottleneck" (lowest level + mid) | "full"
    freeze_encoder: bool = False  # our reading: freeze UNet encoder + mid only if pretrained
    # --- diffusion ---
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085  # SD's scaled-linear schedule
    beta_end: float = 0.012
    train_t_max: int | None = None  # our reading: None trains all timesteps (as SD does)
    t_start: int = 400  # noise level reconstruction starts from (our reading)
    ddim_steps: int = 10
    eta: float = 0.0
    # clip DDIM's x0 estimate to [-1, 1] at every step? None: only in pixel space (V), where
    # [-1, 1] is the image range. A VAE latent has no such bound (SD's scheduler sets
    # clip_sample=False): clipping it shifts every category's colours toward one another.
    clip_sample: bool | None = None
    # run a VAE trained on crops in crop-sized tiles on larger images (CCAD.set_vae_tiling)?
    # Off: chapter 8 measured it; it cures a pale interior on textures and hurts the object
    tile: bool = False
    # --- anomaly map (scoring.AnomalyScorer) ---
    score_mode: str = "feature"  # 1 - cosine of backbone maps (DiAD, CCAD), or "l1" pixels
    score_backbone: str = "resnet50"
    score_layers: tuple[int, ...] = (1, 2, 3)
    score_pretrained: bool = False
    # --- training ---
    steps: int = 800  # the preset's default budget (optimiser steps)
    batch_size: int = 8
    grad_accum: int = 1
    crop_size: int | None = 64  # train on random crops (+ flips); None: whole images
    lr: float = 1e-3
    weight_decay: float = 1e-2
    ema_decay: float | None = None
    mixed_precision: str = "auto"  # "auto" (bf16 on CUDA, none on CPU) | "no" | "bf16" | "fp16"
    # recompute the UNet's (and guidance copy's) activations in backward instead of storing
    # them: same loss and gradients, less memory, more time (benchmarks/sd15_step.py)
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    seed: int = 0
    extra: dict = field(default_factory=dict)  # free-form notes (train args, measured times)

    def __post_init__(self) -> None:
        for name, allowed in (
            ("variant", VARIANTS),
            ("preset", PRESETS),
            ("guidance", GUIDANCE),
            ("bank_mode", BANK_MODES),
            ("mixed_precision", MIXED_PRECISION),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"CCADConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}."
                )
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ValueError(f"CCADConfig.cond_dropout must be in [0, 1), got {self.cond_dropout}.")
        if self.guidance_scale != 1.0 and self.cond_dropout == 0.0 and self.variant != "uncond":
            raise ValueError(
                f"guidance_scale={self.guidance_scale} needs a model trained with cond_dropout > 0 "
                "(it has no null-token prediction to guide from); train with --set cond_dropout=0.1."
            )
        for name, value in dataclasses.asdict(self).items():  # JSON gives lists back: make tuples
            if isinstance(value, list):
                setattr(self, name, tuple(value))

    @property
    def latent(self) -> bool:
        """True when the diffusion runs in a VAE latent (C, F, uncond), False for pixels (V)."""
        return self.variant != "V"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CCADConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"config.json has unknown fields {unknown}; was it written by a newer version?"
            )
        return cls(**d)


def tiny(variant: str = "F") -> CCADConfig:
    """CPU preset: small widths, one layer per block, attention only at the lowest levels."""
    cfg = CCADConfig(variant=variant, preset="tiny")
    if variant == "V":  # pixel space: one more level so attention still runs at <= 32x32
        cfg.block_out_channels = (16, 32, 64, 64)
        cfg.down_block_types = ("DownBlock2D", "DownBlock2D") + cfg.down_block_types[1:]
        cfg.up_block_types = cfg.up_block_types[:2] + ("UpBlock2D", "UpBlock2D")
        # 32 px crops: a 64 px crop in pixels costs 16x a latent step (823 s for 800 steps
        # measured), past the 5-minute budget; 32 px pixel crops cost about 4x.
        cfg.crop_size = 32
    return cfg


def sd15(variant: str = "F") -> CCADConfig:
    """Stable Diffusion v1.5 architecture at 256 px (latent 4 x 32 x 32), as DiAD."""
    return CCADConfig(
        variant=variant,
        preset="sd15",
        image_size=256,
        backbone="wide_resnet50_2",
        pretrained_backbone=True,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        cross_attention_dim=768,
        attention_heads=8,
        norm_num_groups=32,
        vae_block_out_channels=(128, 256, 512, 512),
        vae_layers_per_block=2,
        scaling_factor=0.18215,
        vae_steps=0,
        guidance="bottleneck",
        freeze_encoder=True,
        t_start=999 if variant != "V" else 400,
        score_mode="feature",
        score_pretrained=True,
        steps=15000,
        batch_size=12,
        grad_accum=4,
        crop_size=None,
        lr=1e-4,
        checkpoint_every=1000,
    )


# One model for several categories (DiAD's multi-class setting): what a conditioned run on
# several categories (``train --category a+b+c``) uses unless told otherwise. The guidance
# scale is the best mean validation image AUROC of the sweep w in {0, 1, 2, 4} on a split the
# test never sees (benchmarks/condition_at_work.py; chapter 8 shows how flat that sweep is
# at CPU scale: the choice is a rule followed, not an effect found).
MULTICLASS_DEFAULTS = {
    "bank_mode": "category",
    "balanced_bank": True,
    "cond_dropout": 0.1,
    "guidance_scale": 2.0,
}


def multiclass_overrides(variant: str, overrides: dict) -> dict:
    """``overrides`` completed with MULTICLASS_DEFAULTS for a conditioned variant.

    What the caller sets wins; a run told ``cond_dropout=0`` has no null token to guide
    from, so it also keeps guidance_scale at 1.
    """
    if variant == "uncond":
        return dict(overrides)
    merged = {**MULTICLASS_DEFAULTS, **overrides}
    if merged["cond_dropout"] == 0 and "guidance_scale" not in overrides:
        merged["guidance_scale"] = 1.0
    return merged


def make_config(preset: str = "tiny", variant: str = "F", **overrides) -> CCADConfig:
    """The preset's config for a variant, with any field overridden by keyword."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}.")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")
    cfg = tiny(variant) if preset == "tiny" else sd15(variant)
    known = {f.name for f in dataclasses.fields(CCADConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown CCADConfig fields {bad}; see ccad_tutorial.presets.CCADConfig.")
    return dataclasses.replace(cfg, **overrides)


def set_inference_fields(cfg: CCADConfig, values: dict, what: str = "an evaluation") -> None:
    """Set fields read at inference (t_start, guidance_scale, ...) on a loaded run's cfg;
    anything else would not match the trained weights and is refused, naming ``what``
    asked."""
    for key, value in values.items():
        if key not in INFERENCE_FIELDS:
            raise ValueError(
                f"{what} may set only {INFERENCE_FIELDS} (read at inference), not {key!r}: "
                "it is fixed when a run is trained."
            )
        setattr(cfg, key, value)
    CCADConfig.__post_init__(cfg)  # the same checks as a new config (guidance needs dropout)
