"""Download MVTec AD (by the user's explicit choice; nothing else in the package downloads data).

MVTec AD is licensed CC BY-NC-SA 4.0 (non-commercial), so the tutorial never ships it; this
module fetches the official archive, checks its SHA-256 and extracts it. When anything fails
(no network, a moved link, a corrupt archive) it raises :class:`DataError` with the steps to do
the same by hand. Usage: ``ccad-tutorial download-mvtec --out data/mvtec`` or
``download_mvtec_ad("data/mvtec")``; afterwards pass ``--data data/mvtec`` (or set ``DATA_ROOT``).
"""

from __future__ import annotations

import hashlib
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ccad_tutorial.datasets import DataError
from ccad_tutorial.roots import find_categories

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip


@dataclass(frozen=True)
class ArchiveSource:
    """Where a data-set archive comes from and how to recognise it."""

    name: str
    url: str
    archive: str
    sha256: str
    size_bytes: int
    page: str  # where a person downloads it by hand
    licence: str


# The one place that knows where MVTec AD lives. Sources (checked 2026 with the search tool,
# not by downloading: this project's machines have no internet):
# - url: the current mydrive.ch share link of the full archive, as used by anomalib and several
#   other projects; MVTec rotates these links and the older one
#   (shares/38536/3830184030e49fe74747669442f0f282/...) has answered 404. If this one dies too,
#   the manual instructions below still work.
# - sha256: the value in anomalib's MVTecAD DownloadInfo, reported identically (with the size
#   5,264,982,680 bytes) by independent projects that downloaded the archive. MVTec publishes
#   no checksum on its page.
MVTEC_AD = ArchiveSource(
    name="MVTec AD",
    url=(
        "https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/"
        "download/420938113-1629960298/mvtec_anomaly_detection.tar.xz"
    ),
    archive="mvtec_anomaly_detection.tar.xz",
    sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
    size_bytes=5_264_982_680,
    page="https://www.mvtec.com/research-teaching/datasets/mvtec-ad",
    licence="CC BY-NC-SA 4.0 (non-commercial use only)",
)


def manual_instructions(source: ArchiveSource, dest: Path, reason: object) -> str:
    """The message shown when the automatic download fails: how to do it by hand."""
    gib = source.size_bytes / 2**30
    return (
        f"Could not download {source.name} automatically: {reason}\n"
        "Download it by hand instead:\n"
        f"  1. Open {source.page} (Downloads), accept the licence, {source.licence}, and "
        f"download {source.archive} ({gib:.1f} GiB).\n"
        f"  2. Optionally check it: sha256sum {source.archive} should print {source.sha256}.\n"
        f"  3. Extract it: mkdir -p {dest} && tar -xf {source.archive} -C {dest}\n"
        f"  4. Point the tutorial at the folder that holds bottle/, cable/, ...: "
        f"export DATA_ROOT={dest} or pass --data {dest}, and check it with "
        f"`ccad-tutorial check-data --data {dest} --layout mvtec`."
    )


def _extracted_root(dest: Path) -> Path | None:
    """``dest`` (or its one sub-folder) when all 15 categories are already there."""
    for candidate in [dest, *sorted(p for p in dest.glob("*") if p.is_dir())]:
        if set(MVTEC_CATEGORIES) <= set(find_categories(candidate, "mvtec")):
            return candidate
    return None


def _fetch(url: str, target: Path, expected_bytes: int) -> None:
    """Stream ``url`` to ``target`` with a progress bar (via ``target.part``, renamed at the end)."""
    part = target.with_name(target.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as out:
        total = int(response.headers.get("Content-Length") or expected_bytes)
        with tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name
        ) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    part.replace(target)


def sha256_of(path: Path, chunk_bytes: int = 1 << 24) -> str:
    """Hex SHA-256 of a file, read in chunks (mirrors ``hashlib.file_digest``, Python 3.11+)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12: no absolute paths, no escapes
            tar.extractall(dest, filter="data")
            return
        root = dest.resolve()
        for member in tar.getmembers():  # the same guard by hand on older Pythons
            target = (dest / member.name).resolve()
            if root not in (target, *target.parents) or member.issym() or member.islnk():
                raise DataError(f"{archive} holds an unsafe entry {member.name!r}; not extracting.")
        tar.extractall(dest)


def download_mvtec_ad(
    dest: str | Path, source: ArchiveSource = MVTEC_AD, keep_archive: bool = False
) -> Path:
    """Download, verify (SHA-256) and extract MVTec AD into ``dest``; return the data root.

    Does nothing when the 15 categories are already there. The archive (~4.9 GiB) is deleted
    after a successful extraction unless ``keep_archive``. Any failure raises DataError with
    the manual instructions (page, licence, how to point ``--data`` / ``DATA_ROOT`` at it).
    """
    dest = Path(dest).expanduser()
    found = _extracted_root(dest) if dest.is_dir() else None
    if found is not None:
        return found
    archive = dest / source.archive
    try:
        dest.mkdir(parents=True, exist_ok=True)
        if not (archive.is_file() and archive.stat().st_size == source.size_bytes):
            _fetch(source.url, archive, source.size_bytes)
        digest = sha256_of(archive)
        if digest != source.sha256:
            raise DataError(
                f"{archive} has SHA-256 {digest}, expected {source.sha256}: the download is "
                "incomplete or corrupt (delete it before trying again)"
            )
        _extract(archive, dest)
        found = _extracted_root(dest)
        if found is None:
            raise DataError(f"{archive} was extracted but {dest} lacks some of the 15 categories")
    except Exception as err:  # any failure: network, disk, checksum, archive
        raise DataError(manual_instructions(source, dest, err)) from err
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return found
