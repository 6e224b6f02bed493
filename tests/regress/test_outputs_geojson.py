"""QuPath GeoJSON (regress.outputs.geojson): the file is read back as QuPath reads it
(``PathObjectTypeAdapters``: a FeatureCollection of detections, a closed polygon in
level-0 pixels, a classification, measurements by name), and by qubalab where installed."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from regress.outputs import geojson as gj
from regress.outputs.geojson import write_geojson

TYPES = ["B cells", "T cells", 'Cancer "Her2+"', "Fibroblasts"]


def _spots(n: int = 25, seed: int = 0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(100, 20000, (n, 2))
    values = rng.dirichlet(np.ones(len(TYPES)), n)
    return xy, values, values * 0.7, np.minimum(1, values * 1.4)


def _strict(text: str) -> dict:
    """JSON as a strict reader takes it: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def _check_feature(feature: dict, centre, size_px: float, n_ring: int) -> None:
    """One feature as QuPath's reader needs it."""
    assert feature["type"] == "Feature"
    uuid.UUID(feature["id"])  # QuPath keeps a UUID id, else makes a new one
    geometry = feature["geometry"]
    assert geometry["type"] == "Polygon" and len(geometry["coordinates"]) == 1
    ring = np.asarray(geometry["coordinates"][0], float)
    assert ring.shape == (n_ring, 2)
    np.testing.assert_array_equal(ring[0], ring[-1])  # closed
    assert np.abs(ring.mean(axis=0) - centre).max() < 0.5 + size_px / n_ring
    props = feature["properties"]
    assert props["objectType"] == "detection"
    cls = props["classification"]
    assert set(cls) == {"name", "color"} and len(cls["color"]) == 3
    assert all(isinstance(c, int) and 0 <= c <= 255 for c in cls["color"])


def test_one_detection_per_spot_with_every_measurement(tmp_path):
    xy, values, lower, upper = _spots()
    ids = [f"r{i}_c{2 * i}" for i in range(len(xy))]
    path = write_geojson(tmp_path / "S1.geojson", xy, 80.0, values, TYPES, lower, upper,
                         spot_ids=ids, slide="S1")
    doc = _strict(path.read_text())
    assert doc["type"] == "FeatureCollection"
    features = doc["features"]
    assert len(features) == len(xy)
    names = TYPES + [f"{t} lower" for t in TYPES] + [f"{t} upper" for t in TYPES]
    for i, f in enumerate(features):
        _check_feature(f, xy[i], 80.0, gj.N_VERTICES + 1)
        ring = np.asarray(f["geometry"]["coordinates"][0])
        np.testing.assert_allclose(np.hypot(*(ring - xy[i]).T), 40.0, atol=0.01)
        props = f["properties"]
        assert props["name"] == ids[i]
        assert list(props["measurements"]) == names
        got = np.array([props["measurements"][m] for m in names])
        np.testing.assert_allclose(got, np.r_[values[i], lower[i], upper[i]], rtol=1e-6)
        assert props["classification"]["name"] == TYPES[int(np.argmax(values[i]))]
    colours = {f["properties"]["classification"]["name"]:
               tuple(f["properties"]["classification"]["color"]) for f in features}
    assert len(set(colours.values())) == len(colours)  # one colour per type
    assert len({f["id"] for f in features}) == len(xy)


def test_square_cells_and_no_interval(tmp_path):
    xy, values, _, _ = _spots(5)
    path = write_geojson(tmp_path / "sq.geojson", xy, 50.0, values, TYPES, outline="square")
    for i, f in enumerate(_strict(path.read_text())["features"]):
        _check_feature(f, xy[i], 50.0, 5)
        ring = np.asarray(f["geometry"]["coordinates"][0])
        np.testing.assert_allclose(ring.max(axis=0) - ring.min(axis=0), [50.0, 50.0],
                                   atol=0.011)
        assert list(f["properties"]["measurements"]) == TYPES
        assert f["properties"]["name"] == str(i)


