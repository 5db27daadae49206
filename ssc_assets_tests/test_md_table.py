"""Markdown tables in asset metadata never break, whatever the cells hold."""

import numpy as np
import pandas as pd

from ssc_assets.defs.metadata import md_table


def _cells(line: str) -> list[str]:
    return line.strip().strip("|").split("|")


def test_pipes_newlines_and_nan_do_not_break_the_table():
    df = pd.DataFrame({
        "well": ["B02", "B03"],
        "reason": ["nuclei: saturated | borders: saturated", "multi\nline | note"],
        "value": [1.5, np.nan],
    })
    lines = md_table(df).splitlines()
    assert len(lines) == 2 + len(df)  # header, rule, one line per row
    assert all(len(_cells(x)) == 3 for x in lines)
    assert "saturated ¦ borders" in lines[2]


def test_long_tables_say_how_many_rows_are_left_out():
    df = pd.DataFrame({"x": range(50)})
    text = md_table(df, max_rows=10)
    assert "40 more rows not shown" in text and len([x for x in text.splitlines() if x.startswith("|")]) == 12
    assert md_table(pd.DataFrame()) == "_none_"
