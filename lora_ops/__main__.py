"""Command line: ``python -m lora_ops inspect|hash FILE...``, ``python -m lora_ops extract`` and
``python -m lora_ops fetch SOURCE --dir FOLDER`` (see :mod:`lora_ops.fetching.fetch`; exit status 1 with one
line saying why when it cannot be fetched).

``hash`` prints SHA-256, AutoV1, AutoV2, AutoV3 and CRC32 as Civitai computes them
(:mod:`lora_ops.hashing`).

``extract BASE TUNED -o OUT (--rank R | --target-error E | --sv-fro T | --sv-ratio T |
--sv-cumulative T)`` extracts ``TUNED - BASE`` as a LoRA (see :mod:`lora_ops.extract`),
with a progress bar and the per-block summary table; exit status 1 with one line saying why
when the inputs cannot give a LoRA.

``inspect`` validates each file's safetensors structure (see
:func:`lora_ops.safetensors_io.read_header`), prints its size, tensor count, parameters and
dtypes, then what the file is (:mod:`lora_ops.identify`): key format, adapter kinds, the model
family it was made for, rank and alpha, the parts it touches, the training metadata, and its
SHA-256 and AutoV2 (``--no-hash`` leaves those out). A truncated file that still has its
header is described from it under its INVALID line. Exit status: 0 when every file is
valid, 1 when any is not (each invalid file gets one line saying why and what to do), 2 for
usage errors.
"""

from __future__ import annotations

import argparse
import os
import sys

from .extract_plan import OUTSIDE_BLOCKS
from .safetensors_io import SafetensorsError, read_header


def _describe_lines(path: str, with_hashes: bool) -> list[str]:
    from .identify import describe_file

    try:
        info = describe_file(path, with_hashes=with_hashes)
    except (ValueError, OSError):
        return []
    return [f"  {line}" for line in info.lines()]


def _inspect(paths: list[str], with_hashes: bool = True) -> int:
    status = 0
    for path in paths:
        if not os.path.lexists(path):
            print(f"INVALID {path}: no such file. Check the path (`ls` its folder), or give the file's full path")
            status = 1
            continue
        try:
            h = read_header(path)
        except (SafetensorsError, OSError) as e:
            print(f"INVALID {e}")
            status = 1
            if isinstance(e, SafetensorsError):  # a truncated download still has its header
                for line in _describe_lines(path, False):
                    print(line)
            continue
        dtypes = ", ".join(f"{k} x{v}" for k, v in sorted(h.dtype_counts().items()))
        print(f"{path}: {h.file_size} bytes, {len(h.tensors)} tensors, "
              f"{h.parameters} parameters ({dtypes}), {len(h.metadata)} metadata keys")
        for line in _describe_lines(path, with_hashes):
            print(line)
    return status


