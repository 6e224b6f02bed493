"""A slide image held by reference in the canonical HDF5: the file's path, reader, size,
pixel size and content hash as attributes of the group ``images/<split>/<slide>``.

The path is stored twice, relative to the HDF5 file's folder (found first, so a folder
moved with its slides still works) and absolute. The content hash (sha256 of the file) is
taken at import; it is reused while the file's size and modification time are unchanged,
and taken again (with a warning) when they are not.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py

from data.checksum import sha256_file
from data.errors import DataError, Problem
from data.images import is_file
from data.wsi.base import SlideImage
from data.wsi.readers import open_image

log = logging.getLogger("hespot")

#: attribute marking a group under images/ as a reference (its value: the format version)
MARK = "hespot_image_ref"


@dataclass(frozen=True)
class ImageRef:
    """Where a slide's pixels are and what they were at import."""

    image_path: str
    image_relpath: str
    reader: str
    height: int
    width: int
    file_size: int
    file_mtime_ns: int
    sha256: str
    pixel_size_um: float | None = None

    @classmethod
    def of(cls, image: SlideImage, h5_path: str | Path) -> ImageRef:
        """The reference to an open image, to be written next to ``h5_path`` (hashes the
        file once)."""
        path = Path(image.path).resolve()
        try:
            rel = os.path.relpath(path, Path(h5_path).resolve().parent)
        except ValueError:  # another drive
            rel = ""
        st = path.stat()
        h, w = image.shape
        return cls(str(path), rel, image.reader, h, w, st.st_size, st.st_mtime_ns,
                   sha256_file(path), image.pixel_size_um)

    def write(self, group: h5py.Group) -> None:
        group.attrs[MARK] = 1
        for key, value in asdict(self).items():
            if value is not None:
                group.attrs[key] = value

    @classmethod
    def read(cls, group: h5py.Group) -> ImageRef:
        a = group.attrs
        px = a.get("pixel_size_um")
        return cls(str(a["image_path"]), str(a.get("image_relpath", "")), str(a["reader"]),
                   int(a["height"]), int(a["width"]), int(a["file_size"]),
                   int(a["file_mtime_ns"]), str(a["sha256"]),
                   float(px) if px is not None else None)

    def locate(self, h5_path: str | Path, slide: str) -> Path:
        """The image file: relative to the HDF5's folder first, then the absolute path.

        Raises:
            DataError: neither exists.
        """
        candidates = []
        if self.image_relpath:
            candidates.append(Path(h5_path).resolve().parent / self.image_relpath)
        candidates.append(Path(self.image_path))
        for c in candidates:
            if is_file(c):
                return c.resolve()
        raise DataError(Problem(str(h5_path), slide, "image_path",
                                f"the slide image {self.image_path}", "no such file",
                                "put the image back where it was (or beside the HDF5 file "
                                f"as {self.image_relpath}), or import the slide again"))

    def open(self, h5_path: str | Path, slide: str) -> SlideImage:
        """Open the referenced image; DataError when it is gone or no longer the same
        size."""
        path = self.locate(h5_path, slide)
        image = open_image(path, slide, self.reader, self.pixel_size_um)
        if image.shape != (self.height, self.width):
            image.close()
            raise DataError(Problem(str(path), slide, "image size",
                                    f"{self.height} x {self.width} px (as imported)",
                                    f"{image.shape[0]} x {image.shape[1]} px",
                                    "the file was replaced: import the slide again"))
        return image

    def content_hash(self, h5_path: str | Path, slide: str) -> str:
        """The file's sha256: the imported one while size and mtime are unchanged."""
        path = self.locate(h5_path, slide)
        st = path.stat()
        if (st.st_size, st.st_mtime_ns) == (self.file_size, self.file_mtime_ns):
            return self.sha256
        log.warning("%s, slide %s: the image changed since import (size or time); hashing "
                    "it again", path, slide)
        return sha256_file(path)
