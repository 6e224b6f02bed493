"""The importers and make-wsi take the shared command-line style: ``--config`` JSON
(defaults < JSON < flags), ``--quiet``/``--no-quiet``, one-line errors (exit 2, nothing
written) for a missing required setting, an unknown setting or a bad choice in the JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from data import commands

DATA_COMMANDS = ("import-her2st", "import-visium", "import-table", "import-wsi", "make-wsi")


@pytest.mark.parametrize("name", DATA_COMMANDS)
def test_help_has_config_and_both_quiet_flags(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        commands.main([name, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "--config" in out and "--quiet" in out and "--no-quiet" in out


@pytest.fixture
def small_png(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    path = tmp_path / "src.png"
    Image.fromarray(pixels).save(path)
    return path


def test_config_json_then_flags_win(small_png, tmp_path):
    out = tmp_path / "w.tif"
    config = tmp_path / "make.json"
    config.write_text(json.dumps({"image": str(small_png), "out": str(out), "repeat": "2x1",
                                  "tile": 32, "compression": "zlib", "quiet": True}))
    assert commands.main(["make-wsi", "--config", str(config), "--repeat", "1x3",
                          "--no-quiet"]) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].shape[:2] == (40, 180)       # the flag's 1x3, not the JSON's 2x1
        assert tif.pages[0].tilewidth == 32               # the JSON's tile, not 256
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE


@pytest.mark.parametrize("argv, config, words", [
    (["make-wsi", "--quiet"], {"image": "IMG"}, ["--out", "required"]),
    (["import-table", "--quiet"], {"out": "OUT"}, ["--manifest", "required"]),
    (["import-wsi", "--quiet"], {"out": "OUT"}, ["--slide", "required"]),
    (["import-her2st"], {"out": "OUT", "colour": "pink"}, ["colour", "ImportHer2stConfig"]),
    (["import-her2st"], {"out": "OUT", "tier": "all"}, ["tier", "'all'", "subset"]),
    (["import-visium", "--outs", "o", "--image", "i"], {"out": "OUT", "images": "move"},
     ["--images", "move"]),
    (["make-wsi"], {"image": "IMG", "out": "OUT", "compression": "lzma"}, ["lzma", "zlib"]),
])
def test_bad_settings_are_one_line_before_any_work(argv, config, words, small_png, tmp_path,
                                                   capsys):
    out = tmp_path / "out" / "x.h5"
    values = {k: {"IMG": str(small_png), "OUT": str(out)}.get(v, v) for k, v in config.items()}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(values))
    assert commands.main([*argv, "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hespot: "), err
    assert all(w in err for w in words), err
    assert not out.parent.exists()
