"""What a chapter puts on its page besides figures: numbers glued into the prose,
tables, and the package's own code.

A number in a chapter's prose comes from the cell that computed it, through myst-nb's
``glue``: the cell calls :func:`glue`, the text writes ``{glue:text}`name:.3f```, and
the built book shows the value the cell computed, so prose and output cannot disagree.
In a plain Jupyter or Colab session the glue role stays visible as written (Jupyter
does not render it); the value is in the cell's output instead.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Sequence
from typing import Any

# the command line prints markdown_table where IPython (a book tool) may be missing
try:
    from IPython.display import Markdown, display
except ImportError:  # pragma: no cover
    Markdown = display = None

__all__ = ["glue", "glue_all", "markdown_table", "show_table", "show_code"]


def _plain(value: Any) -> Any:
    """A Python scalar for numpy/torch scalars: myst-nb formats the text/plain repr, and
    ``np.float64(0.5)`` is not a number it can read back."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(
        f"glue takes a number or a string, not {type(value).__name__}: format it first "
        "(a figure or a table is displayed, not glued)."
    )


def glue(name: str, value: Any) -> Any:
    """Store ``value`` under ``name`` for the prose (``{glue:text}`name:.3f```);
    returns it.

    Nothing is displayed. Without myst-nb (a Colab session without the book tools) this
    only returns the value.
    """
    value = _plain(value)
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # pragma: no cover - the book tools are not installed
        return value
    myst_glue(name, value, display=False)
    return value


def glue_all(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """:func:`glue` each item of ``values`` as ``prefix + key``; returns the plain
    values."""
    return {key: glue(prefix + key, value) for key, value in values.items()}


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    digits: int = 3,
) -> str:
    """A pipe table, floats at ``digits`` decimals (the book renders it as a table).

    The package's one table writer: chapters display it with :func:`show_table`, and
    since it needs no IPython, scripts and the command line print it as it is.
    """
    for i, row in enumerate(rows):
        if len(row) != len(header):
            cells = f"row {i} has {len(row)} cells"
            raise ValueError(f"{cells}, the header {len(header)}: {row!r}")
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def show_table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    digits: int = 3,
) -> None:
    """Display :func:`markdown_table` (a table in the book and in Jupyter)."""
    display(Markdown(markdown_table(header, rows, digits)))


CODE_COLUMN = 88  # characters of code the book's column shows without scrolling


def show_code(*objects: Any) -> None:
    """Display the source of functions, methods or classes of the package, highlighted:
    the code the chapter explains is the code the tests run.

    Raises ValueError if a line (indentation of a method removed) is wider than
    ``CODE_COLUMN``: the book would cut it off, so the package's code is kept narrower.
    """
    for obj in objects:
        lines = inspect.getsource(obj).splitlines()
        indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
        lines = [line[indent:] for line in lines]
        wide = [(i, line) for i, line in enumerate(lines, 1) if len(line) > CODE_COLUMN]
        if wide:
            i, line = wide[0]
            where = f"{inspect.getsourcefile(obj)}, {obj.__qualname__}"
            raise ValueError(
                f"{where}: line {i} of the shown code is {len(line)} characters, wider "
                f"than the book's column ({CODE_COLUMN}); rewrap it: "
                f"{line.strip()[:60]}"
            )
        source = "\n".join(lines)
        display(Markdown(f"```python\n{source}\n```"))
