"""`accelerate launch` runs the same training as plain `python -m ccad_tutorial`.

One process on the CPU (``--num_processes 1 --cpu``) must give the very weights and loss
log of the plain command: the launcher adds processes, never another recipe. The rules
that split a batch over several processes are checked directly.
"""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tiny_settings import FAST

from ccad_tutorial import accel

LAUNCH = [
    sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
]  # fmt: skip
PLAIN = [sys.executable]


def cli(prefix: list[str], *args: str) -> subprocess.CompletedProcess:
    """``<prefix> -m ccad_tutorial ARGS`` in a fresh process with one thread (as launched)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [*prefix, "-m", "ccad_tutorial", *args]
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def tiny_sets() -> list[str]:
    """FAST as ``--set FIELD=VALUE`` pairs (lists as JSON)."""
    pairs = []
    for key, value in FAST.items():
        text = str(list(value)) if isinstance(value, tuple) else str(value)
        pairs += ["--set", f"{key}={text}"]
    return pairs


def train(prefix: list[str], data, out) -> tuple[dict, list]:
    args = ["train", "--data", str(data), "--category", "brick", "--out", str(out)]
    cli(prefix, *args, "--steps", "3", *tiny_sets())
    with (out / "loss_log.csv").open() as f:
        losses = [row["loss"] for row in csv.DictReader(f)]
    return load_file(str(out / "model.safetensors")), losses


@pytest.mark.slow
def test_accelerate_launch_trains_the_weights_of_the_plain_command(minitex_root, tmp_path):
    plain, plain_losses = train(PLAIN, minitex_root, tmp_path / "plain")
    launched, launched_losses = train(LAUNCH, minitex_root, tmp_path / "launched")
    assert len(plain_losses) == 3 and launched_losses == plain_losses
    assert plain.keys() == launched.keys()
    assert all(torch.equal(plain[k], launched[k]) for k in plain)


def test_processes_split_every_batch_into_disjoint_equal_slices():
    rows = [range(12)[accel.process_rows(12, rank, 4)] for rank in range(4)]
    assert [list(r) for r in rows] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert accel.process_rows(8, 0, 1) == slice(0, 8)  # one process: the whole batch


def test_a_batch_that_does_not_split_over_the_processes_names_the_fix():
    with pytest.raises(ValueError, match="batch_size=12 does not split over 5 processes"):
        accel.process_rows(12, 0, 5)


def test_process_zero_draws_what_a_one_process_run_always_drew():
    before = torch.Generator().manual_seed(3 * 1_000_003 + 7)  # fit's (seed, step) = (3, 7)
    first = torch.rand(3, generator=accel.step_generator(3, 7))
    assert torch.equal(first, torch.rand(3, generator=before))
    other = torch.rand(3, generator=accel.step_generator(3, 7, rank=1))
    assert not torch.equal(first, other)  # process 1 draws its own crops and noise


@pytest.mark.slow
def test_accelerate_launch_reproduces_the_table_of_the_plain_command(minitex_root, tmp_path):
    """`reproduce` (one multi-class model, evaluated per category) under the launcher."""
    results = {}
    for name, prefix in (("plain", PLAIN), ("launched", LAUNCH)):
        out = tmp_path / name
        args = ["reproduce", "--data", str(minitex_root), "--preset", "tiny"]
        args += ["--categories", "brick,grass"]
        cli(prefix, *args, "--out", str(out), "--steps", "2", *tiny_sets())
        results[name] = json.loads((out / "results.json").read_text())
    plain, launched = results["plain"], results["launched"]
    assert plain["setting"]["training"] == "multi-class"
    assert list(plain["categories"]) == ["brick", "grass"]
    for category, metrics in plain["categories"].items():
        for key in ("image_auroc", "pixel_auroc"):
            assert launched["categories"][category][key] == metrics[key]
