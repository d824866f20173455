"""Is a TIFF complete? Answered from its directories alone, without decoding a pixel.

A delivery cut short keeps its TIFF header and directory (GDAL writes them first) but loses the end of its
image data; GDAL opens such a file and only fails on the missing blocks. Comparing the furthest strip or tile
end named in the IFDs with the file size finds it at once, whatever the file's size.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8, 17: 8, 18: 8}
_UINT = {1: "u1", 3: "u2", 4: "u4", 16: "u8"}


def tiff_extent(path: Path) -> int:
    """Bytes the TIFF needs (end of its furthest directory, strip or tile), read from its IFDs alone."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        magic = struct.unpack(order + "H", head[2:4])[0] if order and len(head) >= 8 else None
        if magic not in (42, 43):
            raise ValueError(describe_bytes(head, size))
        big = magic == 43
        entry, count_fmt, ptr_fmt = (20, "Q", "Q") if big else (12, "H", "I")
        offset = struct.unpack(order + ptr_fmt, head[8:16] if big else head[4:8])[0]
        need, seen = 8, set()
        while offset and offset not in seen and len(seen) < 64:
            seen.add(offset)
            f.seek(offset)
            raw = f.read(struct.calcsize(count_fmt))
            if len(raw) < struct.calcsize(count_fmt):
                return max(need, offset + len(raw) + 1)
            n = struct.unpack(order + count_fmt, raw)[0]
            table = f.read(n * entry + struct.calcsize(ptr_fmt))
            need = max(need, offset + len(raw) + n * entry + struct.calcsize(ptr_fmt))
            if len(table) < n * entry + struct.calcsize(ptr_fmt):
                return need
            arrays: dict[int, np.ndarray] = {}
            for i in range(n):
                e = table[i * entry:(i + 1) * entry]
                tag, typ = struct.unpack(order + "HH", e[:4])
                count = struct.unpack(order + ("Q" if big else "I"), e[4:12] if big else e[4:8])[0]
                value = e[12:20] if big else e[8:12]
                nbytes = _TYPE_SIZES.get(typ, 1) * count
                if nbytes > len(value):
                    ptr = struct.unpack(order + ptr_fmt, value)[0]
                    need = max(need, ptr + nbytes)
                    if tag in (273, 279, 324, 325) and ptr + nbytes <= size:
                        f.seek(ptr)
                        value = f.read(nbytes)
                if tag in (273, 279, 324, 325) and typ in _UINT and len(value) >= nbytes:
                    arrays[tag] = np.frombuffer(value[:nbytes], dtype=order + _UINT[typ]).astype("u8")
            for offs, counts in ((273, 279), (324, 325)):
                if offs in arrays and counts in arrays and len(arrays[offs]) == len(arrays[counts]):
                    used = arrays[counts] > 0
                    if used.any():
                        need = max(need, int((arrays[offs][used] + arrays[counts][used]).max()))
            f.seek(offset + len(raw) + n * entry)
            offset = struct.unpack(order + ptr_fmt, f.read(struct.calcsize(ptr_fmt)))[0]
    return need


def describe_bytes(head: bytes, size: int) -> str:
    """What a file that is not what it should be looks like, for error messages."""
    if size == 0:
        return "the file is empty (0 bytes)"
    kinds = {b"\x1f\x8b": "a gzip", b"BZh": "a bzip2", b"7z\xbc\xaf": "a 7-zip", b"Rar!": "a RAR", b"%PDF": "a PDF",
             b"II*\x00": "a TIFF", b"MM\x00*": "a TIFF", b"\x89PNG": "a PNG", b"\xff\xd8\xff": "a JPEG",
             b"<?xml": "an XML"}
    kind = next((name for magic, name in kinds.items() if head.startswith(magic)), None)
    return f"it looks like {kind} file" if kind else f"it starts with bytes {head[:4].hex(' ')}"
