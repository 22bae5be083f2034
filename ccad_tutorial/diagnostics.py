"""Does the model use its condition? The condition swap, the positive control, the colour trace.

A conditioned model that ignores its condition behaves the same whatever bank it is given.
So we evaluate one trained CCAD several times, each time with a different bank:

* ``real``: the run's own Coarse Feature Bank;
* ``shuffled``: the same numbers with rows AND feature dimensions permuted, so it is no
  longer the same set of vectors (a row permutation alone changes nothing: attention
  without positional encodings is order-blind);
* ``zeros``: an all-zero bank;
* any bank passed in ``alternative_banks`` (e.g. another category's CFB).

For each we report the test metrics, the held-out denoising loss on the test split's
normal images (fixed timesteps and noise, so only the bank changes), and how far the
reconstructions move from those with the real bank. If nothing changes, the condition is
ignored.

The positive control (``conditional_generation``) asks the question where the answer is
known: generated from pure noise, a sample can only be of the right category if the model
read the bank. ``colour_trace`` and ``latent_statistics`` follow an image's colours through
the reconstruction path (VAE, one-step x0 estimate, DDIM), stage by stage.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from ccad_tutorial.model import CCAD
from ccad_tutorial.sampling import image_noise


def swapped_banks(bank: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """The control banks built from ``bank`` (M, D): shuffled (rows and dims) and zeros."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(bank.shape[0], generator=gen)
    dims = torch.randperm(bank.shape[1], generator=gen)
    return {"shuffled": bank[rows][:, dims], "zeros": torch.zeros_like(bank)}


@torch.no_grad()
def heldout_loss(
    model: CCAD, images: Tensor, bank: Tensor | None = None, seed: int = 0, repeats: int = 4
) -> float:
    """Mean denoising loss on images (N, 3, H, W) with fixed timesteps and noise per repeat."""
    model.eval()
    device = model.bank.device
    x0 = torch.cat([model.encode(x.to(device)) for x in images.split(16)])
    losses = []
    for r in range(repeats):
        gen = torch.Generator().manual_seed(seed * 1000 + r)
        query = model.global_features(images.to(device))
        losses.append(model.loss(x0, images.to(device), gen, bank=bank, query=query).item())
    return sum(losses) / len(losses)


@torch.no_grad()
def condition_swap(
    detector,
    test_batch,
    alternative_banks: dict[str, Tensor] | None = None,
    noise_seed: int = 0,
    controls: bool = True,
) -> dict[str, dict]:
    """Evaluate a ``detectors.CCADDetector`` on ``test_batch`` (datasets.Batch) under each
    bank (``evaluation.evaluate``, the detector's own scorers).

    ``controls=False`` skips the shuffled and zero banks (only ``real`` and the
    ``alternative_banks`` are evaluated: one reconstruction of the test split each).

    Returns {bank name: {"image_auroc", "pixel_auroc", ..., "heldout_loss", "recon_change"}},
    where recon_change is the mean absolute pixel difference from the real-bank
    reconstructions (0 for "real").
    """
    from ccad_tutorial.evaluation import evaluate

    model = detector.model
    banks = {
        "real": None,  # the run's own condition, chosen as in training (bank mode and all)
        **(swapped_banks(model.bank.cpu(), noise_seed) if controls else {}),
        **(alternative_banks or {}),
    }
    images, labels = test_batch.images, test_batch.labels
    good = images[labels == 0]
    both_classes = 0 < int(labels.sum()) < len(labels)
    results, reference = {}, None
    for name, bank in banks.items():
        swapped, outputs = _with(detector, bank=bank, noise_seed=noise_seed), {}
        row = evaluate(swapped, test_batch, outputs) if both_classes else {}
        recons = outputs.get("recons")
        if recons is None:
            recons = swapped.reconstruct(images)
        reference = recons if reference is None else reference
        timing = ("infer_s_per_image", "eval_s")
        metrics = {k: v for k, v in row.items() if isinstance(v, float) and k not in timing}
        metrics["heldout_loss"] = (
            heldout_loss(model, good, bank, noise_seed) if len(good) else float("nan")
        )
        metrics["recon_change"] = float((recons - reference).abs().mean())
        results[name] = metrics
    return results


