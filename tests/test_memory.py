"""The rule that turns the measured sd15 step memory into a GPU batch (chapter 7)."""

from ccad_tutorial import memory as mem


def row(batch, checkpointing, peak=None):
    if peak is None:
        return {"batch": batch, "gradient_checkpointing": checkpointing, "over_cap": True}
    return {
        "batch": batch,
        "gradient_checkpointing": checkpointing,
        "over_cap": False,
        "peak_gib": peak,
        "step_gib": peak - 5,
        "step_s": 1.0,
    }


def test_need_adds_the_cuda_context_and_a_run_over_the_cap_has_none():
    assert mem.gpu_need_gib(row(1, False, 10.0)) == 10.0 + mem.CUDA_CONTEXT_GIB
    assert mem.gpu_need_gib(row(4, False)) is None


def test_largest_batch_prefers_no_recompute_at_the_same_batch():
    payload = {"rows": [row(1, False, 8), row(2, False, 9), row(4, False, 13), row(4, True, 11)]}
    assert mem.largest_batch(payload, 12.5) == (4, True)  # only checkpointing fits batch 4
    assert mem.largest_batch(payload, 20) == (4, False)
    assert mem.largest_batch(payload, 9.5) == (1, False)
    assert mem.largest_batch(payload, 5) == (0, None)


def test_table_says_which_runs_passed_the_cap():
    headers, rows = mem.memory_table({"cap_gib": 17.5, "rows": [row(1, False, 8), row(4, True)]})
    assert len(headers) == len(rows[0]) == len(rows[1])
    assert float(rows[0][-1]) == 8 + mem.CUDA_CONTEXT_GIB and "17.5 GiB cap" in rows[1][2]
