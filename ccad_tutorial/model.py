"""CCAD: a diffusion model that repaints its input as normal, conditioned on a bank of normals.

    image (B, 3, H, W) --VAE encoder (frozen)--> x0 (B, 4, h, w)      [pixels for CCAD(V)]
    CFB (M, D) --Linear (C) or FCM (F)--> ctx (T, ctx_dim)             [one null token: uncond]
      which entries: all (shared), the input's nearest (retrieved), its category's (category)
    x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps
    UNet2DConditionModel(x_t, t, ctx) -> eps_hat; every CrossAttn block is a GCB reading ctx
    optional guidance: ControlNetModel.from_unet(unet) fed the clean image adds residuals

Training minimises ||eps - eps_hat||^2 (``CCAD.loss``), with the condition dropped to the
null token for a fraction ``cond_dropout`` of the images. Reconstruction noises the input to
``t_start`` and runs DDIM back to 0 (``CCAD.reconstruct``), guided by
eps_null + w (eps_bank - eps_null) when ``guidance_scale`` w != 1; ``CCAD.generate`` starts
from pure noise instead. The anomaly map, which compares input and reconstruction, is the
detector's (``detectors.CCADDetector``). Frozen as in the paper's figure: VAE, feature
extractor and (for pretrained weights, ``freeze_encoder``) the UNet encoder + middle block;
trained: UNet decoder, guidance copy, projection, FCM.

The class is spread over three files: this one (construction, freezing, the latent
space, the noise prediction and the loss, saving and loading), condition.py (the bank
-> the tokens the GCBs read: ``CCAD.context``) and sampling.py (``CCAD.reconstruct``,
``CCAD.generate``); the networks are built in networks.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn

from ccad_tutorial import runs
from ccad_tutorial.bank import CoarseFeatureBank
from ccad_tutorial.condition import ConditionMixin
from ccad_tutorial.fcm import FineCompressionModule
from ccad_tutorial.features import FeatureExtractor
from ccad_tutorial.networks import build_guidance, build_unet, build_vae
from ccad_tutorial.presets import CCADConfig
from ccad_tutorial.sampling import SamplingMixin


class CCAD(ConditionMixin, SamplingMixin, nn.Module):
    """The whole model of one run.

    Args:
        cfg: the run's CCADConfig.
        bank: the Coarse Feature Bank (``bank.CoarseFeatureBank``, saved with the model), or
            its (M, D) normal features alone.
        unet, vae: ready diffusers modules (``from_stable_diffusion``); from cfg if None.
        bank_labels: (M,) long, the category index of each bank entry (bank_mode="category";
            None: every entry belongs to category 0).

    The condition's methods are ``ConditionMixin``'s (condition.py), the sampler's
    ``SamplingMixin``'s (sampling.py).
    """

    def __init__(
        self,
        cfg: CCADConfig,
        bank: Tensor | CoarseFeatureBank,
        unet: UNet2DConditionModel | None = None,
        vae: AutoencoderKL | None = None,
        bank_labels: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.coarse_bank = bank if isinstance(bank, CoarseFeatureBank) else None
        bank = bank.features if isinstance(bank, CoarseFeatureBank) else bank
        self.register_buffer("bank", bank.detach().float().clone())  # (M, D), the CFB
        labels = torch.zeros(len(bank), dtype=torch.long) if bank_labels is None else bank_labels
        self.register_buffer("bank_labels", labels.detach().long().clone(), persistent=False)
        self.unet = unet if unet is not None else build_unet(cfg)
        ctx_dim = self.unet.config.cross_attention_dim
        self.vae = (vae if vae is not None else build_vae(cfg)) if cfg.latent else None
        self.controlnet = build_guidance(cfg, self.unet, self.factor)
        dim = bank.shape[-1]
        if cfg.variant == "uncond" or cfg.cond_dropout > 0:  # one learned "no condition"
            self.null_token = nn.Parameter(torch.randn(1, ctx_dim) * 0.02)
        if cfg.variant == "F":  # CFB -> K tokens (fcm.py projects D -> ctx_dim itself)
            self.fcm = FineCompressionModule(dim, ctx_dim, cfg.num_queries, cfg.fcm_heads)
        elif cfg.variant != "uncond":  # V, C: the CFB, D -> ctx_dim (LayerNorm first: our reading)
            self.proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ctx_dim))
        self.extractor = None  # retrieved and category modes need the input's global feature
        if cfg.bank_mode != "shared" and cfg.variant != "uncond":
            if cfg.pool != "image":
                raise ValueError(
                    f'bank_mode="{cfg.bank_mode}" needs pool="image" (one global vector per image).'
                )
            self.extractor = FeatureExtractor(
                cfg.backbone, cfg.feature_layers, pool="image", pretrained=cfg.pretrained_backbone
            )
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=cfg.num_train_timesteps,
            beta_start=cfg.beta_start,
            beta_end=cfg.beta_end,
            beta_schedule="scaled_linear",
        )
        self.freeze()
        if cfg.gradient_checkpointing:  # recompute activations in backward: less memory
            for net in (self.unet, self.controlnet):
                if net is not None:
                    net.enable_gradient_checkpointing()  # diffusers' own switch

    @classmethod
    def from_stable_diffusion(
        cls, path_or_repo_id: str | Path, cfg: CCADConfig, bank: Tensor | CoarseFeatureBank
    ) -> CCAD:
        """A new CCAD starting from the UNet and VAE of an SD-layout folder or hub id
        (``unet/``, ``vae/``, as in stable-diffusion-v1-5)."""
        try:
            unet = UNet2DConditionModel.from_pretrained(path_or_repo_id, subfolder="unet")
            vae = (
                AutoencoderKL.from_pretrained(path_or_repo_id, subfolder="vae")
                if cfg.latent
                else None
            )
        except OSError as err:
            raise ValueError(
                f"Could not load SD weights from {path_or_repo_id!r}: expected a folder (or "
                "hub id) with unet/ and vae/ subfolders as in stable-diffusion-v1-5 "
                f"({err})."
            ) from err
        if vae is not None:
            cfg.scaling_factor = float(vae.config.scaling_factor)
        return cls(cfg, bank, unet=unet, vae=vae)

    def save_pretrained(
        self, path: str | os.PathLike, weights: bool = True, config: bool = True
    ) -> Path:
        """Write the model to the folder ``path`` (``runs``' layout), atomically: its
        weights (model.safetensors) and its config.json (with the UNet and VAE configs) and
        bank.safetensors. ``CCAD.from_pretrained(path)`` reads it back."""
        path = Path(path)
        if weights:
            runs.write_safetensors(path / "model.safetensors", self.state_dict())
        if config:
            self.cfg.extra["unet_config"] = dict(self.unet.config)
            if self.vae is not None:
                self.cfg.extra["vae_config"] = dict(self.vae.config)
            runs.write_config(path, self.cfg)
            if self.coarse_bank is not None:
                self.coarse_bank.save(path / "bank.safetensors")
        return path

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: str = "auto", use_ema: bool = True
    ) -> CCAD:
        """A trained CCAD from its folder (``save_pretrained``, or a training run), in
        eval mode on ``device``; the run's config is ``model.cfg``.

        ``use_ema``: load ema.safetensors over the trainable weights when the run has one.
        """
        from diffusers import AutoencoderKL, UNet2DConditionModel

        from ccad_tutorial.bank import CoarseFeatureBank, entry_labels
        from ccad_tutorial.modes import resolve_device

        path = Path(path)
        cfg = runs.read_config(path)
        if not (path / "model.safetensors").is_file():
            raise ValueError(
                f"{path} has no checkpoint (model.safetensors) yet; train it or resume training."
            )
        bank = CoarseFeatureBank.load(path / "bank.safetensors")
        unet = vae = None
        if "unet_config" in cfg.extra:
            unet = UNet2DConditionModel.from_config(cfg.extra["unet_config"])
        if "vae_config" in cfg.extra and cfg.latent:
            vae = AutoencoderKL.from_config(cfg.extra["vae_config"])
        labels = entry_labels(bank, cfg.extra.get("train_counts"))
        model = cls(cfg, bank, unet=unet, vae=vae, bank_labels=labels)
        model.load_weights(path / "model.safetensors")
        if use_ema and (path / "ema.safetensors").is_file():
            model.load_weights(path / "ema.safetensors", strict=False)
        return model.to(resolve_device(device)).eval()

    def load_weights(self, file: Path, strict: bool = True) -> None:
        """Weights of a .safetensors file (the whole model, or with ``strict=False`` the
        trained part); a file that does not fit the config names the file."""
        weights = runs.load_safetensors(file)
        # runs written when the model held its anomaly scorer: that is the detector's now
        weights = {k: v for k, v in weights.items() if not k.startswith("scorer.")}
        try:
            self.load_state_dict(weights, strict=strict)
        except RuntimeError as err:
            raise ValueError(f"{file} does not match config.json ({err}).") from err

    # ------------------------------------------------------------------ freezing
    def freeze(self) -> None:
        """requires_grad as in the paper's figure (see the module docstring)."""
        for module in (self.vae, self.extractor):
            if module is not None:
                module.requires_grad_(False).eval()
        if self.cfg.freeze_encoder:
            u = self.unet
            for part in (u.conv_in, u.time_proj, u.time_embedding, u.down_blocks, u.mid_block):
                part.requires_grad_(False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ spaces
    @property
    def factor(self) -> int:
        """Pixels per x0 position: the VAE factor (4 tiny, 8 SD) or 1 in pixel space."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> x0 (B, C, H/f, W/f).

        x0 is the scaled latent (C, F, uncond) or the pixels in [-1, 1] (V).
        """
        x = images * 2 - 1
        if self.vae is None:
            return x
        self.set_vae_tiling()
        return self.vae.encode(x).latent_dist.mode() * self.scaling_factor

    def decode(self, x0: Tensor) -> Tensor:
        """x0 (B, C, h, w) -> images (B, 3, h*f, w*f) in [0, 1]."""
        if self.vae is None:
            return ((x0 + 1) / 2).clamp(0, 1)
        self.set_vae_tiling()
        x = self.vae.decode(x0 / self.scaling_factor).sample
        return ((x + 1) / 2).clamp(0, 1)

    def set_vae_tiling(self) -> None:
        """With ``cfg.tile``, a VAE trained on crops runs on larger images in crop-sized tiles.

        The tiny preset's VAE learns on crops (``cfg.crop_size``). Decoding a whole image's
        latent at once, it can paint a pale square inside a frame of good texture: positions
        far from every border are ones it never saw. diffusers' tiled VAE
        (``AutoencoderKL.enable_tiling``: overlapping tiles, blended) with crop-sized tiles
        keeps every position as in training, but its seams cross the middle of the image,
        and the UNet learned on latents of whole images. Off by default (chapter 8 measures
        both); SD's VAE, trained on whole images, always runs at once.
        """
        crop = self.cfg.crop_size
        self.vae.use_tiling = bool(self.cfg.tile and crop and crop < self.cfg.image_size)
        if self.vae.use_tiling:
            self.vae.tile_sample_min_size, self.vae.tile_latent_min_size = crop, crop // self.factor

    @property
    def scaling_factor(self) -> float:
        return self.cfg.scaling_factor if self.cfg.scaling_factor is not None else 1.0

    # ------------------------------------------------------------------ denoiser
    def predict_noise(
        self,
        x_t: Tensor,
        t: Tensor,
        ctx: Tensor,
        control: Tensor | None,
    ) -> Tensor:
        """eps_hat (B, C, h, w) for x_t (B, C, h, w) at timesteps t (B,).

        ``control`` (B, 3, H, W): the clean images for the semantic-guidance copy, if any.
        """
        extra = {}
        if self.controlnet is not None:
            down, mid = self.controlnet(
                x_t,
                t,
                encoder_hidden_states=ctx,
                controlnet_cond=control,
                return_dict=False,
            )
            if self.cfg.guidance == "bottleneck":  # keep only the lowest level (DiAD's SG)
                lowest = min(r.shape[-1] for r in down)
                down = [r if r.shape[-1] == lowest else torch.zeros_like(r) for r in down]
            extra = {
                "down_block_additional_residuals": down,
                "mid_block_additional_residual": mid,
            }
        return self.unet(x_t, t, encoder_hidden_states=ctx, **extra).sample

    def guided_noise(self, x_t: Tensor, t: Tensor, ctx: Tensor, control: Tensor | None) -> Tensor:
        """Classifier-free guidance: eps_null + w (eps_bank - eps_null), w = ``guidance_scale``.

        w = 1 is the plain conditioned prediction (one UNet pass), w = 0 the prediction
        without condition from the same weights (one pass), any other w costs two passes.
        """
        w = self.cfg.guidance_scale
        if w == 1 or self.cfg.variant == "uncond":
            return self.predict_noise(x_t, t, ctx, control)
        eps_null = self.predict_noise(x_t, t, self.null_context(len(x_t)), control)
        if w == 0:
            return eps_null
        return eps_null + w * (self.predict_noise(x_t, t, ctx, control) - eps_null)

    def loss(
        self,
        x0: Tensor,
        control: Tensor | None = None,
        generator: torch.Generator | None = None,
        bank: Tensor | None = None,
        query: Tensor | None = None,
        labels: Tensor | None = None,
        per_image: bool = False,
    ) -> Tensor:
        """Epsilon-prediction MSE for clean x0 (B, C, h, w).

        ``control`` (B, 3, H, W): the clean images (semantic guidance); ``query`` (B, D):
        global features of the source images (bank_mode "retrieved" and "category");
        ``labels`` (B,): their categories (bank_mode="category"). In training mode a
        fraction ``cond_dropout`` of the images gets the null token instead of its
        condition (drawn from ``generator`` too). ``per_image``: the (B,) losses.
        """
        b = x0.shape[0]
        t_max = self.cfg.train_t_max or self.cfg.num_train_timesteps
        t = torch.randint(0, t_max, (b,), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        x_t = self.noise_scheduler.add_noise(x0, noise, t)
        ctx = self.context(b, bank, query, labels)
        if self.training and self.cfg.cond_dropout > 0 and self.cfg.variant != "uncond":
            drop = torch.rand(b, generator=generator) < self.cfg.cond_dropout
            drop = drop.to(x0.device)
            ctx = torch.where(drop[:, None, None], self.null_context(b, ctx.shape[1]), ctx)
        eps_hat = self.predict_noise(x_t, t, ctx, control)
        losses = (eps_hat.float() - noise.float()).pow(2).flatten(1).mean(1)
        return losses if per_image else losses.mean()

    def forward(
        self, x0: Tensor, control: Tensor | None = None, generator=None, **kwargs
    ) -> Tensor:
        """The training loss, ``loss(...)``: DistributedDataParallel (``accel``) averages
        gradients over processes only for what a module computes in ``forward``."""
        return self.loss(x0, control, generator, **kwargs)
