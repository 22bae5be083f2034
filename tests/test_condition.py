"""The condition at work: guidance on the bank, condition dropout, one bank per category,
generation from pure noise (the positive control), per-defect metrics, the validation split,
and the ``probe`` and ``evaluate --set`` commands on a small unified run."""

import json

import numpy as np
import pytest
import torch
from tiny_settings import FAST
from torch import nn

from ccad_tutorial import defects, minitex
from ccad_tutorial.bank import CoarseFeatureBank, bank_categories, entry_labels
from ccad_tutorial.cli import main
from ccad_tutorial.datasets import load_split
from ccad_tutorial.detectors import train_run
from ccad_tutorial.diagnostics import NearestCategory, conditional_generation
from ccad_tutorial.evaluation import evaluate_run
from ccad_tutorial.metrics import per_defect_type
from ccad_tutorial.model import CCAD
from ccad_tutorial.presets import make_config, set_inference_fields
from ccad_tutorial.train import TrainingData

SMALL = dict(
    image_size=32,
    num_queries=8,
    cross_attention_dim=32,
    norm_num_groups=8,
    vae_block_out_channels=(16, 16, 16),
    score_mode="l1",  # no ResNet-50 to build: these tests never score
)


def tiny(variant="F", bank=None, bank_labels=None, **overrides) -> CCAD:
    """An untrained toy CCAD (32 px, latent 4 x 8 x 8) on a random (10, 24) bank."""
    torch.manual_seed(0)
    widths = {} if variant == "V" else {"block_out_channels": (16, 32, 32)}
    cfg = make_config("tiny", variant, scaling_factor=1.0, **{**SMALL, **widths, **overrides})
    bank = torch.randn(10, 24) if bank is None else bank
    return CCAD(cfg, bank, bank_labels=bank_labels).eval()


def noisy_latents(model: CCAD, b: int = 2):
    gen = torch.Generator().manual_seed(1)
    side = model.cfg.image_size // model.factor
    return torch.randn(b, 4, side, side, generator=gen), torch.tensor([10, 500, 900][:b])


# ---------------------------------------------------------------------- classifier-free guidance
def test_guided_noise_mixes_the_null_and_the_bank_predictions_by_the_guidance_scale():
    model = tiny("F", cond_dropout=0.1)
    assert isinstance(model.null_token, nn.Parameter) and model.null_token.requires_grad
    x_t, t = noisy_latents(model)
    ctx = model.context(2)
    with torch.no_grad():
        eps_bank = model.predict_noise(x_t, t, ctx, None)
        eps_null = model.predict_noise(x_t, t, model.null_context(2), None)
        assert not torch.allclose(eps_bank, eps_null, atol=1e-4)  # the bank makes a difference
        for w in (0.0, 1.0, 2.0, 3.5):
            model.cfg.guidance_scale = w
            expected = eps_null + w * (eps_bank - eps_null)
            got = model.guided_noise(x_t, t, ctx, None)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        model.cfg.guidance_scale = 0.0
        assert torch.equal(model.guided_noise(x_t, t, ctx, None), eps_null)
        model.cfg.guidance_scale = 1.0
        assert torch.equal(model.guided_noise(x_t, t, ctx, None), eps_bank)


def test_guidance_without_condition_dropout_is_refused_naming_cond_dropout():
    with pytest.raises(ValueError, match="cond_dropout"):
        make_config("tiny", "F", guidance_scale=2.0)
    with pytest.raises(ValueError, match="cond_dropout"):
        set_inference_fields(make_config("tiny", "C"), {"guidance_scale": 0.0})
    with pytest.raises(ValueError, match="cond_dropout"):
        make_config("tiny", "F", cond_dropout=1.0)  # nothing left to learn the condition from
    assert make_config("tiny", "F", cond_dropout=0.1, guidance_scale=2.0).guidance_scale == 2.0
    assert make_config("tiny", "uncond", guidance_scale=2.0).guidance_scale == 2.0  # a no-op


