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

``find_gcbs`` lists the GCBs of a diffusers UNet, and ``diffusers_equivalence`` measures
how far a GCB and a ``BasicTransformerBlock`` with the same weights differ (chapter 5).
Where the GCBs of a UNet sit and what they read is attention.py's business.
"""

from __future__ import annotations

import math

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
