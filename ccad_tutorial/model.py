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
from pure noise instead. The anomaly map compares input and reconstruction
(``CCAD.anomaly_maps``). Frozen as in the paper's figure: VAE, feature
extractor and (for pretrained weights, ``freeze_encoder``) the UNet encoder + middle block;
trained: UNet decoder, guidance copy, projection, FCM.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DDPMScheduler,
    UNet2DConditionModel,
)
from torch import Tensor, nn

from ccad_tutorial.fcm import FineCompressionModule
from ccad_tutorial.features import FeatureExtractor
from ccad_tutorial.presets import CCADConfig
from ccad_tutorial.scoring import AnomalyScorer


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


def build_scorer(cfg: CCADConfig, mode: str | None = None) -> AnomalyScorer:
    """The run's anomaly scorer (``mode`` overrides ``cfg.score_mode``); calibrate it on the
    normals before use.

    A random-init backbone is drawn by ``FeatureExtractor`` from its own fixed seed, leaving
    the global RNG untouched: like pretrained weights, it is the same network for every run
    and seed, and choosing the scorer never changes the trained model.
    """
    return AnomalyScorer(
        backbone=cfg.score_backbone,
        layers=cfg.score_layers,
        pretrained=cfg.score_pretrained,
        mode=mode or cfg.score_mode,
    )


def image_noise(shape: torch.Size, seed: int, first_index: int) -> Tensor:
    """Gaussian noise (B, C, h, w) where image i of the data set always gets the same draw.

    Each image's noise comes from its own generator seeded by (seed, index), so the
    reconstruction of an image does not depend on the batch it is in.
    """
    draws = [
        torch.randn(
            shape[1:], generator=torch.Generator().manual_seed(seed * 1_000_003 + first_index + i)
        )
        for i in range(shape[0])
    ]
    return torch.stack(draws)


