"""Write a full-size (or reduced-depth) DiT checkpoint pair, tensor by tensor, for extraction runs.

The keys, shapes and order are those of the pinned host's own model, built on the meta device
(no memory): Flux.1-dev (``flux``: 19 double + 38 single blocks, 11.9 B parameters) or
Qwen-Image (``qwen``: 60 blocks, 20.4 B). Every weight with two or more dimensions (every
linear) of the tuned file differs from the base by a known delta ``U diag(s) V^T`` of
``--delta-rank`` components whose singular values decay like ``i^-1`` (scaled to
``--delta`` of the weight's norm); biases and norm scales are equal in both files.

Memory stays at a few hundred MB whatever the model size: the safetensors header is written
first (offsets follow from the shapes and dtypes), then each tensor is generated, written to
both files and dropped. Base weights are slices of one shared random pool (drawing 12-20 B
Gaussian values would take minutes and says nothing about extraction, which only sees the
difference); the deltas are drawn per key, so every layer's difference is different.

Dtypes: ``bf16``, ``fp16`` or ``fp8`` (float8 e4m3fn) per file; with ``fp8`` only the
matrices are 8-bit and vectors stay bf16, as in published fp8 checkpoints.

    .host/env/venv/bin/python scripts/make_dit_pair.py flux /work/bigtmp/flux
    .host/env/venv/bin/python scripts/make_dit_pair.py qwen /work/bigtmp/qwen --base-dtype fp8 --tuned-dtype fp8
    .host/env/venv/bin/python scripts/make_dit_pair.py flux /tmp/f --blocks 2   # 2 double + 2 single
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import zlib
from pathlib import Path

DTYPES = {"bf16": ("BF16", 2), "fp16": ("F16", 2), "fp8": ("F8_E4M3", 1), "fp32": ("F32", 4)}


def family_shapes(family: str, blocks: int | None = None, width: int | None = None) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the host's diffusion model of ``family``, built on the meta device.

    ``blocks``: reduced depth (Flux: that many double and single blocks; Qwen-Image: that many
    blocks); ``width``: a narrower hidden size (attention heads of 128 kept), for small test pairs.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_common import start_host

    start_host()
    import comfy.supported_models as sm
    import torch

    if family == "flux":
        hidden = width or 3072
        cfg = dict(image_model="flux", axes_dim=[16, 56, 56], num_heads=hidden // 128, mlp_ratio=4.0, theta=10000,
                   out_channels=16, qkv_bias=True, in_channels=16, hidden_size=hidden, context_in_dim=4096,
                   patch_size=2, vec_in_dim=768, depth=blocks or 19, depth_single_blocks=blocks or 38,
                   guidance_embed=True)
        config = sm.Flux(cfg)
    elif family == "qwen":
        cfg = dict(image_model="qwen_image", in_channels=64, num_layers=blocks or 60)
        if width:
            cfg["num_attention_heads"] = width // 128
        config = sm.QwenImage(cfg)
    else:
        raise SystemExit(f"unknown family {family!r}: use flux or qwen")
    with torch.device("meta"):
        model = config.get_model({})
    return {k: tuple(v.shape) for k, v in model.diffusion_model.state_dict().items()}


def delta_spectrum(k: int) -> list[float]:
    """The delta's singular values before scaling: ``i^-1`` for i = 1..k."""
    return [1.0 / i for i in range(1, k + 1)]


def _orthonormal(rows: int, k: int, g):
    """``rows x k`` orthonormal columns from a Gaussian matrix, by Cholesky QR in float64 (a
    Gaussian block is well conditioned; LAPACK's tall-thin QR is slow on a busy machine)."""
    import torch

    y = torch.randn(rows, k, generator=g).double()
    r = torch.linalg.cholesky(y.T @ y, upper=True)
    return torch.linalg.solve_triangular(r, y, upper=True, left=False).float()


def _dtype_of(shape: tuple, dtype: str) -> str:
    return "bf16" if dtype == "fp8" and len(shape) < 2 else dtype


