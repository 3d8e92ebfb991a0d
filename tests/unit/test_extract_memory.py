"""Extraction memory does not grow with the model: twice the depth, at most 1.1x the peak.

Two Flux-architecture pairs (the host's own key layout, built on the meta device by
``scripts/make_dit_pair.py``; a narrower width so the test is fast) that differ only in depth:
4 and 8 double + single blocks. From 4 on, the batches of same-shape layers are as large as
they get, so growth beyond that is memory that follows the model. Each extraction runs in a
fresh process; its peak resident memory (the kernel's high-water mark, exact, unlike
sampling) above the process's idle memory must not grow by more than 10 % when the model
doubles. A reader that kept tensors, or a writer that held the LoRA in memory, would grow
with the layer count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors import safe_open

from helpers.paths import REPO

MEASURE = r"""
import json, sys
sys.path[:0] = [sys.argv[1]]
import psutil
from lora_ops.extract import Options, extract_files

def high_water_mark():
    # VmHWM belongs to this process's address space, so it starts afresh at exec; ru_maxrss
    # does not (Linux carries the parent's peak over), which would report the test runner's.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

base, tuned, out = sys.argv[2:5]
idle = psutil.Process().memory_info().rss
result = extract_files(base, tuned, out, Options(value=8, max_rank=8, dtype="bf16"))
print(json.dumps({"above": high_water_mark() - idle, "layers": len(result.layers)}))
"""


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    out = {}
    for blocks in (4, 8):
        d = tmp_path_factory.mktemp(f"flux{blocks}")
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_dit_pair.py"), "flux", str(d), "--blocks",
                        str(blocks), "--width", "512"], check=True, capture_output=True, cwd=REPO, timeout=600)
        out[blocks] = d
    return out


def measure(pair, out) -> dict:
    # One malloc arena: which thread's arena a buffer lands in otherwise moves the high-water
    # mark by up to ~15 % from run to run at this size, noise that says nothing of the extractor.
    r = subprocess.run([sys.executable, "-c", MEASURE, str(REPO), str(pair / "base.safetensors"),
                        str(pair / "tuned.safetensors"), str(out)], capture_output=True, text=True, cwd=REPO,
                       timeout=600, env={**os.environ, "MALLOC_ARENA_MAX": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_twice_the_depth_needs_at_most_1_1x_the_peak_memory(pairs, tmp_path):
    # Which thread's allocator arena a buffer lands in depends on timing, which moves the
    # high-water mark by up to ~15 % from run to run at this small size; that only ever adds,
    # so each depth keeps the lower of two runs.
    small = min((measure(pairs[4], tmp_path / "small.safetensors") for _ in range(2)), key=lambda r: r["above"])
    large = min((measure(pairs[8], tmp_path / "large.safetensors") for _ in range(2)), key=lambda r: r["above"])
    print(f"peak above idle: {small['above'] / 2**20:.0f} MiB at depth 4, {large['above'] / 2**20:.0f} MiB at 8")
    assert large["layers"] > 1.7 * small["layers"]  # 10 input/output layers do not double
    with safe_open(str(tmp_path / "large.safetensors"), "pt") as f:
        assert len([k for k in f.keys() if k.endswith(".lora_up.weight")]) == large["layers"]
    # a layer of this width is ~7 MB in float32: the peak is a few layers, not the model
    assert 0 < small["above"] < 600 * 2**20, small
    assert large["above"] <= 1.1 * small["above"], (small, large)
