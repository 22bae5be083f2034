"""Coarse compression: the greedy k-center coreset and the Coarse Feature Bank (CFB).

The paper's coarse compression keeps a fraction xi of the normal features, chosen so that
every feature has a close representative in the bank. That is the k-center problem: pick
M centres that minimise the covering radius

    r(S) = max_i min_{c in S} ||x_i - c||.

Finding the optimum is NP-hard; the greedy "farthest-first traversal" (Gonzalez 1985) is a
2-approximation: start anywhere, then repeatedly add the point farthest from the chosen set.
PatchCore (and anomalib's ``KCenterGreedy``) uses it to compress its memory bank; CCAD uses
it to build the Coarse Feature Bank that conditions the diffusion model.

Two tricks keep it fast on ~10^5 patch vectors:

1. Distances are measured after a Gaussian random projection to ``projection_dim`` dims
   (Johnson-Lindenstrauss: distances survive up to a factor 1 +- eps). The bank keeps the
   ORIGINAL vectors; the projection is only used to choose them.
2. The distance of every point to the chosen set is kept in one vector and updated with a
   single streaming pass over the projected (N, k) matrix per new centre:
   ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2, i.e. one matrix-vector product. The projected
   points are stored as the columns [x, ||x||^2, 1] of a (k + 2, N) table, so a single BLAS
   gemv with [-2c, 1, ||c||^2] yields every squared distance. No (N, N) matrix is ever
   built, and the loop allocates no N-sized temporaries.

``benchmarks/coreset_speed.py`` compares this with anomalib's ``KCenterGreedy`` and with the
physical bound (one pass over the projected matrix per selected point).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

_CHUNK_ROWS = 4096  # rows projected / checked at a time (bounds the temporaries)


@dataclass
class CoresetResult:
    """What the greedy k-center sampler returns when asked for more than the indices.

    indices: (M,) long, positions of the chosen rows in ``features``; indices[0] is the
        seeded start point.
    radius: covering radius of the M chosen points, measured where the selection was done
        (the projected space; the original space when the projection is disabled).
    radii_history: (M,) float, radii_history[m - 1] = covering radius of the first m
        points. Plotted against xi = m / N it shows what the compression costs.
    """

    indices: torch.Tensor
    radius: float
    radii_history: torch.Tensor


def coreset_size(num_points: int, n: int | None = None, ratio: float | None = None) -> int:
    """Number of points M to select from ``num_points`` given exactly one of ``n`` or ``ratio``.

    ``ratio`` is the paper's xi in (0, 1]; M = round(xi * N), at least 1.
    """
    if (n is None) == (ratio is None):
        raise ValueError(
            "Pass exactly one of n (number of points to keep) or ratio (fraction xi in (0, 1]) "
            f"to the coreset; got n={n!r}, ratio={ratio!r}."
        )
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= num_points:
            raise ValueError(
                f"Coreset size n must be an integer in [1, {num_points}] (the number of "
                f"feature vectors); got n={n!r}."
            )
        return int(n)
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 < ratio <= 1:
        raise ValueError(
            f"Coreset ratio (xi) must be a number in (0, 1], e.g. 0.1 keeps 10 %; got ratio={ratio!r}."
        )
    return max(1, round(ratio * num_points))


def _check_features(features: torch.Tensor) -> None:
    """Reject what the sampler cannot use: not a tensor, not (N, D), empty, not floating."""
    if not isinstance(features, torch.Tensor):
        raise ValueError(
            f"Coreset features must be a torch.Tensor of shape (N, D); got {type(features).__name__}."
        )
    if features.ndim != 2:
        raise ValueError(
            f"Coreset features must be 2-D (N, D), one row per feature vector; got shape "
            f"{tuple(features.shape)}. Flatten patch maps (B, D, h, w) with "
            "ccad_tutorial.features.flatten_patches first."
        )
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(
            f"Coreset features are empty (shape {tuple(features.shape)}): extract features of "
            "at least one training image first."
        )
    if not features.is_floating_point():
        raise ValueError(f"Coreset features must be floating point; got dtype {features.dtype}.")


def _raise_if_not_finite(columns: torch.Tensor) -> None:
    """Raise a ValueError naming the first column of projected ``columns`` (k, N) with NaN/inf.

    NaN and inf survive the projection, so one sum per column finds them (one cheap pass).
    """
    finite = torch.isfinite(columns.sum(dim=0))  # (N,)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise ValueError(
            f"Coreset features contain NaN or inf (first bad row: {bad}). Check the images and "
            "the extractor (e.g. an uncalibrated or diverged backbone) before building the bank."
        )


def _compute_dtype(features: torch.Tensor) -> torch.dtype:
    """float32 for float16/bfloat16/float32 input, float64 kept for float64 input."""
    return torch.promote_types(features.dtype, torch.float32)


def _project_columns(
    features: torch.Tensor, projection_dim: int | None, seed: int, extra_rows: int = 0
) -> torch.Tensor:
    """Projected features stored as columns: a (k + extra_rows, N) tensor, rows [0, k) filled.

    Column storage makes the per-step matrix-vector product stream memory contiguously
    (BLAS gemv on a column-major matrix is ~3x faster here than on a row-major one).
    """
    _check_features(features)
    num, dim = features.shape
    if projection_dim is not None and (
        isinstance(projection_dim, bool)
        or not isinstance(projection_dim, numbers.Integral)
        or projection_dim < 1
    ):
        raise ValueError(
            f"projection_dim must be a positive integer or None; got {projection_dim!r}."
        )
    dtype = _compute_dtype(features)
    project = projection_dim is not None and projection_dim < dim
    out_dim = projection_dim if project else dim
    if project:
        # a CPU generator draws the same matrix whatever the device
        generator = torch.Generator().manual_seed(seed)
        matrix = torch.randn(out_dim, dim, generator=generator, dtype=dtype)
        matrix = (matrix / math.sqrt(out_dim)).to(features.device)  # (k, D)
    out = torch.empty(out_dim + extra_rows, num, dtype=dtype, device=features.device)
    for start in range(0, num, _CHUNK_ROWS):
        block = features[start : start + _CHUNK_ROWS].to(dtype)  # (R, D)
        target = out[:out_dim, start : start + _CHUNK_ROWS]  # (k, R)
        if project:
            torch.matmul(matrix, block.T, out=target)
        else:
            target.copy_(block.T)
    _raise_if_not_finite(out[:out_dim])
    return out


def random_projection(
    features: torch.Tensor, projection_dim: int | None = 128, seed: int = 0
) -> torch.Tensor:
    """Project (N, D) features to (N, k) with a seeded Gaussian matrix scaled by 1/sqrt(k).

    Mirrors ``sklearn.random_projection.GaussianRandomProjection`` (same scaling, so
    E||xR||^2 = ||x||^2), done in torch on the features' device, chunk by chunk. With
    ``projection_dim=None`` or >= D the features are returned unprojected (exact distances).
    Raises ValueError if any row is NaN or inf. Returns (N, k) float32 (float64 for float64
    input), stored column-major.
    """
    return _project_columns(features, projection_dim, seed).T


@contextmanager
def _one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run the greedy loop single-threaded on CPU.

    Each step is a handful of operations on N-vectors: too small to gain from threads, while
    every multi-threaded op ends in a barrier that costs milliseconds on a busy 2-core machine.
    """
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def greedy_coreset_with_radius(
    features: torch.Tensor,
    n: int | None = None,
    ratio: float | None = None,
    projection_dim: int | None = 128,
    seed: int = 0,
) -> CoresetResult:
    """Greedy k-center (farthest-first traversal) on (N, D) features; see ``greedy_coreset``.

    Returns a ``CoresetResult`` with the (M,) indices, the covering radius and its history.
    Extra memory: the projected (k + 2, N) matrix plus three N-vectors.
    """
    _check_features(features)
    num = features.shape[0]
    m = coreset_size(num, n, ratio)
    # table columns are [x, ||x||^2, 1] so that one gemv with v = [-2c, 1, ||c||^2] gives
    # ||x||^2 - 2 x.c + ||c||^2 = ||x - c||^2 for every x at once (one pass over the table)
    table = _project_columns(features, projection_dim, seed, extra_rows=2)  # (k + 2, N)
    k = table.shape[0] - 2
    points = table[:k]  # (k, N)
    points -= points.mean(dim=1, keepdim=True)  # shift-invariant; centring helps float32 precision
    torch.linalg.vector_norm(points, dim=0, out=table[k]).square_()
    table[k + 1].fill_(1.0)
    min_sq = torch.full((num,), math.inf, dtype=table.dtype, device=table.device)  # (N,)
    indices = torch.empty(m, dtype=torch.long, device=table.device)
    sq_radii = torch.empty(m, dtype=table.dtype, device=table.device)
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randint(num, (1,), generator=generator).to(table.device)  # (1,) start point
    indices[0:1] = idx
    with _one_thread_on_cpu(table.device):
        _farthest_first(table, idx, min_sq, indices, sq_radii)
    radii = sq_radii.clamp_(min=0).sqrt_().cpu()  # -inf (everything chosen) -> radius 0
    return CoresetResult(indices=indices, radius=float(radii[-1]), radii_history=radii)


