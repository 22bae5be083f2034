"""Global-feature Conditioned Block (GCB): where the bank enters the denoiser.

A GCB is a transformer block on the UNet's feature map, flattened to N = h * w tokens:

    x = x + SelfAttention(LayerNorm(x))                  # positions talk to each other
    x = x + CrossAttention(LayerNorm(x), ctx)            # each position reads the bank
    x = x + GEGLU-FeedForward(LayerNorm(x))

The cross-attention's keys and values come from the bank tokens ``ctx`` (B, M, context_dim):
the CFB (CCAD(C)) or the FCM's K tokens (CCAD(F)). This is exactly diffusers'
``BasicTransformerBlock`` (layer_norm, geglu, no attention bias), the block inside every
``CrossAttn*Block2D`` of ``UNet2DConditionModel``. Stable Diffusion feeds it CLIP text tokens
as ``encoder_hidden_states``; CCAD feeds it the bank instead. So the model uses diffusers'
UNet unchanged, and this file is the readable copy the book explains; ``from_diffusers``
plus a test prove both compute the same thing.

To look inside a trained UNet: ``find_gcbs`` lists its GCBs, ``gcb_table`` says where each
sits (resolution, heads, tokens), ``capture_cross_attention`` records which bank tokens each
spatial position reads, and ``attention_entropy`` says how spread out that reading is.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Our parameter name -> diffusers BasicTransformerBlock parameter name (diffusers 0.3x).
_DIFFUSERS_NAMES = {
    "attn1.to_out": "attn1.to_out.0",  # diffusers' to_out is [Linear, Dropout]
    "attn2.to_out": "attn2.to_out.0",
    "ff_in": "ff.net.0.proj",  # GEGLU's input projection (value and gate halves)
    "ff_out": "ff.net.2",
}


class Attention(nn.Module):
    """Multi-head (cross-)attention, mirroring ``diffusers.models.attention_processor.Attention``.

    Queries come from ``x`` (B, N, query_dim), keys and values from ``context``
    (B, M, context_dim); self-attention is ``context = x``.
    """

    def __init__(self, query_dim: int, context_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)

    def forward(
        self, x: Tensor, context: Tensor, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """x (B, N, query_dim), context (B, M, context_dim) -> (B, N, query_dim), weights.

        weights: (B, heads, N, M) softmax(Q K^T / sqrt(head_dim)) if ``return_attention``,
        else None (then the fused ``F.scaled_dot_product_attention`` computes the same).
        """
        q, k, v = (
            self._split_heads(f(t))
            for f, t in ((self.to_q, x), (self.to_k, context), (self.to_v, context))
        )
        if return_attention:
            weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
            out = weights @ v  # (B, heads, N, head_dim)
        else:
            weights, out = None, F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).flatten(2)  # (B, N, heads * head_dim)
        return self.to_out(out), weights

    def _split_heads(self, t: Tensor) -> Tensor:
        """(B, L, heads * head_dim) -> (B, heads, L, head_dim)."""
        return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)


class GlobalFeatureConditionedBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the bank, GEGLU feed-forward (the GCB).

    Args:
        dim: channels of the UNet feature map at this level.
        num_heads, head_dim: attention heads and their width (heads * head_dim is the
            attention width, as in diffusers).
        context_dim: size of one bank token (the UNet's ``cross_attention_dim``).
        ff_mult: GEGLU hidden width in multiples of ``dim``.
    """

    def __init__(
        self, dim: int, num_heads: int, head_dim: int, context_dim: int, ff_mult: int = 4
    ) -> None:
        super().__init__()
        self.dim, self.context_dim = dim, context_dim
        self.norm1 = nn.LayerNorm(dim)  # eps 1e-5, affine: diffusers' defaults
        self.attn1 = Attention(dim, dim, num_heads, head_dim)  # self-attention
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, num_heads, head_dim)  # cross-attention to ctx
        self.norm3 = nn.LayerNorm(dim)
        self.ff_in = nn.Linear(dim, 2 * ff_mult * dim)  # GEGLU: value and gate in one matmul
        self.ff_out = nn.Linear(ff_mult * dim, dim)

    def forward(
        self,
        hidden_states: Tensor,
        context: Tensor,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """hidden_states (B, N, dim), context (B, M, context_dim) -> (B, N, dim).

        With ``return_attention`` also the cross-attention weights
        (B, heads, N, M): row n says which bank tokens spatial position n
        retrieves (each row sums to 1).
        """
        if context.shape[-1] != self.context_dim:
            raise ValueError(
                f"the GCB expects bank tokens (B, M, {self.context_dim}), got "
                f"{tuple(context.shape)}: project the bank to context_dim first."
            )
        x = hidden_states
        h = self.norm1(x)
        x = x + self.attn1(h, h)[0]  # self-attention
        attn_out, weights = self.attn2(self.norm2(x), context, return_attention)
        x = x + attn_out  # cross-attention: each position reads the bank
        value, gate = self.ff_in(self.norm3(x)).chunk(2, dim=-1)  # GEGLU
        x = x + self.ff_out(value * F.gelu(gate))
        return (x, weights) if return_attention else x

    @classmethod
    def from_diffusers(cls, basic: nn.Module) -> GlobalFeatureConditionedBlock:
        """Build a GCB with the same sizes and weights as a diffusers ``BasicTransformerBlock``."""
        ff_inner = basic.ff.net[2].in_features
        if basic.attn2 is None or ff_inner % basic.dim != 0:
            raise ValueError(
                "from_diffusers needs a BasicTransformerBlock with cross-attention "
                "(cross_attention_dim set) and ff_inner_dim a multiple of dim."
            )
        block = cls(
            basic.dim,
            basic.num_attention_heads,
            basic.attention_head_dim,
            basic.attn2.to_k.in_features,
            ff_mult=ff_inner // basic.dim,
        )
        return load_from_diffusers(block, basic)


def load_from_diffusers(
    block: GlobalFeatureConditionedBlock, basic: nn.Module
) -> GlobalFeatureConditionedBlock:
    """Copy the weights of a diffusers ``BasicTransformerBlock`` into ``block`` (in place).

    Only the configuration the GCB writes out is accepted: ``norm_type="layer_norm"``,
    ``activation_fn="geglu"``, ``attention_bias=False``, ``only_cross_attention=False``,
    no positional embeddings. Returns ``block``.
    """
    problems = [
        f"{name}={getattr(basic, name)!r} (need {want!r})"
        for name, want in (
            ("norm_type", "layer_norm"),
            ("activation_fn", "geglu"),
            ("attention_bias", False),
            ("only_cross_attention", False),
            ("pos_embed", None),
        )
        if getattr(basic, name) != want
    ]
    if problems:
        raise ValueError(
            "load_from_diffusers: this BasicTransformerBlock is not a plain GCB: "
            + ", ".join(problems)
            + "."
        )
    source = basic.state_dict()
    mine = {}
    for name, param in block.state_dict().items():
        prefix, leaf = name.rsplit(".", 1)
        theirs = f"{_DIFFUSERS_NAMES.get(prefix, prefix)}.{leaf}"
        if theirs not in source or source[theirs].shape != param.shape:
            got = tuple(source[theirs].shape) if theirs in source else "missing"
            raise ValueError(
                f"load_from_diffusers: {name} {tuple(param.shape)} has no match in the "
                f"BasicTransformerBlock ({theirs}: {got}); build the GCB with the block's "
                f"dim, heads, head_dim and cross_attention_dim (or use from_diffusers)."
            )
        mine[name] = source[theirs]
    block.load_state_dict(mine)
    return block


def find_gcbs(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """The GCBs of a diffusers UNet: every ``BasicTransformerBlock`` whose ``attn2`` reads
    ``encoder_hidden_states`` (the bank tokens in CCAD). Returns [(module name, block)]."""
    from diffusers.models.attention import BasicTransformerBlock

    return [
        (name, module)
        for name, module in unet.named_modules()
        if isinstance(module, BasicTransformerBlock)
        and module.attn2 is not None
        and module.attn2.is_cross_attention
    ]


# ---------------------------------------------------------------------- looking inside a UNet
def _part_and_level(name: str) -> tuple[str, int | None]:
    """'up_blocks.1.attentions.0.transformer_blocks.0' -> ('up', 1); mid_block -> ('mid', None)."""
    first, _, rest = name.partition(".")
    if first == "mid_block":
        return "mid", None
    return first.removesuffix("_blocks"), int(rest.split(".")[0])


@torch.no_grad()
def gcb_table(unet: nn.Module, num_tokens: int = 1, side: int | None = None) -> list[dict]:
    """One row per GCB of a diffusers UNet: where it sits and how much it attends to.

    Runs ONE forward pass of a zero sample (1, in_channels, s, s) with ``num_tokens`` zero
    bank tokens and records, with forward pre-hooks, the feature map each GCB receives.
    The UNet may live on the ``"meta"`` device (built under ``with torch.device("meta")``):
    then the pass computes shapes only, so SD v1.5's table costs no memory and no time.
    ``side``: the side of the UNet's input (x0) the model runs at; None: the UNet's
    ``sample_size``, which is only right for a UNet built for this image size (SD v1.5's
    own config says 64, its 512 px, while CCAD runs it at 256 px: side 32).

    Row keys: name, part ("down" | "mid" | "up"), level (index of the block, None for mid),
    channels, heads, side (the feature map is side x side), positions (side ** 2: the tokens
    of self-attention), bank_tokens (the tokens of cross-attention), scores (attention
    scores per image: heads * positions * (positions + bank_tokens)).
    """
    gcbs = find_gcbs(unet)
    seen: dict[str, tuple[int, int]] = {}

    def record(name: str):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]  # (B, N, dim)
            seen[name] = (hidden.shape[1], kwargs["encoder_hidden_states"].shape[1])

        return hook

    handles = [b.register_forward_pre_hook(record(n), with_kwargs=True) for n, b in gcbs]
    try:
        param = next(unet.parameters())
        if side is None:
            size = unet.config.sample_size
            side = size if isinstance(size, int) else size[0]
        sample = torch.zeros(1, unet.config.in_channels, side, side).to(param)
        bank = torch.zeros(1, num_tokens, unet.config.cross_attention_dim).to(param)
        unet(sample, torch.zeros(1).to(param.device), encoder_hidden_states=bank)
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for name, block in gcbs:
        positions, tokens = seen[name]
        part, level = _part_and_level(name)
        heads = block.num_attention_heads
        rows.append(
            {
                "name": name,
                "part": part,
                "level": level,
                "channels": block.dim,
                "heads": heads,
                "side": math.isqrt(positions),
                "positions": positions,
                "bank_tokens": tokens,
                "scores": heads * positions * (positions + tokens),
            }
        )
    return rows


class AttentionStore:
    """A diffusers attention processor that keeps the attention probabilities it computes.

    It wraps the processor it replaces (``AttnProcessor2_0`` by default): that one still
    computes the output, so the model's result is unchanged. Before, it recomputes the
    probabilities exactly as diffusers' ``AttnProcessor`` does (``to_q``, ``to_k``,
    ``head_to_batch_dim``, ``Attention.get_attention_scores``) and appends them to
    ``probs``: one (B * heads, N, M) tensor per call, on the CPU; row n holds how much
    query position n takes from each of the M keys (the bank tokens in a GCB's attn2).
    """

    def __init__(self, processor) -> None:
        self.processor = processor
        self.probs: list[Tensor] = []

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        **kwargs,
    ) -> Tensor:
        plain = hidden_states.ndim == 3 and attention_mask is None
        if not plain or attn.norm_cross:
            raise ValueError(
                "AttentionStore reads plain (B, N, C) attention without mask or "
                "cross-norm, as in a GCB's attn2; install it on "
                "BasicTransformerBlock.attn2 modules only."
            )
        context = encoder_hidden_states
        if context is None:  # self-attention
            context = hidden_states
        # (B * heads, N, head_dim) queries, (B * heads, M, head_dim) keys
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        probs = attn.get_attention_scores(query, key)  # (B * heads, N, M)
        self.probs.append(probs.detach().float().cpu())
        args = (attn, hidden_states, encoder_hidden_states, attention_mask)
        return self.processor(*args, **kwargs)


