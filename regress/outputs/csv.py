"""The CSV files people open (``predictions.csv``, ``submission.csv``) as text that
spreadsheets cannot execute: a cell or header starting with ``=``, ``+``, ``-``, ``@``, a
tab or a carriage return is a formula to Excel and LibreOffice (CSV injection), so such
text gets a leading ``'``, which they show but do not evaluate. Numbers are left as they
are; only text is defused. The bytes are pandas' ``to_csv``, built block by block by
:mod:`data.csvwrite` (the plumbing that the results contract's ``oof.csv`` shares)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import infer_dtype

from data.csvwrite import csv_bytes, write_csv

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def defuse(text: str) -> str:
    """``text`` with a leading ``'`` when a spreadsheet would read it as a formula."""
    return "'" + text if text.startswith(FORMULA_START) else text


def _defuse_column(col: pd.Series) -> pd.Series:
    """``col`` with every text cell defused (a column of str: vectorised)."""
    if infer_dtype(col, skipna=False) != "string":
        return col.map(lambda v: defuse(v) if isinstance(v, str) else v)
    risky = np.zeros(len(col), bool)
    text = col.to_numpy(dtype=str)
    for start in FORMULA_START:
        risky |= np.strings.startswith(text, start)
    if not risky.any():
        return col
    out = col.to_numpy(dtype=object).copy()
    text = col.to_numpy(dtype=object)
    out[risky] = ["'" + t for t in text[risky]]
    return pd.Series(out, index=col.index, name=col.name, dtype=object)


def defused(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every text header and text cell defused (a copy where anything
    changes)."""
    if isinstance(frame.columns, pd.MultiIndex):
        out = frame.rename(columns=lambda c: defuse(c) if isinstance(c, str) else c)
    else:
        out = frame.copy(deep=False)  # no copy of the data: columns are replaced, not written
        out.columns = [defuse(c) if isinstance(c, str) else c for c in frame.columns]
    for j in np.flatnonzero(out.dtypes.eq(object).to_numpy()):
        col = _defuse_column(out.iloc[:, j])
        if col is not out.iloc[:, j]:
            out.isetitem(j, col)
    return out


def csv_text(frame: pd.DataFrame) -> str:
    """``frame.to_csv(index=False)`` with every text header and text cell defused."""
    return csv_bytes(defused(frame)).decode()


def write_safe_csv(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write :func:`csv_text` of ``frame``'s bytes to ``path`` atomically
    (:func:`data.csvwrite.write_csv`: written atomically); returns the path."""
    return write_csv(path, defused(frame))