def _extract(args) -> int:
    from tqdm import tqdm

    from .extract import ExtractError, Options, extract_files, plan_files

    policy, value = next((name, v) for name, v in (
        ("rank", args.rank), ("target_error", args.target_error), ("sv_fro", args.sv_fro),
        ("sv_ratio", args.sv_ratio), ("sv_cumulative", args.sv_cumulative)) if v is not None)
    max_rank = args.max_rank if args.max_rank is not None else (int(value) if policy == "rank" else 128)
    opts = Options(policy=policy, value=value, max_rank=max_rank,
                   algorithm="exact" if args.exact else "randomized", oversample=args.oversample,
                   niter=args.niter, seed=args.seed, dtype=args.dtype, device=args.device,
                   text_encoders=not args.no_text_encoders, outside_blocks=args.outside_blocks)
    if os.path.exists(args.output) and not args.force:
        print(f"error: {args.output} exists; give another name or --force to replace it", file=sys.stderr)
        return 1
    try:
        opts.check()
        plan = plan_files(args.base, args.tuned, opts.text_encoders, opts.outside_blocks)
        print(plan.summary(max_rank, opts.oversample, opts.niter))
        if args.plan_only:
            return 0
        with tqdm(total=len(plan.layers) + len(plan.left_out), unit="layer", desc="extracting") as bar:
            def progress(done, total, name):
                bar.update(done - bar.n)

            result = extract_files(args.base, args.tuned, args.output, opts, progress)
    except (ExtractError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(result.report())
    print(f"written: {result.path}")
    return 0


def _hash(paths: list[str]) -> int:
    from tqdm import tqdm

    from .fetching.hash_index import model_files
    from .hashing import file_hashes
    from .safetensors_io import SafetensorsError, read_header, sniff_non_safetensors

    status = 0
    files: list[str] = []
    for path in paths:
        found = model_files([path]) if os.path.isdir(path) else [path]
        if not found:
            print(f"ERROR {path}: no model files in this folder")
            status = 1
        files += found
    sizes = [os.path.getsize(p) if os.path.isfile(p) else 0 for p in files]
    # The bar (stderr, bytes) shows only on a terminal; lines are written above it.
    with tqdm(total=sum(sizes), unit="B", unit_scale=True, unit_divisor=1024, leave=False, disable=None) as bar:
        for path, size in zip(files, sizes, strict=True):
            start = bar.n
            try:
                h = file_hashes(path, lambda done, _total, start=start: bar.update(start + done - bar.n))
            except OSError as e:
                tqdm.write(f"ERROR {path}: {e.strerror or e}", file=sys.stdout)
                status = 1
                continue
            finally:
                bar.update(start + size - bar.n)
            autov1 = h.autov1 or "- (file under 2 MiB)"
            autov3 = h.autov3 or "- (not a safetensors file)"
            lines = [f"{path}: size {h.size} SHA256 {h.sha256} AutoV1 {autov1} AutoV2 {h.autov2} "
                     f"AutoV3 {autov3} CRC32 {h.crc32}"]
            if path.lower().endswith((".safetensors", ".sft")):
                with open(path, "rb") as f:
                    odd = sniff_non_safetensors(path, f.read(72))
                if odd is None:  # a truncated or damaged file hashes fine: say it is not the whole model
                    try:
                        read_header(path)
                    except SafetensorsError as e:
                        odd = e
                if odd is not None:
                    lines.append(f"  WARNING: {odd.reason}: these are the hashes of that file, not of the "
                                 "model's weights")
            tqdm.write("\n".join(lines), file=sys.stdout)
    return status


def _fetch(args) -> int:
    from tqdm import tqdm

    from .fetching.fetch import Fetcher
    from .fetching.hash_index import HashIndex, HashIndexError
    from .fetching.http_client import FetchError
    from .fetching.netguard import UnsafeError
    from .fetching.settings import SettingsError, default_home, load_settings
    from .fetching.source_ref import SourceError
    from .safetensors_io import SafetensorsError

    home = args.home or default_home()
    for flag, folder in (("--home", home), ("--dir", args.dir)):
        if os.path.exists(folder) and not os.path.isdir(folder):
            print(f"error: {flag} {folder} is a file, not a folder; give a folder (it is made if missing)",
                  file=sys.stderr)
            return 1
    try:
        settings = load_settings(home)
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.allow_loopback:
        settings = settings.with_overrides(allow_loopback=True)
    os.makedirs(home, exist_ok=True)
    bars: list = []  # made on the first byte, so cached results and errors print no empty bar

    def progress(done: int, total: int | None) -> None:
        if not bars:
            bars.append(tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="fetch", disable=args.quiet,
                             leave=False, total=total))
        bar = bars[0]
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        index = HashIndex(os.path.join(home, "index.sqlite"))
        fetcher = Fetcher(settings, index, None if args.no_lock else os.path.join(home, "locks"), progress)
        result = fetcher.fetch(args.source, [os.path.abspath(args.dir)], os.path.basename(args.dir.rstrip("/")),
                               filename=args.filename, expected_sha256=args.sha256)
    except (SourceError, FetchError, UnsafeError, SafetensorsError, SettingsError, HashIndexError) as e:
        for bar in bars:
            bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    for bar in bars:
        bar.close()
    print(result.report())
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lora_ops", description="LoRA Workbench engine")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="validate LoRA files and say what they are: format, family, rank, "
                       "training metadata, hashes")
    p.add_argument("files", nargs="+", help="paths of .safetensors files")
    p.add_argument("--no-hash", action="store_true", help="leave out SHA-256 and AutoV2 (no full read)")
    h = sub.add_parser("hash", help="SHA-256, AutoV1, AutoV2, AutoV3 and CRC32 of files, as Civitai computes them")
    h.add_argument("files", nargs="+", help="model files, or folders to hash every model file in (recursively)")
    f = sub.add_parser("fetch", help="download a model file by URL, AIR, hf:// reference or hash, verified")
    f.add_argument("source", help="a file name already in --dir, an https URL, urn:air:..., civitai:<model>@<version>, "
                   "hf://org/repo/file, or a hash: sha256:, autov1:, autov2:, autov3:, crc32:")
    f.add_argument("--dir", required=True, help="the model folder to save into, e.g. ComfyUI/models/loras")
    f.add_argument("--filename", help="save under this name (default: the host's file name)")
    f.add_argument("--sha256", help="expected SHA-256; anything else is refused")
    f.add_argument("--home", help="folder with settings.json, the hash index and lock files "
                   "(default $LORA_WORKBENCH_HOME or ~/.local/share/lora-workbench)")
    f.add_argument("--allow-loopback", action="store_true", help="allow 127.0.0.1 and http:// there (mirrors)")
    f.add_argument("--no-lock", action="store_true", help="no cross-process lock (verification still guards)")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e = sub.add_parser("extract", help="extract a LoRA from two checkpoints (TUNED - BASE)")
    e.add_argument("base", help="the original checkpoint (.safetensors)")
    e.add_argument("tuned", help="the fine-tuned checkpoint (.safetensors)")
    e.add_argument("-o", "--output", required=True, help="the LoRA file to write (.safetensors)")
    e.add_argument("--force", action="store_true", help="replace the output file if it exists")
    how = e.add_mutually_exclusive_group(required=True)
    how.add_argument("--rank", type=int, help="fixed rank for every layer")
    how.add_argument("--target-error", type=float, help="smallest rank with relative Frobenius error <= E")
    how.add_argument("--sv-fro", type=float, help="kohya sv_fro: fraction of the Frobenius norm kept")
    how.add_argument("--sv-ratio", type=float, help="kohya sv_ratio: keep values above s_max / T")
    how.add_argument("--sv-cumulative", type=float, help="kohya sv_cumulative: fraction of the nuclear norm")
    e.add_argument("--max-rank", type=int, help="cap for every policy (default: --rank, else 128)")
    e.add_argument("--exact", action="store_true", help="exact economical SVD instead of randomized")
    e.add_argument("--niter", type=int, default=2, help="power iterations of the randomized SVD (default 2)")
    e.add_argument("--oversample", type=int, default=8, help="extra columns of the randomized SVD (default 8)")
    e.add_argument("--seed", type=int, default=0, help="seed, combined with each layer's name (default 0)")
    e.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16", help="dtype of the factors")
    e.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    e.add_argument("--no-text-encoders", action="store_true", help="leave the text encoders out")
    e.add_argument("--outside-blocks", choices=OUTSIDE_BLOCKS, default="auto",
                   help="layers outside the numbered blocks (embedders, output layers): auto omits them for Flux "
                        "(kohya's layout, which diffusers loads whole) and includes them for other families")
    e.add_argument("--plan-only", action="store_true", help="print the plan and stop")
    args = ap.parse_args(argv)
    if args.command == "inspect":
        return _inspect(args.files, not args.no_hash)
    if args.command == "fetch":
        return _fetch(args)
    if args.command == "hash":
        return _hash(args.files)
    return _extract(args)


if __name__ == "__main__":
    sys.exit(main())