@contextmanager
def capture_cross_attention(
    unet: nn.Module, names: list[str] | None = None
) -> Iterator[dict[str, AttentionStore]]:
    """Record the cross-attention probabilities of a UNet's GCBs while the block runs.

        with capture_cross_attention(unet, ["up_blocks.1.attentions.0.transformer_blocks.0"]) as s:
            unet(x_t, t, encoder_hidden_states=bank)
        probs = s["up_blocks.1.attentions.0.transformer_blocks.0"].probs[0]  # (B*heads, N, M)

    ``names``: GCB names as ``find_gcbs`` gives them (default: all GCBs). The original
    processors are put back on exit, even after an error.
    """
    gcbs = dict(find_gcbs(unet))
    names = list(gcbs) if names is None else list(names)
    unknown = [name for name in names if name not in gcbs]
    if unknown:
        raise ValueError(
            f"capture_cross_attention: {unknown} are not GCBs of this UNet; "
            f"pick names from find_gcbs(unet): {list(gcbs)}."
        )
    stores, originals = {}, {}
    for name in names:
        attn = gcbs[name].attn2
        originals[name] = attn.processor
        stores[name] = AttentionStore(attn.processor)
        attn.set_processor(stores[name])
    try:
        yield stores
    finally:
        for name, processor in originals.items():
            gcbs[name].attn2.set_processor(processor)


