"""Training a CCAD run: the loop, checkpoints, resume, and the errors a student can hit."""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_settings import FAST

from ccad_tutorial.bank import CoarseFeatureBank, bank_categories
from ccad_tutorial.datasets import DataError, load_split
from ccad_tutorial.detectors import train_run
from ccad_tutorial.evaluation import evaluate_run
from ccad_tutorial.model import CCAD
from ccad_tutorial.presets import make_config
from ccad_tutorial.train import TrainingDiverged


def run(data, out, steps=4, variant="F", **kw):
    kw = {"progress": False, **FAST, **kw}
    return train_run(data, "brick", out, variant=variant, steps=steps, **kw)


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    small = {k: v for k, v in FAST.items() if k not in ("vae_steps", "checkpoint_every")}
    cfg = make_config("tiny", "C", scaling_factor=1.0, lr=2e-3, **small)
    model = CCAD(cfg, torch.randn(8, 16))
    images = torch.rand(4, 3, 32, 32)
    x0 = model.encode(images)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=cfg.lr)
    losses = []
    for _ in range(10):
        loss = model.loss(x0, images, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_train_run_writes_a_complete_run_directory(minitex_root, tmp_path):
    summary = run(minitex_root, tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "bank.safetensors", "vae.safetensors", "model.safetensors"} <= files
    assert {"trainer_state.pt", "loss_log.csv"} <= files
    assert not any(name.endswith(".tmp") for name in files)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["variant"] == "F" and config["scaling_factor"] > 0
    rows = list(csv.DictReader((tmp_path / "run" / "loss_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert summary["steps"] == 4 and "vae_s" in summary["times"]
    state = torch.load(tmp_path / "run" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 4


def test_from_pretrained_rebuilds_the_saved_weights(minitex_root, tmp_path):
    run(minitex_root, tmp_path / "run", steps=2, variant="C", guidance="bottleneck")
    model = CCAD.from_pretrained(tmp_path / "run")
    cfg = model.cfg
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert same_weights(model.state_dict(), saved)
    assert cfg.guidance == "bottleneck" and model.controlnet is not None


def test_resume_continues_at_the_saved_step_like_an_uninterrupted_run(
    minitex_root, tmp_path, capsys
):
    run(minitex_root, tmp_path / "straight", steps=4)
    run(minitex_root, tmp_path / "split", steps=2)
    # with progress output on (the CLI's default), the resumed run says so
    summary = run(minitex_root, tmp_path / "split", steps=4, resume=True, progress=True)
    assert f"Resumed from {tmp_path / 'split'} at step 2" in capsys.readouterr().out
    assert summary["steps"] == 4
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert same_weights(a, b)
    rows = list(csv.DictReader((tmp_path / "split" / "loss_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]


def test_truncated_checkpoint_is_a_clear_error_and_nothing_is_overwritten(minitex_root, tmp_path):
    run(minitex_root, tmp_path / "run", steps=2)
    path = tmp_path / "run" / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(ValueError, match="corrupt or truncated"):
        CCAD.from_pretrained(tmp_path / "run")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        run(minitex_root, tmp_path / "run", steps=4, resume=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_corrupt_trainer_state_is_a_clear_error(minitex_root, tmp_path):
    run(minitex_root, tmp_path / "run", steps=2)
    (tmp_path / "run" / "trainer_state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="trainer_state.pt is corrupt"):
        run(minitex_root, tmp_path / "run", steps=4, resume=True)


def test_resume_with_another_variant_names_both(minitex_root, tmp_path):
    run(minitex_root, tmp_path / "run", steps=2)
    with pytest.raises(ValueError, match="variant 'F'.*variant 'C'"):
        run(minitex_root, tmp_path / "run", steps=4, variant="C", resume=True)


def test_a_folder_without_config_is_not_a_run(tmp_path):
    with pytest.raises(ValueError, match="is not a CCAD run"):
        CCAD.from_pretrained(tmp_path)


def test_existing_run_is_not_overwritten_without_resume(minitex_root, tmp_path):
    run(minitex_root, tmp_path / "run", steps=2)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="--resume"):
        run(minitex_root, tmp_path / "run", steps=2)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_missing_category_fails_before_anything_is_written(minitex_root, tmp_path):
    with pytest.raises(DataError, match="not in"):
        train_run(minitex_root, "wood", tmp_path / "run", steps=1, progress=False)
    assert not (tmp_path / "run").exists()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    minitex_root, tmp_path, monkeypatch
):
    calls = {"n": 0}
    loss = CCAD.loss

    def nan_from_step_3(self, *args, **kwargs):
        calls["n"] += 1
        value = loss(self, *args, **kwargs)
        return value * float("nan") if calls["n"] >= 3 else value

    monkeypatch.setattr(CCAD, "loss", nan_from_step_3)
    with pytest.raises(TrainingDiverged, match="step 3.*step 2"):
        run(minitex_root, tmp_path / "run", steps=4)
    state = torch.load(tmp_path / "run" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_evaluate_run_reports_metrics_json_and_grid(minitex_root, tmp_path):
    run(minitex_root, tmp_path / "run", steps=2, variant="uncond", ddim_steps=2)
    result = evaluate_run(
        tmp_path / "run", minitex_root, "brick", json_out=tmp_path / "m.json",
        grid_png=tmp_path / "grid.png", progress=False,
    )  # fmt: skip
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0.0 <= result[key] <= 1.0
    assert json.loads((tmp_path / "m.json").read_text())["image_auroc"] == result["image_auroc"]
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_retrieved_run_saves_the_extractor_its_bank_was_built_with(minitex_root, tmp_path):
    run(minitex_root, tmp_path / "run", steps=2, variant="C", bank_mode="retrieved")
    model = CCAD.from_pretrained(tmp_path / "run")
    images = load_split(minitex_root, "mvtec", "brick", "train", image_size=32).images
    query = model.global_features(images)
    bank = model.bank
    assert (
        min(torch.cdist(query, bank).min(dim=1).values.tolist()) < 1e-3
    )  # bank rows = train features
    assert model.reconstruct(images[:2]).shape == (2, 3, 32, 32)


def test_ema_weights_are_saved_and_used_for_evaluation(minitex_root, tmp_path):
    run(minitex_root, tmp_path / "run", steps=2, variant="C", ema_decay=0.5)
    assert (tmp_path / "run" / "ema.safetensors").is_file()
    ema_model = CCAD.from_pretrained(tmp_path / "run", use_ema=True)
    raw_model = CCAD.from_pretrained(tmp_path / "run", use_ema=False)
    a, b = ema_model.unet.conv_out.weight, raw_model.unet.conv_out.weight
    assert not torch.equal(a, b)
    torch.testing.assert_close(
        ema_model.vae.decoder.conv_out.weight, raw_model.vae.decoder.conv_out.weight
    )


def test_one_unified_model_trains_on_several_categories_and_knows_its_bank(minitex_root, tmp_path):
    out = tmp_path / "unified"
    train_run(
        minitex_root, "brick+grass", out, variant="F", steps=2, progress=False,
        bank_mode="retrieved", **FAST,
    )  # fmt: skip
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["extra"]["train_counts"] == {"brick": 16, "grass": 16}
    bank = CoarseFeatureBank.load(out / "bank.safetensors")
    assert bank.source_count == 32  # one bank selected from both categories' normals
    owners = bank_categories(out)
    assert len(owners) == len(bank) and set(owners) <= {"brick", "grass"}
    expected = ["brick" if int(i) < 16 else "grass" for i in bank.indices]
    assert owners == expected
    summary = train_run(
        minitex_root, "brick+grass", out, variant="F", steps=3, resume=True, progress=False
    )
    assert summary["steps"] == 3
    assert bank_categories(tmp_path / "unified") == owners  # resuming keeps the bank


@pytest.mark.parametrize("bad", ["brick+brick", "brick+", "brick+nowhere"])
def test_joined_categories_are_checked_before_anything_is_written(minitex_root, tmp_path, bad):
    with pytest.raises(DataError, match="category|Category"):
        train_run(minitex_root, bad, tmp_path / "run", steps=1, progress=False, **FAST)
    assert not (tmp_path / "run").exists()


def test_a_balanced_bank_keeps_every_category_of_a_unified_run(minitex_root, tmp_path):
    from collections import Counter

    out = tmp_path / "balanced"
    train_run(
        minitex_root, "brick+grass", out, variant="C", steps=1, progress=False,
        balanced_bank=True, xi=0.5, **FAST,
    )  # fmt: skip
    assert Counter(bank_categories(out)) == {"brick": 8, "grass": 8}  # xi of each category's 16


def test_loss_curve_averages_windows_of_the_log(tmp_path):
    from ccad_tutorial.runs import loss_curve

    rows = ["step,loss,lr,elapsed_s"] + [f"{s},{s % 2},0.001,0.1" for s in range(1, 41)]
    (tmp_path / "loss_log.csv").write_text("\n".join(rows) + "\n")
    steps, losses = loss_curve(tmp_path, points=10)
    assert steps == list(range(4, 41, 4))  # each window ends at its last step
    assert losses == [0.5] * 10  # the alternating 1, 0 averages out in every window
    with pytest.raises(FileNotFoundError, match="no loss log"):
        loss_curve(tmp_path / "missing")


def test_auto_resume_continues_leaves_a_finished_run_alone_and_refuses_another_category(
    minitex_root, tmp_path
):
    out = tmp_path / "run"
    (out).mkdir()
    (out / "config.json").write_text("{}")  # stopped before its first checkpoint
    assert run(minitex_root, out, steps=2, resume="auto")["steps"] == 2
    weights = (out / "model.safetensors").read_bytes()
    again = run(minitex_root, out, steps=2, resume="auto")  # reached its budget
    assert again["steps"] == 2 and (out / "model.safetensors").read_bytes() == weights
    assert run(minitex_root, out, steps=4, resume="auto")["steps"] == 4  # continues
    with pytest.raises(ValueError, match="trained on brick, not grass"):
        train_run(minitex_root, "grass", out, steps=6, resume="auto", progress=False)


def _loss_log(folder, losses):
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["step,loss,lr,elapsed_s"] + [f"{s},{v},0.001,0.1" for s, v in enumerate(losses, 1)]
    (folder / "loss_log.csv").write_text("\n".join(rows) + "\n")


def test_loss_fall_compares_the_last_third_with_the_one_before(tmp_path):
    from ccad_tutorial.runs import loss_fall

    _loss_log(tmp_path, [4.0] * 3 + [2.0] * 3 + [1.0] * 3)  # the first third does not count
    assert loss_fall(tmp_path) == pytest.approx(0.5)
    assert loss_fall(tmp_path, parts=9) == 0.0  # the last two steps: no fall
    _loss_log(tmp_path / "one", [1.0])  # a single step cannot fall
    assert loss_fall(tmp_path / "one") == 0.0
    with pytest.raises(FileNotFoundError, match="no loss log"):
        loss_fall(tmp_path / "missing")
