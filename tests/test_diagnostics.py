"""The condition-swap diagnostic: does a trained CCAD use its bank?"""

import torch
from tiny_settings import FAST

from ccad_tutorial.datasets import load_split
from ccad_tutorial.detectors import ReconstructionDetector, train_run
from ccad_tutorial.diagnostics import condition_swap, swapped_banks
from ccad_tutorial.experiments import scored_detector
from ccad_tutorial.presets import make_config


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
    detector = scored_detector(tmp_path / "run", minitex_root, "brick")
    return detector, load_split(minitex_root, "mvtec", "brick", "test", image_size=32)


def test_condition_swap_reports_every_bank_and_sees_the_change(minitex_root, tmp_path):
    detector, test = trained_c(minitex_root, tmp_path, steps=2)
    keep = torch.cat([torch.nonzero(test.labels == 0)[:3], torch.nonzero(test.labels == 1)[:3]])
    keep = keep.flatten().tolist()
    test.images, test.masks, test.labels = test.images[keep], test.masks[keep], test.labels[keep]
    test.defect_types = [test.defect_types[i] for i in keep]
    other = torch.randn_like(detector.model.bank)
    own = detector.model.bank.clone()  # given explicitly: must repaint exactly as "real"
    results = condition_swap(detector, test, {"other": other, "own": own})
    assert list(results) == ["real", "shuffled", "zeros", "other", "own"]
    assert results["own"]["recon_change"] == 0.0
    assert results["own"]["image_auroc"] == results["real"]["image_auroc"]
    assert results["zeros"]["recon_change"] > 0  # a C model's output depends on its bank
    assert results["real"]["heldout_loss"] != results["zeros"]["heldout_loss"]
    assert 0 <= results["shuffled"]["image_auroc"] <= 1
    again = condition_swap(detector, test)
    assert again["real"] == results["real"]  # fixed noise: the diagnostic is reproducible


def test_condition_swap_without_controls_evaluates_only_the_banks_asked_for(minitex_root, tmp_path):
    detector, test = trained_c(minitex_root, tmp_path, steps=1)
    other = torch.randn_like(detector.model.bank)
    results = condition_swap(detector, test, {"other": other}, controls=False)
    assert list(results) == ["real", "other"]
    assert results["other"]["recon_change"] > 0


class _RepaintsDefects(ReconstructionDetector):
    """A stand-in detector: repaints the masked region with grey, scores by pixel difference."""

    def __init__(self, masks):
        self.masks, self.noise_seed = masks, 0
        self.fit_scorers(make_config("tiny", "F", score_mode="l1"), None)

    def reconstruct(self, images):
        return torch.where(self.masks.expand_as(images) > 0, torch.full_like(images, 0.5), images)


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
