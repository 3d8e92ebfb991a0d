"""``python -m lora_ops inspect``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from helpers.paths import REAL_LORAS, REPO


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "lora_ops", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_inspect_valid_and_invalid(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.zeros(2, 3, dtype=torch.float16)}, str(good), metadata={"ss_network_dim": "8"})
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    r = run_cli("inspect", str(good), str(bad))
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"{good}: ") and "1 tensors, 6 parameters (F16 x1)" in lines[0]
    assert "ss_network_dim = 8" in lines[1]
    assert lines[2].startswith("INVALID") and "Git LFS pointer" in lines[2]


def test_inspect_missing_file_and_usage(tmp_path):
    r = run_cli("inspect", str(tmp_path / "nope.safetensors"))
    assert r.returncode == 1 and "No such file" in r.stdout
    assert run_cli().returncode == 2


@pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="../shared/fixtures/real is not present")
def test_inspect_real_fixture():
    r = run_cli("inspect", str(REAL_LORAS / "lycoris_lokr" / "smart_falcon_4_lokr.safetensors"))
    assert r.returncode == 0
    assert "647722 bytes, 1750 tensors, 201726 parameters (F16 x1750)" in r.stdout
    assert "ss_network_module = lycoris.kohya" in r.stdout
