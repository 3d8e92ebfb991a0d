"""Extract a LoRA from the difference of two checkpoints, streaming layer by layer.

:func:`extract_files` reads both safetensors files through ``safe_open`` (memory-mapped),
so at most ``batch`` layers of the same shape are in memory at once (peak memory is
O(largest layer x batch), never O(model)); forms each difference in float32 whatever the
stored dtype; factorises it (randomized subspace iteration by default, exact SVD on
request; same-shape layers batched; on CUDA when asked, falling back to the CPU when the
GPU runs out of memory); chooses each layer's rank by policy; and writes kohya-named
``lora_up``/``lora_down``/``alpha`` tensors (an exact pair of full rank where low-rank factors
would be larger than the difference itself; never a ``.diff`` entry, which diffusers cannot
read) to a temporary file, which is re-opened and checked against the in-memory
reconstruction before it is renamed into place.

The up/down split is balanced (``sqrt(S)`` on each factor, so both stay in fp16 range) and
``alpha`` equals the rank (scale 1). No clamping: clamping the factors to a quantile, as
kohya's and ComfyUI's extractors do by default, can triple the error.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from . import __version__
from .extract_plan import Layer, Plan, PlanError, make_plan
from .safetensors_io import SafetensorsError, read_header
from .svd import Factors, choose_rank, exact_svd, randomized_svd, relative_errors

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
    ``text_encoders``: include text-encoder layers that changed.
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
    lo, hi = (min(ranks), max(ranks)) if ranks else (0, 0)
    return f"rank {lo}" if lo == hi else f"rank {lo}-{hi}"


@dataclass
class Result:
    """An extraction: the ``path`` written, the ``plan``, per-layer ``layers`` stats, total
    ``seconds``, and the ``metadata`` written into the file."""

    path: str
    plan: Plan
    layers: list[LayerStats]
    seconds: float
    metadata: dict[str, str]
    options: Options | None = None

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
        lines.append("worst layers: " + "; ".join(
            f"{s.name} {s.error:.4f} (rank {s.rank})"
            for s in sorted(extracted, key=lambda s: -s.error)[:worst]))
        return "\n".join(lines)


ProgressFn = Callable[[int, int, str], None]


class TensorSource:
    """Where an extraction reads one model from: ``header()`` maps checkpoint-style keys to
    (dtype name, shape); ``get_tensor(key)`` returns one tensor. ``path`` names a file to hash
    (None for in-memory models). Use as a context manager."""

    path: str | None = None
    label: str = ""

    def header(self) -> dict[str, tuple[str, tuple]]:
        raise NotImplementedError

    def get_tensor(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


_TORCH_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
                 "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
                 "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


class FileSource(TensorSource):
    """A .safetensors checkpoint, validated (complete file, no pickle) before anything else.

    Tensors are read with ``os.pread`` into their own buffers, one at a time, rather than
    through a memory map: a map leaves every page it touched counted in the process's
    resident memory, which for two checkpoints is their whole size.
    """

    def __init__(self, path: str):
        if not str(path).lower().endswith((".safetensors", ".sft")):
            raise ExtractError(f"{path}: is not a .safetensors file; pickle checkpoints (.ckpt, .pt) can run code "
                               "when opened. Convert it to .safetensors in a trusted environment first")
        try:
            self._h = read_header(path)
        except SafetensorsError as e:
            raise ExtractError(str(e)) from None
        self.path = self.label = str(path)
        self._fd = None

    def header(self):
        return {k: (t.dtype, t.shape) for k, t in self._h.tensors.items()}

    def __enter__(self):
        self._fd = os.open(self.path, os.O_RDONLY)
        return self

    def __exit__(self, *exc):
        os.close(self._fd)
        self._fd = None

    def get_tensor(self, key):
        info = self._h.tensors[key]
        dtype = _TORCH_DTYPES.get(info.dtype)
        if dtype is None:
            raise ExtractError(f"{self.path}: tensor {key} has dtype {info.dtype}, which extraction cannot read; "
                               "convert the checkpoint to fp16, bf16 or fp32")
        buf = bytearray(info.nbytes)
        view, offset = memoryview(buf), self._h.data_start + info.begin
        while view:
            got = os.preadv(self._fd, [view], offset)
            if got <= 0:
                raise ExtractError(f"{self.path}: the file ended while reading {key}; was it changed during "
                                   "extraction? Run again")
            view, offset = view[got:], offset + got
        if not info.nbytes:
            return torch.empty(info.shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(info.shape)


def _sha256(path: str, out: dict, stop: threading.Event) -> None:
    """SHA-256 of a file into ``out[path]`` (lower-case hex); gives up when ``stop`` is set
    (the extraction failed or was cancelled) or the file cannot be read. Only SHA-256: the
    other hashes of :mod:`lora_ops.hashing` would cost a second full pass here."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(8 * 2**20):
                if stop.is_set():
                    return
                h.update(chunk)
    except OSError:
        return
    out[path] = h.hexdigest()