def _farthest_first(
    table: torch.Tensor,
    idx: torch.Tensor,
    min_sq: torch.Tensor,
    indices: torch.Tensor,
    sq_radii: torch.Tensor,
) -> None:
    """The greedy loop; fills ``indices`` (M,) and ``sq_radii`` (M,) in place.

    table: (k + 2, N) columns [x, ||x||^2, 1]; idx: (1,) the start point, already
    in indices[0]; min_sq: (N,) squared distance of every point to the chosen set
    (+inf at first).
    """
    k, m = table.shape[0] - 2, indices.shape[0]
    # query = [-2c, 1, ||c||^2] for the newest centre c
    query = torch.ones(k + 2, dtype=table.dtype, device=table.device)
    sq_dist = torch.empty_like(min_sq)  # (N,) to the newest centre, squared
    for step in range(m):
        column = table.index_select(1, idx).squeeze(1)  # [c, ||c||^2, 1]
        torch.mul(column[:k], -2.0, out=query[:k])
        query[k + 1 :] = column[k : k + 1]
        torch.mv(table.T, query, out=sq_dist)  # one streaming pass (gemv)
        torch.minimum(min_sq, sq_dist, out=min_sq)
        min_sq.index_fill_(0, idx, -math.inf)  # never chosen again
        # the farthest point from the chosen set; its distance is the covering
        # radius of the step + 1 centres chosen so far
        idx = torch.argmax(min_sq, dim=0, keepdim=True)
        sq_radii[step : step + 1] = min_sq[idx]
        if step + 1 < m:
            indices[step + 1 : step + 2] = idx