def test_an_f_model_trained_without_dropout_has_no_null_token():
    model = tiny("F")
    assert not hasattr(model, "null_token")
    assert not any("null_token" in k for k in model.state_dict())
    assert "null_token" in tiny("F", cond_dropout=0.2).state_dict()
    assert "null_token" in tiny("uncond").state_dict()


def test_null_context_of_any_length_gives_the_same_prediction():
    model = tiny("F", cond_dropout=0.1)
    x_t, t = noisy_latents(model)
    five = model.null_context(2, 5)
    assert five.shape == (2, 5, model.cfg.cross_attention_dim)
    assert torch.equal(five[:, 3], model.null_token.expand(2, -1))
    with torch.no_grad():
        one = model.predict_noise(x_t, t, model.null_context(2, 1), None)
        many = model.predict_noise(x_t, t, five, None)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------- condition dropout in loss
def test_a_dropped_condition_makes_the_loss_blind_to_the_bank():
    model = tiny("F", cond_dropout=0.99).train()
    images = torch.rand(3, 3, 32, 32)
    x0 = model.encode(images)
    other = torch.randn_like(model.bank) * 3

    def loss(bank=None):
        with torch.no_grad():
            return model.loss(x0, generator=torch.Generator().manual_seed(0), bank=bank)

    torch.testing.assert_close(loss(), loss(other))  # every condition became the null token
    torch.testing.assert_close(loss(), loss(torch.zeros_like(model.bank)))
    model.cfg.cond_dropout = 0.0  # the same weights, the condition kept: now the bank matters
    assert not torch.allclose(loss(), loss(other))


def test_condition_dropout_happens_in_training_only():
    model = tiny("F", cond_dropout=0.99).eval()  # e.g. the held-out loss of the swap
    images = torch.rand(3, 3, 32, 32)
    x0 = model.encode(images)
    with torch.no_grad():
        real = model.loss(x0, generator=torch.Generator().manual_seed(0))
        zeros = model.loss(x0, generator=torch.Generator().manual_seed(0), bank=model.bank * 0)
    assert not torch.allclose(real, zeros)


def test_condition_dropout_trains_the_null_token_and_only_it_when_everything_is_dropped():
    images = torch.rand(8, 3, 32, 32)
    half = tiny("F", cond_dropout=0.5).train()
    half.loss(half.encode(images), generator=torch.Generator().manual_seed(0)).backward()
    assert half.null_token.grad is not None and half.null_token.grad.abs().sum() > 0
    assert half.fcm.queries.grad.abs().sum() > 0  # the kept conditions still train the FCM

    dropped = tiny("F", cond_dropout=0.99).train()
    dropped.loss(dropped.encode(images), generator=torch.Generator().manual_seed(0)).backward()
    assert dropped.null_token.grad.abs().sum() > 0
    grad = dropped.fcm.queries.grad
    assert grad is None or grad.abs().sum() == 0  # no condition reached the UNet


# ---------------------------------------------------------------------- bank_mode="category"
LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 2, 1]


def category_model(variant="F") -> CCAD:
    torch.manual_seed(3)
    bank = torch.randn(10, 24)
    return tiny(variant, bank=bank, bank_labels=torch.tensor(LABELS), bank_mode="category")


def test_category_tokens_are_each_inputs_own_category_repeated_cyclically():
    model = category_model()
    tokens = model.category_tokens(torch.tensor([2, 0, 1]))
    bank = model.bank
    assert tokens.shape == (3, 4, 24)  # the largest category (2) has 4 entries
    assert torch.equal(tokens[0], bank[[5, 6, 7, 8]])
    assert torch.equal(tokens[1], bank[[0, 1, 2, 0]])
    assert torch.equal(tokens[2], bank[[3, 4, 9, 3]])
    with pytest.raises(ValueError, match="category 3"):
        model.category_tokens(torch.tensor([3]))


