"""The repository's URL lives in one place: ``repository.url`` in ``_config.yml``.

Every other copy is derived from it and rewritten by this script: the install cell of each
chapter (``REPO = "https://github.com/OWNER/NAME"``), the Colab badges
(``colab.research.google.com/github/OWNER/NAME/...``), the raw links to benchmark results
(``raw.githubusercontent.com/OWNER/NAME/...``) and the published book's address on GitHub
Pages (``https://OWNER.github.io/NAME/``).

    python tools/set_repo_url.py https://github.com/OWNER/NAME   # point every copy at a fork
    python tools/set_repo_url.py --check                         # list copies that disagree
    python tools/set_repo_url.py                                 # print the URL and the book's

Standard library only, so a fresh fork can run it before anything is installed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "_config.yml"

# GitHub repositories named in tracked files that are not this one: projects the book cites,
# and the placeholder of usage lines. Any other must be this one (add a cited project here).
OTHER_REPOS = {"amazon-science/spot-diff", "owner/name"}

_NAME = r"[A-Za-z0-9_.-]+"
_URL = re.compile(rf"^https://github\.com/({_NAME})/({_NAME}?)/?$")
# The places a repository is named: (pattern, how to write it for owner/name).
_FORMS = (
    (rf"(?<![\w.-])github\.com/({_NAME})/({_NAME})", "github.com/{owner}/{name}"),
    (
        rf"colab\.research\.google\.com/github/({_NAME})/({_NAME})",
        "colab.research.google.com/github/{owner}/{name}",
    ),
    (
        rf"raw\.githubusercontent\.com/({_NAME})/({_NAME})",
        "raw.githubusercontent.com/{owner}/{name}",
    ),
    (rf"(?<![\w.-])({_NAME})\.github\.io/({_NAME})", "{pages_host}/{name}"),
)
_CONFIG_URL = re.compile(r"^(repository:\n(?:[ \t]+.*\n)*?[ \t]+url:[ \t]*)(\S+)", re.M)


def split(url: str) -> tuple[str, str]:
    """``https://github.com/OWNER/NAME`` -> ``(OWNER, NAME)``; anything else is an error."""
    match = _URL.match(url.strip())
    if not match or match.group(2).endswith(".git"):
        raise SystemExit(f"not a GitHub repository URL: {url!r} (https://github.com/OWNER/NAME)")
    return match.group(1), match.group(2)


def repo_url(root: Path = ROOT) -> str:
    """The one source: ``repository.url`` in ``_config.yml``."""
    match = _CONFIG_URL.search((root / "_config.yml").read_text())
    if not match:
        raise SystemExit(f"{root / '_config.yml'}: no `repository:` block with a `url:`")
    return match.group(2).rstrip("/")


def pages_url(url: str) -> str:
    """Where GitHub Pages publishes the book of repository ``url`` (hosts are lowercase)."""
    owner, name = split(url)
    host = f"{owner.lower()}.github.io"
    return f"https://{host}/" if name.lower() == host else f"https://{host}/{name}/"


def tracked_text_files(root: Path = ROOT) -> list[Path]:
    """The files git tracks (ignored ones, e.g. .venv and _build, never hold a copy)."""
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    files = []
    for name in filter(None, names):
        path = root / name
        if path.is_file() and b"\0" not in path.read_bytes()[:8192]:
            files.append(path)
    return files


def _references(text: str):
    """Every (match, owner, name) naming a GitHub repository in ``text``."""
    for pattern, _ in _FORMS:
        for match in re.finditer(pattern, text):
            owner, name = match.group(1), match.group(2)
            name = name[: -len(".git")] if name.endswith(".git") else name
            yield match, owner, name.rstrip(".")


def disagreements(root: Path = ROOT) -> list[str]:
    """``path:line: found`` for each named repository that is neither ours nor cited."""
    ours = "/".join(split(repo_url(root))).lower()
    found = []
    for path in tracked_text_files(root):
        text = path.read_text(errors="replace")
        for match, owner, name in _references(text):
            slug = f"{owner}/{name}".lower()
            if slug != ours and slug not in OTHER_REPOS:
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(root)}:{line}: {match.group(0)}")
    return found


def set_url(new_url: str, root: Path = ROOT) -> list[Path]:
    """Point ``_config.yml`` and every copy of the old URL at ``new_url``; return the files."""
    old_owner, old_name = split(repo_url(root))
    owner, name = split(new_url)
    new = {"owner": owner, "name": name, "pages_host": f"{owner.lower()}.github.io"}
    changed = []
    for path in tracked_text_files(root):
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        updated = text
        for pattern, template in _FORMS:

            def swap(match, template=template):
                if (match.group(1).lower(), match.group(2).lower().removesuffix(".git")) != (
                    old_owner.lower(),
                    old_name.lower(),
                ):
                    return match.group(0)
                suffix = ".git" if match.group(2).endswith(".git") else ""
                return template.format(**new) + suffix

            updated = re.sub(pattern, swap, updated)
        if path.name == "_config.yml" and path.parent == root:
            updated = _CONFIG_URL.sub(
                lambda m: m.group(1) + f"https://github.com/{owner}/{name}", updated
            )
        if updated != text:
            path.write_text(updated)
            changed.append(path)
    return changed


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        found = disagreements()
        for line in found:
            print(line)
        if found:
            print(
                f"{len(found)} GitHub references disagree with _config.yml's repository.url "
                f"({repo_url()}): each must name it (this script rewrites the old URL's copies "
                "when you change it), or be a cited project in OTHER_REPOS of "
                "tools/set_repo_url.py"
            )
        return 1 if found else 0
    if len(argv) == 1 and not argv[0].startswith("-"):
        for path in set_url(argv[0]):
            print(f"rewrote {path.relative_to(ROOT)}")
        argv = []
    if not argv:
        print(f"repository: {repo_url()}\npublished book: {pages_url(repo_url())}")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