def write_pair(shapes: dict[str, tuple[int, ...]], base_path: Path, tuned_path: Path, base_dtype: str = "bf16",
               tuned_dtype: str = "bf16", delta_rank: int = 64, delta: float = 0.05, seed: int = 0,
               progress=None, tuned_only: bool = False) -> dict:
    """Write the pair; returns ``{"bytes": total bytes written, "seconds": ...}``.

    ``tuned_only``: write only the tuned file (the base that the same arguments write is
    deterministic, so an existing one can be paired with a tuned file of another dtype).
    The files are complete and valid only when this returns; on any error they are removed.
    """
    import torch

    keys = sorted(shapes)
    torch_dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.float8_e4m3fn, "fp32": torch.float32}
    biggest = max(math.prod(s) for s in shapes.values())
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(biggest + 1_000_003, generator=g)  # ~230 MB at Flux/Qwen size
    t0 = time.perf_counter()
    written = 0
    files = []
    try:
        for path, dtype in ((base_path, base_dtype), (tuned_path, tuned_dtype)):
            if tuned_only and path == base_path:
                files.append(open(os.devnull, "wb"))  # closed with the others
                continue
            header, offset = {}, 0
            for key in keys:
                name, size = DTYPES[_dtype_of(shapes[key], dtype)]
                n = math.prod(shapes[key]) * size
                header[key] = {"dtype": name, "shape": list(shapes[key]), "data_offsets": [offset, offset + n]}
                offset += n
            header["__metadata__"] = {"generated_by": "lora-workbench scripts/make_dit_pair.py",
                                      "delta_rank": str(delta_rank), "delta": str(delta)}
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)  # the data buffer starts 8-byte aligned, as safetensors writes it
            f = open(path, "wb")  # both stay open while tensors stream in
            files.append(f)
            f.write(len(raw).to_bytes(8, "little") + raw)
        for i, key in enumerate(keys):
            shape = shapes[key]
            numel = math.prod(shape)
            h = zlib.crc32(key.encode())
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
            start = h % (pool.numel() - numel)
            base = pool[start:start + numel].reshape(shape) * (1.0 / math.sqrt(fan_in))
            tuned = base
            if len(shape) >= 2:
                m, n = shape[0], math.prod(shape[1:])
                k = min(delta_rank, m, n)
                gk = torch.Generator().manual_seed(seed * 1_000_003 + h)
                u, v = _orthonormal(m, k, gk), _orthonormal(n, k, gk)
                s = torch.tensor(delta_spectrum(k))
                # u and v have orthonormal columns, so ||d||_F = ||s||: scale s, not the product.
                s *= delta * float(torch.linalg.vector_norm(base)) / float(torch.linalg.vector_norm(s))
                tuned = torch.addmm(base.reshape(m, n), u * s, v.T).reshape(shape)
            for f, t, dtype in ((files[0], base, base_dtype), (files[1], tuned, tuned_dtype)):
                data = t.to(torch_dt[_dtype_of(shape, dtype)]).contiguous().view(torch.uint8).numpy()
                f.write(memoryview(data))
                written += data.nbytes
            if progress:
                progress(i + 1, len(keys), key)
        for f in files:
            f.flush()
            if f.name != os.devnull:
                os.fsync(f.fileno())
                # Written pages are clean now; dropping them keeps this run from filling the page cache.
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            f.close()
    except BaseException:
        for f in files:
            f.close()
        if not tuned_only:
            base_path.unlink(missing_ok=True)
        tuned_path.unlink(missing_ok=True)
        raise
    return {"bytes": written, "seconds": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family", choices=["flux", "qwen"])
    ap.add_argument("out_dir", help="folder for base.safetensors and tuned.safetensors")
    ap.add_argument("--blocks", type=int, help="reduced depth (default: the real model's)")
    ap.add_argument("--width", type=int, help="narrower hidden size, a multiple of 128 (default: the real one)")
    ap.add_argument("--base-dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--tuned-dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--delta-rank", type=int, default=64, help="components of every layer's delta (default 64)")
    ap.add_argument("--delta", type=float, default=0.05, help="||delta|| / ||W|| per layer (default 0.05)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tuned-only", action="store_true", help="write only tuned.safetensors (same base)")
    args = ap.parse_args()
    shapes = family_shapes(args.family, args.blocks, args.width)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = sum(math.prod(s) for s in shapes.values())
    print(f"{args.family}: {len(shapes)} tensors, {params / 1e9:.2f} B parameters -> {out}", flush=True)
    last = [0.0]

    def progress(done, total, key):
        if time.perf_counter() - last[0] > 30 or done == total:
            last[0] = time.perf_counter()
            print(f"  {done}/{total} {key}", flush=True)

    r = write_pair(shapes, out / "base.safetensors", out / "tuned.safetensors", args.base_dtype, args.tuned_dtype,
                   args.delta_rank, args.delta, args.seed, progress, args.tuned_only)
    print(f"wrote {r['bytes'] / 1e9:.1f} GB in {r['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
