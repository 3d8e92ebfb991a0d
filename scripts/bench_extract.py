"""Benchmark: LoRA extraction, ComfyUI's own ModelSubtract + LoraSave vs WorkbenchExtractLora.

Both sides run in fresh subprocesses on the same pair: the generated full-size SD1.5
checkpoint and a "fine-tune" of it written once by this script (every UNet matrix and
kernel changed by a dense difference whose singular values decay like i^-0.7, as
fine-tune differences do; stored fp16). Measured per side, UNet only, at the same rank:

* wall time from the two files to the saved LoRA;
* peak resident memory above the idle process (sampled every 10 ms);
* relative Frobenius error on 24 sampled layers of every shape class, against the optimum
  (exact SVD) on the same layers; the median ratio error/optimum is printed.

Core's pipeline loads both models, patches the whole difference into memory and runs a full
SVD per layer (with its default 0.99 quantile clamp); ours streams layer by layer with a
randomized SVD. Run after set-up: ``.host/env/venv/bin/python scripts/bench_extract.py
[--rank 32]`` (core's side takes about 15 minutes on a 2-core machine).

``--pair DIR`` measures a DiT pair instead (``base.safetensors`` and ``tuned.safetensors``, as
``scripts/make_dit_pair.py`` writes them), in one run:

* the I/O floor: both files read once, sequentially, from a cold page cache;
* the compute floor: the randomized factorisation's matrix products alone (``A @ Omega``,
  the power iterations, ``Q^T A``) on every layer shape of the plan, timed per shape;
* ours through the CLI (``python -m lora_ops extract``) and through the node
  (``WorkbenchExtractLora`` in an in-process host), each in a fresh subprocess from a cold
  cache: wall time, peak RSS above idle (sampled every 10 ms), and ours / max(floors);
* reported against measured error on a sample of layers (float64, from the written file).

``--core`` adds core's ModelSubtract + LoraSave on the same pair (meant for a reduced-depth
pair: ``make_dit_pair.py flux DIR --blocks 1``), beside ours, and prints core's memory need
at full size (its peak scaled by the parameter count).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, PeakRss, start_host

BASE = REPO / ".host" / "models" / "workbench-sd15.safetensors"


def make_tuned(path: Path) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = {}
    with safe_open(str(BASE), "pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            if key.startswith("model.diffusion_model.") and t.ndim >= 2 and key.endswith(".weight"):
                m, n = t.shape[0], t[0].numel()
                k = min(m, n)
                g = torch.Generator().manual_seed(len(key))
                a = torch.randn(m, k, generator=g) * torch.arange(1, k + 1) ** -0.7
                d = (a @ torch.randn(k, n, generator=g)) / math.sqrt(n)
                d *= 0.05 * float(t.float().norm()) / float(d.norm())
                t = (t.float() + d.reshape(t.shape)).half()
            out[key] = t
    save_file(out, str(path))


def sample_keys() -> list[str]:
    """24 UNet weights covering every shape class, the same for both sides."""
    from safetensors import safe_open

    by_shape: dict[tuple, list[str]] = {}
    with safe_open(str(BASE), "pt") as f:
        for key in f.keys():
            if key.startswith("model.diffusion_model.") and key.endswith(".weight"):
                shape = tuple(f.get_slice(key).get_shape())
                if len(shape) >= 2:
                    by_shape.setdefault(shape, []).append(key)
    keys = [v[len(v) // 2] for _, v in sorted(by_shape.items())]
    step = max(1, len(keys) // 24)
    return keys[::step][:24]


def errors(lora_path: str, tuned: str, keys: list[str], name_of) -> list[float]:
    import torch
    from safetensors import safe_open

    out = []
    with safe_open(str(BASE), "pt") as fb, safe_open(tuned, "pt") as ft, safe_open(lora_path, "pt") as fl:
        names = set(fl.keys())
        for key in keys:
            d = (ft.get_tensor(key).float() - fb.get_tensor(key).float()).flatten(1)
            up_k, down_k = name_of(key) + ".lora_up.weight", name_of(key) + ".lora_down.weight"
            if name_of(key) + ".diff" in names:  # stored whole where factors would be larger
                full = fl.get_tensor(name_of(key) + ".diff").float().flatten(1)
                out.append(float(torch.linalg.norm(full - d) / torch.linalg.norm(d)))
                continue
            if up_k not in names:
                out.append(1.0)  # not extracted at all: the whole difference is missing
                continue
            recon = fl.get_tensor(up_k).float().flatten(1) @ fl.get_tensor(down_k).float().flatten(1)
            alpha_k = name_of(key) + ".alpha"
            if alpha_k in names:
                recon *= float(fl.get_tensor(alpha_k)) / fl.get_tensor(down_k).shape[0]
            out.append(float(torch.linalg.norm(recon - d) / torch.linalg.norm(d)))
    return out


def optimum(tuned: str, keys: list[str], rank: int) -> list[float]:
    import torch
    from safetensors import safe_open

    out = []
    with safe_open(str(BASE), "pt") as fb, safe_open(tuned, "pt") as ft:
        for key in keys:
            d = (ft.get_tensor(key).float() - fb.get_tensor(key).float()).flatten(1)
            s = torch.linalg.svdvals(d).double()
            out.append(math.sqrt(float((s[rank:] ** 2).sum() / (s**2).sum())))
    return out


def run_core(tmp: Path, tuned: str, rank: int) -> dict:
    start_host(base_dir=tmp / "core")
    import folder_paths
    import nodes as core_nodes
    from comfy_extras.nodes_lora_extract import LoraSave
    from comfy_extras.nodes_model_merging import ModelSubtract

    (tmp / "core" / "models" / "checkpoints" / "base.safetensors").symlink_to(BASE)
    (tmp / "core" / "models" / "checkpoints" / "tuned.safetensors").symlink_to(tuned)
    with PeakRss(0.01) as peak:
        t0 = time.perf_counter()
        loader = core_nodes.CheckpointLoaderSimple()
        base_m = loader.load_checkpoint("base.safetensors")[0]
        tuned_m = loader.load_checkpoint("tuned.safetensors")[0]
        diff = ModelSubtract().merge(tuned_m, base_m, 1.0)[0]
        LoraSave.execute("core/lora", rank, "standard", False, model_diff=diff)
        seconds = time.perf_counter() - t0
    path = next(Path(folder_paths.get_output_directory()).glob("core/lora_*.safetensors"))
    return {"seconds": seconds, "peak_mib": peak.above_mib, "path": str(path)}


def run_pack(tmp: Path, tuned: str, rank: int) -> dict:
    sys.path.insert(0, str(REPO))
    from lora_ops.extract import Options, extract_files

    path = tmp / "pack.safetensors"
    with PeakRss(0.01) as peak:
        t0 = time.perf_counter()
        result = extract_files(str(BASE), tuned, str(path), Options(value=rank, max_rank=rank, text_encoders=False))
        seconds = time.perf_counter() - t0
    skipped = sum(1 for s in result.layers if s.rank == 0)
    return {"seconds": seconds, "peak_mib": peak.above_mib, "path": str(path), "layers": len(result.layers),
            "unchanged": skipped}


# ---- DiT pairs: floors, ours via CLI and node, core side by side ----------------------------


def drop_cache(path: str) -> None:
    """Evict a file's clean pages from the page cache (no root needed), for a cold read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def io_floor(paths: list[str]) -> tuple[float, int]:
    """Seconds to read the files once, one after the other, sequentially, from a cold cache:
    the faster of a plain read and one that drops each 16 MiB from the page cache once read
    (cheaper in the kernel when the files outgrow the memory, as extraction reads them)."""
    best, total = math.inf, 0
    for stream in (False, True):
        for p in paths:
            drop_cache(p)
        buf = bytearray(16 * 2**20)
        total = 0
        t0 = time.perf_counter()
        for p in paths:
            with open(p, "rb", buffering=0) as f:
                offset = 0
                while n := f.readinto(buf):
                    if stream:
                        os.posix_fadvise(f.fileno(), offset, n, os.POSIX_FADV_DONTNEED)
                    offset += n
                total += offset
        best = min(best, time.perf_counter() - t0)
    for p in paths:
        drop_cache(p)
    return best, total


