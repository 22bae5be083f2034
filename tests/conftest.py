"""Shared fixtures: a small MiniTex-AD tree generated once per test session."""

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def minitex_root(tmp_path_factory):
    """A 64 px MiniTex-AD with few images: enough for loaders, the CLI and smoke runs."""
    from ccad_tutorial.minitex import make_minitex

    return make_minitex(
        tmp_path_factory.mktemp("minitex") / "minitex-ad",
        size=64,
        seed=0,
        n_train=16,
        n_test_good=6,
        n_test_defect_per_type=2,
    )


# --------------------------------------------------------------------------- the book's tests
#
# What the chapter tests (tests/test_notebooks.py) and the browser test of the
# built book (tests/test_book.py) need from the whole session.


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "book: builds the book from the executed chapters and checks it in a browser"
    )


# Tests that train or run a pipeline for 5 s or more on 2 CPU cores (pytest --durations),
# marked slow here so that `make test-fast` (-m "not slow and not notebook and not book")
# stays an edit-test loop of a couple of minutes. `make test` and CI still run them.
# A renamed test drops out of this list silently: it then runs in test-fast again.
SLOW_ON_2_CPUS = {
    "tests/test_cli.py::test_train_on_a_missing_category_is_a_clear_error",
    "tests/test_cli.py::test_evaluate_on_a_folder_that_is_not_a_run_says_how_to_make_one",
    "tests/test_cli.py::test_make_data_then_check_data_prints_counts",
    "tests/test_condition.py::test_probe_of_a_per_category_run_offers_every_category_of_the_data",
    "tests/test_condition.py::test_probe_command_writes_the_positive_control",
    "tests/test_condition.py::test_a_run_on_several_categories_takes_the_multiclass_defaults",
    "tests/test_ddpm.py::test_training_lowers_the_held_out_loss_at_every_timestep",
    "tests/test_diagnostics.py::test_condition_swap_reports_every_bank_and_sees_the_change",
    "tests/test_diagnostics.py::"
    "test_condition_swap_without_controls_evaluates_only_the_banks_asked_for",
    "tests/test_experiments.py::test_a_cell_is_trained_once_checkpointed_and_then_read_back",
    "tests/test_experiments.py::test_eval_settings_reuse_the_weights_and_reject_training_fields",
    "tests/test_experiments.py::test_a_unified_cell_trains_once_and_is_evaluated_per_category",
    "tests/test_precision.py::test_bf16_on_cpu_trains_and_saves_float32_weights",
    "tests/test_published.py::test_the_baselines_of_the_minitex_table_are_recomputed_exactly",
    "tests/test_reproduce.py::"
    "test_an_interrupted_multiclass_model_resumes_and_every_category_is_evaluated_after",
    # the only user of the module fixture that trains one model per category
    "tests/test_reproduce.py::test_per_category_trains_and_evaluates_one_model_per_category",
    "tests/test_reproduce.py::"
    "test_a_category_evaluated_before_the_model_trained_on_is_evaluated_again",
    "tests/test_reproduce.py::test_an_interrupted_category_resumes_at_its_checkpoint",
    "tests/test_reproduce.py::test_a_category_stopped_before_its_first_checkpoint_starts_over",
    "tests/test_train.py::test_resume_continues_at_the_saved_step_like_an_uninterrupted_run",
    "tests/test_train.py::test_evaluate_run_reports_metrics_json_and_grid",
    "tests/test_train.py::test_truncated_checkpoint_is_a_clear_error_and_nothing_is_overwritten",
    "tests/test_verdicts.py::test_chance_auroc_std_matches_small_cases_and_simulation",
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    """Mark SLOW_ON_2_CPUS slow, and run the book's tests last (a stable sort).

    pytest runs files alphabetically, so tests/test_book.py would run before
    tests/test_notebooks.py; but the book is built from the chapters that the notebook
    tests executed (``_build/executed/``), so it must come after them.
    """
    for item in items:
        if item.nodeid.split("[")[0] in SLOW_ON_2_CPUS:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("book") is not None)


@pytest.fixture(autouse=True)
def _kernels_draw_figures_inline(request, monkeypatch):
    """A kernel started by a notebook test must not inherit MPLBACKEND=Agg (set above).

    ipykernel selects its inline backend only when MPLBACKEND is unset; under Agg every
    matplotlib figure of a chapter is stored as the text "<Figure size ... with N Axes>"
    instead of an image, and the book would show that text.
    """
    if request.node.get_closest_marker("notebook"):
        monkeypatch.delenv("MPLBACKEND", raising=False)
