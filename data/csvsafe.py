"""CSV text that spreadsheets cannot execute: a cell or header starting with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return is a formula to Excel and LibreOffice (CSV
injection), so such text gets a leading ``'``, which they show but do not evaluate.
Numbers are left as they are; only text is defused."""

from __future__ import annotations

import pandas as pd

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def defuse(text: str) -> str:
    """``text`` with a leading ``'`` when a spreadsheet would read it as a formula."""
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_text(frame: pd.DataFrame) -> str:
    """``frame.to_csv(index=False)`` with every text header and text cell defused."""
    out = frame.rename(columns=lambda c: defuse(c) if isinstance(c, str) else c)
    for col in out.columns[out.dtypes.eq(object).to_numpy()]:
        out[col] = out[col].map(lambda v: defuse(v) if isinstance(v, str) else v)
    return out.to_csv(index=False)
