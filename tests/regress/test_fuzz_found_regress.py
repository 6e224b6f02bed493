"""What ``make fuzz`` found in the readers of stage 2's inputs (issue 28): model folders
(files altered and re-signed in model.json), embeddings stores and regress's outputs.
Each input below made ``predict``, ``regress`` or ``submit`` raise a traceback or crash the
process (LightGBM aborting, or a segmentation fault); each is now refused in one line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import regress.fit
from data.checksum import sha256_file
from data.errors import DataError
from data.store import FeatureSpec, open_store, read_array
from regress.bundle import load_bundle
from tests.helpers import refused

pytestmark = pytest.mark.filterwarnings("ignore:The argument 'eval_set' is deprecated")


@pytest.fixture(scope="module")
def model(synthetic_h5, tiny_store, tiny_regressed, tmp_path_factory) -> Path:
    """A model folder of the ridge and LightGBM models (an ensemble); read-only."""
    folder = tmp_path_factory.mktemp("fit") / "model"
    assert regress.fit.main(["--h5", str(synthetic_h5), "--store", str(tiny_store), "--out",
                             str(tiny_regressed), "--model-dir", str(folder), "--models",
                             "ridge-spot_rank,lgbm-spot_rank", "--quiet"]) == 0
    return folder


@pytest.fixture
def copy(model, tmp_path) -> Path:
    return Path(shutil.copytree(model, tmp_path / "model"))


def _resign(folder: Path, name: str) -> None:
    """Record the altered file's checksum in model.json (a folder edited on purpose)."""
    meta = json.loads((folder / "model.json").read_text())
    meta["files"][name] = sha256_file(folder / name)
    (folder / "model.json").write_text(json.dumps(meta))


def _edit_tree(folder: Path, edit, resize: bool = False) -> str:
    """Edit the lines of the first LightGBM text model and re-sign it; with ``resize``,
    write ``tree_sizes`` again to match the edited trees (an edit made with care)."""
    name = "lgbm-spot_rank.tree0.txt"
    text = "\n".join(edit((folder / name).read_text().splitlines())) + "\n"
    if resize:
        starts = [m.start() for m in re.finditer(r"^Tree=", text, re.M)]
        sizes = np.diff([*starts, text.index("end of trees")])
        text = re.sub(r"^tree_sizes=.*$", "tree_sizes=" + " ".join(map(str, sizes)), text,
                      flags=re.M)
    (folder / name).write_text(text)
    _resign(folder, name)
    return name


def _first(prefix: str, new: str):
    """An edit replacing the value of the first line starting with ``prefix``."""
    def edit(lines: list[str]) -> list[str]:
        i = next(i for i, ln in enumerate(lines) if ln.startswith(prefix))
        return lines[:i] + [prefix + new] + lines[i + 1:]
    return edit


def test_a_damaged_lightgbm_parameter_line_is_not_read(copy, model):
    """Was: a segmentation fault (a parameter line replaced by 'null'). The section after
    the trees is not handed to LightGBM: the model predicts as before."""
    _edit_tree(copy, lambda lines: [("null" if ln.startswith("[gpu_use_dp") else ln)
                                    for ln in lines])
    X = np.random.default_rng(0).normal(size=(7, 32))
    want = load_bundle(model).estimators["lgbm-spot_rank"].boosters[0].predict(X)
    got = load_bundle(copy).estimators["lgbm-spot_rank"].boosters[0].predict(X)
    assert np.array_equal(want, got)


