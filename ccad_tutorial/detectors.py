"""Detectors: CCAD, PatchCore and the no-model control behind one interface.

In anomalib's words, every detector of the book does two things::

    detector.fit(train_images)                  # normal images (N, 3, H, W) in [0, 1]
    scores, maps = detector.predict(images)     # (B,) image scores, (B, 1, H, W) maps

``evaluation.evaluate(detector, split)`` turns the predictions into the book's metrics.

CCAD and the no-model control find anomalies the same way: reconstruct the image as
normal, then compare input and reconstruction with an anomaly scorer
(``scoring.AnomalyScorer``). The scorer belongs to the detector, calibrated on the normals
it was fitted on: ``scorers`` holds the main map ("") and the pixel-L1 map ("l1_") of the
same reconstructions. PatchCore (``baselines.PatchCore``) scores patch features directly.

``CCADDetector.fit`` trains CCAD in its run folder, top to bottom:

    normals -> bank (training normals only) -> [stage 1: tiny VAE] -> CCAD -> train.fit
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from ccad_tutorial import accel, runs
from ccad_tutorial.bank import build_bank, entry_labels
from ccad_tutorial.baselines import PatchCore
from ccad_tutorial.datasets import DataError, list_categories, load_split
from ccad_tutorial.model import CCAD
from ccad_tutorial.presets import CCADConfig, make_config, multiclass_overrides
from ccad_tutorial.scoring import AnomalyScorer
from ccad_tutorial.train import fit, train_vae

__all__ = ["CCADDetector", "Detector", "MeanNormal", "PatchCore", "train_run"]
SCORE = "feature"  # the main map of the benchmarks' rows; rows also carry l1_<metric>


class Detector(Protocol):
    def fit(self, train_images: Tensor) -> Detector: ...

    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]: ...


def build_scorer(cfg: CCADConfig, mode: str | None = None) -> AnomalyScorer:
    """The anomaly scorer of a config (``mode`` overrides ``cfg.score_mode``).

    A random-init backbone is drawn by ``FeatureExtractor`` from its own fixed seed, leaving
    the global RNG untouched: like pretrained weights, it is the same network for every run
    and seed, and choosing the scorer never changes the trained model.
    """
    return AnomalyScorer(
        backbone=cfg.score_backbone,
        layers=cfg.score_layers,
        pretrained=cfg.score_pretrained,
        mode=mode or cfg.score_mode,
    )


class ReconstructionDetector:
    """A detector that repaints its input as normal; ``scorers`` compare input and repaint."""

    scorers: dict[str, AnomalyScorer]

    def fit_scorers(self, cfg: CCADConfig, normals: Tensor, mode: str | None = None):
        """The main map (``mode``, default cfg's) and pixel L1, calibrated on ``normals``
        (a random-init backbone re-estimates its BatchNorm statistics on them)."""
        main = build_scorer(cfg, mode)
        if not cfg.score_pretrained:
            main.calibrate(normals)
        self.scorers = {"": main.eval(), "l1_": build_scorer(cfg, "l1").eval()}
        return self

    def reconstruct(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def score(self, images: Tensor, recons: Tensor, which: str = "") -> tuple[Tensor, Tensor]:
        """(image scores (B,), maps (B, 1, H, W)) of the scorer ``which`` ("" or "l1_")."""
        scorer = self.scorers[which]
        device = next(scorer.parameters(), torch.empty(0)).device
        maps = torch.cat(
            [
                scorer(x.to(device), r.to(device)).cpu()
                for x, r in zip(images.split(16), recons.split(16), strict=True)
            ]
        )
        return scorer.image_scores(maps), maps

    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.score(images, self.reconstruct(images))


class MeanNormal(ReconstructionDetector):
    """The no-model control: every image "reconstructed" as the mean normal training image,
    scored by the same maps as CCAD. What the maps find with no model at all."""

    def __init__(self, cfg: CCADConfig) -> None:
        self.cfg = cfg

    def fit(self, train_images: Tensor) -> MeanNormal:
        self.mean = train_images.mean(0, keepdim=True)
        return self.fit_scorers(self.cfg, train_images, SCORE)

    def reconstruct(self, images: Tensor) -> Tensor:
        return self.mean.expand_as(images)


class CCADDetector(ReconstructionDetector):
    """CCAD as a detector. ``fit`` trains (or resumes) the model in the run folder ``run``
    and calibrates the scorers; ``predict`` repaints with DDIM and scores the repaint.

    Args:
        cfg: the run's config (None: read from ``run``, which must then hold a run).
        run: the run folder (``runs``' layout).
        pretrained: SD-layout folder or hub id the UNet and VAE start from (new runs).
        vae_cache: folder shared by runs with the same stage-1 VAE (``runs.cached_vae``).
        noise_seed: the fixed noise of evaluation; ``bank``: a bank to condition on in
            place of the model's own (the condition swap).
    """

    def __init__(
        self,
        cfg: CCADConfig | None,
        run: str | os.PathLike,
        pretrained: str | None = None,
        vae_cache: str | os.PathLike | None = None,
        device: str = "auto",
        progress: bool = True,
        noise_seed: int = 0,
    ) -> None:
        self.run, self.cfg, self.model = Path(run), cfg, None
        self.pretrained, self.vae_cache, self.device = pretrained, vae_cache, device
        self.progress, self.noise_seed, self.bank = progress, noise_seed, None
        self.data_key: tuple = ("", "")  # (data, category): the key of the VAE cache
        self.summary: dict = {}

    @classmethod
    def from_pretrained(
        cls, run: str | os.PathLike, device: str = "auto", use_ema: bool = True, **kwargs
    ) -> CCADDetector:
        """The trained CCAD of ``run``; call ``fit_scorers(cfg, normals)`` before predict."""
        detector = cls(None, run, device=device, **kwargs)
        detector.model = CCAD.from_pretrained(run, device=device, use_ema=use_ema)
        detector.cfg = detector.model.cfg
        return detector

    def fit(
        self, train_images: Tensor, counts: dict | None = None, scorers: bool = True
    ) -> CCADDetector:
        """Train on normal images (N, 3, H, W) to ``cfg.steps``: from the last checkpoint
        of ``run`` if it has one, else from scratch (``counts``: images per category of a
        multi-class model, in order). Then calibrate the scorers on the same normals
        (``scorers=False``: training only, e.g. for a run evaluated later)."""
        self.cfg = self.cfg or runs.read_config(self.run)
        state = None
        if (self.run / "trainer_state.pt").is_file():
            state = runs.load_trainer_state(self.run)
            device = str(self.training_device)
            self.model = CCAD.from_pretrained(self.run, device, use_ema=False)
            self.model.cfg = self.cfg  # the run's own, with this call's steps
            if self.cfg.ema_decay is not None and (self.run / "ema.safetensors").is_file():
                state["ema"] = runs.load_safetensors(self.run / "ema.safetensors")
        else:
            self.model = self._new_model(train_images, counts)
        start = int(state["step"]) if state else 0
        self.summary = fit(self.model, train_images, self.run, start, state, self.progress)
        times = dict(self.cfg.extra.get("times", {}), train_s=self.summary["train_s"])
        self.cfg.extra["times"] = times
        runs.write_config(self.run, self.cfg)
        return self.fit_scorers(self.cfg, train_images) if scorers else self

    @property
    def training_device(self) -> torch.device:
        return accel.training_device(self.device)

    def _new_model(self, images: Tensor, counts: dict | None) -> CCAD:
        """Bank (training images only), stage-1 VAE if needed, the CCAD model; writes the
        run's config, bank and VAE."""
        cfg, out, times = self.cfg, self.run, self.cfg.extra.setdefault("times", {})
        out.mkdir(parents=True, exist_ok=True)
        if counts and len(counts) > 1:
            cfg.extra["train_counts"] = dict(counts)
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        bank, extractor = build_bank(images, cfg, list(counts.values()) if counts else None)
        times["bank_s"] = round(time.perf_counter() - t0, 2)
        labels = entry_labels(bank, cfg.extra.get("train_counts"))
        if self.pretrained is not None:
            model = CCAD.from_stable_diffusion(self.pretrained, cfg, bank)
            model.bank_labels = labels
        else:
            vae = None
            if cfg.latent and cfg.vae_steps > 0:
                t0 = time.perf_counter()
                data, category = self.data_key
                train = lambda: train_vae(images, cfg, self.progress)  # noqa: E731
                vae = runs.cached_vae(train, cfg, self.vae_cache, data, category)
                runs.write_safetensors(out / "vae.safetensors", vae.state_dict())
                times["vae_s"] = round(time.perf_counter() - t0, 2)
            model = CCAD(cfg, bank, vae=vae, bank_labels=labels)
        if model.extractor is not None:  # retrieval uses the features the bank was built with
            model.extractor.load_state_dict(extractor.state_dict())
        model.save_pretrained(out, weights=False)  # config (+ UNet/VAE configs) and bank
        return model.to(self.training_device)

    def fit_scorers(self, cfg: CCADConfig, normals: Tensor, mode: str | None = None):
        """As ``ReconstructionDetector.fit_scorers``, then on the model's device."""
        super().fit_scorers(cfg, normals, mode)
        device = self.model.bank.device
        self.scorers = {k: s.to(device) for k, s in self.scorers.items()}
        return self

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        """DDIM repaints (B, 3, H, W) with the fixed evaluation noise (``noise_seed``)."""
        return self.model.reconstruct(
            images, noise_seed=self.noise_seed, bank=self.bank, progress=self.progress
        )


# ---------------------------------------------------------------------- ccad-tutorial train
def split_categories(category: str) -> list[str]:
    """``"brick+grass"`` -> ``["brick", "grass"]`` (one category -> a list of one)."""
    names = [c.strip() for c in str(category).split("+")]
    if not all(names) or len(set(names)) != len(names):
        raise DataError(
            f"--category {category!r}: join distinct category names with '+', e.g. brick+grass."
        )
    return names


def check_category(data, layout: str, category: str) -> None:
    """Fail early (before anything is written) when the category is not in the data."""
    if not Path(data).is_dir():
        raise DataError(f"--data {data} is not a folder; point it at an MVTec-layout data set.")
    found = list_categories(data, layout)
    if category not in found:
        raise DataError(
            f"Category {category!r} is not in {data} (layout {layout!r}); found {found}. "
            "Pick one of those with --category."
        )


def train_run(
    data: str | os.PathLike,
    category: str,
    out: str | os.PathLike,
    variant: str = "F",
    preset: str = "tiny",
    layout: str = "mvtec",
    steps: int | None = None,
    pretrained: str | None = None,
    resume: bool | str = False,
    seed: int = 0,
    image_size: int | None = None,
    progress: bool = True,
    device: str = "auto",
    vae_cache: str | os.PathLike | None = None,
    **overrides,
) -> dict:
    """``ccad-tutorial train``: fit a ``CCADDetector`` on the category's normals in ``out``.

    Without ``steps`` the preset's default budget applies. ``resume`` continues the run in
    ``out`` at its saved step; ``resume="auto"`` continues it when it has a checkpoint,
    leaves it alone once it reached ``steps`` (default: its own budget), and otherwise
    starts over (a run stopped before its first checkpoint has nothing to resume): what
    ``reproduce`` and the benchmark cells do. ``overrides`` set any other CCADConfig field. ``vae_cache``
    (a folder) shares the stage-1 VAE between runs with the same data, category, seed and
    VAE settings (variants C, F and uncond then start from the identical autoencoder).

    ``category`` may join several with ``+`` (``"brick+grass"``): ONE model for all of them
    (DiAD's multi-class setting), trained on their pooled normals, with one bank selected
    from all their features (``bank.bank_categories`` says which category each entry came
    from). A conditioned variant then takes ``presets.MULTICLASS_DEFAULTS`` for every field
    not in ``overrides``. Evaluate it per category. Returns a summary.
    """
    out = Path(out)
    categories = split_categories(category)
    for name in categories:
        check_category(data, layout, name)
    if resume == "auto":
        resume = _resume_or_start_over(out, category, steps)
        if resume is None:
            if progress:
                print(f"{out}: trained ({runs.trained_steps(out)} steps), not again")
            return _summary(out)
    if resume:
        cfg = runs.read_config(out)
        if (cfg.variant, cfg.preset) != (variant, preset):
            raise ValueError(
                f"Cannot resume {out}: it was trained as variant {cfg.variant!r} with preset "
                f"{cfg.preset!r}, but this call asks for variant {variant!r} with preset "
                f"{preset!r}; pass --variant {cfg.variant} --preset {cfg.preset} or choose "
                "another --out."
            )
        runs.load_trainer_state(out)  # a run with no checkpoint cannot resume: say so now
        if progress:  # the CLI says it; a chapter that trains in stages stays quiet
            print(f"Resumed from {out} at step {runs.trained_steps(out)}")
    else:
        if (out / "config.json").exists():
            raise ValueError(
                f"{out} already holds a CCAD run; pass --resume to continue it or choose "
                "another --out."
            )
        accel.wait_for_everyone()  # every process checked before the main one writes
        sizes = {"image_size": image_size} if image_size else {}
        if len(categories) > 1:  # one model for all: the multi-class defaults fill the gaps
            overrides = multiclass_overrides(variant, overrides)
        cfg = make_config(preset, variant, seed=seed, **sizes, **overrides)
        accel.autocast_dtype(cfg.mixed_precision, accel.training_device(device))  # fp16 CPU?
    if steps is not None:
        cfg.steps = steps
    parts = [load_split(data, layout, c, "train", cfg.image_size).images for c in categories]
    counts = {c: len(p) for c, p in zip(categories, parts, strict=True)}
    cfg.extra.update(train_args={"data": str(data), "category": category, "layout": layout})
    detector = CCADDetector(cfg, out, pretrained, vae_cache, device, progress)
    detector.data_key = (data, category)
    detector.fit(torch.cat(parts), counts, scorers=False)  # evaluated later, on its own
    return _summary(out, detector.summary)


def _resume_or_start_over(out: Path, category: str, steps: int | None) -> bool | None:
    """``resume="auto"``: True after a checkpoint, None once the run reached ``steps``
    (default: its budget), False for a new run (a run stopped before its first checkpoint
    has its files removed: nothing in it can be resumed)."""
    if not (out / "trainer_state.pt").is_file():
        for name in runs.RUN_FILES:
            (out / name).unlink(missing_ok=True)
        return False
    cfg = runs.read_config(out)
    trained_on = "+".join(cfg.extra.get("train_counts", {}))
    trained_on = trained_on or cfg.extra.get("train_args", {}).get("category", category)
    if trained_on != category:
        raise ValueError(
            f"{out} holds a model trained on {trained_on}, not {category}: run the same "
            "categories again, or choose another --out."
        )
    return None if runs.trained_steps(out) >= (steps or cfg.steps) else True


def _summary(out: Path, trained: dict | None = None) -> dict:
    """What ``train_run`` returns: the run, its variant and preset, steps, last loss and
    times (from this call's training, or read from the folder)."""
    cfg, log = runs.read_config(out), runs.read_loss_log(out)
    times = cfg.extra.get("times", {})
    steps = runs.trained_steps(out)
    summary = trained or {
        "steps": steps,
        "last_loss": log[-1][1] if log else float("nan"),
        "train_s": times.get("train_s", 0.0),
        "ms_per_step": round(1000 * times.get("train_s", 0.0) / max(1, steps), 1),
    }
    return {"run": str(out), "variant": cfg.variant, "preset": cfg.preset, **summary,
            "times": times}  # fmt: skip
