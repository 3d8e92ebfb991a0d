"""Content hashes of model files, as Civitai and the A1111 family compute them.

One streaming pass over the file gives all of them (definitions from Civitai's model
scanner, ``HashTask.cs``; hex digits upper-case as Civitai serves them):

* ``sha256``: SHA-256 of the whole file (64 hex).
* ``autov1``: SHA-256 of the 0x10000 bytes at offset 0x100000, first 8 hex; None for files
  under 0x200000 bytes (A1111's "old model hash").
* ``autov2``: the first 10 hex of ``sha256`` (A1111's "Model hash").
* ``autov3``: SHA-256 of the file after the safetensors header (from offset ``8 + N``, N the
  little-endian header length; from offset 8 when N >= 16 MiB, as the scanner does), first 12
  hex (kohya's ``sshs_model_hash``, A1111's LoRA "shorthash"). None when the file is not a
  safetensors file (its first 8 bytes give ``8 + N`` beyond the end, or byte 8 is not ``{``):
  the scanner computes a meaningless value there, which no index should match.
* ``crc32``: CRC-32 (IEEE) of the whole file with its 4 bytes printed little-endian first,
  which is byte-reversed against ``zlib.crc32`` ("hello world" -> ``85114A0D``).

Speed: hashlib (OpenSSL) and ``zlib.crc32`` release the GIL on large buffers, so the file is
read into a small ring of 4 MiB buffers; the reading thread computes the whole-file SHA-256
while one worker thread computes the AutoV3 SHA-256 and the AutoV1 window of the same
buffers, and the CRC-32 goes chunk by chunk to whichever thread is less loaded (the pieces
are joined with the GF(2) arithmetic of zlib's ``crc32_combine``). On two cores with SHA
instructions that gives all the hashes at about 0.95x the speed at which ``openssl dgst
-sha256`` gives the SHA-256 alone (``scripts/bench_hash.py`` measures it).
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

AUTOV1_OFFSET, AUTOV1_SIZE, AUTOV1_MIN_FILE = 0x100000, 0x10000, 0x200000
AUTOV3_SKIP_HEADER_FROM = 16 * 2**20
# Read size (bytes), buffers in the ring, and how many chunks the worker may lag before the
# reader takes over the CRC: measured with scripts/bench_hash.py, 1-8 MiB reads are equally
# fast, 3-6 buffers too, and a lag of 2 balanced the threads best (1 or never: ~10% slower).
# 4 MiB reads also call progress often enough.
CHUNK = 4 * 2**20
RING = 4
BEHIND = 2
# Hex digits of each kind, as Civitai's by-hash API accepts them.
HASH_LENGTHS = {"sha256": 64, "autov1": 8, "autov2": 10, "autov3": 12, "crc32": 8}

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Hashes:
    """All hashes of one file (upper-case hex); ``size`` in bytes. ``autov1`` is None for
    files under 2 MiB, ``autov3`` for files that are not safetensors files."""

    size: int
    sha256: str
    autov1: str | None
    autov2: str
    autov3: str | None
    crc32: str

    def as_dict(self) -> dict:
        return {"size": self.size, "sha256": self.sha256, "autov1": self.autov1, "autov2": self.autov2,
                "autov3": self.autov3, "crc32": self.crc32}


class _SideHashes:
    """AutoV1 window and AutoV3 tail of a byte stream fed in order (the hashes that depend
    on positions in the file)."""

    def __init__(self) -> None:
        self.pos = 0
        self._head = b""
        self._header_len: int | None = None  # N, when byte 8 is "{" (a safetensors header)
        self._tail_start: int | None = None  # where AutoV3 starts, once bytes 0-8 are in
        self._tail = hashlib.sha256()
        self._autov1 = hashlib.sha256()

    def update(self, view: memoryview) -> None:
        pos, end = self.pos, self.pos + len(view)
        if self._tail_start is None and pos < 9:
            # The tail's start needs bytes 0-8; a stream may deliver them a few at a time.
            self._head += bytes(view[:9 - pos])
            if len(self._head) == 9:
                n = struct.unpack("<Q", self._head[:8])[0]
                if self._head[8:9] == b"{":
                    self._header_len = n
                    self._tail_start = 8 if n >= AUTOV3_SKIP_HEADER_FROM else 8 + n
                else:
                    self._tail_start = -1  # not safetensors: no AutoV3, so nothing to hash
        if self._header_len is not None and end > self._tail_start:
            self._tail.update(view[max(0, self._tail_start - pos):])
        lo, hi = max(pos, AUTOV1_OFFSET), min(end, AUTOV1_OFFSET + AUTOV1_SIZE)
        if lo < hi:
            self._autov1.update(view[lo - pos:hi - pos])
        self.pos = end

    def finish(self, sha256_hex: str, crc: int) -> Hashes:
        """The :class:`Hashes` of the stream so far, given its SHA-256 (hex) and ``zlib.crc32``."""
        size = self.pos
        sha = sha256_hex.upper()
        is_safetensors = self._header_len is not None and 8 + self._header_len <= size
        return Hashes(size, sha, self._autov1.hexdigest()[:8].upper() if size >= AUTOV1_MIN_FILE else None,
                      sha[:10], self._tail.hexdigest()[:12].upper() if is_safetensors else None,
                      crc.to_bytes(4, "little").hex().upper())


# CRC-32 of pieces, joined: zlib.crc32(a + b) is crc(a) * x^(8 len(b)) + crc(b) in GF(2)[x]
# modulo the CRC polynomial (the identity behind zlib's crc32_combine). It lets the two
# hashing threads share the CRC work chunk by chunk.
_CRC_POLY = 0xEDB88320  # CRC-32 (IEEE 802.3) in zlib's reflected bit order: bit 31 is x^0


def _gf2_mulmod(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC-32 polynomial, both in the reflected bit order."""
    product = 0
    for bit in range(31, -1, -1):  # a's terms x^0 .. x^31
        if a >> bit & 1:
            product ^= b
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1  # b *= x
    return product