@pytest.mark.parametrize("edit, resize, words", [
    (lambda ls: [ln for ln in ls if not ln.startswith("threshold=")], False, "tree 0"),
    (_first("left_child=", "7"), True, "left_child"),     # a child out of the tree
    (_first("left_child=", "0"), True, "left_child"),     # a loop back to the root
    (_first("split_feature=", "999"), True, "feature"),
    (_first("leaf_value=", "nan nan"), True, "leaf_value"),
    (_first("objective=", "regression\x07"), False, "header line"),
])
def test_a_malformed_lightgbm_tree_is_refused(copy, edit, resize, words):
    """Was: LightGBM aborting the process (terminate called without an active exception,
    a line of a tree deleted), or free to read outside its arrays or loop."""
    name = _edit_tree(copy, edit, resize)
    with pytest.raises(DataError, match=words) as exc:
        load_bundle(copy)
    assert name in str(exc.value)


def test_a_model_file_that_is_not_utf8_is_refused(copy):
    """Was: UnicodeDecodeError (model.json, a tree file re-signed)."""
    name = "lgbm-spot_rank.tree1.txt"
    (copy / name).write_bytes(b"\xff\xfe" + (copy / name).read_bytes())
    _resign(copy, name)
    with pytest.raises(DataError, match="UTF-8"):
        load_bundle(copy)
    (copy / "model.json").write_bytes(b"\xff" + (copy / "model.json").read_bytes())
    with pytest.raises(DataError, match="model.json"):
        load_bundle(copy)


def test_an_array_whose_header_claims_more_than_it_holds_is_refused(copy):
    name = "ridge-spot_rank.npz"
    with np.load(copy / name) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(copy / name, **arrays)
    data = bytearray((copy / name).read_bytes())
    at = data.find(b"'shape': (")  # the first member's npy header
    data[at:at + 12] = b"'shape': (99"
    (copy / name).write_bytes(bytes(data))
    _resign(copy, name)
    with pytest.raises(DataError, match=name):
        load_bundle(copy)


@pytest.mark.parametrize("field, value", [
    ("smooth_k", "../../x"),          # was: TypeError comparing int and str
    ("features", [["tiny_random"]]),  # was: TypeError: unhashable type: 'list'
    ("smooth_w", float("nan")),
])
def test_a_recipe_of_the_wrong_type_is_refused(copy, field, value):
    meta = json.loads((copy / "model.json").read_text())
    meta["models"][0]["recipe"][field] = value
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="recipe"):
        load_bundle(copy)


def test_a_recipe_that_builds_other_features_than_the_arrays_take_is_refused(
        copy, synthetic_h5, tiny_store, tmp_path, capsys):
    """Was: a numpy broadcast ValueError (the recipe's position features removed)."""
    meta = json.loads((copy / "model.json").read_text())
    for entry in meta["models"]:
        entry["recipe"]["position"] = "" if entry["recipe"].get("position") else "radial"
    (copy / "model.json").write_text(json.dumps(meta))
    refused(capsys, ["predict", "--model", copy, "--h5", synthetic_h5, "--store", tiny_store,
                      "--out", tmp_path / "pred", "--quiet"], str(copy), "features")
    assert not (tmp_path / "pred").exists()


@pytest.fixture
def store(tiny_store, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_store, tmp_path / "store.zarr"))


def test_store_metadata_zarr_cannot_read_is_refused(store):
    """Was: zarr's TypeError (a fill value of the wrong type) from deep in stage 2."""
    meta = store / "tiny_random" / "S_1" / "done" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["fill_value"] = "../../x"
    meta.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="zarr.json"):
        open_store(store)


def test_a_missing_chunk_is_named_not_read_as_nan(store):
    """Was: NaN features reaching scikit-learn's ValueError."""
    for chunk in (store / "tiny_random" / "S_1" / "features" / "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()
            break
    with pytest.raises(DataError, match="finite features"):
        read_array(open_store(store), str(store), FeatureSpec("tiny_random"), "S_1", 49)


def test_an_array_declaring_other_rows_is_refused_unread(store):
    meta = store / "tiny_random" / "S_1" / "features" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"][0] = 10**9
    meta.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="done flag"):
        read_array(open_store(store), str(store), FeatureSpec("tiny_random"), "S_1", 49)


