"""Extract a LoRA from the difference of two checkpoints, streaming layer by layer.

:func:`extract_files` reads both safetensors files through ``safe_open`` (memory-mapped),
so at most ``batch`` layers of the same shape are in memory at once (peak memory is
O(largest layer x batch), never O(model)); forms each difference in float32 whatever the
stored dtype; factorises it (randomized subspace iteration by default, exact SVD on
request; adjacent same-shape layers batched; on CUDA when asked, falling back to the CPU
when the GPU runs out of memory); chooses each layer's rank by policy; and writes kohya-named
``lora_up``/``lora_down``/``alpha`` tensors (an exact pair of full rank where low-rank factors
would be larger than the difference itself; never a ``.diff`` entry, which diffusers cannot
read) to a temporary file, which is re-read and checked byte for byte before it is renamed
into place.

Memory and time at 12-20 B parameters: a reader thread reads both files in file order
(sequential I/O) and forms the next differences while the current ones are factorised, at
most two batches at a time; the files' SHA-256 is computed from the same reads (no second
pass); factors are streamed to a spill file as they are made, so nothing grows with the
model. Each layer's reported error is measured on the factors as stored (after rounding to
fp16/bf16), ``||dW - up @ down||_F / ||dW||_F`` with float64 sums, so the figures in the
report and the metadata are those of the file.

The up/down split is balanced (``sqrt(S)`` on each factor, so both stay in fp16 range) and
``alpha`` equals the rank (scale 1). No clamping: clamping the factors to a quantile, as
kohya's and ComfyUI's extractors do by default, can triple the error.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import shutil
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from . import __version__
from .extract_plan import Layer, Plan, PlanError, make_plan, resolve_outside_blocks
from .safetensors_io import SafetensorsError, read_header
from .svd import Factors, choose_rank, exact_svd, randomized_svd, residual_squared_norm, squared_norms

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "flux": "flux1", "sd3": "sd3",
                      "dit": "unknown"}
ARCHITECTURE = {"sd1": "stable-diffusion-v1/lora", "sd2": "stable-diffusion-v2-512/lora",
                "sdxl": "stable-diffusion-xl-v1-base/lora", "flux": "flux-1-dev/lora", "sd3": "stable-diffusion-3/lora",
                "dit": "unknown/lora"}


class ExtractError(ValueError):
    """Inputs that cannot give a LoRA; the message names the file or key and the fix."""


class Cancelled(Exception):
    """Raised by a progress callback to stop between layers; no output file is left."""


@dataclass
class Options:
    """How to extract.

    ``policy``/``value``: a rank policy of :func:`lora_ops.svd.choose_rank` (``rank`` with
    ``value`` = the rank, ``target_error``, ``sv_ratio``, ``sv_fro``, ``sv_cumulative``);
    ``max_rank`` caps every policy. ``algorithm``: ``randomized`` or ``exact``.
    ``oversample``/``niter``: randomized SVD parameters. ``seed``: combined with each layer's
    name. ``dtype``: ``fp16`` or ``bf16`` factors. ``device``: ``cpu``, ``cuda`` or ``auto``.
    ``batch``: same-shape layers factorised together; ``batch_bytes``: their float32 bytes cap.
    ``text_encoders``: include text-encoder layers that changed. ``outside_blocks``: ``auto``,
    ``include`` or ``omit`` the diffusion-model layers outside the numbered blocks (embedders,
    output layers); ``auto`` omits them for Flux only (see
    :func:`lora_ops.extract_plan.resolve_outside_blocks`).
    """

    policy: str = "rank"
    value: float = 32
    max_rank: int = 32
    algorithm: str = "randomized"
    oversample: int = 8
    niter: int = 2
    seed: int = 0
    dtype: str = "fp16"
    device: str = "auto"
    batch: int = 8
    batch_bytes: int = 256 * 2**20
    text_encoders: bool = True
    outside_blocks: str = "auto"

    def check(self) -> None:
        if self.policy == "rank" and (self.value < 1 or self.value != int(self.value)):
            raise ExtractError(f"rank must be a whole number of at least 1, not {self.value:g}")
        if self.max_rank < 1:
            raise ExtractError(f"max_rank must be at least 1, not {self.max_rank}")
        try:  # the policy's own range check, before any work
            choose_rank(self.policy, self.value, torch.ones(2), 2.0, self.max_rank)
        except ValueError as e:
            raise ExtractError(str(e)) from None
        if not 0 <= self.seed < 2**63:
            raise ExtractError(f"seed must be between 0 and 2**63 - 1, not {self.seed}")
        if self.algorithm not in ("randomized", "exact"):
            raise ExtractError(f"algorithm {self.algorithm!r}: use 'randomized' or 'exact'")
        try:
            resolve_outside_blocks(self.outside_blocks, "")
        except PlanError as e:
            raise ExtractError(str(e)) from None
        if self.dtype not in DTYPES:
            raise ExtractError(f"dtype {self.dtype!r}: use 'fp16' or 'bf16'")
        if self.max_rank < 1 or self.oversample < 0 or self.niter < 0 or self.batch < 1:
            raise ExtractError("max_rank and batch must be at least 1; oversample and niter at least 0")


@dataclass
class LayerStats:
    """Per layer: output ``name``, ``block``, matrix ``shape`` (rows, columns), chosen
    ``rank`` (0 = unchanged, -1 = stored whole, as an exact pair of full rank), relative
    Frobenius error, retained energy (fraction of ||dW||_F^2), ``norm`` = ||dW||_F, ``seconds``, and the
    leading squared singular values as fractions of the energy (for the rank plot)."""

    name: str
    block: str
    shape: tuple[int, int]
    rank: int
    error: float
    retained: float
    norm: float
    seconds: float
    spectrum: list[float] = field(default_factory=list)


def _rank_range(ranks: list[int]) -> str:
    if not ranks:  # every changed layer was stored whole: the rank asked for reaches their size
        return "every layer at full rank"
    lo, hi = min(ranks), max(ranks)
    return f"rank {lo}" if lo == hi else f"rank {lo}-{hi}"


@dataclass
class Result:
    """An extraction: the ``path`` written, the ``plan``, per-layer ``layers`` stats, total
    ``seconds``, the ``metadata`` written into the file, and ``left_out``: the layers the plan
    left out (outside the numbered blocks), each as (name, ||dW||_F), measured while reading."""

    path: str
    plan: Plan
    layers: list[LayerStats]
    seconds: float
    metadata: dict[str, str]
    options: Options | None = None
    left_out: list[tuple[str, float]] = field(default_factory=list)

    def left_out_share(self) -> float:
        """The left-out layers' share of the whole difference's energy (0..1)."""
        out = sum(norm**2 for _, norm in self.left_out if math.isfinite(norm))
        total = out + sum(s.norm**2 for s in self.layers)
        return out / total if total else 0.0

    def overall_error(self, layers: list[LayerStats] | None = None) -> float:
        """Energy-weighted relative Frobenius error: sqrt(sum residual^2 / sum ||dW||^2)."""
        layers = self.layers if layers is None else layers
        energy = sum(s.norm**2 for s in layers)
        residual = sum((s.error * s.norm) ** 2 for s in layers)
        return math.sqrt(residual / energy) if energy else 0.0

    def by_block(self) -> dict[str, list[LayerStats]]:
        from .blocks import sort_key

        groups: dict[str, list[LayerStats]] = {}
        for s in self.layers:
            groups.setdefault(s.block, []).append(s)
        return {b: groups[b] for b in sorted(groups, key=sort_key)}

    def energy_curves(self) -> dict[str, list[float]]:
        """Per block: retained energy at rank 1, 2, ... (as far as every layer's spectrum
        reaches), energy-weighted over the block's changed layers."""
        curves = {}
        for block, stats in self.by_block().items():
            changed = [s for s in stats if s.rank != 0 and s.spectrum]
            if not changed:
                continue
            energy = sum(s.norm**2 for s in changed)
            length = max(len(s.spectrum) for s in changed)
            curves[block] = [sum(s.norm**2 * s.spectrum[min(r, len(s.spectrum) - 1)] for s in changed) / energy
                             for r in range(length)]
        return curves

    def plot(self):
        """RGB float32 array: retained energy against rank per block (see :mod:`lora_ops.plot`)."""
        from .plot import retained_energy_plot

        ranks = [s.rank for s in self.layers if s.rank > 0]
        chosen = ranks[0] if ranks and len(set(ranks)) == 1 else None
        return retained_energy_plot(self.energy_curves(), f"{os.path.basename(self.path)}: retained energy "
                                    "per block", chosen)

    def report(self, worst: int = 10) -> str:
        """The summary table: per block and overall, then the worst layers."""
        extracted = [s for s in self.layers if s.rank != 0]
        unchanged = len(self.layers) - len(extracted)
        full = sum(1 for s in self.layers if s.rank == -1)
        ranks = [s.rank for s in extracted if s.rank > 0]
        lines = [f"{os.path.basename(self.path)}: {len(extracted)} layers extracted"
                 + (f" ({full} stored whole, as exact full-rank pairs)" if full else "")
                 + (f", {unchanged} unchanged layers left out" if unchanged else "")
                 + f"; {_rank_range(ranks)}; "
                 f"overall relative error {self.overall_error():.3g}; {self.seconds:.1f} s",
                 f"{'block':<12}{'layers':>7}{'rank':>9}{'rel.error':>11}{'retained':>10}{'||dW||_F':>12}"]
        for block, stats in self.by_block().items():
            changed = [s for s in stats if s.rank != 0]
            if not changed:
                continue
            rk = [s.rank for s in changed if s.rank > 0]
            rank_text = (f"{min(rk)}-{max(rk)}" if rk and min(rk) != max(rk) else str(rk[0]) if rk else "full")
            energy = sum(s.norm**2 for s in changed)
            retained = sum(s.retained * s.norm**2 for s in changed) / energy if energy else 1.0
            lines.append(f"{block:<12}{len(changed):>7}{rank_text:>9}{self.overall_error(changed):>11.4f}"
                         f"{retained:>10.4f}{math.sqrt(energy):>12.4g}")
        opts = self.options
        if opts is not None and opts.policy == "target_error":
            missed = [s for s in extracted if s.rank > 0 and s.error > opts.value + 1e-9]
            if missed:
                lines.append(f"target_error {opts.value:g} not reached in {len(missed)} layers: their rank stopped "
                             f"at the cap of {opts.max_rank}; raise rank (the cap) to reach it")
        finite = [(name, norm) for name, norm in self.left_out if math.isfinite(norm)]
        changed_out = [(name, norm) for name, norm in finite if norm > 0]
        if self.left_out:
            share = self.left_out_share()
            largest = max(finite, key=lambda item: item[1]) if finite else None
            choice = self.options.outside_blocks if self.options else "auto"
            why = (f"{self.plan.family} LoRAs carry the blocks only" if choice == "auto" else "as asked")
            bad = len(self.left_out) - len(finite)
            lines.append(f"{len(self.left_out)} layers outside the numbered blocks not extracted (outside_blocks "
                         f"{choice}: {why}); {len(changed_out)} of them changed, holding {share * 100:.3g} % of the "
                         "difference's energy" + (f" (the largest: {largest[0]})" if changed_out else "")
                         + (f"; {bad} have non-finite values in a file" if bad else ""))
        lines.append("worst layers: " + "; ".join(
            f"{s.name} {s.error:.4f} ({'full rank' if s.rank == -1 else f'rank {s.rank}'})"
            for s in sorted(extracted, key=lambda s: -s.error)[:worst]))
        return "\n".join(lines)