@functools.lru_cache(maxsize=16)
def _x_pow_bytes(n: int) -> int:
    """x^(8 n) modulo the CRC-32 polynomial (a shift by ``n`` bytes), by repeated squaring."""
    result, square, e = 1 << 31, 1 << 30, 8 * n
    while e:
        if e & 1:
            result = _gf2_mulmod(result, square)
        square = _gf2_mulmod(square, square)
        e >>= 1
    return result


def _crc32_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """``zlib.crc32(a + b)`` from ``zlib.crc32(a)``, ``zlib.crc32(b)`` and ``len(b)`` (bytes)."""
    return _gf2_mulmod(_x_pow_bytes(len_b), crc_a) ^ crc_b


class _CrcPieces:
    """CRC-32 of a stream computed chunk by chunk, on any thread and in any order."""

    def __init__(self) -> None:
        self._pieces: dict[int, tuple[int, int]] = {}

    def add(self, index: int, view: memoryview) -> None:
        self._pieces[index] = (zlib.crc32(view), len(view))

    def value(self) -> int:
        crc = 0
        for index in sorted(self._pieces):
            crc = _crc32_combine(crc, *self._pieces[index])
        return crc


def _pump(path: str | os.PathLike, on_reader: Callable[[memoryview], None] | None,
          on_worker: Callable[[memoryview], None], progress: Progress | None, limit: int | None = None,
          on_either: Callable[[int, memoryview], None] | None = None) -> int:
    """Read ``path`` from the start (at most ``limit`` bytes) and feed every chunk, in order,
    to ``on_reader`` on this thread and to ``on_worker`` on one worker thread, which runs
    while the next chunks are read. ``on_either(index, chunk)`` is work that may run on
    either thread, in any order: the worker's, unless the worker has fallen behind. Returns
    the number of bytes read. ``progress(done, total)`` after each chunk (bytes; total from
    the size when opened); what it raises stops the read and propagates, as does ``OSError``."""
    done = 0
    with open(path, "rb", buffering=0) as f:
        total = os.fstat(f.fileno()).st_size
        if limit is not None:
            total = min(total, limit)
        # A file of one chunk is hashed on this thread with one small buffer: a thread start
        # and the ring's buffers would cost more than they save, and a scan meets many small files.
        if total > CHUNK:
            pool = ThreadPoolExecutor(1, thread_name_prefix="hashing")
            bufs = [bytearray(CHUNK) for _ in range(RING)]
        else:
            pool, bufs = None, [bytearray(max(total, 2**16))]

        def worker_job(index: int, view: memoryview, either: bool) -> None:
            on_worker(view)
            if either:
                on_either(index, view)

        pending: deque = deque()  # the worker's jobs, oldest first, one per buffer in use
        try:
            index = 0
            while limit is None or done < limit:
                buf = bufs[index % len(bufs)]
                if len(pending) == len(bufs):
                    pending.popleft().result()  # the worker is done with this buffer
                want = CHUNK if limit is None else min(CHUNK, limit - done)
                n = f.readinto(memoryview(buf)[:want])
                if not n:
                    break
                view = memoryview(buf)[:n]
                # Which thread has more to do differs by machine (SHA-256 vs CRC-32 vs read
                # speed), so the shareable work goes to the worker unless it is falling behind.
                reader_takes_either = (on_either is not None and pool is not None
                                       and sum(not job.done() for job in pending) >= BEHIND)
                either = on_either is not None and not reader_takes_either
                if pool is None:
                    worker_job(index, view, either)
                else:
                    pending.append(pool.submit(worker_job, index, view, either))
                if on_reader is not None:
                    on_reader(view)
                if reader_takes_either:
                    on_either(index, view)
                done += n
                index += 1
                if progress is not None:
                    progress(done, max(total, done))
            while pending:
                pending.popleft().result()
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    return done


