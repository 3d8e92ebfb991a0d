"""Content hashes of model files, as Civitai and the A1111 family compute them.

One streaming pass over the file gives all of them (definitions from Civitai's model
scanner, ``HashTask.cs``; hex digits upper-case as Civitai serves them):

* ``sha256``: SHA-256 of the whole file (64 hex).
* ``autov1``: SHA-256 of the 0x10000 bytes at offset 0x100000, first 8 hex; None for files
  under 0x200000 bytes (A1111's "old model hash").
* ``autov2``: the first 10 hex of ``sha256`` (A1111's "Model hash").
* ``autov3``: SHA-256 of the file after the safetensors header (from offset ``8 + N``, N the
  little-endian header length; from offset 8 when N >= 16 MiB, as the scanner does), first 12
  hex (kohya's ``sshs_model_hash``, A1111's LoRA "shorthash").
* ``crc32``: CRC-32 (IEEE) of the whole file with its 4 bytes printed little-endian first,
  which is byte-reversed against ``zlib.crc32`` ("hello world" -> ``85114A0D``).
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

AUTOV1_OFFSET, AUTOV1_SIZE, AUTOV1_MIN_FILE = 0x100000, 0x10000, 0x200000
AUTOV3_SKIP_HEADER_FROM = 16 * 2**20
CHUNK = 8 * 2**20


@dataclass(frozen=True)
class Hashes:
    """All hashes of one file (upper-case hex); ``size`` in bytes."""

    size: int
    sha256: str
    autov1: str | None
    autov2: str
    autov3: str
    crc32: str

    def as_dict(self) -> dict:
        return {"size": self.size, "sha256": self.sha256, "autov1": self.autov1, "autov2": self.autov2,
                "autov3": self.autov3, "crc32": self.crc32}


def file_hashes(path: str | os.PathLike, progress: Callable[[int, int], None] | None = None) -> Hashes:
    """Hash ``path`` in one pass of 8 MiB reads. ``progress(bytes_done, bytes_total)`` is
    called after each read (it may raise to stop). Raises ``OSError`` if the file cannot be read."""
    size = os.path.getsize(path)
    full, tail, first = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    crc = 0
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        tail_start = 8 if n >= AUTOV3_SKIP_HEADER_FROM or 8 + n > size else 8 + n
        f.seek(0)
        pos = 0
        while chunk := f.read(CHUNK):
            full.update(chunk)
            crc = zlib.crc32(chunk, crc)
            end = pos + len(chunk)
            if end > tail_start:
                tail.update(chunk[max(0, tail_start - pos):])
            lo, hi = max(pos, AUTOV1_OFFSET), min(end, AUTOV1_OFFSET + AUTOV1_SIZE)
            if lo < hi:
                first.update(chunk[lo - pos:hi - pos])
            pos = end
            if progress is not None:
                progress(pos, size)
    sha = full.hexdigest().upper()
    return Hashes(size, sha, first.hexdigest()[:8].upper() if size >= AUTOV1_MIN_FILE else None, sha[:10],
                  tail.hexdigest()[:12].upper(), crc.to_bytes(4, "little").hex().upper())
