"""predictions.h5ad in scanpy's Visium layout and the SpatialData store (regress.outputs:
anndata, spatialdata): read back, drawn by scanpy, squidpy and spatialdata-plot
(headless, Agg), written atomically; submit's --spatialdata. Made-up predictions on the
synthetic fixture: no model is fitted. scanpy, squidpy and spatialdata are imported inside
the tests (slow imports)."""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import regress.submit
from data.errors import ConfigError
from data.h5 import CanonicalH5
from regress.outputs import (
    element_name,
    require_spatialdata,
    spot_diameter_px,
    thumbnail,
    write_anndata,
    write_spatialdata,
)
from regress.results import (
    LosoResult,
    model_entry,
    predictions_frame,
    update_report,
    write_predictions,
)

SLIDES = ("S_1", "S_4")   # a train and the test slide of the fixture
HIRES_PX = 200            # 512 px slides -> factor 3, a 170 x 170 thumbnail


@pytest.fixture(scope="module")
def predictions(synthetic_h5) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """(frame with the meta columns, float (n_spots, n_types) values, cell types)."""
    with CanonicalH5(synthetic_h5) as h5:
        types = list(h5.cell_types)
        tables = {s: h5.spots(s) for s in SLIDES}
    rng = np.random.default_rng(0)
    preds = {s: rng.random((len(t.x), len(types))) for s, t in tables.items()}
    xy = {s: np.stack([t.x, t.y], axis=1) for s, t in tables.items()}
    ids = {s: [f"spot{i}" for i in range(len(t.x))] for s, t in tables.items()}
    frame = predictions_frame(preds, types, xy, ids)
    return frame, frame[types].to_numpy(float), types


@pytest.fixture(scope="module")
def h5ad(predictions, synthetic_h5, tmp_path_factory) -> Path:
    frame, values, types = predictions
    path = tmp_path_factory.mktemp("h5ad") / "predictions.h5ad"
    write_anndata(path, frame, values, types, h5_path=synthetic_h5,
                  layers={"per_type": 1 - values}, hires_px=HIRES_PX)
    return path


@pytest.fixture(scope="module")
def store(predictions, synthetic_h5, tmp_path_factory) -> Path:
    frame, values, types = predictions
    path = tmp_path_factory.mktemp("sdata") / "predictions.zarr"
    assert write_spatialdata(path, frame, values, types, synthetic_h5) == path
    return path


@pytest.fixture
def agg():
    import matplotlib
    import matplotlib.pyplot as plt

    matplotlib.use("Agg", force=True)
    yield plt
    plt.close("all")


# ---------------------------------------------------------------- AnnData

def test_h5ad_in_scanpys_visium_layout(h5ad, predictions, synthetic_h5):
    frame, values, types = predictions
    adata = ad.read_h5ad(h5ad)
    assert adata.var_names.tolist() == types
    assert adata.obs_names.tolist() == [f"{s}_{r}" for s, r in zip(frame.slide, frame.row,
                                                                    strict=True)]
    assert adata.X.dtype == np.float32
    np.testing.assert_allclose(adata.X, values, atol=1e-6)
    np.testing.assert_allclose(adata.layers["per_type"], 1 - values, atol=1e-6)
    np.testing.assert_array_equal(adata.obsm["spatial"], frame[["x", "y"]].to_numpy())
    assert adata.obsm["spatial"].dtype == np.float64
    assert isinstance(adata.obs["library_id"].dtype, pd.CategoricalDtype)
    assert adata.obs["library_id"].astype(str).tolist() == frame["slide"].tolist()
    assert {"slide", "x", "y", "spot_id"} <= set(adata.obs.columns)
    assert adata.obs["spot_id"].tolist() == frame["spot_id"].tolist()
    assert set(adata.uns["spatial"]) == set(SLIDES)
    with CanonicalH5(synthetic_h5) as h5:
        for slide in SLIDES:
            entry = adata.uns["spatial"][slide]
            assert set(entry) == {"images", "scalefactors", "metadata"}
            hires = entry["images"]["hires"]
            assert hires.dtype == np.uint8 and hires.shape == (170, 170, 3)
            np.testing.assert_array_equal(hires, thumbnail(h5, slide, HIRES_PX)[0])
            scale = entry["scalefactors"]
            assert scale["tissue_hires_scalef"] == pytest.approx(1 / 3)
            # 55/100 of the spot spacing (512 px / 7 spots a side, jittered by 2 px)
            assert scale["spot_diameter_fullres"] == pytest.approx(0.55 * 512 / 7, rel=0.06)
            assert entry["metadata"]["pixel_size_um"] == 1.0
            assert entry["metadata"]["source_file"] == str(synthetic_h5)
            assert list(entry["metadata"]["image_shape"]) == [512, 512]