ProgressFn = Callable[[int, int, str], None]


class TensorSource:
    """Where an extraction reads one model from: ``header()`` maps checkpoint-style keys to
    (dtype name, shape); ``get_tensor(key)`` returns one tensor; ``offset(key)`` orders the
    reads (a file's byte offset; 0 when order does not matter); ``digest()`` is the SHA-256
    of the file read (None for in-memory models). ``path`` names the file (None for models).
    Use as a context manager; ``get_tensor`` is called from one reader thread."""

    path: str | None = None
    label: str = ""

    def header(self) -> dict[str, tuple[str, tuple]]:
        raise NotImplementedError

    def get_tensor(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def offset(self, key: str) -> int:
        return 0

    def digest(self) -> str | None:
        return None

    def prefetch(self, key: str) -> None:
        """Hint that ``key`` is read next (a file starts reading it in the background)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


_TORCH_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
                 "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
                 "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Read into ``view`` at ``offset`` without moving a shared file position where the
    platform can (``os.preadv``: Linux, BSDs; not Windows or every macOS Python)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    os.lseek(fd, offset, os.SEEK_SET)  # one reader thread per file: the position is ours
    return os.readv(fd, [view]) if hasattr(os, "readv") else _read_via_copy(fd, view)


def _read_via_copy(fd: int, view: memoryview) -> int:
    data = os.read(fd, len(view))
    view[:len(data)] = data
    return len(data)


def _advise(fd: int, offset: int, nbytes: int, advice: str) -> None:
    """A page-cache hint (``posix_fadvise``); a no-op where the platform has none (macOS,
    Windows) or refuses it: it only ever changes speed, never what is read."""
    flag = getattr(os, f"POSIX_FADV_{advice}", None)
    if flag is None or not hasattr(os, "posix_fadvise"):
        return
    try:
        os.posix_fadvise(fd, offset, nbytes, flag)
    except OSError:
        pass


class FileSource(TensorSource):
    """A .safetensors checkpoint, validated (complete file, no pickle) before anything else.

    Tensors are read with ``os.pread``, one at a time, into one reused buffer rather than
    through a memory map: a map leaves every page it touched counted in the process's
    resident memory, which for two checkpoints is their whole size. The tensor returned by
    :meth:`get_tensor` shares that buffer: it is valid until the next call. The SHA-256 of
    the file is computed from those same reads when they come in file order (the bytes
    between tensors are read for it as they are passed), so :meth:`digest` costs a second
    read only of what was skipped or read out of order. ``sha256``: the file's SHA-256 when
    it is known already (from the pack's hash index): then nothing is hashed.

    ``stream``: drop each range from the page cache once it is read and hashed
    (``POSIX_FADV_DONTNEED``). For inputs larger than the memory can cache (a Flux pair is
    48 GB) caching gains nothing, and reading 8.5 GB into a filling page cache cost the
    reading thread 3-12 CPU seconds of kernel time, against 0.7 s streamed; it also leaves
    other programs' cached files (ComfyUI's models) in place. ``None`` decides by this file's
    size alone (see :func:`streams`).
    """

    def __init__(self, path: str, sha256: str | None = None, stream: bool | None = None):
        if not str(path).lower().endswith((".safetensors", ".sft")):
            raise ExtractError(f"{path}: is not a .safetensors file; pickle checkpoints (.ckpt, .pt) can run code "
                               "when opened. Convert it to .safetensors in a trusted environment first")
        try:
            self._h = read_header(path)
        except SafetensorsError as e:
            raise ExtractError(str(e)) from None
        self.path = self.label = str(path)
        self._known = sha256.lower() if sha256 else None
        self.stream = streams([self.path]) if stream is None else stream
        self._fd = None
        self._sha = hashlib.sha256()
        self._hashed = 0  # bytes of the file hashed so far, from its start

    def header(self):
        return {k: (t.dtype, t.shape) for k, t in self._h.tensors.items()}

    def offset(self, key: str) -> int:
        return self._h.data_start + self._h.tensors[key].begin

    def __enter__(self):
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._sha, self._hashed, self._buf = hashlib.sha256(), 0, bytearray()
        return self

    def __exit__(self, *exc):
        os.close(self._fd)
        self._fd, self._buf = None, bytearray()

    def _read(self, offset: int, nbytes: int, what: str, buf: bytearray | None = None) -> bytearray:
        buf = bytearray(nbytes) if buf is None else buf
        view = memoryview(buf)[:nbytes]
        start = offset
        while view:
            got = _pread_into(self._fd, view, offset)
            if got <= 0:
                raise ExtractError(f"{self.path}: the file ended while reading {what}; was it changed during "
                                   "extraction? Run again")
            view, offset = view[got:], offset + got
        if self.stream:  # the bytes are in buf now: the page cache need not keep them
            _advise(self._fd, start, nbytes, "DONTNEED")
        return buf

    def _hash_to(self, offset: int) -> None:
        if self._known:
            return
        while self._hashed < offset:
            n = min(16 * 2**20, offset - self._hashed)
            self._sha.update(self._read(self._hashed, n, "its header and small tensors"))
            self._hashed += n

    def digest(self) -> str:
        """SHA-256 of the whole file (lower-case hex); call while open, after the reads."""
        if self._known:
            return self._known
        self._hash_to(self._h.file_size)
        return self._sha.hexdigest()

    def prefetch(self, key: str) -> None:
        # The kernel reads the range into the page cache in the background, so the disk
        # works while this thread hashes and widens the tensor before it.
        info = self._h.tensors[key]
        _advise(self._fd, self._h.data_start + info.begin, info.nbytes, "WILLNEED")

    def get_tensor(self, key):
        info = self._h.tensors[key]
        dtype = _TORCH_DTYPES.get(info.dtype)
        if dtype is None:
            raise ExtractError(f"{self.path}: tensor {key} has dtype {info.dtype}, which extraction cannot read; "
                               "convert the checkpoint to fp16, bf16 or fp32")
        start = self._h.data_start + info.begin
        self._hash_to(start)
        if not info.nbytes:
            return torch.empty(info.shape, dtype=dtype)
        # One read buffer, reused (grown to the largest tensor): a fresh buffer per tensor
        # leaves the allocator holding freed ones, and resident memory creeps with the model.
        if len(self._buf) < info.nbytes:
            self._buf = bytearray(info.nbytes)
        self._read(start, info.nbytes, key, self._buf)
        view = memoryview(self._buf)[:info.nbytes]
        if start == self._hashed and not self._known:  # in file order: the next bytes of the hash
            self._sha.update(view)
            self._hashed += info.nbytes
        return torch.frombuffer(view, dtype=dtype).reshape(info.shape)


def streams(paths: list[str], fraction: float = 0.5) -> bool:
    """Whether inputs of this total size are read past the page cache: when they exceed
    ``fraction`` of the physical memory (they would not stay cached anyway)."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return False
    return sum(os.path.getsize(p) for p in paths) > fraction * memory


def plan_sources(base: TensorSource, tuned: TensorSource, text_encoders: bool = True,
                 outside_blocks: str = "auto") -> Plan:
    """The plan for two sources (headers only). Raises :class:`ExtractError`."""
    if base.path and tuned.path and os.path.samefile(base.path, tuned.path):
        raise ExtractError(f"{base.label} and {tuned.label} are the same file: there is no difference to extract")
    try:
        return make_plan(base.header(), tuned.header(), text_encoders, outside_blocks)
    except PlanError as e:
        raise ExtractError(f"{base.label} and {tuned.label}: {e}") from None


def plan_files(base: str, tuned: str, text_encoders: bool = True, outside_blocks: str = "auto") -> Plan:
    """The plan for two checkpoint files (headers only). Raises :class:`ExtractError`."""
    return plan_sources(FileSource(base), FileSource(tuned), text_encoders, outside_blocks)


def _check_output(out_path: str, inputs: list[str]) -> None:
    """Fail before any work when ``out_path`` cannot be written or would replace an input."""
    out = Path(out_path)
    if out.suffix.lower() != ".safetensors":
        raise ExtractError(f"{out_path}: the output must be a .safetensors file name")
    if out.is_dir():
        raise ExtractError(f"{out_path}: is a directory; give a file name")
    for p in inputs:
        if os.path.realpath(p) == os.path.realpath(out):
            raise ExtractError(f"{out_path}: is one of the input checkpoints; writing it would destroy that "
                               "input. Choose another output name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.with_name(f".{out.name}.{os.getpid()}.probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ExtractError(f"{out_path}: cannot write there ({e.strerror or e}); choose another place") from None


def _device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``; anything else is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.split(":")[0] == "cuda":
        if not torch.cuda.is_available():
            raise ExtractError(f"device {name!r}: no CUDA GPU is available here; use auto or cpu")
        return torch.device(name)
    raise ExtractError(f"device {name!r}: use auto, cpu or cuda")


def _factorise(a: torch.Tensor, energy: torch.Tensor, layers: list[Layer], opts: Options,
               device: torch.device) -> tuple[Factors, torch.Tensor]:
    """The factors of the batch ``a`` and ``a`` itself on ``device`` (for the error measurement)."""
    k = opts.max_rank if opts.policy != "rank" else min(int(opts.value), opts.max_rank)
    a = a.to(device)
    if opts.algorithm == "exact":
        return exact_svd(a, energy), a
    gens = [torch.Generator().manual_seed(((opts.seed * 1_000_003) ^ zlib.crc32(layer.name.encode())) % 2**63)
            for layer in layers]
    return randomized_svd(a, k, opts.oversample, opts.niter, gens, energy), a


def extract_files(base: str, tuned: str, out_path: str, opts: Options | None = None,
                  progress: ProgressFn | None = None, title: str | None = None,
                  known_sha256: dict[str, str] | None = None) -> Result:
    """Extract ``tuned - base`` of two checkpoint files as a LoRA into ``out_path``.

    See :func:`extract`; the files are validated (complete safetensors, no pickle) first.
    ``known_sha256``: path -> SHA-256 of inputs whose hash is known (not computed again).
    """
    known, stream = known_sha256 or {}, streams([base, tuned])  # the pair's size decides
    return extract(FileSource(base, known.get(base), stream), FileSource(tuned, known.get(tuned), stream),
                   out_path, opts, progress, title)


def extract(base_src: TensorSource, tuned_src: TensorSource, out_path: str, opts: Options | None = None,
            progress: ProgressFn | None = None, title: str | None = None) -> Result:
    """Extract ``tuned - base`` as a LoRA into ``out_path`` (a .safetensors file).

    ``progress(done_layers, total_layers, message)`` is called after every batch; it may
    raise (e.g. :class:`Cancelled`) to stop, and then nothing is left on disk. Raises
    :class:`ExtractError` for inputs that cannot give a LoRA (different families, no shared
    layers, a non-finite difference, naming its key), and for a written file that does not
    read back as computed. Memory: at most two batches of differences (``batch_bytes`` each,
    float32) plus one layer's factorisation, whatever the model size.
    """
    opts = opts or Options()
    opts.check()
    _device(opts.device)  # an unusable device fails here, before any work
    t_start = time.perf_counter()
    _check_output(out_path, [p for p in (base_src.path, tuned_src.path) if p])
    plan = plan_sources(base_src, tuned_src, opts.text_encoders, opts.outside_blocks)
    return _extract_layers(base_src, tuned_src, out_path, opts, progress, title, plan, t_start)


# float8 -> float32 by table: torch's own conversion runs at ~70 M values/s on a CPU core,
# a 256-entry lookup at ~550 M/s (20 B values per Qwen-Image file).
_FP8_TABLES = {dt: torch.arange(256, dtype=torch.uint8).view(dt).float().numpy()
               for dt in (torch.float8_e4m3fn, torch.float8_e5m2)}

# Values widened per step: the scratch buffer is this many float32 values (16 MiB).
_CHUNK_VALUES = 2**22
BUFFERS = 2  # one is factorised while the other is filled (a third measured no faster: CPU-bound)


_FP8_PAIRS: dict = {}


def _fp8_pair_table(dtype: torch.dtype) -> np.ndarray:
    """``table[(t << 8) | b] = float(t) - float(b)`` for the 256 x 256 byte pairs of an fp8
    dtype (float32, 256 KiB: stays in cache): one lookup per value of a difference of two fp8
    files instead of two lookups and a subtraction (440 against 330 M values/s on one core)."""
    if dtype not in _FP8_PAIRS:
        t = _FP8_TABLES[dtype]
        with np.errstate(invalid="ignore"):  # NaN codes give NaN differences, found by the caller
            _FP8_PAIRS[dtype] = np.ascontiguousarray((t[:, None] - t[None, :]).astype(np.float32).ravel())
    return _FP8_PAIRS[dtype]


def _widen_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy ``src`` (fp8/fp16/bf16/fp32, same shape) into the float32 ``dst``, widening."""
    table = _FP8_TABLES.get(src.dtype)
    if table is None:
        dst.copy_(src)
    else:  # straight into dst: no float32 temporary
        np.take(table, src.contiguous().view(torch.uint8).numpy(), out=dst.numpy())


def _difference_into(out: torch.Tensor, fb: TensorSource, ft: TensorSource, layer: Layer, base: str,
                     tuned: str, scratch: torch.Tensor, strict: bool = True) -> float | None:
    """Write tuned - base of one layer into ``out`` (float32, rows x columns, contiguous);
    return its squared Frobenius norm (float64 sum), or None when the layer is unchanged.
    A non-finite difference raises :class:`ExtractError`, or gives NaN when not ``strict``
    (a layer read only to report its size).

    Both tensors are widened row block by row block, the base through ``scratch`` (float32,
    at least one row): a subtraction that mixes dtypes (``out.sub_(bf16)``) runs about 3x
    slower than two widening copies and a float32 one, and a float32 temporary the size of a
    layer is fresh memory, page-faulted in on every layer (as slow again).
    """
    a = fb.get_tensor(layer.base_key)
    b = ft.get_tensor(layer.tuned_key)
    if layer.rows is not None:
        a, b = a[layer.rows[0]:layer.rows[1]], b[layer.rows[0]:layer.rows[1]]
    a, b = a.reshape(out.shape), b.reshape(out.shape)
    step = max(1, scratch.numel() // max(out.shape[1], 1))
    pair = _fp8_pair_table(a.dtype) if a.dtype == b.dtype and a.dtype in _FP8_TABLES else None
    for i in range(0, out.shape[0], step):
        rows = out[i:i + step]
        if pair is not None:
            # (tuned << 8) | base as uint16 in the scratch's bytes, then one lookup.
            index = scratch.view(torch.uint16)[:rows.numel()].numpy().reshape(rows.shape)
            np.left_shift(b[i:i + step].contiguous().view(torch.uint8).numpy(), 8, out=index, dtype=np.uint16)
            np.bitwise_or(index, a[i:i + step].contiguous().view(torch.uint8).numpy(), out=index)
            np.take(pair, index, out=rows.numpy())
            continue
        tmp = scratch[:rows.numel()].view(rows.shape)
        _widen_into(rows, b[i:i + step])
        _widen_into(tmp, a[i:i + step])
        rows.sub_(tmp)
    energy = float(squared_norms(out[None])[0])
    if not math.isfinite(energy):
        if torch.isfinite(out).all():  # finite values whose squares overflow: still a valid difference
            energy = float(torch.linalg.vector_norm(out.double()) ** 2)
        elif not strict:
            return math.nan
        else:
            bad = base if not torch.isfinite(a.float()).all() else tuned
            raise ExtractError(f"{layer.tuned_key}: the difference has non-finite values (inf or NaN in {bad}). "
                               "The file is damaged or was saved with overflowing values; re-save or re-download it")
    if energy == 0 and not out.any():
        return None
    return energy


class _Reader(threading.Thread):
    """Reads the layers in ``order`` and forms their differences, batch by batch, ahead of
    the factorisation: ``items`` receives ``(layers, a, kept, energies, buffer, measured)`` per
    batch (``a``: float32 (len(kept), m, n) holding the changed layers, a view of ``buffer``;
    ``measured``: (layer, squared norm) of the batch's layers in ``measure_only``, which are
    read for their norm and not factorised), then None at the end, or the exception that
    stopped it. Two buffers exist, reused: the consumer hands each back with :meth:`done`."""

    def __init__(self, order: list[Layer], fb: TensorSource, ft: TensorSource, base: str, tuned: str,
                 opts: Options, measure_only: frozenset = frozenset()):
        super().__init__(daemon=True, name="lora-extract-reader")
        self.order, self.fb, self.ft, self.base, self.tuned, self.opts = order, fb, ft, base, tuned, opts
        self.measure_only = measure_only
        self.items: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self._free: queue.Queue = queue.Queue()
        for _ in range(BUFFERS):
            self._free.put(torch.empty(0, dtype=torch.float32))

    def done(self, buffer: torch.Tensor) -> None:
        """Hand a batch's buffer back for the next batch."""
        self._free.put(buffer)

    def run(self) -> None:
        try:
            order, total, i = self.order, len(self.order), 0
            # Widening and hashing are memory-bound: one core is enough, and OpenMP workers
            # of this thread would take cores from the factorisation's matrix products.
            torch.set_num_threads(1)
            width = max((layer.matrix_shape[1] for layer in order), default=1)
            scratch = torch.empty(max(_CHUNK_VALUES, width), dtype=torch.float32)
            while i < total:
                shape = order[i].matrix_shape
                limit = max(1, min(self.opts.batch, self.opts.batch_bytes // max(4 * shape[0] * shape[1], 1)))
                chunk = [order[i]]
                while i + len(chunk) < total and len(chunk) < limit and order[i + len(chunk)].matrix_shape == shape:
                    chunk.append(order[i + len(chunk)])
                buffer = None
                while buffer is None:
                    if self.stop.is_set():
                        return
                    try:
                        buffer = self._free.get(timeout=0.1)
                    except queue.Empty:
                        pass
                need = len(chunk) * shape[0] * shape[1]
                if buffer.numel() < need:
                    del buffer  # freed before its larger replacement is allocated
                    buffer = torch.empty(need, dtype=torch.float32)
                # The batch is filled difference by difference: no second copy.
                a = buffer[:need].view(len(chunk), *shape)
                kept, energies, measured = [], [], []
                for j, layer in enumerate(chunk):
                    if i + j + 1 < total:
                        self.fb.prefetch(order[i + j + 1].base_key)
                        self.ft.prefetch(order[i + j + 1].tuned_key)
                    measure = layer in self.measure_only
                    e = _difference_into(a[len(kept)], self.fb, self.ft, layer, self.base, self.tuned, scratch,
                                         strict=not measure)
                    if measure:  # its slot is reused by the next layer
                        measured.append((layer, e or 0.0))
                    elif e is not None:
                        kept.append(layer)
                        energies.append(e)
                self.items.put((chunk, a[: len(kept)], kept, energies, buffer, measured))
                i += len(chunk)
            self.items.put(None)
        except BaseException as e:  # handed to the consumer, which raises it
            self.items.put(e)


def _extract_layers(base_src, tuned_src, out_path, opts, progress, title, plan, t_start) -> Result:
    base, tuned = base_src.label, tuned_src.label
    device = _device(opts.device)
    out_dtype = DTYPES[opts.dtype]
    stats: list[LayerStats] = []
    left_out: list[tuple[str, float]] = []
    total = len(plan.layers) + len(plan.left_out)
    done = 0
    writer = _LoraWriter(out_path)
    try:
        with base_src as fb, tuned_src as ft:
            # File order, so both files are read sequentially (and hashed from the same reads);
            # adjacent same-shape layers are batched.
            # Left-out layers are read too, for their norm: the report says how much they held.
            order = sorted(plan.layers + plan.left_out,
                           key=lambda layer: (ft.offset(layer.tuned_key), fb.offset(layer.base_key),
                                              layer.rows or (0, 0)))
            reader = _Reader(order, fb, ft, base, tuned, opts, frozenset(plan.left_out))
            reader.start()
            try:
                while (item := reader.items.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    chunk, a, kept, energies, buffer, measured = item
                    t0 = time.perf_counter()
                    left_out += [(layer.name, math.sqrt(e)) for layer, e in measured]
                    stats += [LayerStats(layer.name, layer.block, layer.matrix_shape, 0, 0.0, 1.0, 0.0, 0.0)
                              for layer in chunk if layer not in kept and layer not in reader.measure_only]
                    if kept:
                        energy = torch.tensor(energies, dtype=torch.float64)
                        try:
                            f, a_dev = _factorise(a, energy, kept, opts, device)
                        except torch.OutOfMemoryError:
                            f, a_dev = _factorise(a, energy, kept, opts, torch.device("cpu"))
                        for j, layer in enumerate(kept):
                            stats.append(_store(layer, a_dev[j], f, j, energies[j], opts, out_dtype, writer,
                                                (time.perf_counter() - t0) / len(kept)))
                        del f, a_dev
                    del a, item
                    reader.done(buffer)
                    del buffer
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total, chunk[-1].name)
            finally:
                reader.stop.set()
                reader.join()
            hashes = {src.path: src.digest() for src in (fb, ft) if src.path}
        if not any(s.rank != 0 for s in stats) and any(norm != 0 for _, norm in left_out):
            changed = [name for name, norm in left_out if norm != 0]
            raise ExtractError(f"{tuned} and {base}: only layers outside the numbered blocks differ ("
                               f"{', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}), and outside_blocks "
                               f"{opts.outside_blocks} leaves them out for {plan.family}. Set outside_blocks to "
                               "include to extract them")
        if not any(s.rank != 0 for s in stats):
            raise ExtractError(f"{tuned} and {base}: no layer a LoRA can hold differs between them (only biases, "
                               "norm scales, the VAE, unpaired weights or excluded text-encoder weights may differ); "
                               "there is no LoRA to extract")
        metadata = _metadata(plan, opts, stats, hashes, base_src, tuned_src, title or Path(out_path).stem)
        if left_out:
            # null: a layer whose difference is not finite (it is not in the LoRA either way).
            metadata["workbench.left_out"] = json.dumps(
                {name: _sig(norm) if math.isfinite(norm) else None for name, norm in left_out}, separators=(",", ":"))
        writer.finish(metadata)
    finally:
        writer.discard()
    return Result(str(out_path), plan, stats, time.perf_counter() - t_start, metadata, opts, left_out)


def _store(layer: Layer, d: torch.Tensor, f: Factors, j: int, energy: float, opts: Options, out_dtype,
           writer: _LoraWriter, seconds: float) -> LayerStats:
    """Choose the rank, round the factors to ``out_dtype``, measure their error against the
    difference ``d`` (float32 (m, n), on the factors' device) and stream them to ``writer``."""
    s = f.S[j].cpu()
    m, n = d.shape
    rank = choose_rank(opts.policy, opts.value, s, energy, opts.max_rank)
    spectrum = (torch.cumsum(s.double().square(), 0) / energy).tolist() if energy else []
    if rank * (m + n) >= m * n:
        # The factors would be larger than the difference itself: store it whole and exact, as
        # a pair of full rank (the difference times an identity), not as a ``.diff`` entry,
        # which diffusers and kohya-style loaders cannot read.
        whole, rank = True, min(m, n)
        eye = torch.eye(rank, dtype=out_dtype, device=d.device)
        full = d.to(out_dtype)
        up, down = (eye, full) if m <= n else (full, eye)
    else:
        whole = False
        root = f.S[j][:rank].sqrt()
        up = (f.U[j][:, :rank] * root).to(out_dtype)
        down = (root[:, None] * f.Vh[j][:rank]).to(out_dtype)
    _check_finite(layer, up, opts.dtype)
    _check_finite(layer, down, opts.dtype)
    # The error of the file: measured on the rounded factors, not derived from the spectrum.
    error = math.sqrt(residual_squared_norm(d, up.float(), down.float()) / energy)
    kernel = layer.shape[2:]
    writer.add(f"{layer.name}.lora_up.weight", up.cpu().reshape(m, rank, *([1] * len(kernel))))
    writer.add(f"{layer.name}.lora_down.weight", down.cpu().reshape(rank, *layer.shape[1:]))
    writer.alpha(f"{layer.name}.alpha", float(rank))
    return LayerStats(layer.name, layer.block, (m, n), -1 if whole else rank, error, 1 - error**2,
                      math.sqrt(energy), seconds, spectrum)


def _check_finite(layer: Layer, t: torch.Tensor, dtype: str) -> None:
    if not torch.isfinite(t).all():
        raise ExtractError(f"{layer.name}: the LoRA factors overflow {dtype} (the difference is too large for "
                           "it); choose bf16 factors")


def _sig(x: float) -> float:
    return float(f"{x:.6g}")


def _metadata(plan: Plan, opts: Options, stats: list[LayerStats], hashes: dict, base: TensorSource,
              tuned: TensorSource, title: str) -> dict[str, str]:
    ranks = {s.rank for s in stats if s.rank > 0}
    dim = str(next(iter(ranks))) if len(ranks) == 1 else "Dynamic"
    # 6 significant digits: a small error must not round to 0.
    per_layer = {s.name: [s.rank, _sig(s.error), _sig(s.norm)] for s in stats if s.rank != 0}
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": dim,
        "ss_network_alpha": dim,
        "ss_network_args": json.dumps({"extracted_by": "lora-workbench"}),
        "ss_base_model_version": BASE_MODEL_VERSION[plan.family],
        "ss_v2": str(plan.family == "sd2"),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": ARCHITECTURE[plan.family],
        "modelspec.implementation": "https://github.com/kohya-ss/sd-scripts",
        "modelspec.title": title,
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "workbench.version": __version__,
        "workbench.base": os.path.basename(base.label),
        "workbench.tuned": os.path.basename(tuned.label),
        "workbench.base_sha256": hashes.get(base.path, ""),
        "workbench.tuned_sha256": hashes.get(tuned.path, ""),
        "workbench.algorithm": json.dumps({"algorithm": opts.algorithm, "policy": opts.policy, "value": opts.value,
                                           "max_rank": opts.max_rank, "oversample": opts.oversample,
                                           "niter": opts.niter, "seed": opts.seed, "dtype": opts.dtype,
                                           "clamp": None, "outside_blocks": plan.outside_blocks}),
        "workbench.layers": json.dumps(per_layer, separators=(",", ":")),
    }


_ST_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


class _LoraWriter:
    """Streams a LoRA's tensors to a hidden spill file as they are made, then assembles the
    safetensors file (header, the ``alpha`` scalars, the spilled tensors) under a hidden
    ``.partial`` name beside ``out_path``, re-reads it and renames it into place. Memory is
    one tensor, whatever the LoRA's size. ``alpha`` scalars (float32) go first so that every
    tensor stays aligned to its element size. Nothing is left under the real name unless
    :meth:`finish` succeeds; :meth:`discard` removes the hidden files in every case."""

    def __init__(self, out_path: str):
        self.out = Path(out_path)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        stem = f".{self.out.name}.{os.getpid()}.{threading.get_ident()}"
        self.body_path = self.out.with_name(stem + ".body")
        self.tmp = self.out.with_name(stem + ".partial")
        self._body = open(self.body_path, "wb")  # closed in finish() or discard()
        self._entries: dict[str, tuple[str, list[int], int, int, int]] = {}
        self._alphas: dict[str, float] = {}
        self._pos = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        data = t.contiguous().reshape(-1).view(torch.uint8).numpy()
        self._body.write(memoryview(data))
        self._entries[name] = (_ST_DTYPES[t.dtype], list(t.shape), self._pos, self._pos + data.nbytes,
                               zlib.crc32(data))
        self._pos += data.nbytes

    def alpha(self, name: str, value: float) -> None:
        self._alphas[name] = value

    def finish(self, metadata: dict[str, str]) -> None:
        self._body.close()
        alphas = np.array(list(self._alphas.values()), dtype="<f4").tobytes()
        header: dict = {"__metadata__": metadata}
        expect: dict[str, tuple[int, int, int]] = {}
        for i, name in enumerate(self._alphas):
            header[name] = {"dtype": "F32", "shape": [], "data_offsets": [4 * i, 4 * i + 4]}
            expect[name] = (4 * i, 4 * i + 4, zlib.crc32(alphas[4 * i:4 * i + 4]))
        for name, (dt, shape, begin, end, crc) in self._entries.items():
            offsets = [len(alphas) + begin, len(alphas) + end]
            header[name] = {"dtype": dt, "shape": shape, "data_offsets": offsets}
            expect[name] = (*offsets, crc)
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(self.tmp, "wb") as out, open(self.body_path, "rb") as body:
            out.write(len(raw).to_bytes(8, "little") + raw + alphas)
            shutil.copyfileobj(body, out, 16 * 2**20)
        self._verify(expect, metadata)
        os.replace(self.tmp, self.out)

    def _verify(self, expect: dict[str, tuple[int, int, int]], metadata: dict[str, str]) -> None:
        """Every tensor reads back with the bytes written (CRC-32), through both our strict
        header check and the safetensors library."""
        try:
            h = read_header(self.tmp)
            with safe_open(str(self.tmp), "pt") as f:
                names, meta = set(f.keys()), f.metadata()
        except (SafetensorsError, OSError) as e:
            raise ExtractError(f"{self.out}: the written file does not read back ({e}); nothing was saved. Check "
                               "the disk (space, errors) and run again") from None
        bad = sorted(set(expect) ^ names) or [k for k, v in metadata.items() if meta.get(k) != v][:1]
        if not bad:
            with open(self.tmp, "rb") as f:
                for name, (begin, end, crc) in sorted(expect.items(), key=lambda kv: kv[1][0]):
                    f.seek(h.data_start + begin)
                    if zlib.crc32(f.read(end - begin)) != crc:
                        bad = [name]
                        break
        if bad:
            raise ExtractError(f"{self.out}: the written file does not read back as computed ({bad[0]}); nothing "
                               "was saved. Check the disk (space, errors) and run again")

    def discard(self) -> None:
        self._body.close()
        self.body_path.unlink(missing_ok=True)
        self.tmp.unlink(missing_ok=True)
