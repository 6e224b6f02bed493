"""What ``make fuzz`` found in the data readers (issue 28), one test per failure: each
input below made a reader raise a traceback, allocate by a declared size, crash or run on;
each is now refused in one line naming the file."""

from __future__ import annotations

import os
import resource
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from data import commands
from data.check import check_file
from data.errors import DataError
from data.h5 import CanonicalH5
from data.wsi.pyramid import write_array_pyramid
from data.wsi.tiff_image import TiffImage
from tests.helpers import refused


@pytest.fixture
def h5(synthetic_h5, tmp_path):
    return shutil.copy(synthetic_h5, tmp_path / "in.h5")


@pytest.fixture
def address_space():
    """At most 2 GB more address space while the test runs: a reader that allocates by a
    declared size fails with MemoryError instead of taking the machine's memory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (vm + 2 * 2**30, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _errors(path) -> list[tuple[str, str]]:
    return [(p.slide, p.field) for p in check_file(str(path), with_background=False).problems
            if p.level == "error"]


def test_a_table_declaring_a_billion_rows_is_refused_unread(h5, address_space):
    """Was: 7.45 GiB allocated for the x column of a table that stores nothing."""
    with h5py.File(h5, "r+") as f:
        dtype = f["spots/Test/S_4"].dtype
        del f["spots/Test/S_4"]
        f.create_dataset("spots/Test/S_4", shape=(10**9,), dtype=dtype, chunks=(65536,),
                         compression="gzip")
        del f["images/Train/S_1"]  # an image under MAX_SIDE with no pixels stored
        f.create_dataset("images/Train/S_1", shape=(400_000, 400_000, 3), dtype=np.uint8,
                         chunks=(512, 512, 3), compression="gzip")
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        errors = _errors(h5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ("S_4", "spots/Test/S_4") in errors and ("S_1", "image") in errors, errors
    assert peak < 50 * 2**20 and time.perf_counter() - t0 < 20


def test_a_chunk_claiming_a_billion_rows_is_refused(h5, address_space):
    with h5py.File(h5, "r+") as f:
        table = f["spots/Train/S_2"][()]
        del f["spots/Train/S_2"]
        f.create_dataset("spots/Train/S_2", data=table, maxshape=(None,),
                         chunks=(20_000_000,), compression="gzip")
    assert ("S_2", "spots/Train/S_2") in _errors(h5)


@pytest.mark.parametrize("damage", ["self link", "split is a dataset", "table is a group"])
def test_damaged_structures_are_named(h5, capsys, damage):
    """Was: h5py's RuntimeError (a link to itself) or AttributeError (a dataset or group
    where the other is expected) as a traceback."""
    with h5py.File(h5, "r+") as f:
        if damage == "self link":
            del f["spots/Test/S_4"]
            f["spots/Test/S_4"] = h5py.SoftLink("/spots/Test/S_4")
        elif damage == "split is a dataset":
            del f["spots/Test"]
            f["spots/Test"] = np.arange(3.0)
        else:
            del f["spots/Test/S_4"]
            f.create_group("spots/Test/S_4")
    assert commands.main(["check", str(h5)]) in (1, 2)
    err = capsys.readouterr()
    assert "Traceback" not in err.err and str(h5) in err.out + err.err


def test_a_damaged_image_chunk_is_named(h5):
    """Was: ISA-L's IsalError from the middle of stage 1."""
    with h5py.File(h5, "r+") as f:
        dset = f["images/Train/S_2"]
        mask, raw = dset.id.read_direct_chunk((0, 0, 0))
        dset.id.write_direct_chunk((0, 0, 0), raw[:50] + b"\xff" * 40 + raw[90:], mask)
    with CanonicalH5(h5) as f, pytest.raises(DataError, match="chunks that decode") as exc:
        f.read_window("S_2", 0, 64, 0, 64)
    assert str(h5) in str(exc.value)


def _tiff(tmp_path, **kwargs):
    image = np.full((600, 600, 3), 235, np.uint8)
    image[150:450, 150:450] = (200, 110, 170)
    return write_array_pyramid(tmp_path / "slide.tif", image, 4.0, n_levels=2,
                               compression="zlib", **kwargs)


