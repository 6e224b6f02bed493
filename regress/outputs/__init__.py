"""Outputs: the files for people and for other tools that ``predict``, ``submit`` and
stage 2 write, one module per kind of file (torch-free; the heavy packages are imported
only when a file is written). What stage 2 and ``embed.finetune`` hand each other
(``predictions/<model>/oof.csv``, ``test.csv``, ``report.json``) is the results contract,
:mod:`regress.results`, not this package.

- :mod:`~regress.outputs.csv`: ``predictions.csv`` and ``submission.csv``, text defused
  against spreadsheet formulas (bytes: :mod:`data.csvwrite`).
- :mod:`~regress.outputs.anndata`: ``predictions.h5ad`` in scanpy's Visium layout, and the
  thumbnail and spot-size helpers the other pictures of a slide share.
- :mod:`~regress.outputs.spatialdata`: ``predictions.zarr``, a SpatialData store (the
  ``spatial`` extra).
- :mod:`~regress.outputs.markdown`: ``report.md``, the LOSO report as markdown.
- :mod:`~regress.outputs.geojson`: ``<slide>.geojson``, the spots as QuPath detections
  (one per spot: an outline in level-0 pixels, a measurement per cell type and interval
  bound, the most abundant type as its class); it takes arrays, not the frame.
- :mod:`~regress.outputs.sheets`: ``<slide>/maps.png`` (the contact sheet), one PNG per
  cell type, ``uncertainty.png`` and ``ood.png`` of ``hespot map``
  (:func:`~regress.outputs.sheets.write_slide_pictures`; drawing in
  :mod:`~regress.outputs.map_canvas`, values and scales in
  :mod:`~regress.outputs.map_panels`); not imported here (matplotlib).
- :mod:`~regress.outputs.index_page`: ``index.html`` of a map run
  (:func:`~regress.outputs.index_page.write_index`); not imported here.

Every writer takes the prediction frame (one row per spot: ``slide, row, spot_id, x, y``
and maybe ``ID``; :func:`regress.results.predictions_frame`), the values float
(n_spots, n_types) and the cell types, and writes atomically (:mod:`data.atomic`).
"""

from regress.outputs.anndata import (
    build_anndata,
    spot_diameter_px,
    spot_spacing,
    thumbnail,
    write_anndata,
)
from regress.outputs.csv import csv_text, defuse, defused, write_safe_csv
from regress.outputs.geojson import write_geojson
from regress.outputs.markdown import loso_markdown, render_markdown
from regress.outputs.spatialdata import element_name, require_spatialdata, write_spatialdata

__all__ = [
    "build_anndata",
    "csv_text",
    "defuse",
    "defused",
    "element_name",
    "loso_markdown",
    "render_markdown",
    "require_spatialdata",
    "spot_diameter_px",
    "spot_spacing",
    "thumbnail",
    "write_anndata",
    "write_geojson",
    "write_safe_csv",
    "write_spatialdata",
]