def compute_floor(shapes: list[tuple[int, int]], rank: int, oversample: int = 8, niter: int = 2) -> float:
    """Seconds of the randomized factorisation's matrix products alone, summed over ``shapes``
    (one (rows, columns) per layer): per distinct shape the best of two timings, times its count."""
    from collections import Counter

    import torch

    total = 0.0
    for (m, n), count in Counter(shapes).items():
        if m < n:
            m, n = n, m  # the tall orientation, as lora_ops.svd works
        cols = min(rank + oversample, n)
        a = torch.empty(m, n).uniform_(-1, 1)
        omega = torch.empty(n, cols).uniform_(-1, 1)
        best = math.inf
        for _ in range(2):
            t0 = time.perf_counter()
            y = a @ omega
            for _ in range(niter):
                y = a @ (a.T @ y)
            _ = y.T @ a
            best = min(best, time.perf_counter() - t0)
        total += best * count
        del a, omega, y
    return total


class ChildRss:
    """Peak resident memory of a child process, sampled every 10 ms from this one; ``idle``
    is recorded by :meth:`mark_idle` (the child has imported everything and planned)."""

    def __init__(self, pid: int):
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = self.idle = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.wait(0.01):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def mark_idle(self):
        self.idle = self.proc.memory_info().rss

    def stop(self):
        self._stop.set()
        self._thread.join()