def _patch_tag(path, page: int, code: int, value: int, field: str = "value") -> None:
    """Rewrite a tag of a TIFF in place: its value (first item), or its code."""
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[page].tags[code]
        order, fmt = tif.byteorder, tifffile.TIFF.DATA_FORMATS[int(tag.dtype)][-1]
        where, packed = (tag.valueoffset, struct.pack(order + fmt, value)) \
            if field == "value" else (tag.offset, struct.pack(order + "H", value))
    with open(path, "r+b") as f:
        f.seek(where)
        f.write(packed)


@pytest.mark.parametrize("damage, words", [
    ((0, 257, 2**32 - 1), "level 0 tiles"),      # was: 3.5 GiB for a thumbnail band
    ((1, 324, 0, "count"), "tiles"),              # was: zip(strict) ValueError
    ((1, 256, 65000, "code"), "slide.tif"),       # was: tifffile's ZeroDivisionError
    ((0, 277, 2), "samples"),                     # was: broadcast TypeError when copied
])
def test_tiff_tags_that_lie_are_refused_at_open(tmp_path, capsys, address_space, damage,
                                                words):
    path = _tiff(tmp_path)
    page, code, value, *field = damage
    if field == ["count"]:
        with tifffile.TiffFile(path) as tif:
            offset = tif.pages[page].tags[code].offset
        with open(path, "r+b") as f:
            f.seek(offset + 4)
            f.write(struct.pack("<Q", 5))
    else:
        _patch_tag(path, page, code, value, *field)
    refused(capsys, ["import-wsi", "--slide", path, "--out", tmp_path / "o.h5", "--quiet"],
             words)
    assert not (tmp_path / "o.h5").exists()


def test_a_tiff_cut_to_a_few_bytes_is_named(tmp_path):
    """Was: struct.error from tifffile."""
    path = _tiff(tmp_path)
    path.write_bytes(path.read_bytes()[:4])
    with pytest.raises(DataError, match="readable TIFF"):
        TiffImage(str(path), "S")


def _manifest(root, rows: int = 2, **column) -> object:
    image = np.full((60, 80, 3), 200, np.uint8)
    Image.fromarray(image).save(root / "s.png")
    pd.DataFrame({"x": [10.0, 30.0], "y": [20.0, 40.0], "a": [0.4, 0.7], "b": [0.6, 0.3]}
                 ).to_csv(root / "s.csv", index=False)
    frame = pd.DataFrame({"slide": [f"S{i}" for i in range(rows)], "image": "s.png",
                          "spots": "s.csv", "split": "train", **column})
    frame.to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_repeated_manifest_rows_are_refused_before_any_is_read(tmp_path, capsys):
    """Was: 3,000 repeated rows read one by one for minutes (the fuzzer's time limit)."""
    manifest = _manifest(tmp_path)
    rows = manifest.read_text().splitlines()
    manifest.write_text("\n".join(rows + [rows[-1].replace("s.png", "gone.png")] * 3000))
    t0 = time.perf_counter()
    refused(capsys, ["import-table", "--manifest", manifest, "--out", tmp_path / "o.h5"],
             "unique slide names")
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("value", ["..", "-1", "inf"])
def test_a_manifest_pixel_size_that_is_not_one_is_refused(tmp_path, capsys, value):
    """Was: float('..') ValueError."""
    manifest = _manifest(tmp_path, pixel_size_um=[1.0, value])
    refused(capsys, ["import-table", "--manifest", manifest, "--out", tmp_path / "o.h5"],
             "pixel_size_um")


def test_a_path_no_file_can_have_is_missing(tmp_path, capsys):
    """Was: OSError (file name too long) from Path.is_file."""
    manifest = _manifest(tmp_path)
    manifest.write_text(manifest.read_text().replace("s.csv", "Z" * 5000, 1))
    refused(capsys, ["import-table", "--manifest", manifest, "--out", tmp_path / "o.h5"],
             "no such file")


def test_several_problems_are_one_line(tmp_path, capsys):
    """Was: one line per problem, and parser messages spanning lines."""
    manifest = _manifest(tmp_path)
    (tmp_path / "s.csv").write_text("x,y,a,b\n10,20,-1,0.6\n10,20,0.7,nan\n")
    last = refused(capsys, ["import-table", "--manifest", manifest, "--out",
                             tmp_path / "o.h5"], "negative", " | ")
    assert last.count("error: ") >= 2


