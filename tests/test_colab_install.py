"""Colab keeps its own torch: the chapters' install cell never reinstalls torch or torchvision.

Colab ships torch and torchvision built for its CUDA. A pip command that decides to
replace them downloads gigabytes and can leave a torch that does not match the GPU driver.
The test runs the install cell's own pip command with ``--dry-run --report`` in a fresh venv
that holds only what Colab brings that matters here (torch, torchvision and what they
depend on, linked from this venv, so nothing big is installed) and reads what pip would
install.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import types
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# What Colab brings and the install cell must leave alone.
COLAB_TORCH = ("torch", "torchvision")


def install_cell(path: Path) -> str:
    """The source of the first code cell: the Colab-only install."""
    cells = json.loads(path.read_text())["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


def test_every_chapter_has_the_same_install_cell():
    cells = {path.name: install_cell(path) for path in CHAPTERS}
    first = install_cell(CHAPTERS[0])
    differ = [name for name, source in cells.items() if source != first]
    assert not differ, f"install cells differ from {CHAPTERS[0].name}'s: {differ}"


def commands_of_the_install_cell(source: str, monkeypatch) -> tuple[list[list[str]], dict]:
    """Run the cell as Colab would, with ``subprocess.run`` recording instead of running."""
    calls = []

    def record(cmd, *args, **kwargs):
        calls.append([str(part) for part in cmd])
        return subprocess.CompletedProcess(cmd, 0)

    namespace: dict = {}
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
        patch.setattr(subprocess, "run", record)
        exec(compile(source, "install cell", "exec"), namespace)
    return calls, namespace


def test_install_cell_runs_one_pip_install_only_on_colab(monkeypatch):
    calls, namespace = commands_of_the_install_cell(install_cell(CHAPTERS[0]), monkeypatch)
    assert len(calls) == 1 and calls[0][:4] == [sys.executable, "-m", "pip", "install"], calls
    assert any(f"git+{namespace['REPO']}@" in part for part in calls[0])
    assert "google.colab" not in sys.modules
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"pip outside Colab: {a}"))
    exec(compile(install_cell(CHAPTERS[0]), "install cell", "exec"), {})


def distributions_of(names) -> dict[str, metadata.Distribution]:
    """``names`` and everything they require, with the extras they ask for, installed.

    torch asks for ``cuda-toolkit[cublas,cudart,...]``: the CUDA wheels come in through
    those extras, so a closure that ignored extras would miss them.
    """
    found, todo, done = {}, [(name, "") for name in names], set()
    while todo:
        name, extra = todo.pop()
        name = canonicalize_name(name)
        if (name, extra) in done:
            continue
        done.add((name, extra))
        dist = found.setdefault(name, metadata.distribution(name))
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(req.name, "")] + [(req.name, e) for e in req.extras]
    return found


def colab_like_venv(where: Path) -> Path:
    """A venv without pip whose site-packages links torch, torchvision and their closure."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    for name, dist in distributions_of(COLAB_TORCH).items():
        assert dist.files, f"{name}: installed without a RECORD, cannot tell its files"
        base = Path(dist.locate_file(""))
        tops = {f.parts[0] for f in dist.files if f.parts[0] != ".."}
        for top in tops:
            if (base / top).exists() and not (site / top).exists():
                (site / top).symlink_to(base / top)
    return python


def pip_environment() -> dict:
    """No pip configuration of this machine (constraints, local wheel folders): Colab's pip."""
    keep = {"PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_INDEX_URL"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in keep}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def index_is_reachable() -> bool:
    url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/") + "/pip/"
    try:
        urllib.request.urlopen(url, timeout=15).close()
        return True
    except OSError:
        return False


def checkout_copy(where: Path) -> Path:
    """What pip builds the package from: the checkout's pyproject, README and package."""
    where.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, where / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "ccad_tutorial", where / "ccad_tutorial", ignore=ignore)
    return where


@pytest.mark.slow
def test_install_cell_keeps_the_torch_that_colab_brings(tmp_path, monkeypatch):
    if not index_is_reachable():
        pytest.skip("the package index is not reachable: pip cannot resolve the install cell")
    calls, namespace = commands_of_the_install_cell(install_cell(CHAPTERS[0]), monkeypatch)
    (cmd,) = calls
    python = colab_like_venv(tmp_path / "colab")
    seen = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('torch'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert seen == metadata.version("torch"), "the fresh venv must see the linked torch"

    # The cell's arguments, with the repository at its ref replaced by this checkout.
    source = checkout_copy((tmp_path / "src").resolve())
    repo_at_ref = re.compile(re.escape(f"git+{namespace['REPO']}@") + r"[\w./-]+")
    args = [repo_at_ref.sub(source.as_uri(), part) for part in cmd[4:]]
    assert any(source.as_uri() in part for part in args), args
    report = tmp_path / "report.json"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", *args]
    pip += ["--dry-run", "--report", str(report), "--quiet"]
    done = subprocess.run(pip, env=pip_environment(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    installs = {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "ccad-tutorial" in installs and "diffusers" in installs, sorted(installs)
    replaced = {
        name: version
        for name, version in installs.items()
        if name in COLAB_TORCH or name == "triton" or name.startswith(("nvidia-", "cuda-"))
    }
    assert not replaced, f"the install cell would replace Colab's torch stack: {replaced}"