def run_cli(base: str, tuned: str, out: str, rank: int) -> dict:
    """Ours through ``python -m lora_ops extract`` in a fresh process (cold cache)."""
    for p in (base, tuned):
        drop_cache(p)
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "lora_ops", "extract", base, tuned, "-o", out, "--rank",
                              str(rank), "--force", "--device", "cpu"], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    rss = ChildRss(child.pid)
    lines = []
    for line in child.stdout:
        lines.append(line.rstrip())
        if line.startswith("model family:"):
            rss.mark_idle()  # imports done, plan made: extraction starts now
    child.wait()
    wall = time.perf_counter() - t0
    rss.stop()
    if child.returncode:
        raise SystemExit("CLI extraction failed:\n" + "\n".join(lines[-20:]))
    report = next(line for line in lines if "layers extracted" in line)
    seconds = float(report.rsplit(";", 1)[1].split()[0])
    return {"wall": wall, "seconds": seconds, "peak_mib": rss.peak / 2**20,
            "above_mib": (rss.peak - rss.idle) / 2**20, "report": "\n".join(lines)}


def run_node_side(pair: Path, tmp: Path, rank: int) -> dict:
    """In the child: WorkbenchExtractLora inside the in-process host, on the pair."""
    start_host(base_dir=tmp / "node", load_pack=True)
    import folder_paths
    from lora_workbench.nodes.extract import WorkbenchExtractLora

    models = tmp / "node" / "models" / "diffusion_models"
    models.mkdir(parents=True, exist_ok=True)
    for side in ("base", "tuned"):
        link = models / f"pair-{side}.safetensors"
        link.unlink(missing_ok=True)
        link.symlink_to(pair / f"{side}.safetensors")
        drop_cache(str(pair / f"{side}.safetensors"))
    with PeakRss(0.01) as peak:
        t0 = time.perf_counter()
        name, report, _ = WorkbenchExtractLora.execute("pair-base.safetensors", "pair-tuned.safetensors", rank,
                                                       "bench/node").args
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_mib": peak.peak_mib, "above_mib": peak.above_mib,
            "path": folder_paths.get_full_path("loras", name), "report": report}


def run_core_dit_side(pair: Path, tmp: Path, rank: int) -> dict:
    """In the child: core's UNETLoader x2 + ModelSubtract + LoraSave on the pair."""
    start_host(base_dir=tmp / "core")
    import comfy.sd
    import folder_paths
    from comfy_extras.nodes_lora_extract import LoraSave
    from comfy_extras.nodes_model_merging import ModelSubtract

    for side in ("base", "tuned"):
        drop_cache(str(pair / f"{side}.safetensors"))
    with PeakRss(0.01) as peak:
        t0 = time.perf_counter()
        base_m = comfy.sd.load_diffusion_model(str(pair / "base.safetensors"))
        tuned_m = comfy.sd.load_diffusion_model(str(pair / "tuned.safetensors"))
        diff = ModelSubtract().merge(tuned_m, base_m, 1.0)[0]
        LoraSave.execute("core/lora", rank, "standard", False, model_diff=diff)
        seconds = time.perf_counter() - t0
    path = next(Path(folder_paths.get_output_directory()).glob("core/lora_*.safetensors"))
    return {"seconds": seconds, "peak_mib": peak.peak_mib, "above_mib": peak.above_mib, "path": str(path)}


