"""Shared fixtures: a synthetic canonical file (fast) and the imported her2st sample (slow)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from data.synthetic import SyntheticConfig, write_synthetic

# test modules import albumentations themselves: no PyPI update check (embed.finetune.augment)
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "her2st"


@pytest.fixture(scope="session")
def synthetic_cfg() -> SyntheticConfig:
    return SyntheticConfig()


@pytest.fixture(scope="session")
def synthetic_h5(tmp_path_factory, synthetic_cfg) -> Path:
    """3 train + 1 test slides, 512 px, 49 spots each, 5 cell types; read-only for tests."""
    return write_synthetic(tmp_path_factory.mktemp("syn") / "synthetic.h5", synthetic_cfg)


@pytest.fixture(scope="session")
def her2st_h5(tmp_path_factory) -> Path:
    """The bundled sample imported once (tier subset)."""
    from data.importers.her2st import main

    out = tmp_path_factory.mktemp("her2st") / "her2st.h5"
    assert main(["--src", str(SAMPLE), "--out", str(out), "--quiet"]) == 0
    return out
