"""Stage 1's start-up (issue 27): the run reports its start-up by phase and its steady
rate, runs from a source tree where hespot is not installed (the version from
pyproject.toml), and hashes a weights file once per (path, size, mtime)."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError

import pytest

import data.checksum
import data.version
from data.checksum import cached_sha256, sha256_file
from data.store import slide_attrs
from embed.config import EmbedConfig
from embed.run import run
from embed.startup import RunClock, process_age_s

BACKBONE = "tiny_random"


def _cfg(h5, store) -> EmbedConfig:
    return EmbedConfig(h5=str(h5), store=str(store), backbones=(BACKBONE,), slides=("S_1",),
                       tta=2, patch_px=64, batch_spots=4, chunk_spots=8, device="cpu",
                       precision="fp32", quiet=True)


def test_run_reports_start_up_by_phase_and_the_steady_rate(synthetic_h5, tmp_path):
    timing: dict = {}
    run(_cfg(synthetic_h5, tmp_path / "s.zarr"), timing)
    assert list(timing["phases"]) == ["imports", "checks", "device", "slide inputs",
                                      "models", "planning", "first batch"]
    assert all(v >= 0 for v in timing["phases"].values())
    assert timing["startup_s"] == pytest.approx(sum(timing["phases"].values()), abs=1e-6)
    assert timing["run_s"] >= timing["startup_s"] > 0
    assert timing["steady_views_per_s"] > 0 and timing["views"] == 49 * 2


def test_clock_without_batches():
    clock = RunClock()
    clock.mark("checks")
    t = clock.timing(8)
    assert t["steady_views_per_s"] is None and t["startup_s"] >= t["phases"]["checks"]
    age = process_age_s()
    assert age is None or age > 0


def test_version_from_a_source_tree(synthetic_h5, tmp_path, monkeypatch):
    """Not installed (a source tree on PYTHONPATH): the version is pyproject.toml's, and
    stage 1 runs and records it."""
    def missing(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(data.version, "version", missing)
    data.version.hespot_version.cache_clear()
    try:
        assert data.version.hespot_version().endswith("+source")
        assert data.version.hespot_version().split("+")[0].count(".") == 2
        store = tmp_path / "s.zarr"
        run(_cfg(synthetic_h5, store))
        info = slide_attrs(store, BACKBONE, "S_1")["info"]
        assert info["hespot_version"] == data.version.hespot_version()
    finally:
        data.version.hespot_version.cache_clear()


def test_weights_hashed_once_per_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("HESPOT_CACHE_DIR", str(tmp_path / "cache"))
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"a" * 1000)
    want = sha256_file(weights)
    assert cached_sha256(weights) == want
    calls = []
    real = data.checksum.sha256_file
    monkeypatch.setattr(data.checksum, "sha256_file", lambda p: calls.append(p) or real(p))
    assert cached_sha256(weights) == want and calls == []  # from the cache
    weights.write_bytes(b"b" * 1000)  # same size, new mtime: hashed again
    os.utime(weights, ns=(1, 10**9 + 1))
    assert cached_sha256(weights) == sha256_file(weights) != want and len(calls) == 1
    (tmp_path / "cache" / "sha256.json").write_text("not json")  # a damaged cache: rehashed
    assert cached_sha256(weights) == sha256_file(weights) and len(calls) == 2
