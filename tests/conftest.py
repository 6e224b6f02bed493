"""Shared fixtures: a synthetic canonical file (fast) and the imported her2st sample (slow);
and the rule that leaves the whole fault suite (marker ``faults``) to ``make faults``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from data.synthetic import SyntheticConfig, write_synthetic

# test modules import albumentations themselves: no PyPI update check (embed.finetune.augment)
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "her2st"


def _named(item: pytest.Item, args: list[str]) -> bool:
    """Whether the command line names ``item``'s file (or the item itself)."""
    return any(Path(arg.split("::")[0]).resolve() == item.path for arg in args)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The whole fault suite (tests marked ``faults``, minutes long) runs only where asked
    for: ``-m`` naming the marker (``make faults`` = ``pytest -m faults``) or its file on
    the command line. ``pytest`` and ``pytest -m "not slow"`` leave it out (its fast part,
    tests/system/test_faults.py, is unmarked and runs)."""
    if "faults" in (config.getoption("markexpr") or ""):
        return
    left_out = [i for i in items if i.get_closest_marker("faults")
                and not _named(i, config.args)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        dropped = set(left_out)
        items[:] = [i for i in items if i not in dropped]


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


@pytest.fixture(scope="session")
def tiny_store(synthetic_h5, tmp_path_factory) -> Path:
    """Stage 1 of the synthetic file with tiny_random (64 px, 2 views); read-only."""
    import embed.run

    path = tmp_path_factory.mktemp("embed") / "embeddings.zarr"
    assert embed.run.main(["--h5", str(synthetic_h5), "--store", str(path),
                           "--backbones", "tiny_random", "--patch-px", "64", "--tta", "2",
                           "--quiet"]) == 0
    return path


@pytest.fixture(scope="session")
def tiny_regressed(synthetic_h5, tiny_store, tmp_path_factory) -> Path:
    """OUT folder of one regress.run on ``tiny_store`` (ridge, lgbm, constant); read-only."""
    import regress.run

    out = tmp_path_factory.mktemp("regress")
    assert regress.run.main(["--h5", str(synthetic_h5), "--store", str(tiny_store),
                             "--out", str(out), "--features", "tiny_random",
                             "--models", "ridge,lgbm", "--targets", "spot_rank",
                             "--quiet"]) == 0
    return out


@pytest.fixture(scope="session")
def fitted(synthetic_h5, tiny_store, tiny_regressed, tmp_path_factory) -> Path:
    """The model folder of ``hespot fit`` on ``tiny_regressed`` (what submit would submit,
    the abundance model, the OOD reference, the card); read-only."""
    import regress.fit

    folder = tmp_path_factory.mktemp("fit") / "model"
    assert regress.fit.main(["--h5", str(synthetic_h5), "--store", str(tiny_store), "--out",
                             str(tiny_regressed), "--model-dir", str(folder), "--quiet"]) == 0
    return folder

