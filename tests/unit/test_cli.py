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
    assert "  format: unknown" in lines and "  made for: unknown (no known model layout)" in lines
    assert "  network dim/alpha (metadata): 8/-" in lines
    assert lines[-1].startswith("INVALID") and "Git LFS pointer" in lines[-1]


def test_inspect_missing_file_and_usage(tmp_path):
    r = run_cli("inspect", str(tmp_path / "nope.safetensors"))
    assert r.returncode == 1 and "no such file. Check the path" in r.stdout and "Errno" not in r.stdout
    assert run_cli().returncode == 2


@pytest.mark.parametrize("flag", ["--dir", "--home"])
def test_fetch_folder_that_is_a_file_is_a_clear_error(tmp_path, flag):
    afile = tmp_path / "afile"
    afile.write_text("")
    args = ["--dir", str(tmp_path)] if flag == "--home" else []
    r = run_cli("fetch", flag, str(afile), *args, "https://models.example.org/x.safetensors")
    assert r.returncode == 1 and r.stderr.strip() == (f"error: {flag} {afile} is a file, not a folder; give a "
                                                      "folder (it is made if missing)")


@pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="../shared/fixtures/real is not present")
def test_inspect_real_fixture():
    r = run_cli("inspect", str(REAL_LORAS / "lycoris_lokr" / "smart_falcon_4_lokr.safetensors"))
    assert r.returncode == 0
    assert "647722 bytes, 1750 tensors, 201726 parameters (F16 x1750)" in r.stdout
    lines = r.stdout.splitlines()
    # SOURCES.md: kohya key names with LyCORIS LoKr suffixes, SD1.x (NAI animefull base),
    # network_dim 4, alpha 4; its SHA-256 as SOURCES.md lists it.
    assert "  format: kohya" in lines and "  adapter: LoKr; 350 modules" in lines
    assert "  made for: SD1.x (text context 768) (cross-attention reads a 768-wide text context)" in lines
    assert "  rank: 4; alpha: 4" in lines
    assert "  trainer: kohya sd-scripts (lycoris.kohya)" in lines
    assert "  base model name: animefull-final-pruned.safetensors" in lines
    assert any(line.startswith("  trigger words: smart falcon") for line in lines)
    assert ("  SHA256 86C94AD35CF53921F26C7888F018324753813189F5BAF504AFF03F31C5BBF734 AutoV2 86C94AD35C "
            "(647722 bytes)") in lines


@pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="../shared/fixtures/real is not present")
def test_inspect_truncated_file_is_invalid_and_still_described():
    path = REAL_LORAS / "edge_cases" / "Srikanth1408__Stable_Diffusion-Hackathon" / "pytorch_lora_weights.safetensors"
    r = run_cli("inspect", "--no-hash", str(path))
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[0].startswith("INVALID") and "truncated download" in lines[0]
    # SOURCES.md: an SDXL attention-processor LoRA, context 2048, rank 4.
    assert lines[1:4] == ["  format: diffusers (attention processors)", "  adapter: LoRA; 560 modules",
                          "  made for: SDXL (text context 2048) (cross-attention reads a 2048-wide text context)"]
    assert "  rank: 4; alpha: -" in lines


def test_hash_warns_that_a_truncated_safetensors_file_is_not_the_whole_model(tmp_path):
    whole = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(64, 64)}, str(whole))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:8000])
    r = run_cli("hash", str(cut), str(whole))
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"{cut}: size 8000 SHA256 ")
    assert lines[1].startswith("  WARNING: is ") and "a truncated download" in lines[1]
    assert lines[2].startswith(f"{whole}: ") and len(lines) == 3  # the whole file gets no warning
