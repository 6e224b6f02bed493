"""The embeddings store: the one hand-over from stage 1 to stage 2 (its format, the names of
its items, groups and arrays, writer and reader). No torch here: stage 1 writes through
:func:`open_slide`, stage 2 and the report read through :func:`read_array`.

Layout (Zarr)::

    <root>/                            attrs: hespot_store_format (int)
    <root>/<backbone>/<slide>/<array>  float32 (n_spots, dim), chunked by spots
    <root>/<backbone>/<slide>/spot_index  int64 (n_spots,)
    <root>/<backbone>/<slide>/done     uint8 (n_chunks,), chunked by 1

Arrays are ``features`` (pooled, primary crop), ``stages`` (mean+std of intermediate
stages) and the same at other crop sizes (``features_448px``...; ``features_110um`` for a
crop given in µm, whatever its px on each slide). A ``<backbone>`` group of a stain
variant is named ``<backbone>-macenko``, ``<backbone>-hed`` or ``<backbone>-macenko-hed``
(stage 2: ``efficientnet_lite0-macenko:features_220um``); these names are read and
written by :mod:`data.store.items` alone (:class:`BackboneItem`). A slide group's
attributes hold ``settings`` (everything that determines the values: compared on resume),
``info`` (provenance: weights file, device, versions) and ``arrays`` (name -> layer and
crop size). A chunk's ``done`` flag is set only after its rows are written, so a run
killed at any point resumes at the chunks not done. ``done`` is chunked by 1 and every
array by whole chunks of spots, so tasks writing different chunks (``embed.executors``)
never share a stored object.

Feature arrays carry a crc32c checksum per chunk (zarr 3's ``crc32c`` codec, after zstd):
a damaged chunk fails to read, is named by the reader, and is recomputed by the next run
(:meth:`SlideWriter.damaged_chunks`). Stores written before checksums are read as they are.

The root may be a local path or an fsspec URL (``memory://``, ``s3://``...).

Stores written before the format attribute existed have the same layout (format 1) and
are read as they are.
"""

from data.store.format import (
    BOOKKEEPING,
    CODECS,
    FORMAT_ATTR,
    STORE_FORMAT,
    bad_chunks,
    exists,
    is_url,
)
from data.store.items import (
    STAIN_OPTIONS,
    BackboneItem,
    Crop,
    FeatureSpec,
    array_name,
    parse_crop,
    split_group,
)
from data.store.reader import (
    backbones,
    open_store,
    read_array,
    read_features,
    slide_attrs,
)
from data.store.writer import SlideWriter, open_slide, slide_writer

__all__ = ["BOOKKEEPING", "CODECS", "FORMAT_ATTR", "STAIN_OPTIONS", "STORE_FORMAT", "BackboneItem",
           "Crop", "FeatureSpec", "SlideWriter", "array_name", "backbones", "bad_chunks", "exists",
           "is_url", "open_slide", "open_store", "parse_crop", "read_array", "read_features",
           "slide_attrs", "slide_writer", "split_group"]
