"""The repository's URL lives in _config.yml; every copy of it agrees (tools/set_repo_url.py)."""

import importlib.util
import json
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))
_spec = importlib.util.spec_from_file_location("set_repo_url", ROOT / "tools" / "set_repo_url.py")
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
URL = CONFIG["repository"]["url"]


def test_the_tool_reads_the_url_that_the_book_reads():
    assert tool.repo_url() == URL.rstrip("/")
    owner, name = tool.split(URL)
    assert tool.pages_url(URL) == f"https://{owner.lower()}.github.io/{name}/"


def test_every_github_reference_is_this_repository_or_a_cited_project():
    assert not tool.disagreements(), "\n".join(tool.disagreements())


def test_install_cells_and_colab_badges_name_this_repository_and_their_own_chapter():
    owner, name = tool.split(URL)
    branch = CONFIG["repository"]["branch"]
    for path in CHAPTERS:
        cells = json.loads(path.read_text())["cells"]
        badge = (
            f"colab.research.google.com/github/{owner}/{name}/blob/{branch}/notebooks/{path.name}"
        )
        assert badge in "".join(cells[0]["source"]), f"{path.name}: Colab badge"
        install = "".join(next(c for c in cells if c["cell_type"] == "code")["source"])
        assert f'REPO = "{URL}"' in install, f"{path.name}: install cell"


def test_readme_says_where_the_published_book_lives():
    assert tool.pages_url(URL) in (ROOT / "README.md").read_text()


def test_set_repo_url_rewrites_every_copy_and_leaves_cited_projects_alone(tmp_path):
    # The slugs are put together here so that no repository URL is typed in this file
    # (a fork's set_repo_url.py would rewrite it, and the check above would flag it).
    old, new = "old-owner/old-name", "Jane-Doe/my-book"
    pages = "https://{}.github.io/{}/"
    files = {
        "_config.yml": f"title: t\nrepository:\n  url: https://github.com/{old}\n  branch: main\n",
        "nb.ipynb": json.dumps({"source": [f'REPO = "https://github.com/{old}"\n']})
        + f"\n[badge](https://colab.research.google.com/github/{old}/blob/main/nb.ipynb)\n",
        "README.md": f"Book: {pages.format('old-owner', 'old-name')}, cited: "
        "https://github.com/amazon-science/spot-diff\n",
        "results.py": f'RAW = "https://raw.githubusercontent.com/{old}/main/x"\n',
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)

    changed = tool.set_url(f"https://github.com/{new}", root=tmp_path)

    assert {p.name for p in changed} == set(files)
    text = "".join((tmp_path / name).read_text() for name in files)
    assert "old-owner" not in text and "old-name" not in text
    assert f"url: https://github.com/{new}\n" in (tmp_path / "_config.yml").read_text()
    assert f'REPO = \\"https://github.com/{new}\\"' in text
    assert pages.format("jane-doe", "my-book") in text
    assert f"colab.research.google.com/github/{new}/blob/main/nb.ipynb" in text
    assert f"raw.githubusercontent.com/{new}/main/x" in text
    assert "https://github.com/amazon-science/spot-diff" in text
    assert tool.disagreements(tmp_path) == []
