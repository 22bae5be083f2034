"""Chapter 8's last table: the paper's claims against what this book measured.

:func:`paper_claims` gives one row per claim (the claim, the measurement, the verdict
at CPU scale); :func:`coreset_comparison` picks the coreset timings it quotes from the
``coreset_speed`` benchmark. The rules the verdicts apply (seed spread, a difference
beyond it) and the condition-at-work verdict it reads are in
``ccad_tutorial.verdicts``; the chapter's other result tables in
``ccad_tutorial.tables``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ccad_tutorial.verdicts import beyond_spread, seed_spread

__all__ = ["coreset_comparison", "paper_claims"]


# ---------------------------------------------------------------------- claims
# glibc's default allocator, then mmap thresholds of 1 MB and 64 kB
ALLOCATORS = ("", "-mmap", "-mmap64k")


def coreset_comparison(runs: dict, n: int, allocators: Sequence[str] = ALLOCATORS):
    """Our greedy coreset against the FASTER successful anomalib row at ``n`` features.

    ``runs`` is ``coreset_speed["runs"]``, keyed ``"<method><allocator>@<N>"``. The
    first allocator of ``allocators`` with a successful ``ours`` row and at least one
    successful anomalib row (2 threads or 1) is used; None if there is none. Returns the
    row keys, their times, and the anomalib rows at ``n`` that failed."""

    def ok(key):
        return key in runs and "failed" not in runs[key] and "time_s" in runs[key]

    failed = sorted(k for k, r in runs.items()
                    if k.endswith(f"@{n}") and k.startswith("anomalib")
                    and "failed" in r)  # fmt: skip
    for alloc in allocators:
        ours = f"ours{alloc}@{n}"
        rows = (f"anomalib{alloc}@{n}", f"anomalib_1thread{alloc}@{n}")
        theirs = [k for k in rows if ok(k)]
        if ok(ours) and theirs:
            best = min(theirs, key=lambda k: runs[k]["time_s"])
            return {"n": n, "allocator": alloc, "ours": ours, "theirs": best,
                    "ours_s": float(runs[ours]["time_s"]),
                    "theirs_s": float(runs[best]["time_s"]),
                    "m": runs[ours].get("M"), "d": runs[ours].get("D"),
                    "failed": failed}  # fmt: skip
    return None


def _coreset_cell(c: dict) -> str:
    alloc = "glibc's default allocator"
    alloc = f"row suffix {c['allocator']}" if c["allocator"] else alloc
    return (f"{c['n'] // 1000}k x {c['d']} features to {c['m']}: ours "
            f"{c['ours_s']:.0f} s (`{c['ours']}`), anomalib's KCenterGreedy "
            f"{c['theirs_s']:.0f} s (`{c['theirs']}`, the faster successful anomalib "
            f"row; {alloc})")  # fmt: skip


def paper_claims(
    table: dict,
    steps_ratio: float | None,
    verdict: dict,
    coreset: Sequence[dict],
    cheap_s: float = 60.0,
) -> list[list[str]]:
    """Rows (claim, measured here, verdict at CPU scale) of the paper-claims table.

    ``table``: the MiniTex-AD table; ``steps_ratio``: the convergence benchmark's steps
    ratio F / uncond (None: never reached); ``verdict``:
    :func:`ccad_tutorial.verdicts.condition_at_work_verdict`; ``coreset``:
    :func:`coreset_comparison` results, the first one at 50k features."""
    mean = {e["method"]: e for e in table["mean"]}
    f, u, c, p = mean["F"], mean["uncond"], mean.get("C"), mean["patchcore"]
    gain, spread = (
        f["image_auroc"] - u["image_auroc"],
        seed_spread(f["image_auroc_std"], u["image_auroc_std"]),
    )

    def yes_no(ok):
        return "**supported**" if ok else "not supported"

    v = verdict
    rows = [[
        "Conditioning a diffusion reconstruction on compressed normal features "
        "improves detection",
        f"per category: F - uncond {gain:+.3f} (spread {spread:.3f}); all categories: "
        f"{v['chosen_model']} at w = {v['chosen_w']:g} - its w = 0 twin "
        f"{v['twin_gain']:+.3f} (twice the spread {2 * v['twin_spread']:.3f}); "
        f"positive control: generation accuracy {v['generation_accuracy']:.2f} (chance "
        f"{v['generation_chance']:.2f})",
        yes_no(v["twin_helps"] and v["generation_reads_bank"]),
    ], [
        "The conditioned model converges faster (at least 30 % fewer steps)",
        f"steps ratio F / uncond = {steps_ratio:.2f}" if steps_ratio is not None
        else "F never reached uncond's final AUROC",
        yes_no(steps_ratio is not None and steps_ratio <= 0.7),
    ]]  # fmt: skip
    if c is not None:
        fc_gain = f["image_auroc"] - c["image_auroc"]
        fc_spread = seed_spread(f["image_auroc_std"], c["image_auroc_std"])
        measured = f"F - C {fc_gain:+.3f} (spread {fc_spread:.3f})"
        ok = beyond_spread(fc_gain, fc_spread, factor=1.0)
    else:
        measured, ok = "C not in the table", False
    fcm = "The learned Fine Compression Module improves on the coarse bank (F over C)"
    rows.append([fcm, measured, yes_no(ok)])
    ahead = beyond_spread(f["image_auroc"] - p["image_auroc"], spread, factor=1.0)
    rows.append([
        "State-of-the-art AUROC (0.962 image / 0.966 pixel on MVTec-AD)",
        f"MiniTex-AD: F {f['image_auroc']:.3f} / {f['pixel_auroc']:.3f}, PatchCore "
        f"{p['image_auroc']:.3f} / {p['pixel_auroc']:.3f} (same random backbone)",
        f"not testable on CPU (chapter 7); CCAD(F) {'' if ahead else 'not '}ahead of "
        "PatchCore here",
    ])  # fmt: skip
    coreset = [x for x in coreset if x]
    rows.append(
        [
            "A greedy coreset compresses the normal features into a small bank cheaply",
            "; ".join(_coreset_cell(x) for x in coreset) or "no successful comparison",
            yes_no(bool(coreset) and coreset[0]["ours_s"] < cheap_s),
        ]
    )
    return rows
