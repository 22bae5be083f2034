"""The condition-swap diagnostic: does a trained CCAD use its bank?"""

import torch
from tiny_settings import FAST

from ccad_tutorial.datasets import load_split
from ccad_tutorial.diagnostics import condition_swap, swapped_banks
from ccad_tutorial.train import load_run, train_run


def test_shuffled_bank_is_a_different_set_of_vectors():
    bank = torch.arange(12.0).reshape(3, 4)
    banks = swapped_banks(bank, seed=0)
    assert banks["shuffled"].shape == bank.shape
    assert sorted(banks["shuffled"].flatten().tolist()) == sorted(bank.flatten().tolist())
    assert {tuple(r) for r in banks["shuffled"].tolist()} != {tuple(r) for r in bank.tolist()}
    assert banks["zeros"].abs().sum() == 0


def trained_c(minitex_root, tmp_path, steps: int):
    """A tiny C model trained for ``steps`` on brick, and brick's test split."""
    train_run(
        minitex_root, "brick", tmp_path / "run", variant="C", steps=steps, progress=False,
        ddim_steps=2, **FAST,
    )  # fmt: skip
    model, _ = load_run(tmp_path / "run")
    return model, load_split(minitex_root, "mvtec", "brick", "test", image_size=32)


def test_condition_swap_reports_every_bank_and_sees_the_change(minitex_root, tmp_path):
    model, test = trained_c(minitex_root, tmp_path, steps=2)
    keep = torch.cat([torch.nonzero(test.labels == 0)[:3], torch.nonzero(test.labels == 1)[:3]])
    keep = keep.flatten().tolist()
    test.images, test.masks, test.labels = test.images[keep], test.masks[keep], test.labels[keep]
    other = torch.randn_like(model.bank)
    results = condition_swap(model, test, {"other": other})
    assert list(results) == ["real", "shuffled", "zeros", "other"]
    assert results["real"]["recon_change"] == 0.0
    assert results["zeros"]["recon_change"] > 0  # a C model's output depends on its bank
    assert results["real"]["heldout_loss"] != results["zeros"]["heldout_loss"]
    assert 0 <= results["shuffled"]["image_auroc"] <= 1
    again = condition_swap(model, test)
    assert again["real"] == results["real"]  # fixed noise: the diagnostic is reproducible


def test_condition_swap_without_controls_evaluates_only_the_banks_asked_for(minitex_root, tmp_path):
    model, test = trained_c(minitex_root, tmp_path, steps=1)
    results = condition_swap(model, test, {"other": torch.randn_like(model.bank)}, controls=False)
    assert list(results) == ["real", "other"]
    assert results["other"]["recon_change"] > 0


class _RepaintsDefects:
    """A stand-in model: repaints the masked region with grey, scores by pixel difference."""

    def __init__(self, masks):
        self.masks = masks

    def reconstruct(self, images, noise_seed=0):
        return torch.where(self.masks.expand_as(images) > 0, torch.full_like(images, 0.5), images)

    def anomaly_maps(self, images, recons):
        maps = (images - recons).abs().mean(dim=1, keepdim=True)
        return maps, maps.flatten(1).amax(dim=1)


def test_map_check_separates_the_model_from_the_map():
    from ccad_tutorial.diagnostics import map_check

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 16, 16, generator=gen) * 0.2  # dark, so grey repaint is visible
    masks = torch.zeros(8, 1, 16, 16)
    masks[4:, :, 4:8, 4:8] = 1
    labels = torch.tensor([0] * 4 + [1] * 4)
    check = map_check(_RepaintsDefects(masks), images, labels, masks, noise=0.1)
    assert list(check) == ["model", "model, pixel L1", "noisy copy"]
    for name in ("model", "model, pixel L1"):  # a model that repaints the defect: found
        assert check[name]["pixel_auroc"] > 0.95 and check[name]["image_auroc"] == 1.0
    assert check["model"]["defect_error"] > 0.2 > check["model"]["normal_error"] == 0.0
    # a noisy copy changes every pixel alike: no better than chance at finding the defect
    assert abs(check["noisy copy"]["pixel_auroc"] - 0.5) < 0.1