def attention_entropy(probs: Tensor) -> Tensor:
    """Entropy in nats of each attention row: probs (..., M) -> (...,).

    log(M) for a uniform row (the position takes the mean of the bank), 0 for a row that
    retrieves a single token. ``torch.special.entr`` is -p log p with 0 log 0 = 0.
    """
    return torch.special.entr(probs).sum(-1)


# ---------------------------------------------------------------------- chapter 5's probes
@torch.no_grad()
def diffusers_equivalence(
    dim: int, heads: int, context_dim: int, positions: int, tokens: int, seed: int = 0
) -> dict[str, float]:
    """Max |GCB - BasicTransformerBlock| on random inputs, both with the same random weights.

    A diffusers block gets random weights everywhere (LayerNorms and biases too), a GCB
    copies them with :meth:`GlobalFeatureConditionedBlock.from_diffusers`, and both run on
    the same feature map (2, positions, dim) and bank tokens (2, tokens, context_dim).
    Returns {"fused": the GCB with F.scaled_dot_product_attention (as diffusers'
    AttnProcessor2_0), "explicit": with softmax(Q K^T / sqrt(d)) V written out,
    "output_scale": the largest |output|}.
    """
    from diffusers.models.attention import BasicTransformerBlock

    torch.manual_seed(seed)
    basic = BasicTransformerBlock(
        dim, heads, dim // heads, cross_attention_dim=context_dim, activation_fn="geglu"
    ).eval()
    for param in basic.parameters():
        param.normal_(0.0, 0.1)
    ours = GlobalFeatureConditionedBlock.from_diffusers(basic)
    x, bank = torch.randn(2, positions, dim), torch.randn(2, tokens, context_dim)
    theirs = basic(x, encoder_hidden_states=bank)
    fused = ours(x, bank)
    explicit, _ = ours(x, bank, return_attention=True)
    return {
        "fused": float((fused - theirs).abs().max()),
        "explicit": float((explicit - theirs).abs().max()),
        "output_scale": float(theirs.abs().max()),
    }