def plan_sources(base: TensorSource, tuned: TensorSource, text_encoders: bool = True) -> Plan:
    """The plan for two sources (headers only). Raises :class:`ExtractError`."""
    if base.path and tuned.path and os.path.samefile(base.path, tuned.path):
        raise ExtractError(f"{base.label} and {tuned.label} are the same file: there is no difference to extract")
    try:
        return make_plan(base.header(), tuned.header(), text_encoders)
    except PlanError as e:
        raise ExtractError(f"{base.label} and {tuned.label}: {e}") from None


def plan_files(base: str, tuned: str, text_encoders: bool = True) -> Plan:
    """The plan for two checkpoint files (headers only). Raises :class:`ExtractError`."""
    return plan_sources(FileSource(base), FileSource(tuned), text_encoders)


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


def _factorise(a: torch.Tensor, layers: list[Layer], opts: Options, device: torch.device) -> Factors:
    k = opts.max_rank if opts.policy != "rank" else min(int(opts.value), opts.max_rank)
    if opts.algorithm == "exact":
        return exact_svd(a.to(device))
    gens = [torch.Generator().manual_seed(((opts.seed * 1_000_003) ^ zlib.crc32(layer.name.encode())) % 2**63)
            for layer in layers]
    return randomized_svd(a.to(device), k, opts.oversample, opts.niter, gens)


def extract_files(base: str, tuned: str, out_path: str, opts: Options | None = None,
                  progress: ProgressFn | None = None, title: str | None = None) -> Result:
    """Extract ``tuned - base`` of two checkpoint files as a LoRA into ``out_path``.

    See :func:`extract`; the files are validated (complete safetensors, no pickle) first.
    """
    return extract(FileSource(base), FileSource(tuned), out_path, opts, progress, title)


def extract(base_src: TensorSource, tuned_src: TensorSource, out_path: str, opts: Options | None = None,
            progress: ProgressFn | None = None, title: str | None = None) -> Result:
    """Extract ``tuned - base`` as a LoRA into ``out_path`` (a .safetensors file).

    ``progress(done_layers, total_layers, message)`` is called after every batch; it may
    raise (e.g. :class:`Cancelled`) to stop, and then nothing is left on disk. Raises
    :class:`ExtractError` for inputs that cannot give a LoRA (different families, no shared
    layers, a non-finite difference, naming its key), and for a written file that does not
    read back as computed.
    """
    opts = opts or Options()
    opts.check()
    _device(opts.device)  # an unusable device fails here, before any work
    t_start = time.perf_counter()
    _check_output(out_path, [p for p in (base_src.path, tuned_src.path) if p])
    plan = plan_sources(base_src, tuned_src, opts.text_encoders)
    hashes: dict[str, str] = {}
    stop_hashing = threading.Event()
    hashers = [threading.Thread(target=_sha256, args=(p, hashes, stop_hashing), daemon=True)
               for p in (base_src.path, tuned_src.path) if p]
    for t in hashers:
        t.start()
    try:
        return _extract_layers(base_src, tuned_src, out_path, opts, progress, title, plan, hashes, hashers, t_start)
    finally:
        stop_hashing.set()  # no-op after success: both hashes are in by then
        for t in hashers:
            t.join()


