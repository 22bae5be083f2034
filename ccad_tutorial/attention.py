"""Looking inside a UNet: where its GCBs sit and which bank tokens each position reads.

``gcb_table`` says where each GCB of a diffusers UNet sits (part, resolution, heads,
tokens; ``gcb_table_rows`` makes table cells of it). ``capture_cross_attention`` records
the cross-attention probabilities of the GCBs while the UNet runs (``AttentionStore``),
and ``cross_attention_maps`` does that for one denoising pass of a CCAD model.
``attention_entropy``, ``position_spread`` and ``attention_statistics`` say how spread
out and how position-dependent that reading is, ``plot_retrieval`` draws what four
positions retrieve (chapter 5). The block itself, and ``find_gcbs`` that finds it in a
UNet, are gcb.py's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ccad_tutorial.gcb import find_gcbs


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


@torch.no_grad()
def cross_attention_maps(
    model: nn.Module, images: Tensor, t: Tensor, noise_seed: int = 0
) -> dict[str, Tensor]:
    """{GCB name: (B, heads, N, T) cross-attention probabilities} of a CCAD model.

    The images (B, 3, H, W) are encoded, noised to timestep ``t`` (shape (1,)) with the
    fixed noise of ``sampling.image_noise`` and denoised once, with the model's own
    condition, while :func:`capture_cross_attention` records every GCB.
    """
    from ccad_tutorial.sampling import image_noise

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