def _with(detector, **fields):
    """A shallow copy of ``detector`` (same model and scorers) with ``fields`` changed:
    the caller's detector is left as it was."""
    changed = copy.copy(detector)
    vars(changed).update(fields)
    return changed


# ---------------------------------------------------------------------- colours through the pipeline
def mean_colour(images: Tensor) -> Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3): each image's mean RGB."""
    return images.float().mean((2, 3))


def colour_error(images: Tensor, recons: Tensor) -> float:
    """How far reconstructions drift in colour: per image, the largest channel difference of
    the mean RGB of input and reconstruction ([0, 1] scale), averaged over the images."""
    return float((mean_colour(images) - mean_colour(recons)).abs().amax(1).mean())


@torch.no_grad()
def colour_trace(
    model: CCAD, images: Tensor, timesteps=(100, 400, 700), noise_seed: int = 0
) -> dict[str, float]:
    """The colour error (``colour_error``) of each stage of the reconstruction path.

    ``vae``: encode + decode only (``vae_tiled``: in crop-sized tiles); ``x0@<t>``: the UNet's one-step estimate of x0 from x_t
    (noise drawn as in ``reconstruct``); ``ddim``: the reconstruction itself, with the run's
    settings; ``ddim_clip`` and ``ddim_noclip``: the same with DDIM's x0 estimate clipped
    to [-1, 1] at every step, or not (``cfg.clip_sample``). The stage where the error
    jumps is where the colours are lost.
    """
    device = model.bank.device
    x = images.to(device)
    x0 = model.encode(x)
    out = {"vae": colour_error(images, model.decode(x0).cpu())}
    saved_tile, model.cfg.tile = model.cfg.tile, True
    try:  # the VAE in crop-sized tiles (cfg.tile)
        out["vae_tiled"] = colour_error(images, model.decode(model.encode(x)).cpu())
    finally:
        model.cfg.tile = saved_tile
    ctx = model.context(len(x), None, model.global_features(x))
    noise = image_noise(x0.shape, noise_seed, 0).to(x0)
    alphas = model.noise_scheduler.alphas_cumprod.to(device)
    for t in timesteps:
        tt = torch.full((len(x),), t, device=device, dtype=torch.long)
        x_t = model.noise_scheduler.add_noise(x0, noise, tt)
        eps = model.guided_noise(x_t, tt, ctx, x)
        a = alphas[t]
        estimate = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
        out[f"x0@{t}"] = colour_error(images, model.decode(estimate).cpu())
    saved = model.cfg.clip_sample
    try:
        out["ddim"] = colour_error(images, model.reconstruct(images, noise_seed=noise_seed))
        for name, clip in (("ddim_clip", True), ("ddim_noclip", False)):
            model.cfg.clip_sample = clip
            out[name] = colour_error(images, model.reconstruct(images, noise_seed=noise_seed))
    finally:
        model.cfg.clip_sample = saved
    return out


@torch.no_grad()
def latent_statistics(model: CCAD, images: Tensor) -> dict[str, list[float] | float]:
    """Per-channel mean and std of the scaled latents x0 of images (N, 3, H, W), and the
    fraction of latent values outside [-1, 1] (what DDIM's clip_sample would cut off)."""
    x0 = torch.cat([model.encode(x.to(model.bank.device)).cpu() for x in images.split(16)])
    return {
        "mean": x0.mean((0, 2, 3)).tolist(),
        "std": x0.std((0, 2, 3)).tolist(),
        "outside_unit": float((x0.abs() > 1).float().mean()),
        "scaling_factor": model.scaling_factor,
    }