GCB_TABLE_HEADER = (
    "GCB", "part", "map", "self-attn keys", "bank tokens", "heads x width", "scores / image",
)  # fmt: skip


def gcb_table_rows(rows: list[dict]) -> list[list]:
    """:func:`gcb_table`'s rows as table cells (columns: ``GCB_TABLE_HEADER``)."""
    return [
        [
            f"`{r['name'].replace('.transformer_blocks.0', '')}`",
            r["part"],
            f"{r['side']}x{r['side']}",
            r["positions"],
            r["bank_tokens"],
            f"{r['heads']} x {r['channels'] // r['heads']}",
            f"{r['scores']:,}",
        ]
        for r in rows
    ]


def guidance_numbers(cfg, unet: nn.Module, num_tokens: int) -> dict[str, int]:
    """How many numbers per image each ``guidance`` option adds to the UNet.

    Builds the guidance copy (``model.build_guidance`` with guidance="full") on the
    ``meta`` device, so it costs no memory, runs it on one image and counts the residuals
    it returns: {"none": 0, "bottleneck": the lowest-resolution residuals plus the middle
    one (the rule of ``CCAD.predict_noise``), "full": all of them, "x0": the numbers of
    x0, "image": the numbers of the input image}.
    """
    import dataclasses

    from ccad_tutorial.model import build_guidance, latent_factor

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