def test_the_nearest_bank_entry_chooses_the_category_at_test_time():
    model = category_model()
    gen = torch.Generator().manual_seed(0)
    query = model.bank[[4, 0, 6, 9]] + 1e-3 * torch.randn(4, 24, generator=gen)
    assert model.assign_category(query).tolist() == [1, 0, 2, 1]
    with pytest.raises(ValueError, match="query"):
        model.assign_category(None)


@pytest.mark.parametrize(("variant", "tokens"), [("F", 8), ("C", 4)])
def test_the_context_depends_on_the_category(variant, tokens):
    model = category_model(variant)
    with torch.no_grad():
        ctx = model.context(3, labels=torch.tensor([0, 1, 0]))
        assert ctx.shape == (3, tokens, 32)
        assert torch.equal(ctx[0], ctx[2])
        assert not torch.allclose(ctx[0], ctx[1])
        by_query = model.context(1, query=model.bank[3:4] + 1e-3)  # nearest: an entry of 1
        torch.testing.assert_close(by_query, ctx[1:2])


def test_in_training_the_label_not_the_query_chooses_the_category():
    model = category_model()
    x0 = model.encode(torch.rand(2, 3, 32, 32))
    near_0, near_2 = model.bank[[0, 1]], model.bank[[5, 6]]

    def loss(query, labels):
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            return model.loss(x0, generator=gen, query=query, labels=torch.tensor(labels))

    torch.testing.assert_close(loss(near_0, [2, 2]), loss(near_2, [2, 2]))
    assert not torch.allclose(loss(near_0, [2, 2]), loss(near_0, [0, 0]))


def test_training_batches_carry_the_category_of_their_own_images():
    counts = {"dark": 3, "bright": 5}
    model = tiny("F", batch_size=4, extra={"train_counts": counts})
    images = torch.cat([torch.zeros(3, 3, 32, 32), torch.ones(5, 3, 32, 32)])
    data = TrainingData(model, images)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    seen = set()
    for k in range(4):
        _, control, _, labels = data.batch(k, torch.Generator().manual_seed(k))
        bright = (control.mean((1, 2, 3)) > 0.5).long()
        assert labels.tolist() == bright.tolist()
        seen |= set(labels.tolist())
    assert seen == {0, 1}


def test_entry_labels_map_source_indices_to_categories_through_the_counts():
    counts = {"a": 6, "b": 4, "c": 2}  # images 0-5, 6-9, 10-11
    bank = CoarseFeatureBank(torch.randn(4, 8), torch.tensor([0, 5, 6, 11]), 4 / 12, 1.0, 12)
    assert entry_labels(bank, counts).tolist() == [0, 0, 1, 2]
    assert entry_labels(bank, None).tolist() == [0, 0, 0, 0]
    # a patch bank: 4 entries per image, so source index 23 is image 5 and 24 image 6
    patches = CoarseFeatureBank(torch.randn(4, 8), torch.tensor([3, 23, 24, 47]), 4 / 48, 1.0, 48)
    assert entry_labels(patches, counts).tolist() == [0, 0, 1, 2]


# ---------------------------------------------------------------------- DDIM and generation
@pytest.mark.parametrize(("variant", "clip"), [("V", True), ("C", False), ("F", False)])
def test_ddim_clips_the_x0_estimate_only_in_pixel_space_by_default(variant, clip):
    model = tiny(variant)
    assert model.ddim()[0].config.clip_sample is clip
    model.cfg.clip_sample = not clip  # an explicit choice wins in either space
    assert model.ddim()[0].config.clip_sample is (not clip)


def test_an_unconditioned_model_does_not_clip_its_latents_unless_asked():
    assert tiny("uncond").ddim()[0].config.clip_sample is False
    assert tiny("uncond", clip_sample=True).ddim()[0].config.clip_sample is True