def file_hashes(path: str | os.PathLike, progress: Progress | None = None) -> Hashes:
    """All hashes of the file at ``path`` (see the module's definitions), in one read.

    ``progress(bytes_done, bytes_total)`` is called after each 4 MiB read; it may raise to
    stop, and that exception propagates. ``size`` is the number of bytes hashed. Raises
    ``OSError`` if the file cannot be read.
    """
    full, side, crc = hashlib.sha256(), _SideHashes(), _CrcPieces()
    _pump(path, full.update, side.update, progress, on_either=crc.add)
    return side.finish(full.hexdigest(), crc.value())


def sha256_file(path: str | os.PathLike, progress: Progress | None = None) -> str:
    """SHA-256 of the file at ``path``, lower-case hex (as ``sha256sum`` prints it and as
    Hugging Face's ``X-Linked-Etag`` gives it). Reading overlaps hashing, so this is faster
    than ``openssl dgst -sha256``. ``progress`` and errors as in :func:`file_hashes`."""
    h = hashlib.sha256()
    _pump(path, None, h.update, progress)
    return h.hexdigest()


class StreamHasher:
    """Hashes data as it arrives (a download), giving the same results as hashing the file.

    ``update(data)`` with any bytes-like object, in file order; ``hexdigest()`` is the
    lower-case SHA-256 of everything so far and may be called at any time. With
    ``all_kinds=True`` it also follows AutoV1, AutoV3 and CRC-32 so that :meth:`hashes` gives
    the full :class:`Hashes`, for about twice the CPU of SHA-256 alone. ``length`` is the
    number of bytes hashed.

    hashlib cannot save a hash's state, so resuming a download starts from
    :meth:`from_file_prefix`, which re-hashes the part already on disk.
    """

    def __init__(self, all_kinds: bool = False) -> None:
        self._sha = hashlib.sha256()
        self._side = _SideHashes() if all_kinds else None
        self._crc = 0
        self.length = 0

    @classmethod
    def from_file_prefix(cls, path: str | os.PathLike, length: int, all_kinds: bool = False,
                         progress: Progress | None = None) -> StreamHasher:
        """A hasher that has already seen the first ``length`` bytes of the file at ``path``
        (a partial download to append to), hashed as fast as :func:`file_hashes`.
        ``progress(bytes_done, bytes_total)`` as there. Raises ``ValueError`` when the file
        has fewer than ``length`` bytes (or ``length`` < 0) and ``OSError`` when it cannot be read."""
        if length < 0:
            raise ValueError(f"length must be >= 0 bytes, got {length}")
        hasher = cls(all_kinds)
        if hasher._side is None:
            got = _pump(path, None, hasher._sha.update, progress, limit=length)
        else:
            crc = _CrcPieces()
            got = _pump(path, hasher._sha.update, hasher._side.update, progress, limit=length, on_either=crc.add)
            hasher._crc = crc.value()
        if got < length:
            raise ValueError(f"{os.fspath(path)} has {got} bytes, fewer than the {length} to resume from")
        hasher.length = got
        return hasher

    def update(self, data) -> None:
        """Add the next bytes of the stream (any bytes-like object)."""
        view = memoryview(data).cast("B")
        self._sha.update(view)
        if self._side is not None:
            self._side.update(view)
            self._crc = zlib.crc32(view, self._crc)
        self.length += len(view)

    def hexdigest(self) -> str:
        """Lower-case hex SHA-256 of the bytes so far."""
        return self._sha.hexdigest()

    def hashes(self) -> Hashes:
        """All :class:`Hashes` of the bytes so far. Raises ``ValueError`` unless the hasher
        was made with ``all_kinds=True``."""
        if self._side is None:
            raise ValueError("this StreamHasher follows SHA-256 only: make it with all_kinds=True for all hashes")
        return self._side.finish(self._sha.hexdigest(), self._crc)
