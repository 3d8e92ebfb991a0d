"""Benchmark: 8 LoRAs with block specs through the pack vs 8 chained core LoraLoaders.

Runs each side in a fresh subprocess on the same generated full-size SD1.5 checkpoint and
the same 8 LoRA files (rank-16 kohya LoRAs on every attention and feed-forward linear of
the UNet and the text encoder, fp16, written once by this script), and measures:

* ``apply``: the nodes' own work, from file names to patched-model objects (read files,
  convert, match keys, group, add_patches): WorkbenchLoraStack + WorkbenchApplyLoraStack
  vs 8 chained ``LoraLoader`` nodes;
* ``patch``: ComfyUI computing the patched weights (``ModelPatcher.patch_model``), which
  every sampler run pays after either path;
* ``rerun``: ``apply`` again after changing one strength (ComfyUI re-executes the node);
* peak resident memory of the process during apply + patch, above the memory it had with
  the checkpoint loaded (sampled every 2 ms).

Prints a table and the ratios pack/core. Run with the host's Python after set-up:
``.host/env/venv/bin/python scripts/bench_stack.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, PeakRss, rss_mib, start_host

CHECKPOINT = REPO / ".host" / "models" / "workbench-sd15.safetensors"
SPECS = ["", "default=1, IN04-IN08=0.5", "OUT09-OUT11=0", "MIDD", "default=0.8, M00=1.2", "OUTALL",
         "IN*=0, TE=0.5", "default=1, OUT03-OUT05=0.7"]


def make_loras(lora_dir: Path) -> list[str]:
    """8 rank-16 kohya LoRAs for SD1.5 attention/FF linears and CLIP-L attention/MLP."""
    import comfy.lora
    import comfy.sd
    import torch
    from safetensors.torch import save_file

    model, clip, _ = comfy.sd.load_checkpoint_guess_config(str(CHECKPOINT), output_vae=False)[:3]
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    sd = {**model.model.state_dict(), **clip.patcher.model.state_dict()}
    targets = {k: v for k, v in key_map.items()
               if isinstance(v, str) and k.startswith(("lora_unet_", "lora_te_")) and v in sd and sd[v].ndim == 2
               and any(s in v for s in ("attn", "ff.net", "self_attn", "mlp"))}
    names = []
    for i in range(8):
        g = torch.Generator().manual_seed(100 + i)
        lora = {}
        for lora_key, weight_key in targets.items():
            out_f, in_f = sd[weight_key].shape
            lora[f"{lora_key}.lora_up.weight"] = (torch.randn(out_f, 16, generator=g) * 0.01).half()
            lora[f"{lora_key}.lora_down.weight"] = (torch.randn(16, in_f, generator=g) * 0.01).half()
            lora[f"{lora_key}.alpha"] = torch.tensor(8.0).half()
        name = f"bench_{i}.safetensors"
        save_file(lora, str(lora_dir / name))
        names.append(name)
    return names


def run_side(side: str, lora_dir: Path, names: list[str]) -> dict:
    start_host(lora_dir=lora_dir, load_pack=True)
    import comfy.sd
    import lora_workbench.nodes as pack
    import nodes as core_nodes

    model, clip = comfy.sd.load_checkpoint_guess_config(str(CHECKPOINT), output_vae=False)[:2]
    base_rss = rss_mib()

    if side == "core":
        loaders = [core_nodes.LoraLoader() for _ in names]

        def apply(strengths):
            m, c = model, clip
            for loader, name, s in zip(loaders, names, strengths, strict=True):
                m, c = loader.load_lora(m, c, name, s, 1.0)
            return m
    else:
        def apply(strengths):
            rows = [{"lora": n, "strength_model": s, "blocks": spec}
                    for n, s, spec in zip(names, strengths, SPECS, strict=True)]
            stack = pack.WorkbenchLoraStack.execute(json.dumps(rows)).args[0]
            return pack.WorkbenchApplyLoraStack.execute(model, stack, clip).args[0]

    strengths = [0.5] * len(names)
    with PeakRss(0.002) as peak:
        t0 = time.perf_counter()
        patched = apply(strengths)
        t_apply = time.perf_counter() - t0
        t0 = time.perf_counter()
        patched.patch_model()
        t_patch = time.perf_counter() - t0
        patched.unpatch_model()
    strengths[3] = 0.75
    t0 = time.perf_counter()
    apply(strengths)
    t_rerun = time.perf_counter() - t0
    return {"apply": t_apply, "patch": t_patch, "rerun": t_rerun, "peak_mb": peak.peak_mib - base_rss,
            "patched_weights": len(patched.patches)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=["core", "pack"], help=argparse.SUPPRESS)
    ap.add_argument("--lora-dir", help=argparse.SUPPRESS)
    ap.add_argument("--make-loras", help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=2, help="runs per side (best time is kept)")
    args = ap.parse_args()
    if args.make_loras:
        start_host(lora_dir=Path(args.make_loras), load_pack=True)
        make_loras(Path(args.make_loras))
        return 0
    if args.side:
        names = sorted(p.name for p in Path(args.lora_dir).glob("bench_*.safetensors"))
        print(json.dumps(run_side(args.side, Path(args.lora_dir), names)))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        lora_dir = Path(tmp)
        env = dict(os.environ)
        subprocess.run([sys.executable, __file__, "--make-loras", tmp], check=True, env=env, cwd=REPO,
                       capture_output=True)
        size = sum(p.stat().st_size for p in lora_dir.glob("*.safetensors")) / 2**20
        print(f"8 LoRAs, {size:.0f} MiB in all; checkpoint {CHECKPOINT.name}; best of {args.repeat} runs per side")
        results = {}
        for side in ("core", "pack"):
            runs = []
            for _ in range(args.repeat):
                out = subprocess.run([sys.executable, __file__, "--side", side, "--lora-dir", tmp], check=True,
                                     capture_output=True, text=True, env=env, cwd=REPO)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            results[side] = {k: min(r[k] for r in runs) for k in runs[0]}
        core, pack = results["core"], results["pack"]
        print(f"{'':<34}{'core LoraLoader x8':>20}{'Workbench stack':>18}{'pack/core':>11}")
        for key, label in (("apply", "apply, first run (s)"), ("patch", "patch weights (s)"),
                           ("rerun", "apply after a strength change (s)"), ("peak_mb", "peak RSS above model (MiB)")):
            print(f"{label:<34}{core[key]:>20.3f}{pack[key]:>18.3f}{pack[key] / max(core[key], 1e-9):>11.2f}")
        print(f"{'patched weights':<34}{core['patched_weights']:>20}{pack['patched_weights']:>18}")
        print(f"pack rerun / pack first apply: {pack['rerun'] / pack['apply']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