def test_missing_values_left_out(tmp_path):
    xy, values, lower, upper = _spots(3)
    values[0, 1] = np.nan
    lower[1, :] = np.inf
    values[2, :] = np.nan
    doc = _strict(write_geojson(tmp_path / "nan.geojson", xy, 10.0, values, TYPES, lower,
                                upper).read_text())
    m0, m1, m2 = (f["properties"]["measurements"] for f in doc["features"])
    assert "T cells" not in m0 and "B cells" in m0 and "T cells lower" in m0
    assert not any(k.endswith(" lower") for k in m1) and len(m1) == 2 * len(TYPES)
    assert not any(k in m2 for k in TYPES) and len(m2) == 2 * len(TYPES)
    assert "classification" not in doc["features"][2]["properties"]
    best = int(np.nanargmax(values[0]))
    assert doc["features"][0]["properties"]["classification"]["name"] == TYPES[best]


def test_written_in_blocks_and_reproducible(tmp_path, monkeypatch):
    """Blocks of 3 spots (a whole-slide grid streams the same way): the same features, the
    same bytes on a second run, the same ids for the same slide and spots."""
    xy, values, lower, upper = _spots(10)
    whole = write_geojson(tmp_path / "a.geojson", xy, 30.0, values, TYPES, lower, upper,
                          slide="S1").read_text()
    monkeypatch.setattr(gj, "BLOCK", 3)
    blocks = write_geojson(tmp_path / "b.geojson", xy, 30.0, values, TYPES, lower, upper,
                           slide="S1").read_text()
    assert blocks == whole
    assert len(_strict(blocks)["features"]) == 10
    other = _strict(write_geojson(tmp_path / "c.geojson", xy, 30.0, values, TYPES,
                                  slide="S2").read_text())
    assert {f["id"] for f in other["features"]}.isdisjoint(
        f["id"] for f in _strict(whole)["features"])


def test_no_spots_is_an_empty_collection(tmp_path):
    doc = _strict(write_geojson(tmp_path / "e.geojson", np.zeros((0, 2)), 10.0,
                                np.zeros((0, 4)), TYPES).read_text())
    assert doc == {"type": "FeatureCollection", "features": []}


@pytest.mark.parametrize("kwargs, match", [
    ({"xy": np.zeros((3, 3))}, "xy"),
    ({"values": np.zeros((3, 2))}, "values"),
    ({"lower": np.zeros((2, 4))}, "bounds"),
    ({"size_px": 0.0}, "size"),
    ({"size_px": float("nan")}, "size"),
    ({"outline": "hexagon"}, "outline"),
    ({"spot_ids": ["a"]}, "spot ids"),
    ({"types": ["a", "a", "b", "c"]}, "distinct"),
])
def test_bad_input_writes_nothing(tmp_path, kwargs, match):
    xy, values, _, _ = _spots(3)
    args = {"xy": xy, "size_px": 10.0, "values": values, "types": TYPES} | kwargs
    with pytest.raises(ValueError, match=match):
        write_geojson(tmp_path / "bad.geojson", **args)
    assert not list(tmp_path.iterdir())


def test_failure_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    xy, values, _, _ = _spots(10)
    path = write_geojson(tmp_path / "S1.geojson", xy, 10.0, values, TYPES)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        yield "{}"
        raise OSError("disk gone")
    monkeypatch.setattr(gj, "_features", broken)
    with pytest.raises(OSError, match="disk gone"):
        write_geojson(path, xy, 10.0, values * 2, TYPES)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["S1.geojson"]


def test_read_by_qubalab(tmp_path):
    """QuPath's Python library reads every spot back as a detection with its measurements
    and class (skipped where qubalab is not installed)."""
    objects = pytest.importorskip("qubalab.objects")
    xy, values, lower, upper = _spots(8)
    path = write_geojson(tmp_path / "S1.geojson", xy, 80.0, values, TYPES, lower, upper)
    features = [objects.ImageFeature.create_from_feature(f)
                for f in objects.geojson_features_from_string(path.read_text())]
    assert len(features) == len(xy)
    for i, f in enumerate(features):
        assert f.is_detection
        assert f.classification.names == (TYPES[int(np.argmax(values[i]))],)
        assert set(f.measurements) == {*TYPES, *(f"{t} lower" for t in TYPES),
                                       *(f"{t} upper" for t in TYPES)}
        assert f.measurements["T cells"] == pytest.approx(values[i, 1], rel=1e-6)