def sample_errors(base: str, tuned: str, lora: str, count: int) -> list[tuple[str, float, float]]:
    """(layer, reported, measured) for ``count`` layers of distinct shapes: measured from the
    files in float64 sums (row chunks), reported from the LoRA's metadata."""
    from safetensors import safe_open

    sys.path.insert(0, str(REPO))
    from lora_ops.extract import plan_files

    plan = plan_files(base, tuned)
    by_shape: dict = {}
    for layer in plan.layers:
        by_shape.setdefault(layer.matrix_shape, layer)
    picked = sorted(by_shape.values(), key=lambda layer: -layer.matrix_shape[0] * layer.matrix_shape[1])[:count]
    out = []
    with safe_open(base, "pt") as fb, safe_open(tuned, "pt") as ft, safe_open(lora, "pt") as fl:
        reported = json.loads(fl.metadata()["workbench.layers"])
        for layer in picked:
            d = (ft.get_tensor(layer.tuned_key).float() - fb.get_tensor(layer.base_key).float()).flatten(1)
            up = fl.get_tensor(f"{layer.name}.lora_up.weight").float().flatten(1)
            down = fl.get_tensor(f"{layer.name}.lora_down.weight").float().flatten(1)
            down *= float(fl.get_tensor(f"{layer.name}.alpha")) / down.shape[0]
            res = energy = 0.0
            for i in range(0, d.shape[0], 256):
                rows = d[i:i + 256].double()
                res += float((rows - (up[i:i + 256].double() @ down.double())).square().sum())
                energy += float(rows.square().sum())
            out.append((layer.name, reported[layer.name][1], math.sqrt(res / energy)))
            del d
    return out