class CCAD(nn.Module):
    """The whole model of one run.

    Args:
        cfg: the run's CCADConfig.
        bank: the Coarse Feature Bank, (M, D) normal features (CoarseFeatureBank.features).
        unet, vae: ready diffusers modules (``from_pretrained``); built from cfg if None.
        bank_labels: (M,) long, the category index of each bank entry (bank_mode="category";
            None: every entry belongs to category 0).
    """

    def __init__(
        self,
        cfg: CCADConfig,
        bank: Tensor,
        unet: UNet2DConditionModel | None = None,
        vae: AutoencoderKL | None = None,
        bank_labels: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
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
        self.scorer = build_scorer(cfg)
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
    def from_pretrained(cls, path_or_repo_id: str | Path, cfg: CCADConfig, bank: Tensor) -> CCAD:
        """Load the UNet and VAE of an SD-layout folder or hub id (``unet/``, ``vae/``)."""
        try:
            unet = UNet2DConditionModel.from_pretrained(path_or_repo_id, subfolder="unet")
            vae = (
                AutoencoderKL.from_pretrained(path_or_repo_id, subfolder="vae")
                if cfg.latent
                else None
            )
        except OSError as err:
            raise ValueError(
                f"Could not load SD weights from {path_or_repo_id!r}: expected a folder (or hub id) "
                f"with unet/ and vae/ subfolders as in runwayml/stable-diffusion-v1-5 ({err})."
            ) from err
        if vae is not None:
            cfg.scaling_factor = float(vae.config.scaling_factor)
        return cls(cfg, bank, unet=unet, vae=vae)

    # ------------------------------------------------------------------ freezing
    def freeze(self) -> None:
        """requires_grad as in the paper's figure (see the module docstring)."""
        for module in (self.vae, self.scorer, self.extractor):
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

    # ------------------------------------------------------------------ condition
    def context(
        self,
        batch_size: int,
        bank: Tensor | None = None,
        query: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """The tokens every GCB cross-attends to, (B, T, ctx_dim).

        ``bank`` (M, D) replaces the run's CFB (the condition swap): in bank_mode "shared"
        and "category" it is the whole condition of every image (a category's bank given in
        place of the one the image would get), in "retrieved" the entries are retrieved from
        it. ``query`` (B, D) holds the inputs' global features (bank_mode "retrieved" and
        "category"); ``labels`` (B,) the inputs' category indices (bank_mode="category";
        known in training, chosen by ``query`` otherwise).
        """
        if self.cfg.variant == "uncond":
            return self.null_context(batch_size)  # (B, 1, ctx)
        if self.cfg.bank_mode == "retrieved":
            tokens = self.retrieve(self.bank if bank is None else bank.to(self.bank), query)
        elif bank is not None:
            tokens = bank.to(self.bank).unsqueeze(0).expand(batch_size, -1, -1)
        elif self.cfg.bank_mode == "category":
            labels = self.assign_category(query) if labels is None else labels
            tokens = self.category_tokens(labels.to(self.bank.device))  # (B, M_c, D)
        else:
            tokens = self.bank.unsqueeze(0).expand(batch_size, -1, -1)  # (B, M, D): shared
        return self.condition(tokens)

    def condition(self, tokens: Tensor) -> Tensor:
        """Bank vectors (B, M, D) -> context (B, T, ctx_dim).

        Variant F reads the bank with the FCM, C projects each vector (LayerNorm + Linear).
        """
        return self.fcm(tokens) if self.cfg.variant == "F" else self.proj(tokens)

    def null_context(self, batch_size: int, length: int = 1) -> Tensor:
        """The learned null token as a context (B, length, ctx_dim): "no condition".

        Attention over ``length`` copies of one token equals attention over that one token,
        so a dropped condition can share a batch with bank contexts of any length.
        """
        return self.null_token.unsqueeze(0).expand(batch_size, length, -1)

    def retrieve(self, bank: Tensor, query: Tensor) -> Tensor:
        """The k bank entries nearest to each query: bank (M, D), query (B, D) -> (B, k, D).

        Only the NEIGHBOURS enter the condition, never the input's own feature (that would
        leak the anomaly). An entry identical to the query (a training image that is in the
        bank itself) is skipped, so training sees what testing sees.
        """
        if query is None:
            raise ValueError('bank_mode="retrieved" needs the inputs\' global features (query).')
        dist = torch.cdist(query.to(bank), bank)  # (B, M)
        dist = dist.masked_fill(dist < 1e-6, float("inf"))
        k = min(self.cfg.retrieve_k, bank.shape[0] - 1)
        idx = dist.topk(k, largest=False).indices  # (B, k)
        return bank[idx]

    def assign_category(self, query: Tensor | None) -> Tensor:
        """(B,) the category of the bank entry nearest to each query (B, D).

        At test time the category is unknown: the input's global feature picks the category
        whose CFB holds its nearest normal feature (``category_error`` says how often wrongly).
        """
        if query is None:
            raise ValueError('bank_mode="category" needs the inputs\' global features (query).')
        nearest = torch.cdist(query.to(self.bank), self.bank).argmin(1)  # (B,)
        return self.bank_labels[nearest]

    def category_tokens(self, labels: Tensor) -> Tensor:
        """The whole CFB of each input's category: labels (B,) -> (B, M_c, D).

        Categories with fewer entries repeat theirs cyclically up to the largest count (the
        attention weights of a repeated set are those of the set, up to the repetition).
        """
        size = int(torch.bincount(self.bank_labels).max())
        banks = []
        for c in labels.tolist():
            rows = torch.nonzero(self.bank_labels == c).flatten()
            if len(rows) == 0:
                raise ValueError(f"bank_mode='category': the bank has no entry of category {c}.")
            banks.append(self.bank[rows[torch.arange(size, device=rows.device) % len(rows)]])
        return torch.stack(banks)

    @torch.no_grad()
    def global_features(self, images: Tensor) -> Tensor | None:
        """The retrieval query (B, D) of images (B, 3, H, W); None in bank_mode="shared"."""
        return None if self.extractor is None else self.extractor(images)

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

    # ------------------------------------------------------------------ reconstruction
    def ddim(
        self, t_start: int | None = None, steps: int | None = None
    ) -> tuple[DDIMScheduler, Tensor]:
        """A DDIM scheduler and its timesteps, starting exactly at ``t_start``.

        ``t_start`` and ``steps`` default to cfg's.

        diffusers' DDIMScheduler steps from t to t - 1000 // num_inference_steps; we pick
        num_inference_steps so that ``steps`` (cfg.ddim_steps) strides cover t_start -> 0.
        The input is noised to the FIRST timestep (DiAD noises to 999 but starts DDIM
        at 901).
        The x0 estimate is clipped to [-1, 1] only where that is the data's range (pixels).
        """
        cfg = self.cfg
        t_start = cfg.t_start if t_start is None else t_start
        steps = cfg.ddim_steps if steps is None else steps
        clip = (not cfg.latent) if cfg.clip_sample is None else cfg.clip_sample
        sched = DDIMScheduler.from_config(
            self.noise_scheduler.config, set_alpha_to_one=False, clip_sample=clip
        )
        stride = max(1, math.ceil(t_start / steps))
        sched.set_timesteps(cfg.num_train_timesteps // stride)
        # the stride step() will use
        stride = cfg.num_train_timesteps // sched.num_inference_steps
        timesteps = torch.arange(t_start, 0, -stride)[:steps]
        sched.timesteps = timesteps
        return sched, timesteps

    def denoise(
        self, x: Tensor, sched: DDIMScheduler, timesteps: Tensor, ctx: Tensor, control
    ) -> Tensor:
        """DDIM from x at timesteps[0] down to x0 (B, C, h, w), as ``guided_noise``."""
        for t in timesteps:
            eps = self.guided_noise(x, t.expand(x.shape[0]).to(x.device), ctx, control)
            x = sched.step(eps, int(t), x, eta=self.cfg.eta).prev_sample
        return x

    @torch.no_grad()
    def reconstruct(
        self,
        images: Tensor,
        noise_seed: int = 0,
        batch_size: int = 16,
        bank: Tensor | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Repaint images (B, 3, H, W) in [0, 1] as normal.

        Encode, noise to t_start, DDIM down to 0 conditioned on the bank, decode.

        The noise comes from ``noise_seed`` (fixed at evaluation) and does not depend on
        batch_size. Guided by ``cfg.guidance_scale`` (see ``guided_noise``). Returns
        (B, 3, H, W) in [0, 1].
        """
        from tqdm.auto import tqdm

        device = self.bank.device
        sched, timesteps = self.ddim()
        out = []
        starts = range(0, len(images), batch_size)
        for first in tqdm(starts, disable=not progress, leave=False):
            chunk = images[first : first + batch_size].to(device)
            x0 = self.encode(chunk)
            noise = image_noise(x0.shape, noise_seed, first).to(x0)
            # noise to the FIRST DDIM timestep
            x = sched.add_noise(x0, noise, timesteps[:1])
            ctx = self.context(x.shape[0], bank, self.global_features(chunk))
            out.append(self.decode(self.denoise(x, sched, timesteps, ctx, chunk)).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def generate(self, bank: Tensor, n: int, seed: int = 0, steps: int = 25) -> Tensor:
        """n images (n, 3, H, W) in [0, 1] from pure noise, conditioned on ``bank`` (M, D).

        The positive control: the bank is the ONLY information about what to draw (full DDIM
        from t = T - 1, guided by ``cfg.guidance_scale``). Needs no guidance copy (it would
        need an input image). Sample i's noise depends on (seed, i) only.
        """
        if self.controlnet is not None:
            raise ValueError(
                "generate() has no input image for the guidance copy; use guidance='none'."
            )
        device = self.bank.device
        h = self.cfg.image_size // self.factor
        channels = self.unet.config.in_channels
        x = image_noise(torch.Size((n, channels, h, h)), seed, 0).to(device)
        ctx = (
            self.null_context(n)
            if self.cfg.variant == "uncond"
            else self.condition(bank.to(self.bank).unsqueeze(0).expand(n, -1, -1))
        )
        sched, timesteps = self.ddim(self.cfg.num_train_timesteps - 1, steps)
        return self.decode(self.denoise(x, sched, timesteps, ctx, None)).cpu()

    @torch.no_grad()
    def anomaly_maps(
        self, images: Tensor, recons: Tensor | None = None, **kwargs
    ) -> tuple[Tensor, Tensor]:
        """Anomaly maps (B, 1, H, W) and image scores (B,); reconstructs first if recons is None."""
        if recons is None:
            recons = self.reconstruct(images, **kwargs)
        device = self.bank.device
        maps = torch.cat(
            [
                self.scorer(x.to(device), r.to(device)).cpu()
                for x, r in zip(images.split(16), recons.split(16), strict=True)
            ]
        )
        return maps, self.scorer.image_scores(maps)
