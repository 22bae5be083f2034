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
        self, hidden_states: Tensor, context: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """hidden_states (B, N, dim), context (B, M, context_dim) -> (B, N, dim).

        With ``return_attention`` also the cross-attention weights (B, heads, N, M): row n
        says which bank tokens spatial position n retrieves (each row sums to 1).
        """
        if context.shape[-1] != self.context_dim:
            raise ValueError(
                f"GlobalFeatureConditionedBlock expects bank tokens (B, M, {self.context_dim}) "
                f"(context_dim), got {tuple(context.shape)}; project the bank to context_dim first."
            )
        x = hidden_states
        h = self.norm1(x)
        x = x + self.attn1(h, h)[0]
        attn_out, weights = self.attn2(self.norm2(x), context, return_attention)
        x = x + attn_out
        value, gate = self.ff_in(self.norm3(x)).chunk(
            2, dim=-1
        )  # diffusers.models.activations.GEGLU
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
def gcb_table(unet: nn.Module, num_tokens: int = 1) -> list[dict]:
    """One row per GCB of a diffusers UNet: where it sits and how much it attends to.

    Runs ONE forward pass of a zero sample (1, in_channels, s, s) with ``num_tokens`` zero
    bank tokens and records, with forward pre-hooks, the feature map each GCB receives.
    The UNet may live on the ``"meta"`` device (built under ``with torch.device("meta")``):
    then the pass computes shapes only, so SD v1.5's table costs no memory and no time.

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
        if hidden_states.ndim != 3 or attention_mask is not None or attn.norm_cross:
            raise ValueError(
                "AttentionStore reads plain (B, N, C) attention without mask or cross-norm, as "
                "in a GCB's attn2; install it on BasicTransformerBlock.attn2 modules only."
            )
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B * heads, N, head_dim)
        key = attn.head_to_batch_dim(attn.to_k(context))  # (B * heads, M, head_dim)
        self.probs.append(attn.get_attention_scores(query, key).detach().float().cpu())
        return self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)


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