def test_generate_draws_reproducible_images_that_follow_the_bank():
    model = tiny("F")
    bank = model.bank
    a = model.generate(bank, 2, seed=0, steps=2)
    assert a.shape == (2, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, model.generate(bank, 2, seed=0, steps=2))
    assert not torch.allclose(a, model.generate(bank, 2, seed=1, steps=2))
    torch.testing.assert_close(model.generate(bank, 3, seed=0, steps=2)[:2], a, atol=1e-5, rtol=0)
    other = torch.randn(6, 24) * 3  # another bank, another size
    assert not torch.allclose(a, model.generate(other, 2, seed=0, steps=2), atol=1e-4)


def test_an_unconditioned_model_generates_the_same_images_whatever_the_bank():
    model = tiny("uncond")
    a = model.generate(model.bank, 2, seed=0, steps=2)
    b = model.generate(torch.randn(6, 24) * 3, 2, seed=0, steps=2)
    assert torch.equal(a, b)


def test_generate_refuses_a_model_with_a_guidance_copy():
    model = tiny("F", guidance="bottleneck")
    with pytest.raises(ValueError, match="guidance"):
        model.generate(model.bank, 1, steps=1)


# ---------------------------------------------------------------------- the positive control
@pytest.fixture(scope="module")
def normals(minitex_root):
    return {
        c: load_split(minitex_root, "mvtec", c, "train", image_size=32).images
        for c in ("brick", "grass")
    }


@pytest.fixture(scope="module")
def classifier(normals):
    return NearestCategory(make_config("tiny", "F"), normals)


def test_nearest_category_names_its_own_training_normals(classifier, normals):
    assert classifier.names == ["brick", "grass"]
    for index, images in enumerate(normals.values()):
        assert classifier(images).tolist() == [index] * len(images)
    mixed = torch.stack([normals["grass"][0], normals["brick"][1]])
    assert classifier(mixed).tolist() == [1, 0]


def test_conditional_generation_counts_what_each_bank_made(classifier):
    model = tiny("F")
    gen = torch.Generator().manual_seed(0)
    banks = {
        "brick": torch.randn(6, 24, generator=gen),
        "grass": 3 * torch.randn(6, 24, generator=gen),
    }
    result = conditional_generation(model, banks, n_per_bank=3, classifier=classifier, steps=2)
    confusion = torch.tensor(result["confusion"])
    assert confusion.shape == (2, 2) and confusion.sum(1).tolist() == [3, 3]
    assert result["categories"] == ["brick", "grass"] and result["chance"] == 0.5
    assert result["accuracy"] == pytest.approx(float(confusion.trace()) / 6)
    named = [classifier(result["samples"][name]) for name in banks]
    for row, names in enumerate(named):
        assert torch.bincount(names, minlength=2).tolist() == confusion[row].tolist()
    # the same noise draw named brick under brick's bank and grass under grass's
    followed = ((named[0] == 0) & (named[1] == 1)).float().mean()
    assert result["swap"]["moved"] == pytest.approx(float(followed))
    assert not torch.allclose(result["samples"]["brick"], result["samples"]["grass"], atol=1e-4)


def test_an_unconditioned_model_sits_exactly_at_chance(classifier):
    model = tiny("uncond")
    banks = {"brick": torch.randn(6, 24), "grass": torch.randn(6, 24)}
    result = conditional_generation(model, banks, n_per_bank=3, classifier=classifier, steps=2)
    assert torch.equal(result["samples"]["brick"], result["samples"]["grass"])  # same noise
    assert result["confusion"][0] == result["confusion"][1]
    assert result["accuracy"] == 0.5
    assert result["swap"]["moved"] == 0.0  # one image cannot be named after both banks


def test_conditional_generation_needs_a_classifier_over_the_same_categories(classifier):
    model = tiny("F")
    banks = {"grass": torch.randn(6, 24), "brick": torch.randn(6, 24)}
    with pytest.raises(ValueError, match="classifier"):
        conditional_generation(model, banks, n_per_bank=1, classifier=classifier, steps=1)
    with pytest.raises(ValueError, match="NearestCategory"):
        conditional_generation(model, dict(reversed(banks.items())), n_per_bank=1, steps=1)


