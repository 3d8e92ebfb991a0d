"""Benchmark: download throughput over loopback, LoRA Workbench's fetch against curl.

Both fetch the same file from the same local server (tests/helpers/fake_hub.py, playing Hugging
Face: a HEAD on the resolve URL, then a redirect to the storage host, which sends the file with
sendfile). Ours includes everything a user gets: resolution, SHA-256 while streaming, size and
safetensors-structure checks, fsync and the atomic rename. curl only writes the bytes
(``curl -sL -o``). Best of ``--repeat`` runs each, alternating, same page-cache state.

    .host/env/venv/bin/python scripts/bench_fetch.py [--size-gib 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from helpers.fake_hub import Hub  # noqa: E402
from lora_ops.fetching.fetch import Fetcher  # noqa: E402
from lora_ops.fetching.settings import FetchSettings  # noqa: E402


def make_safetensors(path: Path, size: int) -> None:
    """A valid safetensors file of ``size`` bytes: one U8 tensor of random bytes."""
    def header(n: int) -> bytes:
        return json.dumps({"blob": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()

    room = (len(header(size)) + 15) // 8 * 8  # enough for the digits, a multiple of 8
    n_data = size - 8 - room
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", room) + header(n_data).ljust(room))
        left = n_data
        while left:
            chunk = os.urandom(min(left, 1 << 24))
            f.write(chunk)
            left -= len(chunk)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("curl") is None:
        print("curl is not installed; it is the reference", file=sys.stderr)
        return 2
    size = int(args.size_gib * 2**30)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "bench_model.safetensors"
        make_safetensors(src, size)
        with Hub(token=None) as hub:
            hub.add_blob("m", src.name, path=str(src))
            hub.add_hf("bench/model", src.name, "m")
            hub.blobs["m"].sha256()  # the server's own hashing is not part of either timing
            url = f"{hub.hf_base}/bench/model/resolve/main/{src.name}"
            settings = FetchSettings(hf_endpoint=hub.hf_base, allow_loopback=True)
            times: dict[str, list[float]] = {"curl": [], "ours": []}
            for _ in range(args.repeat):
                out = tmp / "curl"
                out.mkdir(exist_ok=True)
                t = time.perf_counter()
                subprocess.run(["curl", "-sSfL", "-o", str(out / src.name), url], check=True)
                times["curl"].append(time.perf_counter() - t)
                shutil.rmtree(out)
                ours = tmp / "ours"
                ours.mkdir()
                t = time.perf_counter()
                result = Fetcher(settings, None, None).fetch(url, [str(ours)], "loras")
                times["ours"].append(time.perf_counter() - t)
                assert result.how == "download" and result.sha256 == hub.blobs["m"].sha256()
                shutil.rmtree(ours)
    best = {k: min(v) for k, v in times.items()}
    mib = size / 2**20
    print(f"download of {args.size_gib:g} GiB over loopback, best of {args.repeat} (this machine: "
          f"{os.cpu_count()} CPUs)")
    print(f"{'':28s}{'seconds':>10s}{'MiB/s':>10s}")
    print(f"{'curl -sL -o (bytes only)':28s}{best['curl']:10.2f}{mib / best['curl']:10.0f}")
    print(f"{'lora_ops fetch (verified)':28s}{best['ours']:10.2f}{mib / best['ours']:10.0f}")
    print(f"throughput ratio ours/curl: {best['curl'] / best['ours']:.2f} (target >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
