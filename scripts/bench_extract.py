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
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--side", choices=["core", "pack"], help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--skip-core", action="store_true", help="measure only the pack")
    args = ap.parse_args()
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
