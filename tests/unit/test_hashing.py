"""Hashes as Civitai computes them, against the test vectors of ../shared/research/download.md."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zlib

from helpers.paths import REPO
from lora_ops.hashing import file_hashes

MINIMAL = (bytes.fromhex("6000000000000000")
           + b'{"__metadata__":{"ss_output_name":"t"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
           + b"    " + bytes.fromhex("0000803f00000040"))


def test_hello_world_vector(tmp_path):
    p = tmp_path / "hello.bin"
    p.write_bytes(b"hello world")
    h = file_hashes(p)
    assert h.sha256 == "B94D27B9934D3E08A52E52D7DA7DABFAC484EFE37A5380EE9088F7ACE2EFCDE9"
    assert (h.autov1, h.autov2, h.crc32, h.size) == (None, "B94D27B993", "85114A0D", 11)


def test_minimal_safetensors_vector(tmp_path):
    p = tmp_path / "t.safetensors"
    p.write_bytes(MINIMAL)
    assert len(MINIMAL) == 112
    h = file_hashes(p)
    assert h.sha256 == "4f370090e180a7ab1c22f29bf07b849dc8cdaf346d66e2d1209186f188c0acd1".upper()
    assert (h.autov2, h.autov3, h.crc32) == ("4F370090E1", "B9C80B5ADECA", "EFC17050")
    assert zlib.crc32(MINIMAL) == 0x5070C1EF  # the conventional order, byte-reversed above


def test_autov1_and_chunk_boundaries_on_a_large_file(tmp_path):
    data = bytes(range(256)) * (3 * 2**20 // 256 + 7)  # just over 3 MiB, not a multiple of the read size
    p = tmp_path / "big.bin"
    p.write_bytes(data)
    h = file_hashes(p, progress=lambda done, total: None)
    assert h.sha256 == hashlib.sha256(data).hexdigest().upper()
    assert h.autov1 == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8].upper()
    assert h.crc32 == zlib.crc32(data).to_bytes(4, "little").hex().upper()


def test_cli_hash(tmp_path):
    p = tmp_path / "hello.bin"
    p.write_bytes(b"hello world")
    r = subprocess.run([sys.executable, "-m", "lora_ops", "hash", str(p), str(tmp_path / "missing")], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "AutoV2 B94D27B993" in r.stdout and "CRC32 85114A0D" in r.stdout and "ERROR" in r.stdout