def _extract_layers(base_src, tuned_src, out_path, opts, progress, title, plan, hashes, hashers, t_start) -> Result:
    base, tuned = base_src.label, tuned_src.label
    device = _device(opts.device)
    out_dtype = DTYPES[opts.dtype]
    tensors: dict[str, torch.Tensor] = {}
    expected: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}  # fp32 factors, for the check
    stats: list[LayerStats] = []

    # Same-shape layers next to each other, so they can be batched.
    order = sorted(plan.layers, key=lambda layer: (layer.matrix_shape, layer.name))
    total = len(order)
    done = 0
    with base_src as fb, tuned_src as ft:
        i = 0
        while i < total:
            shape = order[i].matrix_shape
            per_layer = 4 * shape[0] * shape[1]
            limit = max(1, min(opts.batch, opts.batch_bytes // max(per_layer, 1)))
            chunk = [order[i]]
            while i + len(chunk) < total and len(chunk) < limit and order[i + len(chunk)].matrix_shape == shape:
                chunk.append(order[i + len(chunk)])
            t0 = time.perf_counter()
            # One buffer for the batch, filled difference by difference: no second copy.
            a = torch.empty((len(chunk), *shape), dtype=torch.float32)
            kept: list[Layer] = []
            for layer in chunk:
                d = _difference(fb, ft, layer, base, tuned)
                if d is None:
                    stats.append(LayerStats(layer.name, layer.block, shape, 0, 0.0, 1.0, 0.0, 0.0))
                    continue
                a[len(kept)].copy_(d)
                kept.append(layer)
                del d
            if kept:
                a = a[: len(kept)]
                try:
                    f = _factorise(a, kept, opts, device)
                except torch.OutOfMemoryError:
                    f = _factorise(a, kept, opts, torch.device("cpu"))
                seconds = (time.perf_counter() - t0) / len(kept)
                for j, layer in enumerate(kept):
                    stats.append(_store(layer, a[j], f, j, opts, out_dtype, tensors, expected, seconds))
                del f
            del a
            i += len(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total, chunk[-1].name)
    for t in hashers:
        t.join()
    if not any(s.rank != 0 for s in stats):
        raise ExtractError(f"{tuned} and {base}: no layer a LoRA can hold differs between them (only biases, "
                           "norm scales, the VAE, unpaired weights or excluded text-encoder weights may differ); "
                           "there is no LoRA to extract")
    metadata = _metadata(plan, opts, stats, hashes, base_src, tuned_src, title or Path(out_path).stem)
    _write_checked(out_path, tensors, expected, metadata, opts.dtype)
    return Result(str(out_path), plan, stats, time.perf_counter() - t_start, metadata, opts)


def _difference(fb, ft, layer: Layer, base: str, tuned: str) -> torch.Tensor | None:
    """tuned - base of one layer as a float32 (rows, columns) matrix; None when identical."""
    a = fb.get_tensor(layer.base_key)
    b = ft.get_tensor(layer.tuned_key)
    if layer.rows is not None:
        a, b = a[layer.rows[0]:layer.rows[1]], b[layer.rows[0]:layer.rows[1]]
    d = b.to(torch.float32) - a.to(torch.float32)
    if not torch.isfinite(d).all():
        bad = base if not torch.isfinite(a.to(torch.float32)).all() else tuned
        raise ExtractError(f"{layer.tuned_key}: the difference has non-finite values (inf or NaN in {bad}). "
                           "The file is damaged or was saved with overflowing values; re-save or re-download it")
    if not d.any():
        return None
    return d.reshape(d.shape[0], -1)


def _store(layer: Layer, d: torch.Tensor, f: Factors, j: int, opts: Options, out_dtype, tensors, expected,
           seconds: float) -> LayerStats:
    s = f.S[j].cpu()
    energy = float(f.energy[j])
    m, n = d.shape
    rank = choose_rank(opts.policy, opts.value, s, energy, opts.max_rank)
    errors = relative_errors(s[:rank], energy)
    spectrum = (torch.cumsum(s.double().square(), 0) / energy).tolist() if energy else []
    whole = rank * (m + n) >= m * n
    if whole:
        # The factors would be larger than the difference itself: store it whole and exact, as
        # a pair of full rank (the difference times an identity), not as a ``.diff`` entry,
        # which diffusers and kohya-style loaders cannot read.
        rank = min(m, n)
        eye = torch.eye(rank, dtype=torch.float32)
        up, down = (eye, d.clone()) if m <= n else (d.clone(), eye)
    else:
        root = s[:rank].sqrt()
        up = (f.U[j][:, :rank].cpu() * root).contiguous()
        down = (root[:, None] * f.Vh[j][:rank].cpu()).contiguous()
    kernel = layer.shape[2:]
    tensors[f"{layer.name}.lora_up.weight"] = up.reshape(m, rank, *([1] * len(kernel))).to(out_dtype)
    tensors[f"{layer.name}.lora_down.weight"] = down.reshape(rank, *layer.shape[1:]).to(out_dtype)
    tensors[f"{layer.name}.alpha"] = torch.tensor(float(rank), dtype=torch.float32)
    expected[layer.name] = (up, down)
    if whole:
        return LayerStats(layer.name, layer.block, (m, n), -1, 0.0, 1.0, math.sqrt(energy), seconds, spectrum)
    return LayerStats(layer.name, layer.block, (m, n), rank, errors[rank], 1 - errors[rank] ** 2,
                      math.sqrt(energy), seconds, spectrum)


def _metadata(plan: Plan, opts: Options, stats: list[LayerStats], hashes: dict, base: TensorSource,
              tuned: TensorSource, title: str) -> dict[str, str]:
    ranks = {s.rank for s in stats if s.rank > 0}
    dim = str(next(iter(ranks))) if len(ranks) == 1 else "Dynamic"
    per_layer = {s.name: [s.rank, round(s.error, 6), round(s.norm, 6)] for s in stats if s.rank != 0}
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
                                           "clamp": None}),
        "workbench.layers": json.dumps(per_layer, separators=(",", ":")),
    }