@pytest.fixture
def out(tiny_regressed, tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    for name in ("report.json", "predictions"):
        src = tiny_regressed / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, folder / name)
    return folder


@pytest.mark.parametrize("damage, words", [
    ("text", "non-numeric"),        # was: ValueError converting 'a/b' to float
    ("bytes", "unreadable"),        # was: UnicodeDecodeError
    ("repeated", "rows"),           # was: ValueError: shapes differ (25, 4) vs (75, 4)
])
def test_damaged_predictions_are_refused_by_submit(out, synthetic_h5, capsys, damage, words):
    oof = out / "predictions" / "ridge-spot_rank" / "oof.csv"
    lines = oof.read_text().splitlines()
    if damage == "text":
        lines[3] = lines[3].rsplit(",", 1)[0] + ",a/b"
    elif damage == "bytes":
        oof.write_bytes(oof.read_bytes() + b"\xb2\xff")
    else:
        lines += lines[1:]
    if damage != "bytes":
        oof.write_text("\n".join(lines) + "\n")
    refused(capsys, ["submit", "--h5", synthetic_h5, "--out", out, "--models",
                      "ridge-spot_rank,lgbm-spot_rank", "--quiet"], str(oof), words)
    assert not (out / "submission.csv").exists()


def test_a_report_that_is_not_the_loso_report_is_refused(out, synthetic_h5, capsys):
    (out / "report.json").write_text(json.dumps({"models": {"ridge-spot_rank": [1, 2]}}))
    refused(capsys, ["submit", "--h5", synthetic_h5, "--out", out, "--quiet"], "report.json")


# ---- the abundance model (issue 25) --------------------------------------------------------
def _drop_hi(a):
    del a["calibration"]["hi"]                             # was: KeyError: 'hi'


def _ragged_edges(a):
    a["calibration"]["edges"][0] = [1e29, [1.0]]           # was: ValueError (inhomogeneous)


def _shrink_list(a):
    a["recipe"]["shrink"] = [None]                         # was: TypeError int - tuple


def _no_ood_features(a):
    a["ood"]["features"] = []                              # was: need at least one array


@pytest.mark.parametrize("edit, field", [
    (_drop_hi, "abundance.calibration.hi"), (_ragged_edges, "abundance.calibration.edges"),
    (_shrink_list, "abundance.recipe"), (_no_ood_features, "abundance.ood.features")])
def test_a_damaged_abundance_section_is_refused(copy, edit, field):
    meta = json.loads((copy / "model.json").read_text())
    edit(meta["abundance"])
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=re.escape(field)):
        load_bundle(copy)


def test_a_damaged_ood_archive_is_refused_in_one_line(copy, synthetic_h5, tiny_store, tmp_path,
                                                       capsys):
    """Was: zipfile.BadZipFile from the OOD reference (bytes duplicated, re-signed)."""
    name = json.loads((copy / "model.json").read_text())["abundance"]["files"][1]
    data = (copy / name).read_bytes()
    (copy / name).write_bytes(data[:200] + data[100:])
    _resign(copy, name)
    refused(capsys, ["predict", "--model", copy, "--h5", synthetic_h5, "--store", tiny_store,
                      "--out", tmp_path / "pred", "--quiet"], str(copy), name)
    assert not (tmp_path / "pred").exists()


def _ood_cell(out: Path) -> Path:
    path = out / "predictions" / "ood" / "test.csv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",'"
    path.write_text("\n".join(lines) + "\n")
    return path


def _ood_verdict(out: Path) -> Path:
    report = json.loads((out / "report.json").read_text())
    report["abundance"]["ood"]["test"] = -1                # was: AttributeError
    (out / "report.json").write_text(json.dumps(report))
    return out / "report.json"


def _renamed_column(out: Path) -> Path:
    report = json.loads((out / "report.json").read_text())
    path = out / "predictions" / f"abundance-{report['abundance']['chosen']}" / "test.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    header[-1] = header[-2]                                # was: KeyError not in index
    path.write_text("\n".join([",".join(header), *lines[1:]]) + "\n")
    return path