# ---------------------------------------------------------------------- the positive control
class NearestCategory:
    """Names the category of an image: that of its nearest normal in global-feature space.

    The features are the bank's own: the run's backbone and layers, global pooling, and (for
    random-init backbones) BatchNorm statistics re-estimated on all the normals given, as
    ``bank.build_bank`` does for a run trained on them.

    Args:
        cfg: the run's CCADConfig (backbone, feature_layers, pretrained_backbone).
        normals: {category: (N_c, 3, H, W) normal training images}.
    """

    def __init__(self, cfg, normals: dict[str, Tensor]) -> None:
        from ccad_tutorial.features import FeatureExtractor

        self.names = list(normals)
        pooled = torch.cat(list(normals.values()))
        self.extractor = FeatureExtractor(
            cfg.backbone, cfg.feature_layers, pool="image", pretrained=cfg.pretrained_backbone
        )
        if not cfg.pretrained_backbone:
            self.extractor.calibrate(pooled)
        self.features = self.extractor.extract(pooled)  # (N, D)
        counts = torch.tensor([len(v) for v in normals.values()])
        self.labels = torch.repeat_interleave(torch.arange(len(counts)), counts)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B,) long: indices into ``names``."""
        query = self.extractor.extract(images.to(self.extractor.device))
        return self.labels[torch.cdist(query, self.features).argmin(1).cpu()]


@torch.no_grad()
def conditional_generation(
    model: CCAD,
    banks: dict[str, Tensor],
    n_per_bank: int = 8,
    seed: int = 0,
    classifier: NearestCategory | None = None,
    steps: int = 25,
) -> dict:
    """Generate from pure noise with each category's bank as the condition, and name
    what came out: does the model read its condition?

    banks: {category: (M, D) bank}; classifier: ``NearestCategory`` over the same
    categories (in the same order as ``banks``). Every bank gets the SAME n_per_bank
    noise draws, so only the condition differs between the rows. Returns
    {"categories", "confusion" (rows: bank given, columns: category named),
    "accuracy", "chance", "swap", "samples" ({category: (n, 3, H, W)})}.
    ``swap["moved"]`` is the fraction of (noise draw, bank A, bank B) triples where the
    sample is named A under A's bank and B under B's: the generated category follows
    the bank. An unconditioned model draws the same image under every bank, so its
    accuracy sits at chance by construction.
    """
    if classifier is None:
        raise ValueError("conditional_generation needs a NearestCategory classifier.")
    names = list(banks)
    if names != classifier.names:
        raise ValueError(f"banks {names} and classifier {classifier.names} differ.")
    samples = {c: model.generate(b, n_per_bank, seed, steps) for c, b in banks.items()}
    named = torch.stack([classifier(samples[c]) for c in names])  # (K, n)
    k = len(names)
    confusion = torch.zeros(k, k, dtype=torch.long)
    for row in range(k):
        confusion[row] += torch.bincount(named[row], minlength=k)
    hits = named == torch.arange(k)[:, None]  # (K, n): sample named after its bank
    pairs = [(a, b) for a in range(k) for b in range(k) if a != b]
    both = {(a, b): float((hits[a] & hits[b]).float().mean()) for a, b in pairs}
    moved = {f"{names[a]}->{names[b]}": value for (a, b), value in both.items()}
    return {
        "categories": names,
        "confusion": confusion.tolist(),
        "accuracy": float(hits.float().mean()),
        "chance": 1.0 / k,
        "swap": {"moved": sum(moved.values()) / max(1, len(moved)), "pairs": moved},
        "samples": samples,
    }


@torch.no_grad()
def category_error(model: CCAD, images: dict[str, Tensor]) -> float | None:
    """bank_mode="category": how often the category chosen at test time (the category of the
    bank entry nearest to the input's global feature) is not the image's own.

    images: {category: (N, 3, H, W)}, the categories in the order of the run's training
    (``cfg.extra["train_counts"]``). None when the model has no global features to choose by.
    """
    if model.extractor is None:
        return None
    wrong, total = 0, 0
    for index, batch in enumerate(images.values()):
        for chunk in batch.split(32):
            chosen = model.assign_category(model.global_features(chunk.to(model.bank.device)))
            wrong += int((chosen.cpu() != index).sum())
            total += len(chunk)
    return wrong / max(1, total)


def probe_run(
    run, data, layout: str = "mvtec", n_per_bank: int = 8, seed: int = 0, **inference
) -> dict:
    """``ccad-tutorial probe``: the positive control on a trained run.

    A unified run is probed with its own bank, split by category (``bank.entry_labels``);
    a per-category run with a bank of every category of ``data`` built by its own extractor
    (calibrated on its training images, as its bank was): it has only ever seen its own, so
    it should draw its own category whatever it is given. Returns {"generation_accuracy",
    "chance", "confusion", "categories", "swap", "category_error" (bank_mode="category"
    and "retrieved" runs: how often the test images' category is chosen wrongly),
    "classifier_accuracy" (the nearest-category classifier on real test normals)}.
    ``inference`` sets fields read at inference (e.g. guidance_scale=4) for this probe.
    """
    from ccad_tutorial.bank import CoarseFeatureBank, build_bank
    from ccad_tutorial.datasets import list_categories, load_split
    from ccad_tutorial.presets import set_inference_fields

    model = CCAD.from_pretrained(run)
    cfg = model.cfg
    set_inference_fields(cfg, inference)
    counts = cfg.extra.get("train_counts")
    names = list(counts) if counts else list_categories(data, layout)
    normals = {c: load_split(data, layout, c, "train", cfg.image_size).images for c in names}
    if counts:
        banks = {c: model.bank[model.bank_labels == i].cpu() for i, c in enumerate(names)}
    else:
        own = cfg.extra["train_args"]["category"]
        _, extractor = build_bank(normals[own], cfg)  # the run's extractor, recalibrated alike
        banks = {
            c: model.bank.cpu()
            if c == own
            else CoarseFeatureBank.build(
                extractor.extract(normals[c]), ratio=cfg.xi, min_size=cfg.min_bank, seed=cfg.seed
            ).features
            for c in names
        }
    classifier = NearestCategory(cfg, normals)
    result = conditional_generation(model, banks, n_per_bank, seed, classifier)
    good = {}
    for c in names:
        test = load_split(data, layout, c, "test", cfg.image_size)
        good[c] = test.images[test.labels == 0]
    truth = torch.cat([torch.full((len(v),), i) for i, v in enumerate(good.values())])
    named = torch.cat([classifier(v) for v in good.values()])
    return {
        "run": str(run),
        "generation_accuracy": result["accuracy"],
        "chance": result["chance"],
        "confusion": result["confusion"],
        "categories": names,
        "swap": result["swap"],
        "category_error": category_error(model, good) if counts else None,
        "classifier_accuracy": float((named == truth).float().mean()),
        "guidance_scale": cfg.guidance_scale,
        "n_per_bank": n_per_bank,
    }


@torch.no_grad()
def map_check(
    detector, images: Tensor, labels: Tensor, masks: Tensor, noise: float = 0.1, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Is a low AUROC the model's or the map's? Three reconstructions, one scorer.

    * ``model``: the reconstructions of a ``detectors.CCADDetector`` (evaluation noise
      ``seed``), scored by its main map;
    * ``model, pixel L1``: the SAME reconstructions, scored by the blurred pixel difference;
    * ``noisy copy``: no model, the input plus Gaussian noise of std ``noise`` (clamped to
      [0, 1]) as its "reconstruction", scored by the same map.

    If the model's reconstructions score well with pixel L1 and a noisy copy scores as badly
    as the model with the model's map, the map (not the model) points the wrong way for
    reconstructions that keep residual noise. Returns {name: {"image_auroc", "pixel_auroc",
    "defect_error", "normal_error"}}; the last two are the mean absolute pixel error of the
    reconstruction inside and outside the defect masks.
    """
    from ccad_tutorial.metrics import image_auroc, pixel_auroc

    gen = torch.Generator().manual_seed(seed)
    recons = {
        "model": _with(detector, noise_seed=seed).reconstruct(images),
        "noisy copy": (images + noise * torch.randn(images.shape, generator=gen)).clamp(0, 1),
    }
    out = {}
    inside = masks.expand_as(images) > 0
    for name, recon in recons.items():
        error = (recon - images).abs()
        for which in ("", "l1_") if name == "model" else ("",):
            scores, maps = detector.score(images, recon, which)
            out[name + (", pixel L1" if which else "")] = {
                "image_auroc": image_auroc(labels, scores),
                "pixel_auroc": pixel_auroc(masks, maps),
                "defect_error": float(error[inside].mean()) if inside.any() else float("nan"),
                "normal_error": float(error[~inside].mean()),
            }
    return {name: out[name] for name in ("model", "model, pixel L1", "noisy copy")}