# How far a module may read back from its float32 reconstruction: the rounding of the
# stored dtype (fp16 keeps 11 significant bits, bf16 8), with margin.
READBACK_LIMIT = {"fp16": 1e-3, "bf16": 8e-3}


def _write_checked(out_path: str, tensors: dict, expected: dict, metadata: dict, dtype: str = "fp16") -> None:
    """Write to a hidden temporary name beside ``out_path``, check every module reads back
    within :data:`READBACK_LIMIT` (relative) of the in-memory float32 reconstruction, then
    rename into place. The bytes are written by this function, so an interruption can only
    leave the hidden ``.partial`` file, never a file under the real name."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    limit = READBACK_LIMIT[dtype]
    try:
        tmp.write_bytes(save(tensors, metadata=metadata))
        with safe_open(str(tmp), "pt") as f:
            for name, (up, down) in expected.items():
                got = (f.get_tensor(f"{name}.lora_up.weight").float().flatten(1)
                       @ f.get_tensor(f"{name}.lora_down.weight").float().flatten(1))
                want = up @ down
                scale = float(torch.linalg.norm(want)) or 1.0
                err = float(torch.linalg.norm(got - want)) / scale
                if err > limit:
                    raise ExtractError(f"{name}: the written file reads back {err:.2e} away from the computed LoRA "
                                       f"(limit {limit:g} for {dtype}); nothing was saved. Please report this "
                                       "with the two checkpoints' names")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