@pytest.mark.parametrize("damage", [_ood_cell, _ood_verdict, _renamed_column])
def test_damaged_abundance_outputs_are_refused_before_submit_writes(out, synthetic_h5, capsys,
                                                                    damage):
    """Was: a traceback, or submission.csv written before the refusal."""
    path = damage(out)
    refused(capsys, ["submit", "--h5", synthetic_h5, "--out", out, "--quiet"], str(path))
    assert not (out / "submission.csv").exists() and not (out / "submission.json").exists()


def test_an_abundance_archive_with_nan_is_refused(copy, synthetic_h5, tiny_store, tmp_path,
                                                  capsys):
    """Was: predictions.csv written with NaN abundances (scaler_scale NaN, re-signed)."""
    name = json.loads((copy / "model.json").read_text())["abundance"]["files"][0]
    with np.load(copy / name) as z:
        arrays = {k: z[k] for k in z.files}
    key = next(k for k in arrays if k.endswith("scaler_scale"))  # a ridge's or a blend's
    arrays[key] = np.full_like(arrays[key], np.nan)
    np.savez(copy / name, **arrays)
    _resign(copy, name)
    refused(capsys, ["predict", "--model", copy, "--h5", synthetic_h5, "--store", tiny_store,
                      "--out", tmp_path / "pred", "--quiet"], str(copy), key)
    assert not (tmp_path / "pred").exists()


def test_an_abundance_section_emptied_in_a_format_2_folder_is_refused(copy):
    """Was: read as a folder made before abundances (make fuzz, seed 0)."""
    meta = json.loads((copy / "model.json").read_text())
    meta["abundance"] = {}
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="abundance"):
        load_bundle(copy)


@pytest.mark.parametrize("part", ["coef", "mlp_w2"])
def test_abundance_arrays_that_overflow_are_refused(copy, synthetic_h5, tiny_store, tmp_path,
                                                    capsys, part):
    """Was: predictions.csv of infinite abundances (coef 1e308, re-signed). The same for
    the network's output layer (a blend's ``mlp_w2``)."""
    name = json.loads((copy / "model.json").read_text())["abundance"]["files"][0]
    with np.load(copy / name) as z:
        arrays = {k: z[k] for k in z.files}
    key = next((k for k in arrays if k.endswith(part)), None)
    if key is None:
        pytest.skip(f"the fixture's abundance model has no {part}")
    arrays[key] = np.full_like(arrays[key], 1e308)
    np.savez(copy / name, **arrays)
    _resign(copy, name)
    refused(capsys, ["predict", "--model", copy, "--h5", synthetic_h5, "--store", tiny_store,
                      "--out", tmp_path / "pred", "--quiet"], "finite")
    assert not (tmp_path / "pred").exists()


@pytest.mark.parametrize("damage", ["attrs", "done"])
def test_an_unreadable_store_group_is_named_by_predict(copy, synthetic_h5, store, tmp_path,
                                                       capsys, damage):
    """Was: AttributeError (the group's info a string) or zstd's RuntimeError (a damaged
    ``done`` chunk) while predict looked for finished slides (make fuzz, seed 0)."""
    group = store / "tiny_random" / "S_4"
    if damage == "attrs":
        meta = json.loads((group / "zarr.json").read_text())
        meta["attributes"]["info"]["config"] = "AAAA"
        (group / "zarr.json").write_text(json.dumps(meta))
    else:
        chunk = group / "done" / "c" / "0"
        chunk.write_bytes(b"\xff\xff" + chunk.read_bytes()[2:])
    refused(capsys, ["predict", "--model", copy, "--h5", synthetic_h5, "--store", store,
                      "--out", tmp_path / "pred", "--quiet"], str(store), "tiny_random/S_4")