def test_h5ad_without_images_keeps_the_given_ids(predictions, tmp_path):
    frame, values, types = predictions
    frame = frame.assign(ID=[f"id{i}" for i in range(len(frame))])
    path = write_anndata(tmp_path / "p.h5ad", frame, values, types)
    adata = ad.read_h5ad(path)
    assert "spatial" not in adata.uns and not adata.layers
    assert adata.obs_names.tolist() == frame["ID"].tolist()


def test_h5ad_rejects_values_of_the_wrong_shape(predictions, tmp_path):
    frame, values, types = predictions
    with pytest.raises(ValueError, match="n_spots, n_types"):
        write_anndata(tmp_path / "p.h5ad", frame, values[:, 1:], types)
    with pytest.raises(ValueError, match="per_type"):
        write_anndata(tmp_path / "p.h5ad", frame, values, types, layers={"per_type": values.T})
    assert list(tmp_path.iterdir()) == []


def test_spot_diameter_from_spacing():
    gx, gy = np.meshgrid(np.arange(5) * 200.0, np.arange(4) * 200.0)
    x, y = gx.ravel(), gy.ravel()
    assert spot_diameter_px(x, y, None) == pytest.approx(110.0)  # 55/100 of 200 px apart
    assert spot_diameter_px(x, y, 0.25) == pytest.approx(110.0)  # the spacing decides
    assert spot_diameter_px(x[:1], y[:1], 0.5) == pytest.approx(110.0)  # lone: 55 µm


def _spots_drawn(ax) -> int:
    """The most circles (paths or offsets) in one of the axes' collections: the spots."""
    return max((max(len(c.get_paths()), len(c.get_offsets())) for c in ax.collections),
               default=0)


@pytest.mark.parametrize("slide", SLIDES)
def test_scanpy_draws_each_slide_on_its_image(h5ad, agg, slide):
    import scanpy as sc
    from matplotlib.image import AxesImage

    adata = ad.read_h5ad(h5ad)
    part = adata[adata.obs.library_id == slide]
    with pytest.warns(FutureWarning, match="spatial_scatter"):
        axes = sc.pl.spatial(part, color="C2", library_id=slide, show=False)
    ax = axes[0]
    assert any(isinstance(im, AxesImage) for im in ax.images)
    assert ax.images[0].get_array().shape[:2] == (170, 170)
    assert _spots_drawn(ax) == part.n_obs


@pytest.mark.parametrize("slide", SLIDES)
def test_squidpy_draws_each_slide_on_its_image(h5ad, agg, slide):
    import squidpy as sq
    from matplotlib.image import AxesImage

    adata = ad.read_h5ad(h5ad)
    part = adata[adata.obs.library_id == slide]
    sq.pl.spatial_scatter(part, library_id=slide, color="C2")
    ax = agg.gcf().axes[0]
    assert any(isinstance(im, AxesImage) for im in ax.images)
    assert _spots_drawn(ax) == part.n_obs


# ---------------------------------------------------------------- SpatialData