def _visium_outs(tmp_path, diameter: str = "20") -> None:
    """A two-spot Space Ranger outs folder (``tmp_path/outs``) and its image ``s.png``."""
    spatial = tmp_path / "outs" / "spatial"
    spatial.mkdir(parents=True)
    pd.DataFrame({"barcode": ["A-1", "A-2"], "in_tissue": [1, 1], "array_row": [0, 1],
                  "array_col": [0, 1], "pxl_row_in_fullres": [20, 30],
                  "pxl_col_in_fullres": [20, 30]}).to_csv(spatial / "tissue_positions.csv",
                                                         index=False)
    (spatial / "scalefactors_json.json").write_text(f'{{"spot_diameter_fullres": {diameter}}}')
    Image.fromarray(np.full((60, 60, 3), 200, np.uint8)).save(tmp_path / "s.png")


def test_visium_abundances_with_a_repeated_barcode_are_refused(tmp_path, capsys):
    """Was: a broadcast ValueError while writing the spot table."""
    _visium_outs(tmp_path)
    (tmp_path / "ab.csv").write_text(",T,B\nA-1,0.5,0.5\nA-2,0.2,0.8\nA-2,0.3,0.7\n")
    refused(capsys, ["import-visium", "--outs", tmp_path / "outs", "--image",
                      tmp_path / "s.png", "--abundances", tmp_path / "ab.csv", "--out",
                      tmp_path / "o.h5", "--quiet"], "one row per barcode")


def test_pixels_taken_for_lzw_are_refused_not_a_crash(tmp_path):
    """Was: a segmentation fault in imagecodecs' LZW decoder (a strip TIFF's Compression
    tag rewritten from none to LZW). Run in a child: a regression would end the process."""
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, np.full((96, 128, 3), 235, np.uint8), photometric="rgb")
    _patch_tag(path, 0, 259, 5)
    with tifffile.TiffFile(path) as tif:
        start = tif.pages[0].dataoffsets[0]
    with open(path, "r+b") as f:  # 0x00 then 0xeb...: what the fuzzer's case held
        f.seek(start)
        f.write(b"\0")
    code = ("import sys\nfrom data.errors import DataError\nfrom data.wsi.tiff_image import "
            "TiffImage\ntry:\n    TiffImage(sys.argv[1]).verify()\nexcept DataError as e:\n"
            "    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0 and "readable TIFF" in proc.stdout, proc.stderr[-2000:]


def test_a_pixel_size_of_the_wrong_type_is_named(h5):
    """Was: TypeError converting a list attribute to float while measuring background."""
    with h5py.File(h5, "r+") as f:
        f["images/Train/S_3"].attrs["pixel_size_um"] = ["a", "\x07"]
    assert ("S_3", "pixel_size_um") in _errors(h5)


def test_a_tiff_level_of_no_rows_is_refused(tmp_path, capsys):
    """Was: ZeroDivisionError computing the level's downsample (ImageLength removed)."""
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, np.full((60, 80, 3), 200, np.uint8), photometric="rgb")
    _patch_tag(path, 0, 257, 65000, "code")
    with pytest.raises(DataError, match=str(path)):
        TiffImage(str(path), "S")


def test_a_visium_spot_diameter_of_nan_is_refused(tmp_path, capsys):
    """Was: a pixel size of NaN written into the canonical file (make fuzz, seed 0)."""
    _visium_outs(tmp_path, "NaN")
    refused(capsys, ["import-visium", "--outs", tmp_path / "outs", "--image",
                      tmp_path / "s.png", "--out", tmp_path / "o.h5", "--quiet"],
             "spot_diameter_fullres", "nan")
    assert not (tmp_path / "o.h5").exists()


def test_a_resolution_unit_of_two_values_is_no_pixel_size(tmp_path):
    """Was: int() of a tuple (a ResolutionUnit tag whose count was flipped to 2)."""
    path = _tiff(tmp_path)
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].tags[296].offset
    with open(path, "r+b") as f:
        f.seek(offset + 4)
        f.write(struct.pack("<Q", 2))
    with TiffImage(str(path), "slide") as image:
        assert image.pixel_size_um is None