@torch.no_grad()
def cross_attention_maps(
    model: nn.Module, images: Tensor, t: Tensor, noise_seed: int = 0
) -> dict[str, Tensor]:
    """{GCB name: (B, heads, N, T) cross-attention probabilities} of a CCAD model.

    The images (B, 3, H, W) are encoded, noised to timestep ``t`` (shape (1,)) with the
    fixed noise of ``model.image_noise`` and denoised once, with the model's own
    condition, while :func:`capture_cross_attention` records every GCB.
    """
    from ccad_tutorial.model import image_noise

    device = model.bank.device
    x0 = model.encode(images.to(device))
    noise = image_noise(x0.shape, noise_seed, 0).to(x0)
    x_t = model.noise_scheduler.add_noise(x0, noise, t)
    ctx = model.context(len(images))
    with capture_cross_attention(model.unet) as stores:
        model.predict_noise(x_t, t.expand(len(images)).to(device), ctx, images.to(device))
    split = (len(images), -1)  # (B * heads, N, T) -> (B, heads, N, T)
    return {name: store.probs[0].unflatten(0, split) for name, store in stores.items()}


def probe_positions(mask: Tensor, side: int) -> list[tuple[int, int]]:
    """Four positions of a side x side feature map: the one at the centre of the defect
    ``mask`` (H, W), then the three quadrant centres farthest from it."""
    cell = mask.shape[-1] / side
    ys, xs = torch.nonzero(mask > 0, as_tuple=True)
    centre = (int(ys.float().mean() / cell), int(xs.float().mean() / cell))
    a, b = side // 4, 3 * side // 4
    quadrants = [(a, a), (a, b), (b, a), (b, b)]

    def distance(p: tuple[int, int]) -> int:
        return (p[0] - centre[0]) ** 2 + (p[1] - centre[1]) ** 2

    return [centre] + sorted(quadrants, key=distance, reverse=True)[:3]