def test_store_reads_back(store, predictions, synthetic_h5):
    import spatialdata
    from spatialdata.models import get_table_keys

    frame, values, types = predictions
    sdata = spatialdata.read_zarr(store)
    assert set(sdata.images) == {f"{s}_image" for s in SLIDES}
    assert set(sdata.shapes) == {f"{s}_spots" for s in SLIDES}
    assert set(sdata.tables) == {"predictions"}
    with CanonicalH5(synthetic_h5) as h5:
        for slide in SLIDES:
            image = sdata.images[f"{slide}_image"]
            assert list(image.children) == ["scale0", "scale1"]
            scale0 = image["scale0"]["image"]
            assert scale0.dims == ("c", "y", "x") and scale0.shape == (3, 512, 512)
            assert image["scale1"]["image"].shape == (3, 256, 256)
            np.testing.assert_array_equal(scale0.values.transpose(1, 2, 0),
                                          h5.read_window(slide, 0, 512, 0, 512))
            rows = frame[frame.slide == slide]
            circles = sdata.shapes[f"{slide}_spots"]
            np.testing.assert_allclose(circles.geometry.x, rows.x)
            np.testing.assert_allclose(circles.geometry.y, rows.y)
            np.testing.assert_allclose(circles["radius"], 0.55 * 512 / 7 / 2, rtol=0.06)
            assert circles.index.tolist() == rows.row.tolist()
    table = sdata.tables["predictions"]
    regions, region_key, instance_key = get_table_keys(table)
    assert sorted(regions) == [f"{s}_spots" for s in SLIDES]
    assert (region_key, instance_key) == ("region", "instance_id")
    assert table.var_names.tolist() == types
    np.testing.assert_allclose(table.X, values, atol=1e-6)
    assert table.obs["region"].astype(str).tolist() == [f"{s}_spots" for s in frame.slide]
    assert table.obs["instance_id"].tolist() == frame["row"].tolist()


def test_spatialdata_plot_renders_a_cell_type(store, agg, tmp_path):
    import spatialdata
    import spatialdata_plot  # noqa: F401  (registers sdata.pl)
    from PIL import Image

    sdata = spatialdata.read_zarr(store)
    png = tmp_path / "S_4_C2.png"
    with pytest.warns(UserWarning, match="not present"):  # the other slide's circles
        sdata.pl.render_images("S_4_image").pl.render_shapes(
            "S_4_spots", color="C2", table_name="predictions").pl.show(
            coordinate_systems="S_4", save=png)
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape[0] > 100 and pixels.std() > 20   # not a blank canvas


def test_store_image_is_read_block_by_block(predictions, synthetic_h5, tmp_path, monkeypatch):
    import regress.outputs.spatialdata as sdo

    frame, values, types = predictions
    windows = []
    read_window = CanonicalH5.read_window

    def counting(self, slide, y0, y1, x0, x1):
        windows.append((y1 - y0, x1 - x0))
        return read_window(self, slide, y0, y1, x0, x1)

    monkeypatch.setattr(sdo, "IMAGE_CHUNK", 128)
    monkeypatch.setattr(CanonicalH5, "read_window", counting)
    write_spatialdata(tmp_path / "p.zarr", frame, values, types, synthetic_h5)
    assert windows and max(h * w for h, w in windows) <= 128 * 128
    assert len(set(windows)) == 1 and len(windows) >= 2 * 16   # 16 blocks per slide


def test_element_names_are_valid():
    from spatialdata._core.validation import check_valid_name

    for slide in ("S_1", "A1 (rep 2)", "__x", ".hidden", "é/ü"):
        check_valid_name(f"{element_name(slide)}_image")


# ---------------------------------------------------------------- atomic writes

