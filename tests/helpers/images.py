"""Small images built byte by byte for the tests: valid PNG/JPEG/WebP headers, and the bad
cases the producer must refuse (another type, an empty file, a header without a size).

A PNG may carry text in a `tEXt` chunk: the offline LLM reads `[[llm:...]]` markers from an
image's bytes, so `png(text="[[llm:unreadable]]")` scripts an unreadable image.
"""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png(width: int = 4, height: int = 3, text: str = "", pad: int = 0) -> bytes:
    """A valid greyscale PNG; `text` goes in a tEXt chunk, `pad` adds that many bytes of
    ancillary data (to make a file of a given size)."""
    raw = b"".join(b"\x00" + bytes([200]) * width for _ in range(height))
    chunks = [_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))]
    if text:
        chunks.append(_chunk(b"tEXt", b"Comment\x00" + text.encode("latin-1")))
    if pad:
        chunks.append(_chunk(b"zzPd", b"\x00" * pad))
    chunks += [_chunk(b"IDAT", zlib.compress(raw)), _chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def jpeg(width: int = 8, height: int = 6) -> bytes:
    """The head of a baseline JPEG: SOI, a JFIF APP0 and a frame header with the size."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3)
    sof += b"\x01\x11\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def webp(width: int = 5, height: int = 7) -> bytes:
    """A lossless WebP (VP8L) header with the size."""
    bits = (width - 1) | ((height - 1) << 14)
    payload = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 8
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def gif() -> bytes:
    """A GIF: an image, but not one of the accepted types."""
    return b"GIF89a" + struct.pack("<HH", 1, 1) + b"\x00\x00\x00" + b"\x3b"


def png_without_size() -> bytes:
    """PNG magic bytes with a zero-size header: nothing decodes from it."""
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 0, 0, 0, 0))
