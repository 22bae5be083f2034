"""The GitHub workflows run what the Makefile runs, so they cannot drift from it."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"


def load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def triggers(workflow: dict) -> dict:
    # YAML 1.1 reads the key `on:` as the boolean True
    return workflow.get("on", workflow.get(True))


def steps(workflow_or_job: dict) -> list[dict]:
    jobs = workflow_or_job["jobs"].values() if "jobs" in workflow_or_job else [workflow_or_job]
    return [step for job in jobs for step in job.get("steps", [])]


def commands(workflow: dict) -> list[str]:
    return [line.strip() for step in steps(workflow) for line in step.get("run", "").splitlines()]


def uses(workflow_or_job: dict, action: str) -> list[dict]:
    return [s for s in steps(workflow_or_job) if s.get("uses", "").startswith(action + "@")]


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


@pytest.mark.parametrize("name", ["book.yml", "ci.yml"])
def test_workflow_parses_and_uses_the_python_of_the_readme(name):
    workflow = load(name)
    versions = [str(s["with"]["python-version"]) for s in uses(workflow, "actions/setup-python")]
    assert versions and "3.11" in versions[0].split(), versions


def test_book_workflow_builds_with_make_book_and_publishes_its_html():
    workflow = load("book.yml")
    assert "book" in make_targets()
    assert "make book" in commands(workflow), "the book is built the way the README builds it"
    on = triggers(workflow)
    assert on["push"]["branches"] == ["main"] and "workflow_dispatch" in on
    (upload,) = uses(workflow, "actions/upload-pages-artifact")
    assert upload["with"]["path"].rstrip("/") == "_build/html"
    assert uses(workflow, "actions/configure-pages") and uses(workflow, "actions/deploy-pages")
    (deploy,) = [j for j in workflow["jobs"].values() if uses(j, "actions/deploy-pages")]
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert workflow["concurrency"]["group"]


def test_book_workflow_builds_the_directory_make_book_writes():
    # `make book` runs jupyter-book on the repository root, so the HTML is in _build/html
    assert re.search(r"jupyter-book build \. ", (ROOT / "Makefile").read_text())


def test_ci_workflow_runs_the_ci_script_with_python_3_12_on_path():
    workflow = load("ci.yml")
    on = triggers(workflow)
    assert "push" in on and "pull_request" in on
    assert "bash .ci/run" in commands(workflow)
    (job,) = workflow["jobs"].values()
    assert job["runs-on"].startswith("ubuntu") and job["timeout-minutes"] <= 90
    (setup,) = uses(workflow, "actions/setup-python")
    versions = str(setup["with"]["python-version"]).split()
    assert versions[-1] == "3.11", "the last version listed is python3: the one of `make test`"
    assert "3.12" in versions, ".ci/run runs the fast tests under python3.12 too"


def test_ci_script_runs_make_test_and_the_python_3_12_tests():
    script = (ROOT / ".ci" / "run").read_text()
    assert {"test", "test-fast", "test-py312", "python312"} <= make_targets()
    assert re.search(r"^make test$", script, flags=re.M)
    assert "make test-py312" in script
