"""conftest.SLOW_ON_2_CPUS names tests by node id: a renamed test would silently leave it."""

import ast
from pathlib import Path

from conftest import SLOW_ON_2_CPUS

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_marked_slow_by_name_exists():
    missing = []
    for node_id in sorted(SLOW_ON_2_CPUS):
        path, name = node_id.split("::")
        tree = ast.parse((ROOT / path).read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        if name not in names:
            missing.append(node_id)
    assert not missing, f"conftest.SLOW_ON_2_CPUS names tests that do not exist: {missing}"