# ---------------------------------------------------------------------- metrics per defect type
def test_per_defect_type_separates_a_seen_from_an_unseen_defect():
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.15, 0.35]
    types = ["good"] * 4 + ["hole", "hole", "stain", "stain"]
    masks = torch.zeros(8, 1, 4, 4)
    masks[4:, :, 1:3, 1:3] = 1
    maps = torch.zeros(8, 1, 4, 4)
    maps[4:6] = masks[4:6]  # the holes are found, the stains not at all
    out = per_defect_type(labels, scores, types, masks, maps)
    assert set(out) == {"hole", "stain"}
    assert out["hole"]["image_auroc"] == 1.0 and out["stain"]["image_auroc"] == 0.5
    assert out["hole"]["pixel_auroc"] == 1.0 and out["stain"]["pixel_auroc"] == 0.5
    assert out["hole"]["n"] == 2 and out["stain"]["n"] == 2
    assert "pixel_auroc" not in per_defect_type(labels, scores, types)["hole"]
    with pytest.raises(ValueError, match="defect_types"):
        per_defect_type(labels, scores, types[:-1])


# ---------------------------------------------------------------------- the validation split
def test_validation_split_holds_normals_and_smudges_with_exact_masks(monkeypatch):
    calls = []
    real = defects.apply_defect

    def spy(image, kind, rng, region=None, category=None):
        out, mask = real(image, kind, rng, region, category)
        calls.append((image.copy(), kind, category, out, mask))
        return out, mask

    monkeypatch.setattr(minitex, "apply_defect", spy)
    batch = minitex.validation_split("brick", size=64, seed=0, n_good=3, n_defect=2)
    assert batch.defect_types == ["good"] * 3 + ["smudge"] * 2
    assert batch.labels.tolist() == [0, 0, 0, 1, 1]
    assert batch.images.shape == (5, 3, 64, 64) and batch.masks.shape == (5, 1, 64, 64)
    assert 0 <= batch.images.min() and batch.images.max() <= 1
    assert batch.masks[:3].sum() == 0
    assert [(kind, cat) for _, kind, cat, _, _ in calls] == [("smudge", "brick")] * 2
    for j, (clean, _, _, out, mask) in enumerate(calls):
        area = batch.masks[3 + j, 0]
        assert torch.equal(area.bool(), torch.from_numpy(mask))
        lo, hi = defects.DEFECT_AREA
        assert lo <= area.mean() <= hi
        pixels = (batch.images[3 + j].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        assert np.array_equal(pixels, out)
        assert np.array_equal(pixels[~mask], clean[~mask])  # untouched outside the mask
        change = np.abs(pixels.astype(int) - clean.astype(int)).max(-1)
        assert change[mask].min() >= defects.MIN_CHANGE  # visible everywhere inside


def test_smudges_are_kept_out_of_the_test_split(minitex_root):
    assert "smudge" not in defects.DEFECT_TYPES and "smudge" in defects.VALIDATION_DEFECTS
    for category in ("brick", "hexnut"):
        test = load_split(minitex_root, "mvtec", category, "test", image_size=64)
        assert "smudge" not in test.defect_types
        assert set(test.defect_types) == {"good", *defects.DEFECT_TYPES}


def test_validation_split_is_reproducible_and_small_sizes_are_the_64_px_split_shrunk():
    big = minitex.validation_split("hexnut", size=64, seed=1, n_good=1, n_defect=2)
    again = minitex.validation_split("hexnut", size=64, seed=1, n_good=1, n_defect=2)
    assert torch.equal(big.images, again.images) and torch.equal(big.masks, again.masks)
    other = minitex.validation_split("hexnut", size=64, seed=2, n_good=1, n_defect=2)
    assert not torch.equal(big.images, other.images)
    small = minitex.validation_split("hexnut", size=32, seed=1, n_good=1, n_defect=2)
    assert small.images.shape == (3, 3, 32, 32) and small.masks.shape == (3, 1, 32, 32)
    shrunk = torch.nn.functional.interpolate(big.images, size=(32, 32), mode="area")
    torch.testing.assert_close(small.images, shrunk)
    assert small.masks[0].sum() == 0 and (small.masks[1:].flatten(1).sum(1) > 0).all()
    assert small.defect_types == big.defect_types


# ---------------------------------------------------------------------- a unified run, end to end
@pytest.fixture(scope="module")
def unified_run(minitex_root, tmp_path_factory):
    """One F model for brick and grass: a bank per category, condition dropout, 2 steps."""
    out = tmp_path_factory.mktemp("condition") / "unified"
    train_run(
        minitex_root, "brick+grass", out, variant="F", steps=2, progress=False,
        bank_mode="category", balanced_bank=True, cond_dropout=0.5, **FAST,
    )  # fmt: skip
    return out, minitex_root


def test_a_unified_category_run_knows_the_category_of_every_bank_entry(unified_run):
    run, root = unified_run
    model = CCAD.from_pretrained(run)
    cfg = model.cfg
    assert cfg.bank_mode == "category" and cfg.cond_dropout == 0.5
    assert isinstance(model.null_token, nn.Parameter)
    names = list(cfg.extra["train_counts"])
    assert names == ["brick", "grass"]
    assert model.bank_labels.tolist() == [names.index(c) for c in bank_categories(run)]
    assert set(model.bank_labels.tolist()) == {0, 1}
    # the images behind the bank entries are assigned their own category at test time
    bank = CoarseFeatureBank.load(run / "bank.safetensors")
    images = torch.cat([load_split(root, "mvtec", c, "train", image_size=32).images for c in names])
    chosen = model.assign_category(model.global_features(images[bank.indices]))
    assert chosen.tolist() == model.bank_labels.tolist()


def test_evaluate_run_guides_with_the_bank_for_this_evaluation_only(unified_run, monkeypatch):
    run, root = unified_run
    passes = []
    predict = CCAD.predict_noise

    def counting(self, x_t, t, ctx, control):
        passes.append(ctx.shape[1])
        return predict(self, x_t, t, ctx, control)

    monkeypatch.setattr(CCAD, "predict_noise", counting)
    saved = json.loads((run / "config.json").read_text())
    plain = evaluate_run(run, root, "brick", progress=False, guidance_scale=1.0, ddim_steps=2)
    n_plain = len(passes)
    result = evaluate_run(run, root, "brick", progress=False, guidance_scale=2.0, ddim_steps=2)
    assert len(passes) - n_plain == 2 * n_plain  # w != 1: a null pass and a bank pass per step
    assert passes[n_plain:].count(1) == n_plain  # the null passes read one token
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0.0 <= result[key] <= 1.0 and 0.0 <= plain[key] <= 1.0
    assert set(result["per_defect"]) == set(defects.DEFECT_TYPES)
    for entry in result["per_defect"].values():
        assert entry["n"] == 2 and 0.0 <= entry["image_auroc"] <= 1.0
        assert np.isfinite(entry["pixel_auroc"])
    assert json.loads((run / "config.json").read_text()) == saved  # the run is unchanged


def test_evaluate_run_refuses_to_change_a_training_field(unified_run):
    run, root = unified_run
    with pytest.raises(ValueError, match="image_size"):
        evaluate_run(run, root, "brick", progress=False, image_size=64)


def test_probe_command_writes_the_positive_control(unified_run, tmp_path):
    run, root = unified_run
    out = tmp_path / "probe.json"
    args = ["probe", "--run", str(run), "--data", str(root), "--n", "2", "--json", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    for key in ("generation_accuracy", "confusion", "swap", "category_error"):
        assert key in result
    assert result["categories"] == ["brick", "grass"]
    confusion = torch.tensor(result["confusion"])
    assert confusion.shape == (2, 2) and confusion.sum(1).tolist() == [2, 2]
    assert result["generation_accuracy"] == pytest.approx(float(confusion.trace()) / 4)
    assert 0.0 <= result["category_error"] <= 1.0
    assert 0.0 <= result["classifier_accuracy"] <= 1.0
    assert 0.0 <= result["swap"]["moved"] <= 1.0


def test_probe_of_a_per_category_run_offers_every_category_of_the_data(minitex_root, tmp_path):
    run = tmp_path / "brick"
    train_run(minitex_root, "brick", run, variant="F", steps=1, progress=False, **FAST)
    out = tmp_path / "probe.json"
    args = ["probe", "--run", str(run), "--data", str(minitex_root), "--n", "1"]
    assert main([*args, "--json", str(out), "--set", "guidance_scale=1"]) == 0
    result = json.loads(out.read_text())
    assert result["categories"] == ["brick", "grass", "gravel", "hexnut"]
    assert torch.tensor(result["confusion"]).sum(1).tolist() == [1, 1, 1, 1]
    assert result["category_error"] is None  # one category: nothing to choose at test time
    assert result["chance"] == 0.25


def test_evaluate_command_sets_only_inference_fields(unified_run, tmp_path, capsys):
    run, root = unified_run
    base = ["evaluate", "--run", str(run), "--data", str(root), "--category", "grass"]
    assert main([*base, "--set", "xi=0.5"]) == 1
    assert "inference field" in capsys.readouterr().err
    assert main([*base, "--set", "cond_dropout=0.2"]) == 1
    out = tmp_path / "m.json"
    args = [*base, "--set", "guidance_scale=0", "--set", "ddim_steps=2", "--json", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["category"] == "grass" and set(result["per_defect"]) == set(defects.DEFECT_TYPES)


# ---------------------------------------------------------------------- multi-class defaults
def test_a_run_on_several_categories_takes_the_multiclass_defaults(minitex_root, tmp_path):
    from ccad_tutorial.presets import MULTICLASS_DEFAULTS
    from ccad_tutorial.runs import read_config

    kw = dict(variant="F", steps=1, progress=False, **FAST)
    train_run(minitex_root, "brick+grass", tmp_path / "unified", **kw)
    cfg = read_config(tmp_path / "unified")
    for key, value in MULTICLASS_DEFAULTS.items():
        assert getattr(cfg, key) == value, key
    train_run(minitex_root, "brick+grass", tmp_path / "told", cond_dropout=0.0, **kw)
    told = read_config(tmp_path / "told")
    assert told.cond_dropout == 0.0 and told.guidance_scale == 1.0  # nothing to guide from
    train_run(minitex_root, "brick", tmp_path / "one", **kw)
    one = read_config(tmp_path / "one")  # one category keeps the paper's reading
    assert (one.bank_mode, one.cond_dropout, one.guidance_scale) == ("shared", 0.0, 1.0)


# ---------------------------------------------------------------------- the tiled VAE
@pytest.mark.parametrize(("crop", "tile", "tiled"), [(16, True, True), (16, False, False),
                                                     (None, True, False), (32, True, False)])  # fmt: skip
def test_a_vae_trained_on_crops_runs_in_crop_sized_tiles(crop, tile, tiled):
    model = tiny("C", crop_size=crop, tile=tile)  # 32 px images
    images = torch.rand(2, 3, 32, 32)
    x0 = model.encode(images)
    assert model.vae.use_tiling is tiled
    if tiled:
        assert (model.vae.tile_sample_min_size, model.vae.tile_latent_min_size) == (16, 4)
    assert model.decode(x0).shape == images.shape


def test_tiling_changes_the_decoding_of_a_whole_image():
    model = tiny("C", crop_size=16, tile=True)
    x0 = model.encode(torch.rand(1, 3, 32, 32))
    tiled = model.decode(x0)
    model.cfg.tile = False  # an inference field: the same weights, decoded at once
    assert not torch.allclose(tiled, model.decode(x0))
