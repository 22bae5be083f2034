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