def bench_pair(args) -> int:
    sys.path.insert(0, str(REPO))
    from lora_ops.extract import plan_files

    pair = Path(args.pair)
    base, tuned = str(pair / "base.safetensors"), str(pair / "tuned.safetensors")
    plan = plan_files(base, tuned)
    params = sum(math.prod(layer.shape) for layer in plan.layers)
    size = os.path.getsize(base) + os.path.getsize(tuned)
    print(f"pair {pair}: {plan.family}, {len(plan.layers)} layers, {params / 1e9:.2f} B parameters in them, "
          f"{size / 1e9:.1f} GB on disk; rank {args.rank}, CPU, {os.cpu_count()} cores", flush=True)
    io_s, nbytes = io_floor([base, tuned])
    print(f"I/O floor: {io_s:.1f} s ({nbytes / io_s / 1e9:.2f} GB/s)", flush=True)
    comp_s = compute_floor([layer.matrix_shape for layer in plan.layers], args.rank)
    print(f"compute floor (matrix products alone): {comp_s:.1f} s "
          f"({plan.flops(args.rank, 8, 2) / comp_s / 1e9:.0f} GFLOP/s)", flush=True)
    floor = max(io_s, comp_s)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as d:
        tmp = Path(d)
        if args.via in ("cli", "both"):
            r = run_cli(base, tuned, str(tmp / "cli.safetensors"), args.rank)
            print(r["report"] if args.verbose else next(line for line in r["report"].splitlines()
                                                          if "layers extracted" in line), flush=True)
            rows.append(("CLI", r))
            errs = sample_errors(base, tuned, str(tmp / "cli.safetensors"), args.check_layers)
            print("reported vs measured error (float64, from the file):")
            for name, rep, meas in errs:
                print(f"  {name:<55} {rep:.5f} {meas:.5f}  ({(rep / meas - 1) * 100:+.2f} %)")
        if args.via in ("node", "both"):
            # Twice in the same ComfyUI folder: the first run hashes both inputs (SHA-256 from its
            # reads) and records them in the pack's hash index, the second takes them from there.
            for label in ("node", "node, SHA-256 known"):
                out = subprocess.run([sys.executable, __file__, "--side", "node", "--pair", str(pair), "--tmp", d,
                                      "--rank", str(args.rank)], capture_output=True, text=True, cwd=REPO)
                if out.returncode:
                    print(out.stderr[-3000:])
                    return 1
                rows.append((label, json.loads(out.stdout.strip().splitlines()[-1])))
        if args.core:
            out = subprocess.run([sys.executable, __file__, "--side", "core-dit", "--pair", str(pair), "--tmp", d,
                                  "--rank", str(args.rank)], capture_output=True, text=True, cwd=REPO)
            if out.returncode:
                print("core failed:", out.stderr[-3000:])
            else:
                rows.append(("core ModelSubtract+LoraSave", json.loads(out.stdout.strip().splitlines()[-1])))
    print(f"\n{'':<30}{'time (s)':>10}{'peak above idle (MiB)':>23}{'/ I/O floor':>13}{'/ compute floor':>17}"
          f"{'/ max(floors)':>15}")
    for label, r in rows:
        print(f"{label:<30}{r['seconds']:>10.1f}{r['above_mib']:>23.0f}{r['seconds'] / io_s:>13.2f}"
              f"{r['seconds'] / comp_s:>17.2f}{r['seconds'] / floor:>15.2f}")
    if args.core and args.full_params:
        core = next((r for label, r in rows if label.startswith("core")), None)
        if core:
            print(f"core's memory need at full size ({args.full_params / 1e9:.1f} B parameters): about "
                  f"{core['above_mib'] / 1024 * args.full_params / params:.0f} GiB above idle (its peak here scaled "
                  "by the parameter count: it holds both models and the patched difference)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--side", choices=["core", "pack", "node", "core-dit"], help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--skip-core", action="store_true", help="measure only the pack")
    ap.add_argument("--pair", help="a folder with base.safetensors and tuned.safetensors (a DiT pair): floors, "
                    "ours via CLI and node")
    ap.add_argument("--via", choices=["cli", "node", "both"], default="both", help="with --pair: which front end")
    ap.add_argument("--core", action="store_true", help="with --pair: also core's ModelSubtract + LoraSave")
    ap.add_argument("--full-params", type=float, help="with --core: the full model's parameter count, to "
                    "print core's memory need at full size")
    ap.add_argument("--check-layers", type=int, default=6, help="with --pair: layers whose error is measured")
    ap.add_argument("--tmp-dir", help="with --pair: where the LoRAs go (default: the system's temp folder)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if args.side in ("node", "core-dit"):
        run = run_node_side if args.side == "node" else run_core_dit_side
        print(json.dumps(run(Path(args.pair), Path(args.tmp), args.rank)))
        return 0
    if args.pair:
        return bench_pair(args)
    if args.side:
        tmp = Path(args.tmp)
        run = run_core if args.side == "core" else run_pack
        print(json.dumps(run(tmp, str(tmp / "tuned.safetensors"), args.rank)))
        return 0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        make_tuned(tmp / "tuned.safetensors")
        print(f"fine-tune pair written in {time.perf_counter() - t0:.0f} s; rank {args.rank}, UNet only", flush=True)
        results = {}
        for side in (["pack"] if args.skip_core else ["pack", "core"]):
            out = subprocess.run([sys.executable, __file__, "--side", side, "--tmp", d, "--rank", str(args.rank)],
                                 capture_output=True, text=True, cwd=REPO)
            if out.returncode:
                print(out.stderr[-3000:])
                return 1
            results[side] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{side}: {results[side]['seconds']:.1f} s", flush=True)
        start_host(base_dir=tmp / "measure")
        keys = sample_keys()
        best = optimum(str(tmp / "tuned.safetensors"), keys, args.rank)

        sys.path.insert(0, str(REPO))
        from lora_ops.extract_plan import unet_module_name

        def kohya(key):  # the pack's SD1.x names (kohya's: diffusers block names)
            return unet_module_name("sd1", key[len("model.diffusion_model."):])

        def comfy_name(key):
            return key[len("model."):-len(".weight")]

        print(f"{'':<26}{'core LoraSave':>16}{'Workbench':>12}{'ratio':>9}")
        rows = {}
        for side, name_of in (("core", comfy_name), ("pack", kohya)):
            if side in results:
                errs = errors(results[side]["path"], str(tmp / "tuned.safetensors"), keys, name_of)
                # layers a rank-r factorisation holds exactly (optimum 0) have no ratio
                ratios = sorted(e / o for e, o in zip(errs, best, strict=True) if o > 1e-6)
                rows[side] = (results[side]["seconds"], results[side]["peak_mib"], ratios[len(ratios) // 2],
                              sum(1 for e in errs if e >= 1.0))
        labels = ("time (s)", "peak RSS above idle (MiB)", "median error / optimum", "sampled layers missing")
        for i, label in enumerate(labels):
            core = rows.get("core", (math.nan,) * 4)[i]
            pack = rows["pack"][i]
            ratio = pack / core if core and not math.isnan(core) else math.nan
            print(f"{label:<26}{core:>16.3f}{pack:>12.3f}{ratio:>9.3f}")
        print(f"pack: {results['pack']['layers']} layers, {results['pack']['unchanged']} unchanged")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