def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def test_failed_h5ad_write_leaves_the_file(predictions, synthetic_h5, tmp_path, monkeypatch):
    frame, values, types = predictions
    path = write_anndata(tmp_path / "p.h5ad", frame, values, types)
    before = path.read_bytes()

    def half_write(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_anndata(path, frame, 1 - values, types, h5_path=synthetic_h5)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.h5ad"]


def test_failed_store_write_leaves_the_store(store, predictions, synthetic_h5, tmp_path,
                                             monkeypatch):
    import shutil

    import spatialdata

    frame, values, types = predictions
    path = Path(shutil.copytree(store, tmp_path / "predictions.zarr"))
    before = _files(path)
    write = spatialdata.SpatialData.write

    def half_write(self, file_path, *args, **kwargs):
        write(self, file_path, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(spatialdata.SpatialData, "write", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_spatialdata(path, frame, 1 - values, types, synthetic_h5)
    assert _files(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.zarr"]
    monkeypatch.undo()
    write_spatialdata(path, frame, 1 - values, types, synthetic_h5)   # replaced when complete
    np.testing.assert_allclose(spatialdata.read_zarr(path).tables["predictions"].X,
                               1 - values, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.zarr"]


# ---------------------------------------------------------------- submit

def _regress_out(out: Path, frame: pd.DataFrame, types) -> None:
    """A stage-2 output folder with one made-up model's test predictions."""
    test = frame[frame.slide == "S_4"].reset_index(drop=True)
    write_predictions(out, "ridge-spot_rank", test.iloc[:0], test)
    result = LosoResult(per_slide={"S_1": {"spot": 0.5, "type": 0.4}},
                        per_type=np.full(len(types), 0.4))
    update_report(out, {"ridge-spot_rank": model_entry(result, types, "ridge", "spot_rank", {})})


def test_submit_writes_the_scanpy_h5ad_and_the_store(predictions, synthetic_h5, tmp_path):
    import spatialdata

    frame, _, types = predictions
    out = tmp_path / "out"
    _regress_out(out, frame, types)
    assert regress.submit.main(["--h5", str(synthetic_h5), "--out", str(out), "--quiet",
                                "--spatialdata"]) == 0
    adata = ad.read_h5ad(out / "predictions.h5ad")
    assert list(adata.uns["spatial"]) == ["S_4"]
    assert adata.uns["spatial"]["S_4"]["images"]["hires"].shape == (512, 512, 3)
    sub = pd.read_csv(out / "submission.csv")
    sdata = spatialdata.read_zarr(out / "predictions.zarr")
    assert set(sdata.images) == {"S_4_image"}
    np.testing.assert_allclose(sdata.tables["predictions"].X, sub[types].to_numpy(), atol=1e-6)


def test_spatialdata_without_the_extra_says_how_to_install(synthetic_h5, tmp_path,
                                                          monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "spatialdata", None)   # import spatialdata -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'hespot\[spatial\]'"):
        require_spatialdata()
    out = tmp_path / "out"
    assert regress.submit.main(["--h5", str(synthetic_h5), "--out", str(out), "--quiet",
                                "--spatialdata"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pip install 'hespot[spatial]'" in err
    assert not out.exists()


# ---------------------------------------------------------------- the real sample (slow)

@pytest.mark.slow
def test_her2st_outputs_in_bounded_memory(her2st_h5, tmp_path, agg):
    """A full-size slide (~10k x 9k px): the hires thumbnail has 2000 px on its longest side,
    the store a pyramid down to a few hundred px, and neither writer holds the whole image
    (numpy allocations traced)."""
    import tracemalloc

    import scanpy as sc
    import spatialdata

    with CanonicalH5(her2st_h5) as h5:
        slide = h5.test_slides[0]
        spots, shape = h5.spots(slide), h5.image_shape(slide)
    frame = predictions_frame({slide: np.random.default_rng(0).random((len(spots.x), 3))},
                              ["A", "B", "C"], {slide: np.stack([spots.x, spots.y], axis=1)},
                              {slide: spots.extra["spot_id"]})
    values = frame[["A", "B", "C"]].to_numpy()
    tracemalloc.start()
    try:
        write_anndata(tmp_path / "p.h5ad", frame, values, ["A", "B", "C"], h5_path=her2st_h5)
        write_spatialdata(tmp_path / "p.zarr", frame, values, ["A", "B", "C"], her2st_h5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.75 * np.prod(shape), (peak, shape)   # a whole copy would be >= 1x
    adata = ad.read_h5ad(tmp_path / "p.h5ad")
    entry = adata.uns["spatial"][slide]
    assert max(entry["images"]["hires"].shape[:2]) <= 2000
    f = np.ceil(max(shape[:2]) / 2000)
    assert entry["scalefactors"]["tissue_hires_scalef"] == pytest.approx(1 / f)
    # her2st: older ST arrays, ~100 µm spots ~200 µm apart, at 0.69 µm/px
    assert 120 < entry["scalefactors"]["spot_diameter_fullres"] < 170
    axes = sc.pl.spatial(adata, color="A", library_id=slide, show=False)
    assert axes[0].images
    image = spatialdata.read_zarr(tmp_path / "p.zarr").images[f"{slide}_image"]
    sizes = [image[k]["image"].shape for k in image.children]
    assert sizes[0] == (3, *shape[:2]) and len(sizes) >= 5 and max(sizes[-1][1:]) < 1024
