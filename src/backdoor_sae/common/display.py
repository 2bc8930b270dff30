"""How the notebooks' tables look in the book: a value that does not exist shows as "–", not NaN.

The convention, for every notebook: call :func:`show_missing_as_dash` once in the setup cell. Every
DataFrame the notebook then displays, returns as a cell's value or glues (myst-nb formats glued
values with the same IPython formatters), and every pandas Styler, renders a missing value as
:data:`MISSING`; a ``Styler.format`` call with its own formatters needs ``na_rep=MISSING`` too
(pandas then ignores the option). The values themselves are unchanged; only their HTML is.
"""

from __future__ import annotations

import pandas as pd

MISSING = "–"


def html(frame: pd.DataFrame) -> str:
    """``frame`` as pandas' notebook HTML, with missing values as :data:`MISSING`."""
    return frame.to_html(notebook=True, na_rep=MISSING, max_rows=pd.get_option("display.max_rows"),
                         max_cols=pd.get_option("display.max_columns"),
                         show_dimensions=pd.get_option("display.show_dimensions"))


def show_missing_as_dash() -> None:
    """Make this kernel render missing values in DataFrames and Stylers as :data:`MISSING`."""
    pd.set_option("styler.format.na_rep", MISSING)
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, html)
