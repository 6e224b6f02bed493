"""The embeddings store contract (data.store), torch-free: writer, reader, resume marks,
settings checks and the format version."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from data.errors import DataError
from data.store import (
    FORMAT_ATTR,
    STORE_FORMAT,
    FeatureSpec,
    array_name,
    backbones,
    open_slide,
    open_store,
    read_array,
    read_features,
    slide_attrs,
)

SETTINGS = {"backbone": "b", "tta_views": 8}


def _write(root, n=10, chunk=4, settings=SETTINGS, chunks=None, **kw):
    w = open_slide(root, "b", "S_1", n, {"features": 3}, chunk, settings, {"who": "test"},
                   {"features": {"layer": "pooled", "crop_px": 224}}, **kw)
    rng = np.random.default_rng(0)
    values = rng.normal(size=(n, 3)).astype(np.float32)
    for c in range(w.n_chunks) if chunks is None else chunks:
        s = c * chunk
        w.write_chunk(c, {"features": values[s:s + chunk]})
    return w, values


def test_write_read_round_trip(tmp_path):
    root = tmp_path / "s.zarr"
    w, values = _write(root)
    assert w.complete and w.n_chunks == 3
    np.testing.assert_array_equal(read_features(root, "b", "S_1"), values)
    store = open_store(root)
    assert backbones(store) == ["b"]
    assert store.attrs[FORMAT_ATTR] == STORE_FORMAT
    assert slide_attrs(root, "b", "S_1")["settings"] == SETTINGS
    assert read_array(store, str(root), FeatureSpec.parse("b"), "S_1", n_spots=10).shape == (10, 3)


def test_unfinished_slide_and_missing_parts_are_named(tmp_path):
    root = tmp_path / "s.zarr"
    w, _ = _write(root, chunks=[0, 2])
    assert w.first_incomplete() == 1
    with pytest.raises(DataError, match="an interrupted run"):
        read_features(root, "b", "S_1")
    with pytest.raises(DataError, match="features_448px"):
        read_array(open_store(root), str(root), FeatureSpec("b", "features_448px"), "S_1")
    with pytest.raises(DataError, match="no such folder"):
        open_store(tmp_path / "none.zarr")


def test_resume_keeps_chunks_and_other_settings_are_refused(tmp_path):
    root = tmp_path / "s.zarr"
    _write(root, chunks=[0])
    again = open_slide(root, "b", "S_1", 10, {"features": 3}, 4, SETTINGS, {}, {})
    assert again.first_incomplete() == 1  # same settings: resumes
    with pytest.raises(DataError, match="tta_views: stored 8, now 4.*--overwrite"):
        open_slide(root, "b", "S_1", 10, {"features": 3}, 4, {**SETTINGS, "tta_views": 4},
                   {}, {})
    fresh = open_slide(root, "b", "S_1", 10, {"features": 3}, 4, {**SETTINGS, "tta_views": 4},
                       {}, {}, overwrite=True)
    assert fresh.first_incomplete() == 0


def test_a_complete_group_with_more_crops_serves_a_smaller_request(tmp_path):
    """make tune's grid embeds lite0 at more crops than make embeddings asks for: the
    smaller request then finds the complete group as it is; a crop it lacks, an
    unfinished group or another setting is refused as before."""
    root = tmp_path / "s.zarr"
    wide = {**SETTINGS, "crops_px": [224, 448], "crops_um": [[110.0, 159]]}
    _write(root, settings=wide)
    wide["stage_indices"] = [2, 3]
    _write(root, settings=wide, overwrite=True)
    for fewer in ({**SETTINGS, "crops_px": [224, 448], "stage_indices": [2, 3]},
                  {**SETTINGS, "crops_px": [224], "stage_indices": []}):
        w = open_slide(root, "b", "S_1", 10, {"features": 3}, 4, fewer, {}, {})
        assert w.missing_chunks().size == 0
    for other in ({**SETTINGS, "crops_px": [224, 96]}, {**SETTINGS, "stage_indices": [1]},
                  {**SETTINGS, "crops_px": [224], "tta_views": 4}):
        with pytest.raises(DataError, match="--overwrite"):
            open_slide(root, "b", "S_1", 10, {"features": 3}, 4, other, {}, {})
    narrow = tmp_path / "n.zarr"               # the other way: a bigger request replaces
    _write(narrow, settings={**SETTINGS, "crops_px": [224]})
    w = open_slide(narrow, "b", "S_1", 10, {"features": 3}, 4, wide, {}, {})
    assert w.missing_chunks().size == w.n_chunks
    part = tmp_path / "p.zarr"
    _write(part, settings=wide, chunks=[0])
    with pytest.raises(DataError, match="crops_um"):
        open_slide(part, "b", "S_1", 10, {"features": 3}, 4,
                   {**SETTINGS, "crops_px": [224, 448]}, {}, {})


def test_store_without_format_attribute_is_read(tmp_path):
    """Stores of the previous release have the same layout and no format attribute."""
    root = tmp_path / "s.zarr"
    _, values = _write(root)
    del zarr.open_group(str(root), mode="a").attrs[FORMAT_ATTR]
    np.testing.assert_array_equal(read_features(root, "b", "S_1"), values)


def test_newer_format_is_refused(tmp_path):
    root = tmp_path / "s.zarr"
    _write(root)
    zarr.open_group(str(root), mode="a").attrs[FORMAT_ATTR] = STORE_FORMAT + 1
    with pytest.raises(DataError, match="newer hespot.*upgrade"):
        read_features(root, "b", "S_1")
    with pytest.raises(DataError, match="newer hespot"):
        _write(root)


def test_chunk_of_wrong_shape_is_refused(tmp_path):
    w, _ = _write(tmp_path / "s.zarr", chunks=[])
    with pytest.raises(ValueError, match="expected"):
        w.write_chunk(0, {"features": np.zeros((4, 5), np.float32)})


def test_names():
    assert array_name("pooled", 224, 224) == "features"
    assert array_name("stages", 448, 224) == "stages_448px"
    assert str(FeatureSpec.parse("b:stages_448px")) == "b:stages_448px"
    assert str(FeatureSpec.parse("b")) == "b"
