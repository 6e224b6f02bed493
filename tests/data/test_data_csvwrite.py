"""data.csvwrite: CSV bytes built block by block equal pandas' ``to_csv(index=False)``
(floats, text needing quotes, None, NUL, bools, float32, empty frames);
regress.outputs.csv defuses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data.csvwrite import csv_blocks, csv_bytes, write_csv
from regress.outputs import csv_text, write_safe_csv


def _frames() -> list[pd.DataFrame]:
    rng = np.random.default_rng(1)
    n = 5_000
    types = {f"C{i}": rng.random(n) for i in range(1, 6)}
    return [
        pd.DataFrame({"ID": [f"S_7_{i}" for i in range(n)], **types}),
        pd.DataFrame({"slide": ["S_1"] * n, "row": np.arange(n),
                      "spot_id": [f"{i}x{i % 7}" for i in range(n)],
                      "x": rng.random(n) * 2000, "y": rng.integers(0, 2000, n).astype(float),
                      **types}),
        pd.DataFrame({"a": ["é", "ü\x00x"], "b": [np.nan, -0.0], "c": [-(2**63), 2**62],
                      "d": np.array([2**64 - 1, 0], np.uint64), "e": [1e-300, np.inf]}),
        pd.DataFrame({"a": ["x,y", "z"], "b": [1.0, 2.0]}),
        pd.DataFrame({"a": ['q"', "z"], "b": [1.0, 2.0]}),
        pd.DataFrame({"a": ["x", None], "b": [1.0, 2.0]}),
        pd.DataFrame({"a": ["x\x00", "y"], "b": [1.0, 2.0]}),
        pd.DataFrame({"a": [True, False], "b": [1.0, 2.0]}),
        pd.DataFrame({"a": np.float32([1.1, 2.2]), "b": [1.0, 2.0]}),
        pd.DataFrame({"only": [0.1, 0.2]}),
        pd.DataFrame({"a": [], "b": []}),
    ]


@pytest.mark.parametrize("k", range(len(_frames())))
def test_csv_bytes_equal_pandas(k, tmp_path):
    frame = _frames()[k]
    want = frame.to_csv(index=False).encode()
    assert csv_bytes(frame) == want
    assert b"".join(csv_blocks(frame, rows=7)) == want
    assert write_csv(tmp_path / "f.csv", frame).read_bytes() == want


def test_safe_csv_defuses_text_and_matches_the_row_by_row_rule(tmp_path):
    frame = pd.DataFrame({"ID": ["=1+1", "S_1", "-x", "@a", "+b", "\tc"],
                          "=T": [0.5, 0.25, 1.0, 0.0, 1e-9, 0.125]})
    want = frame.rename(columns={"=T": "'=T"}).assign(
        ID=["'=1+1", "S_1", "'-x", "'@a", "'+b", "'\tc"]).to_csv(index=False)
    assert csv_text(frame) == want
    assert write_safe_csv(tmp_path / "s.csv", frame).read_text() == want
    assert frame["ID"].iloc[0] == "=1+1"  # the caller's frame is not changed
