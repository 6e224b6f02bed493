"""Seeded corruptions of image files: a TIFF's tags rewritten in place (sizes, tile sizes,
tile offsets and byte counts, compression, samples, bits, photometric, resolution, the
description, a tag's type or count, a tag removed), a PNG's header (sizes, bit depth,
colour type, with a valid CRC) or a JPEG's frame header rewritten; or their bytes
(:mod:`mutate`)."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import tifffile

from tests.system.fuzz.mutate import bytes_mutation, pick

SIDES = (0, 1, 7, 65535, 1_000_000, 2**31 - 1, 2**32 - 1)
#: tag code -> values tried (a rational's as (numerator, denominator))
TAG_VALUES: dict[int, tuple] = {
    254: (0, 1, 2, 2**31),
    256: SIDES, 257: SIDES,
    258: (1, 4, 12, 16, 32, 0),
    259: (1, 5, 7, 8, 32773, 33003, 34712, 50000, 0, 65535),
    262: (0, 1, 3, 5, 6, 32844, 99),
    277: (0, 1, 2, 4, 1000),
    282: ((0, 0), (0, 1), (1, 0), (2**32 - 1, 1), (1, 2**32 - 1), (72, 1)),
    283: ((0, 0), (0, 1), (1, 0), (2**32 - 1, 1), (1, 2**32 - 1), (72, 1)),
    284: (0, 2, 7),
    296: (0, 1, 2, 5),
    322: (0, 1, 8, 15, 17, 65536, 1_000_000),
    323: (0, 1, 8, 15, 17, 65536, 1_000_000),
    324: (0, 2**40, "past end", "minus 1"),
    325: (0, 1, 2**31, "times 1000"),
}
DESCRIPTIONS = ('{"shape": [600, 600, 4]}', '{"shape": [1000000, 1000000, 3]}',
                '{"shape": [2, 300, 600, 3]}', "Aperio |MPP = 1e300|", "Aperio |MPP = 0|",
                '<?xml version="1.0"?><OME xmlns="x"><Image><Pixels PhysicalSizeX="nan"/>',
                '{"shape": [', "")


def _put(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _value_bytes(order: str, dtype: int, value: object) -> bytes:
    fmt = tifffile.TIFF.DATA_FORMATS[dtype]
    count, char = int(fmt[:-1]), fmt[-1]
    bits = struct.calcsize(char) * 8
    values = value if isinstance(value, tuple) else (value,) * count
    return struct.pack(order + char * count, *(int(v) % (1 << bits) for v in values))


def tiff_tag_mutation(rng: random.Random, path: Path) -> str:
    """Rewrite one tag of one page of a TIFF in place (its value, type or count)."""
    size = path.stat().st_size
    with tifffile.TiffFile(path) as tif:
        order = tif.byteorder
        entry = 20 if tif.is_bigtiff else 12
        tags = [(i, t) for i, p in enumerate(tif.pages) for t in p.tags.values()]
        i, tag = pick(rng, tags)
        code, dtype, count = tag.code, int(tag.dtype), tag.count
        voff, eoff, value = tag.valueoffset, tag.offset, tag.value
    where = f"page {i} tag {code}"
    how = rng.random()
    if how < 0.15:  # its type or its count
        if rng.random() < 0.5:
            new = pick(rng, (0, 1, 2, 5, 12, 16, 99))
            _put(path, eoff + 2, struct.pack(order + "H", new))
            return f"{where}: type {dtype} -> {new}"
        new = pick(rng, (0, 2**31, 2**40 if entry == 20 else 2**32 - 1, count + 1))
        _put(path, eoff + 4, struct.pack(order + ("Q" if entry == 20 else "I"),
                                         new % (1 << (64 if entry == 20 else 32))))
        return f"{where}: count {count} -> {new}"
    if how < 0.22:
        _put(path, eoff, struct.pack(order + "H", 65000))
        return f"{where}: removed (code 65000)"
    if code == 270:
        text = pick(rng, DESCRIPTIONS).encode()[:count - 1]
        _put(path, voff, text + b"\0" * (count - len(text)))
        return f"{where}: description {text[:40]!r}"
    if code not in TAG_VALUES:
        return f"{where}: {bytes_mutation(rng, path)}"
    new = pick(rng, TAG_VALUES[code])
    k = rng.randrange(count) if code in (324, 325, 258) else 0
    if new == "past end":
        new = size + 10
    elif new == "minus 1":
        new = (value[k] if isinstance(value, tuple) else value) - 1
    elif new == "times 1000":
        new = (value[k] if isinstance(value, tuple) else value) * 1000
    item = struct.calcsize(tifffile.TIFF.DATA_FORMATS[dtype][-1]) * \
        int(tifffile.TIFF.DATA_FORMATS[dtype][:-1])
    _put(path, voff + k * item, _value_bytes(order, dtype, new))
    return f"{where}[{k}]: {value if not isinstance(value, tuple) else value[k]} -> {new}"


def tiff_mutation(rng: random.Random, path: Path) -> str:
    """A tag rewritten (three times in four), else the bytes."""
    if rng.random() < 0.75:
        return f"{path.name}: {tiff_tag_mutation(rng, path)}"
    return bytes_mutation(rng, path)


def png_header_mutation(rng: random.Random, path: Path) -> str:
    """The IHDR chunk's size, depth, colour type or interlace rewritten (CRC fixed)."""
    data = bytearray(path.read_bytes())
    if data[12:16] != b"IHDR":
        return bytes_mutation(rng, path)
    w, h, depth, colour, comp, filt, inter = struct.unpack(">IIBBBBB", data[16:29])
    field = rng.randrange(4)
    if field == 0:
        w, h = pick(rng, ((10**6, 10**6), (0, 0), (1, 1), (2**31 - 1, 1), (w * 2, h)))
    elif field == 1:
        depth = pick(rng, (1, 2, 4, 16, 3))
    elif field == 2:
        colour = pick(rng, (0, 3, 4, 6, 5))
    else:
        inter = pick(rng, (1, 2))
    data[16:29] = struct.pack(">IIBBBBB", w, h, depth, colour, comp, filt, inter)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return f"{path.name}: IHDR {w} x {h}, depth {depth}, colour {colour}, interlace {inter}"


def jpeg_header_mutation(rng: random.Random, path: Path) -> str:
    """The frame header's (SOF0) height, width or components rewritten."""
    data = bytearray(path.read_bytes())
    at = data.find(b"\xff\xc0")
    if at < 0:
        return bytes_mutation(rng, path)
    h, w = pick(rng, ((65535, 65535), (0, 0), (1, 1), (60000, 10)))
    data[at + 5:at + 9] = struct.pack(">HH", h, w)
    if rng.random() < 0.3:
        data[at + 9] = pick(rng, (0, 2, 4, 255))
    path.write_bytes(bytes(data))
    return f"{path.name}: SOF0 {h} x {w}"


def image_mutation(rng: random.Random, path: Path) -> str:
    """A header rewrite for the file's format (half the time), else its bytes."""
    suffix = path.suffix.lower()
    if rng.random() < 0.5:
        if suffix in (".tif", ".tiff"):
            return tiff_mutation(rng, path)
        if suffix == ".png":
            return png_header_mutation(rng, path)
        if suffix in (".jpg", ".jpeg"):
            return jpeg_header_mutation(rng, path)
    return bytes_mutation(rng, path)