def greedy_coreset(
    features: torch.Tensor,
    n: int | None = None,
    ratio: float | None = None,
    projection_dim: int | None = 128,
    seed: int = 0,
) -> torch.Tensor:
    """Indices (M,) of a greedy k-center coreset of (N, D) ``features``.

    Pass exactly one of ``n`` (M, in [1, N]) or ``ratio`` (xi in (0, 1]). Distances are
    measured in a seeded Gaussian random projection to ``projection_dim`` dims (``None``:
    exact distances); the start point is a seeded random index and is part of the result.
    Deterministic for a given seed; runs on the features' device. Same algorithm as
    anomalib's ``KCenterGreedy.select_coreset_idxs``. For the covering radius use
    ``greedy_coreset_with_radius`` (or ``covering_radius`` in the original space).
    """
    return greedy_coreset_with_radius(features, n, ratio, projection_dim, seed).indices


@torch.no_grad()
def covering_radius(features: torch.Tensor, indices: torch.Tensor, chunk_size: int = 2048) -> float:
    """Covering radius max_i min_j ||x_i - x_{indices[j]}|| in the ORIGINAL (N, D) space.

    Computed chunk by chunk with ``torch.cdist`` so memory stays at (chunk_size, M).
    """
    _check_features(features)
    centers = features[indices.to(features.device)].to(_compute_dtype(features))  # (M, D)
    radius = 0.0
    for block in features.split(chunk_size):
        distances = torch.cdist(block.to(centers.dtype), centers)  # (chunk, M)
        radius = max(radius, float(distances.min(dim=1).values.max()))
    return radius
