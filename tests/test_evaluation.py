"""One way through the code: every detector behind fit/predict, one evaluate, one writer."""

import pytest
import torch
from tiny_settings import FAST

from ccad_tutorial import runs
from ccad_tutorial.datasets import load_split
from ccad_tutorial.detectors import CCADDetector, MeanNormal, PatchCore, train_run
from ccad_tutorial.evaluation import evaluate, evaluate_run
from ccad_tutorial.features import FeatureExtractor
from ccad_tutorial.metrics import image_auroc
from ccad_tutorial.presets import make_config
from ccad_tutorial.scoring import gaussian_smooth, smoothing_sigma


@pytest.fixture(scope="module")
def brick(minitex_root):
    return (
        load_split(minitex_root, "mvtec", "brick", "train", 32),
        load_split(minitex_root, "mvtec", "brick", "test", 32),
    )


def detectors():
    patchcore = PatchCore(FeatureExtractor("resnet18", pool="patch"))
    return {"patchcore": patchcore, "mean-normal": MeanNormal(make_config("tiny", "F", **FAST))}


@pytest.mark.parametrize("name", ["patchcore", "mean-normal"])
def test_every_detector_predicts_scores_then_maps(brick, name):
    train, test = brick
    detector = detectors()[name].fit(train.images)
    scores, maps = detector.predict(test.images[:5])
    assert scores.shape == (5,) and maps.shape == (5, 1, 32, 32)
    # the image score is the maximum of the map, for every detector
    torch.testing.assert_close(scores, maps.flatten(1).amax(1))


def test_ccad_fits_and_predicts_like_the_other_detectors(brick, tmp_path):
    train, test = brick
    cfg = make_config("tiny", "F", steps=1, ddim_steps=1, **FAST)
    detector = CCADDetector(cfg, tmp_path / "run", progress=False).fit(train.images)
    scores, maps = detector.predict(test.images[:3])
    assert scores.shape == (3,) and maps.shape == (3, 1, 32, 32)
    torch.testing.assert_close(scores, maps.flatten(1).amax(1))
    again = CCADDetector.from_pretrained(tmp_path / "run", progress=False)
    again.fit_scorers(again.cfg, train.images)
    assert torch.equal(again.predict(test.images[:3])[0], scores)  # saved, read back, same


def test_evaluate_repaints_once_and_scores_the_repaint_with_every_scorer(brick):
    train, test = brick
    detector = MeanNormal(make_config("tiny", "F", **FAST)).fit(train.images)
    calls = []
    repaint = detector.reconstruct
    detector.reconstruct = lambda images: calls.append(len(images)) or repaint(images)
    outputs = {}
    row = evaluate(detector, test, outputs)
    assert calls == [len(test.images)]
    assert {"image_auroc", "l1_image_auroc", "per_defect", "l1_per_defect"} <= set(row)
    assert row["n_test"] == len(test.images) and outputs["recons"].shape == test.images.shape
    # the l1_ keys are the blurred pixel difference of the same reconstructions
    l1 = (test.images - outputs["recons"]).abs().mean(1, keepdim=True)
    l1 = gaussian_smooth(l1, smoothing_sigma(32))
    assert row["l1_image_auroc"] == image_auroc(test.labels, l1.flatten(1).amax(1))
    assert row["image_auroc"] == image_auroc(test.labels, outputs["scores"])


def test_evaluate_run_calibrates_the_scorer_on_every_category_the_model_learned(
    minitex_root, tmp_path, monkeypatch
):
    run = tmp_path / "unified"
    train_run(minitex_root, "brick+grass", run, variant="F", steps=1, progress=False, **FAST)
    seen = []
    fit_scorers = CCADDetector.fit_scorers

    def recording(self, cfg, normals, mode=None):
        seen.append(len(normals))
        return fit_scorers(self, cfg, normals, mode)

    monkeypatch.setattr(CCADDetector, "fit_scorers", recording)
    evaluate_run(run, minitex_root, "brick", progress=False, ddim_steps=1)
    n = {c: len(load_split(minitex_root, "mvtec", c, "train", 32)) for c in ("brick", "grass")}
    assert seen == [n["brick"] + n["grass"]]


def test_a_saved_ccad_is_read_back_whole(minitex_root, tmp_path):
    from ccad_tutorial.model import CCAD

    train_run(minitex_root, "brick", tmp_path / "run", variant="C", steps=1, progress=False,
              **FAST)  # fmt: skip
    model = CCAD.from_pretrained(tmp_path / "run")
    model.save_pretrained(tmp_path / "copy")
    again = CCAD.from_pretrained(tmp_path / "copy")
    assert again.cfg.to_dict() == model.cfg.to_dict()
    assert torch.equal(again.bank, model.bank)
    weights = model.state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in again.state_dict().items())


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = runs.atomic_write(tmp_path / "a" / "row.json", '{"ok": 1}')
    assert path.read_text() == '{"ok": 1}'

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        runs.atomic_write(path, broken)
    assert path.read_text() == '{"ok": 1}'
    assert runs.write_json(path, {"ok": 2}).read_text() == '{\n  "ok": 2\n}\n'
