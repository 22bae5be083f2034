"""The greedy k-center coreset and the Coarse Feature Bank, as examples."""

import itertools
import math

import pytest
import torch
from sklearn.random_projection import johnson_lindenstrauss_min_dim

from ccad_tutorial.bank import CoarseFeatureBank
from ccad_tutorial.coreset import (
    covering_radius,
    greedy_coreset,
    greedy_coreset_with_radius,
    random_projection,
)


def clusters(
    num_clusters: int = 4, per_cluster: int = 25, dim: int = 16, seed: int = 0
) -> torch.Tensor:
    """(num_clusters * per_cluster, dim) points in tight, far-apart clusters."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_clusters, dim, generator=generator) * 10
    noise = torch.randn(num_clusters, per_cluster, dim, generator=generator) * 0.1
    return (centers[:, None] + noise).reshape(-1, dim)


def brute_force_k_center_radius(points: torch.Tensor, k: int) -> float:
    """The optimal k-center covering radius, trying every subset of k centres."""
    distances = torch.cdist(points, points)  # (N, N): fine for N ~ 10
    return min(
        float(distances[:, list(subset)].min(dim=1).values.max())
        for subset in itertools.combinations(range(points.shape[0]), k)
    )


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [2, 3])
def test_coreset_is_two_approximation_of_brute_force(seed, k):
    points = torch.rand(11, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    result = greedy_coreset_with_radius(points, n=k, projection_dim=None, seed=seed)
    optimum = brute_force_k_center_radius(points, k)
    assert result.radius <= 2 * optimum + 1e-9
    assert result.radius == pytest.approx(covering_radius(points, result.indices))


def test_projection_preserves_distances_within_johnson_lindenstrauss_tolerance():
    points = torch.randn(40, 2048, generator=torch.Generator().manual_seed(123))
    projected = random_projection(points, projection_dim=512, seed=0)
    # smallest eps for which sklearn's JL bound says 512 dims suffice for 40 points
    eps = next(
        e / 100 for e in range(1, 100) if johnson_lindenstrauss_min_dim(40, eps=e / 100) <= 512
    )
    mask = ~torch.eye(40, dtype=torch.bool)
    ratio = (torch.cdist(projected, projected) ** 2)[mask] / (torch.cdist(points, points) ** 2)[
        mask
    ]
    assert projected.shape == (40, 512)
    assert (ratio > 1 - eps).all() and (ratio < 1 + eps).all()


def test_greedy_loop_matches_a_plain_farthest_first_reference():
    points = torch.randn(300, 64, generator=torch.Generator().manual_seed(1))
    indices = greedy_coreset(points, n=20, projection_dim=16, seed=3)
    projected = random_projection(points, projection_dim=16, seed=3)
    reference = [int(indices[0])]  # same start; then the textbook loop with full cdist
    for _ in range(19):
        nearest = torch.cdist(projected, projected[reference]).min(dim=1).values
        reference.append(int(nearest.argmax()))
    assert indices.tolist() == reference


def test_coreset_picks_one_point_per_cluster():
    points = clusters(num_clusters=4, per_cluster=25)
    indices = greedy_coreset(points, n=4)
    assert sorted(int(i) // 25 for i in indices) == [0, 1, 2, 3]


def test_greedy_coreset_is_deterministic_for_a_seed():
    points = torch.randn(500, 32, generator=torch.Generator().manual_seed(0))
    first = greedy_coreset(points, ratio=0.1, seed=7)
    assert torch.equal(first, greedy_coreset(points, ratio=0.1, seed=7))
    assert not torch.equal(first, greedy_coreset(points, ratio=0.1, seed=8))


def test_coreset_returns_distinct_indices_including_the_start_point():
    points = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    points[100:] = points[0]  # half the set is one duplicated point
    result = greedy_coreset_with_radius(points, n=150, projection_dim=None)
    assert result.indices.dtype == torch.long and result.indices.shape == (150,)
    assert result.indices.unique().numel() == 150
    start = int(torch.randint(200, (1,), generator=torch.Generator().manual_seed(0)))
    assert int(result.indices[0]) == start


def test_ratio_keeps_the_fraction_xi_of_the_points():
    points = torch.randn(250, 8, generator=torch.Generator().manual_seed(0))
    assert greedy_coreset(points, ratio=0.1).shape == (25,)
    assert greedy_coreset(points, ratio=1.0).shape == (250,)


def test_radius_history_shrinks_to_zero_when_every_point_is_kept():
    points = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    result = greedy_coreset_with_radius(points, n=30, projection_dim=None)
    history = result.radii_history
    assert history.shape == (30,)
    assert (history[1:] <= history[:-1] + 1e-6).all()
    assert result.radius == 0.0 and history[-1] == 0.0


def test_covering_radius_is_the_largest_distance_to_the_nearest_centre():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [5.0, 2.0]])
    assert covering_radius(points, torch.tensor([0, 2]), chunk_size=3) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "features, kwargs, message",
    [
        (torch.randn(10, 4), {"n": 0}, "in \\[1, 10\\]"),
        (torch.randn(10, 4), {"n": 11}, "in \\[1, 10\\]"),
        (torch.randn(10, 4), {"ratio": 0.0}, "\\(0, 1\\]"),
        (torch.randn(10, 4), {"ratio": 1.5}, "\\(0, 1\\]"),
        (torch.randn(10, 4), {}, "exactly one of n"),
        (torch.randn(10, 4), {"n": 2, "ratio": 0.5}, "exactly one of n"),
        (torch.randn(0, 4), {"n": 1}, "empty"),
        (torch.randn(10), {"n": 1}, "2-D"),
        (torch.randn(2, 4, 3, 3), {"n": 1}, "flatten_patches"),
        (torch.ones(10, 4, dtype=torch.long), {"n": 1}, "floating point"),
        (torch.randn(10, 4), {"n": 2, "projection_dim": 0}, "projection_dim"),
    ],
)
def test_bad_input_raises_a_clear_value_error(features, kwargs, message):
    with pytest.raises(ValueError, match=message):
        greedy_coreset(features, **kwargs)


def test_nan_features_are_rejected_naming_the_row():
    features = torch.randn(20, 6)
    features[13, 2] = math.nan
    with pytest.raises(ValueError, match="row: 13"):
        greedy_coreset(features, n=3)


def test_bank_keeps_original_vectors_and_a_minimum_size():
    points = torch.randn(60, 32, generator=torch.Generator().manual_seed(0))
    bank = CoarseFeatureBank.build(points, ratio=0.05, projection_dim=8)
    assert len(bank) == 8  # round(0.05 * 60) = 3 < min_size
    assert torch.equal(bank.features, points[bank.indices])
    assert bank.xi == pytest.approx(8 / 60) and bank.source_count == 60 and bank.radius > 0
    assert len(CoarseFeatureBank.build(points, n=20)) == 20


def test_bank_save_load_round_trip(tmp_path):
    bank = CoarseFeatureBank.build(torch.randn(100, 16, generator=torch.Generator().manual_seed(0)))
    path = bank.save(tmp_path / "banks" / "cfb.safetensors")
    loaded = CoarseFeatureBank.load(path)
    assert torch.equal(loaded.features, bank.features) and torch.equal(loaded.indices, bank.indices)
    assert (loaded.xi, loaded.radius, loaded.source_count) == (bank.xi, bank.radius, 100)
    assert [p.name for p in path.parent.iterdir()] == ["cfb.safetensors"]  # no temp file left


def test_bank_load_names_a_missing_or_corrupt_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.safetensors"):
        CoarseFeatureBank.load(tmp_path / "nothere.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        CoarseFeatureBank.load(corrupt)