def plot_retrieval(
    image: Tensor,
    mask: Tensor,
    probs: Tensor,
    positions: list[tuple[int, int]],
    token_images: Tensor,
    title: str = "",
):
    """What four positions of one GCB retrieve from the bank.

    image (3, H, W), mask (H, W); probs (N, T): the cross-attention rows of one image
    (heads averaged) on a side x side map; token_images (T, 3, H', W'): the training
    image of each bank token. Top: the image with the positions circled, and the rows of
    the four positions as grouped bars (the dashed line is uniform, 1/T). Bottom: for
    each position, the training image of its most-attended token. Returns the figure.
    """
    import matplotlib.pyplot as plt

    side = math.isqrt(probs.shape[0])
    cell = image.shape[-1] / side
    rows = torch.stack([probs[i * side + j] for i, j in positions])  # (4, T)
    fig = plt.figure(figsize=(8, 5.6))
    grid = fig.add_gridspec(2, 4, height_ratios=(1.3, 1))
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(image.permute(1, 2, 0).numpy())
    ax.contour(mask.numpy(), levels=[0.5], colors="w", linewidths=0.8)
    for k, (i, j) in enumerate(positions):
        y, x = (i + 0.5) * cell - 0.5, (j + 0.5) * cell - 0.5
        ax.plot(x, y, "o", ms=9, mfc="none", mec=f"C{k}", mew=2)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    bars = fig.add_subplot(grid[0, 1:])
    tokens = torch.arange(rows.shape[1])
    for k, (i, j) in enumerate(positions):
        label = f"({i}, {j})" + (" defect" if k == 0 else "")
        bars.bar(tokens + (k - 1.5) * 0.2, rows[k].numpy(), 0.2, color=f"C{k}", label=label)
    bars.axhline(1 / rows.shape[1], color="k", ls="--", lw=1)
    bars.set(xlabel="bank token", ylabel="attention weight")
    bars.legend(fontsize=8, ncols=2)
    for k in range(len(positions)):
        top = int(rows[k].argmax())
        ax = fig.add_subplot(grid[1, k])
        ax.imshow(token_images[top].permute(1, 2, 0).numpy())
        ax.set_title(f"token {top}: {float(rows[k, top]):.2f}", fontsize=9, color=f"C{k}")
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def position_spread(probs: Tensor) -> float:
    """Mean total-variation distance of each attention row from its image's and head's
    mean row: probs (B, heads, N, T). 0: every position reads the same mixture."""
    mean_row = probs.mean(-2, keepdim=True)
    return float((0.5 * (probs - mean_row).abs().sum(-1)).mean())


def attention_statistics(probs: Tensor, initial: Tensor) -> dict[str, float]:
    """Entropy, entropy / log T, max weight and position spread of one GCB's attention
    (B, heads, N, T), with the entropy ratio and spread of ``initial`` (the same GCB
    before training) for comparison."""
    log_t = math.log(probs.shape[-1])
    entropy = float(attention_entropy(probs).mean())
    return {
        "entropy": entropy,
        "ratio": entropy / log_t,
        "ratio_init": float(attention_entropy(initial).mean()) / log_t,
        "max_weight": float(probs.max()),
        "spread": position_spread(probs),
        "spread_init": position_spread(initial),
    }


def first_of_each_type(batch, normal: int, defective: int):
    """A smaller ``datasets.Batch``: the first ``normal`` good images and the first
    ``defective`` images of each defect type, in the batch's order."""
    from collections import Counter

    from ccad_tutorial.datasets import Batch

    seen, keep = Counter(), []
    for i, kind in enumerate(batch.defect_types):
        seen[kind] += 1
        if seen[kind] <= (normal if kind == "good" else defective):
            keep.append(i)
    return Batch(
        batch.images[keep],
        batch.masks[keep],
        batch.labels[keep],
        *([getattr(batch, f)[i] for i in keep] for f in ("defect_types", "paths", "categories")),
    )


def generation_summary(work: dict) -> dict[tuple[str, float], dict]:
    """The positive control of the ``condition_at_work`` benchmark, per (model, w).

    {(model, w): {"accuracy": mean over seeds of the share of samples named after the
    bank they were given, "follows": mean over seeds of swap["moved"] (the sample follows
    a change of bank), "chance", "seeds", "unconditioned": bool}}, in the benchmark's
    model order, then by w.
    """
    groups: dict[tuple[str, float], list[dict]] = {}
    for g in work["generation"]:
        groups.setdefault((g["model"], g["w"]), []).append(g)
    order = list(work["models"])
    summary = {}
    for key in sorted(groups, key=lambda k: (order.index(k[0]), k[1])):
        runs = groups[key]
        summary[key] = {
            "accuracy": sum(g["accuracy"] for g in runs) / len(runs),
            "follows": sum(g["swap"]["moved"] for g in runs) / len(runs),
            "chance": runs[0]["chance"],
            "seeds": len(runs),
            "unconditioned": work["models"][key[0]]["variant"] == "uncond",
        }
    return summary
