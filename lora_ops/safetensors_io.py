"""Read and validate the structure of a ``.safetensors`` file without loading its tensors.

The format (as the ``safetensors`` project specifies it): 8 bytes little-endian unsigned
header length ``N``; ``N`` bytes of UTF-8 JSON mapping tensor names to
``{"dtype", "shape", "data_offsets": [begin, end]}`` plus an optional ``"__metadata__"``
mapping of str to str; then the data buffer, where offsets are relative to its start.

A file is *structurally valid* here when the header parses, every tensor's byte range has
exactly ``numel * itemsize`` bytes, and the ranges tile the data buffer exactly (no gap, no
overlap, nothing after the last tensor), with no tensor named twice. This is what a verified
download must satisfy, and it is checked before ``safetensors`` itself opens the file, so
every failure has a message that names the file and the fix.

The common ways a "LoRA file" is not one get their own messages, each naming the fix:
a Git LFS pointer (a few hundred bytes of text), a truncated download, an HTML error page,
and a pickle (``.ckpt``/``.pt``) saved under a ``.safetensors`` name.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

# Bytes per element of each dtype the format defines (sub-byte types count as packed
# bytes where the format stores them so; F4/F6 variants are not used by diffusion weights).
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}

# A header larger than this is not a real model's (the largest seen are a few MB); the
# limit keeps a corrupt length field from making us read gigabytes of JSON.
MAX_HEADER_BYTES = 100 * 1024 * 1024


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


class SafetensorsError(ValueError):
    """A file that is not a complete, well-formed safetensors file.

    Attributes: ``path`` (the file), ``reason`` (what is wrong), ``fix`` (what to do).
    ``str()`` gives all three in one sentence for a user-facing report.
    """

    def __init__(self, path: str | os.PathLike, reason: str, fix: str):
        self.path = str(path)
        self.reason = reason
        self.fix = fix if fix.endswith(".") else fix + "."
        super().__init__(f"{self.path}: {reason}. {self.fix}")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the header: dtype name (e.g. ``"F16"``), shape, and its byte
    range ``[begin, end)`` relative to the start of the data buffer."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    """The parsed header of a structurally valid safetensors file.

    ``tensors`` keeps the header's key order; ``data_start`` is the absolute file offset
    (bytes) of the data buffer; ``file_size`` is in bytes.
    """

    path: str
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo] = field(repr=False)
    data_start: int
    file_size: int

    @property
    def parameters(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    def dtype_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.dtype] = counts.get(t.dtype, 0) + 1
        return counts


def sniff_non_safetensors(path: str | os.PathLike, head: bytes) -> SafetensorsError | None:
    """Recognise files that are plainly something else from their first bytes.

    Returns the error to raise, or None when ``head`` could be a safetensors file. A
    safetensors header's JSON starts at byte 8 with ``{``; only files without it are sniffed,
    so an arbitrary header length (whose first byte may look like a pickle opcode) is never
    mistaken for another format.
    """
    if head[8:9] == b"{":
        return None
    if head.startswith(b"version https://git-lfs.github.com/spec/"):
        return SafetensorsError(
            path, "is a Git LFS pointer (a small text file naming the real one), not the weights",
            "Download the real file: `git lfs pull` in the repository, or the host's "
            "download (resolve) URL instead of the raw one")
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html")):
        return SafetensorsError(
            path, "is an HTML page, not model weights (often a login, terms or error page)",
            "Open the URL in a browser to see what the host says; a token or accepting the "
            "model's terms may be needed")
    if head[:1] in (b"{", b"["):
        return SafetensorsError(
            path, "is a JSON document, not model weights (often an error message from a server)",
            "Open it in a text editor to see what it says, then download the model again")
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return SafetensorsError(
            path, "is a pickle (PyTorch .ckpt/.pt) file, which can run code when loaded",
            "Use a .safetensors release of this model, or convert it in a trusted environment")
    if len(head) >= 8 and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:8]):
        return SafetensorsError(
            path, "is a text file, not model weights",
            "Check that this is the file you meant; a model download that ended as text needs "
            "to be downloaded again")
    return None


def read_header(path: str | os.PathLike) -> Header:
    """Parse and validate the header of ``path``; never reads the tensor data.

    Returns a :class:`Header`. Raises :class:`SafetensorsError` naming the file, what is
    wrong and the fix when the file is a Git LFS pointer, HTML, a pickle, shorter than its
    header says (truncated download), has bytes after the last tensor, or has an invalid
    header (bad JSON, unknown dtype, a byte range that does not match the shape, ranges that
    overlap or leave gaps). Raises ``FileNotFoundError`` if the file does not exist.
    """
    p = Path(path)
    st = p.stat()
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise SafetensorsError(p, f"is {kind}", "Give the path of a .safetensors file")
    size = st.st_size
    with open(p, "rb") as f:
        head = f.read(min(size, 8 + 64))
        sniffed = sniff_non_safetensors(p, head)
        if sniffed is not None:
            raise sniffed
        if size < 8:
            raise SafetensorsError(p, f"is {size} bytes, too small to be a safetensors file",
                                   "Download it again")
        (n,) = struct.unpack("<Q", head[:8])
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise SafetensorsError(
                p, f"declares a {n}-byte header but the file is {size} bytes "
                "(truncated download, or not a safetensors file)", "Download it again")
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise SafetensorsError(p, f"names tensor {e.args[0]!r} twice in its header",
                               "The file is corrupt; download it again") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        # ValueError covers JSONDecodeError and integers too long to convert.
        reason = "nests too deeply" if isinstance(e, RecursionError) else f"is not valid JSON ({e})"
        raise SafetensorsError(p, f"has a header that {reason}",
                               "Download it again; if it persists the file is corrupt") from None
    if not isinstance(header, dict):
        raise SafetensorsError(p, "has a header that is not a JSON object",
                               "The file is not a safetensors file; download it again")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise SafetensorsError(p, "has __metadata__ that is not a mapping of strings to strings",
                               "Re-save the file with a current safetensors library")

    data_start = 8 + n
    data_len = size - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        tensors[name] = _tensor_info(p, name, entry)

    # The byte ranges must tile [0, data_len) exactly.
    pos = 0
    for name, t in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if t.begin != pos:
            what = "overlaps the previous tensor" if t.begin < pos else f"leaves a gap at byte {pos}"
            raise SafetensorsError(p, f"tensor {name!r} {what} (offsets {t.begin}-{t.end})",
                                   "The file is corrupt; download it again")
        pos = t.end
    if pos > data_len:
        raise SafetensorsError(
            p, f"is {pos - data_len} bytes shorter than its header says "
            f"({size} of {data_start + pos} bytes): a truncated download",
            "Download it again (a resumable download continues where it stopped)")
    if pos < data_len:
        raise SafetensorsError(p, f"has {data_len - pos} bytes after its last tensor",
                               "The file was altered or appended to; download it again")
    return Header(str(p), dict(metadata), tensors, data_start, size)


def _tensor_info(path: Path, name: str, entry: object) -> TensorInfo:
    bad = f"tensor {name!r} has an invalid header entry {entry!r}"
    if not isinstance(entry, dict):
        raise SafetensorsError(path, bad, "The file is corrupt; download it again")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise SafetensorsError(
            path, f"tensor {name!r} has dtype {dtype!r}, expected one of {sorted(DTYPE_SIZES)}",
            "Update the tool that reads it, or re-save the file with a standard dtype")
    # type(...) is int: JSON true/false arrive as bool, a subclass of int
    if (not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape)
            or not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
        raise SafetensorsError(path, bad, "The file is corrupt; download it again")
    # Readers compute sizes in 64 bits, dimension by dimension: a shape that overflows there
    # is refused even when a zero dimension makes its true size 0.
    running = DTYPE_SIZES[dtype]
    for d in shape:
        running *= max(d, 1)
        if running >= 2**63:
            raise SafetensorsError(path, f"tensor {name!r} has a shape {shape} too large to address",
                                   "The file is corrupt; download it again")
    info = TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])
    expected = info.numel * DTYPE_SIZES[dtype]
    if info.nbytes != expected:
        raise SafetensorsError(
            path, f"tensor {name!r} spans {info.nbytes} bytes but {dtype} {list(shape)} needs {expected}",
            "The file is corrupt; download it again")
    return info
