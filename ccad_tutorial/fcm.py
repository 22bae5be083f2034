"""Fine Compression Module (FCM): the learned second compression of CCAD(F).

The Coarse Feature Bank (CFB) holds M normal feature vectors of size D, picked by the
greedy coreset. The FCM squeezes it further into K learnable tokens of size ``ctx_dim``
(the "ctx" that every GCB cross-attends to):

    bank (M, D) --Linear--> (M, ctx) --+
                                        |  keys / values
    K learnable queries (K, ctx) --> cross-attention --> FFN --> LayerNorm --> (K, ctx)

The paper says only "learnable queries, cross-attention". The rest is our reading, a
Perceiver-Resampler / Q-Former style block (Flamingo, BLIP-2): queries initialised with
normal(std=0.02), pre-norm residual attention + GELU feed-forward, a final LayerNorm.
There are no positional encodings on the bank, so the output does not depend on the order
of the bank rows (a set in, a set out). The FCM is trained jointly with the diffusion loss.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn


class FineCompressionModule(nn.Module):
    """K learnable queries read the projected CFB through multi-head cross-attention.

    Args:
        bank_dim: D, size of one CFB vector.
        ctx_dim: size of one output token (the UNet's ``cross_attention_dim``).
        num_queries: K, the number of output tokens (the fine bank size).
        num_heads: attention heads; ``ctx_dim`` must be divisible by it.
        ffn_mult: hidden width of the feed-forward network, in multiples of ``ctx_dim``.
        dropout: dropout on attention weights and in the feed-forward network.
    """

    def __init__(
        self,
        bank_dim: int,
        ctx_dim: int,
        num_queries: int = 64,
        num_heads: int = 4,
        ffn_mult: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if ctx_dim % num_heads != 0:
            raise ValueError(
                f"FineCompressionModule: ctx_dim={ctx_dim} must be divisible by "
                f"num_heads={num_heads}; choose e.g. num_heads={_largest_divisor(ctx_dim, num_heads)}."
            )
        self.bank_dim, self.ctx_dim, self.num_queries = bank_dim, ctx_dim, num_queries
        self.bank_proj = nn.Linear(bank_dim, ctx_dim)  # D -> ctx
        self.queries = nn.Parameter(torch.randn(num_queries, ctx_dim) * 0.02)  # (K, ctx)
        self.norm_q = nn.LayerNorm(ctx_dim)
        self.norm_kv = nn.LayerNorm(ctx_dim)
        self.attn = nn.MultiheadAttention(ctx_dim, num_heads, dropout=dropout, batch_first=True)
        self.norm_ff = nn.LayerNorm(ctx_dim)
        self.ffn = nn.Sequential(
            nn.Linear(ctx_dim, ffn_mult * ctx_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_mult * ctx_dim, ctx_dim),
        )
        self.norm_out = nn.LayerNorm(ctx_dim)

    def forward(
        self,
        bank: Tensor,
        return_attention: bool = False,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Compress the CFB into K context tokens.

        Args:
            bank: CFB vectors, (M, D) or batched (B, M, D).
            return_attention: also return the per-head attention weights.
            key_padding_mask: (M,) or (B, M) bool, True marks bank rows to ignore
                (torch's ``nn.MultiheadAttention`` convention), for banks padded
                to equal M.

        Returns:
            ctx tokens (K, ctx_dim) or (B, K, ctx_dim); with ``return_attention``
            also the weights (heads, K, M) or (B, heads, K, M): row k says which
            bank entries query k reads, and sums to 1 over M.
        """
        unbatched = bank.dim() == 2
        bank = self._check_bank(bank)  # (B, M, D)
        if key_padding_mask is not None and key_padding_mask.dim() == 1:
            key_padding_mask = key_padding_mask.unsqueeze(0).expand(bank.shape[0], -1)
        kv = self.norm_kv(self.bank_proj(bank))  # (B, M, ctx)
        x = self.queries.unsqueeze(0).expand(bank.shape[0], -1, -1)  # (B, K, ctx)
        attn_out, weights = self.attn(
            self.norm_q(x),
            kv,
            kv,
            key_padding_mask=key_padding_mask,
            need_weights=return_attention,
            average_attn_weights=False,  # keep one map per head: (B, heads, K, M)
        )
        x = x + attn_out  # residual around cross-attention
        x = x + self.ffn(self.norm_ff(x))  # residual around the feed-forward network
        out = self.norm_out(x)  # (B, K, ctx)
        if unbatched:
            out = out[0]
            weights = weights[0] if weights is not None else None
        return (out, weights) if return_attention else out

    def _check_bank(self, bank: Tensor) -> Tensor:
        """Validate the bank layout and return it batched, (B, M, D)."""
        if bank.dim() not in (2, 3):
            raise ValueError(
                f"FineCompressionModule expects the bank as (M, D) or (B, M, D), got shape "
                f"{tuple(bank.shape)}; pass CoarseFeatureBank.features (M, D)."
            )
        if bank.shape[-1] != self.bank_dim:
            raise ValueError(
                f"FineCompressionModule was built for bank vectors of size D={self.bank_dim} "
                f"(bank_dim) but got D={bank.shape[-1]} (bank shape {tuple(bank.shape)}); "
                f"build it with bank_dim={bank.shape[-1]} or use the matching feature extractor."
            )
        return bank.unsqueeze(0) if bank.dim() == 2 else bank


def _largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of n that is <= at_most (for a helpful error message)."""
    return max(d for d in range(1, at_most + 1) if n % d == 0)


class ReadoutProbe(nn.Module):
    """What a GCB does with the condition tokens, reduced to one query per image.

    A query (the image's own feature, projected) cross-attends to condition tokens and the
    read-out is mapped back to feature space. Trained to reproduce the query's feature, it
    measures how much of the normal feature space a set of tokens still lets a position
    retrieve: the quality side of the FCM's cost/quality trade-off (chapter 4).

    With ``fcm=None`` the tokens are the projected CFB itself (no fine compression).
    """

    def __init__(self, bank_dim: int, ctx_dim: int, fcm: FineCompressionModule | None = None):
        super().__init__()
        self.fcm = fcm
        self.bank_proj = None if fcm is not None else nn.Linear(bank_dim, ctx_dim)
        self.query = nn.Linear(bank_dim, ctx_dim)
        self.out = nn.Linear(ctx_dim, bank_dim)

    def tokens(self, bank: Tensor) -> Tensor:
        """Condition tokens: (K, ctx) from the FCM, or (M, ctx): the projected CFB."""
        return self.fcm(bank) if self.fcm is not None else self.bank_proj(bank)

    def forward(self, features: Tensor, bank: Tensor) -> Tensor:
        """features (B, D), bank (M, D) -> read-out (B, D)."""
        tokens = self.tokens(bank)  # (T, ctx)
        scores = self.query(features) @ tokens.T / tokens.shape[-1] ** 0.5  # (B, T)
        return self.out(torch.softmax(scores, dim=-1) @ tokens)  # (B, D)


def fit_readout_probe(
    bank: Tensor,
    train_features: Tensor,
    num_queries: int | None,
    ctx_dim: int = 64,
    steps: int = 300,
    lr: float = 3e-3,
    seed: int = 0,
) -> tuple[ReadoutProbe, list[float]]:
    """Train a :class:`ReadoutProbe` (with an FCM of ``num_queries`` tokens, or none).

    Loss: 1 - cosine similarity between read-out and feature, on the TRAINING features
    (normal images only). Returns the probe and its loss history.
    """
    torch.manual_seed(seed)
    dim = bank.shape[-1]
    fcm = None if num_queries is None else FineCompressionModule(dim, ctx_dim, num_queries)
    probe = ReadoutProbe(dim, ctx_dim, fcm)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        loss = 1 - torch.cosine_similarity(probe(train_features, bank), train_features).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return probe.eval(), history


@torch.no_grad()
def readout_fidelity(probe: ReadoutProbe, features: Tensor, bank: Tensor) -> float:
    """Mean cosine similarity between read-out and feature on held-out (B, D) features."""
    return torch.cosine_similarity(probe(features, bank), features).mean().item()


def cross_attention_ms(
    tokens: int, positions: int = 256, dim: int = 64, heads: int = 4, repeat: int = 10
) -> float:
    """Milliseconds of one multi-head attention call on the CPU.

    ``positions`` queries (a feature map flattened, as in a GCB) attend to ``tokens`` keys
    and values, all ``dim`` wide in ``heads`` heads: the cost side of the FCM's trade-off
    (chapter 4). One warm-up call, then the median over 5 rounds of the mean time of
    ``repeat`` calls (timings on a shared machine are noisy).
    """
    q = torch.randn(1, heads, positions, dim // heads)
    kv = torch.randn(1, heads, tokens, dim // heads)
    torch.nn.functional.scaled_dot_product_attention(q, kv, kv)  # warm-up
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            torch.nn.functional.scaled_dot_product_attention(q, kv, kv)
        rounds.append((time.perf_counter() - start) / repeat * 1e3)
    return sorted(rounds)[len(rounds) // 2]
