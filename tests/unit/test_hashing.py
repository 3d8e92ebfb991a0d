"""Hashes as Civitai computes them, against the test vectors of ../shared/research/download.md
and a plain one-buffer implementation of the definitions."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import struct
import subprocess
import sys
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.paths import REPO
from lora_ops import hashing
from lora_ops.hashing import Hashes, StreamHasher, file_hashes, sha256_file

MINIMAL = (bytes.fromhex("6000000000000000")
           + b'{"__metadata__":{"ss_output_name":"t"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
           + b"    " + bytes.fromhex("0000803f00000040"))
MiB = 2**20
_RANDOM = random.Random(7).randbytes(2 * MiB + 300_000)


def reference(data: bytes) -> Hashes:
    """The definitions of lora_ops.hashing, computed on the whole buffer at once."""
    sha = hashlib.sha256(data).hexdigest().upper()
    autov3 = None
    if len(data) >= 9 and data[8:9] == b"{":
        n = struct.unpack("<Q", data[:8])[0]
        if 8 + n <= len(data):
            autov3 = hashlib.sha256(data[8 if n >= 16 * MiB else 8 + n:]).hexdigest()[:12].upper()
    autov1 = hashlib.sha256(data[MiB:MiB + 65536]).hexdigest()[:8].upper() if len(data) >= 2 * MiB else None
    return Hashes(len(data), sha, autov1, sha[:10], autov3, zlib.crc32(data).to_bytes(4, "little").hex().upper())


def safetensors_like(header_len: int, body: bytes) -> bytes:
    """8-byte header length, a header of that length starting with "{", then ``body``."""
    return struct.pack("<Q", header_len) + b"{" + b" " * (header_len - 1) + body


def test_hello_world_vector(tmp_path):
    p = tmp_path / "hello.bin"
    p.write_bytes(b"hello world")
    h = file_hashes(p)
    assert h.sha256 == "B94D27B9934D3E08A52E52D7DA7DABFAC484EFE37A5380EE9088F7ACE2EFCDE9"
    assert (h.autov1, h.autov2, h.crc32, h.size) == (None, "B94D27B993", "85114A0D", 11)
    assert h.autov3 is None  # not a safetensors file
    assert sha256_file(p) == "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"


def test_minimal_safetensors_vector(tmp_path):
    p = tmp_path / "t.safetensors"
    p.write_bytes(MINIMAL)
    assert len(MINIMAL) == 112
    h = file_hashes(p)
    assert h.sha256 == "4f370090e180a7ab1c22f29bf07b849dc8cdaf346d66e2d1209186f188c0acd1".upper()
    assert (h.autov2, h.autov3, h.crc32) == ("4F370090E1", "B9C80B5ADECA", "EFC17050")
    assert zlib.crc32(MINIMAL) == 0x5070C1EF  # the conventional order, byte-reversed above
    s = StreamHasher(all_kinds=True)
    for i in range(len(MINIMAL)):  # a byte at a time: the header length arrives in pieces
        s.update(MINIMAL[i:i + 1])
    assert s.hashes() == h and s.hexdigest() == h.sha256.lower() and s.length == 112


def test_autov1_and_chunk_boundaries_on_a_large_file(tmp_path):
    data = bytes(range(256)) * (3 * 2**20 // 256 + 7)  # just over 3 MiB, not a multiple of the read size
    p = tmp_path / "big.bin"
    p.write_bytes(data)
    h = file_hashes(p, progress=lambda done, total: None)
    assert h.sha256 == hashlib.sha256(data).hexdigest().upper()
    assert h.autov1 == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8].upper()
    assert h.crc32 == zlib.crc32(data).to_bytes(4, "little").hex().upper()


def test_files_over_several_reads_match_the_definitions(tmp_path):
    # Over hashing.CHUNK, so the reader and worker threads share the work.
    body = random.Random(1).randbytes(11 * MiB + 12345)
    for name, data in (("model.safetensors", safetensors_like(4000, body)), ("model.ckpt", b"PK\x03\x04" + body)):
        p = tmp_path / name
        p.write_bytes(data)
        seen: list[tuple[int, int]] = []
        h = file_hashes(p, progress=lambda *args: seen.append(args))  # noqa: B023 (used before the loop moves on)
        assert h == reference(data)
        assert sha256_file(p) == h.sha256.lower()
        assert seen[-1] == (len(data), len(data))
        steps = [b - a for a, b in itertools.pairwise([0] + [done for done, _ in seen])]
        assert max(steps) <= 8 * MiB and min(steps) > 0
    assert file_hashes(tmp_path / "model.ckpt").autov3 is None


def test_autov3_edge_cases(tmp_path):
    p = tmp_path / "f.safetensors"
    cases = {
        "header beyond the end": struct.pack("<Q", 500) + b"{" + b" " * 100,
        "byte 8 not {": struct.pack("<Q", 4) + b"[1, " + b"data",
        "shorter than 9 bytes": b"\x01\x00\x00\x00\x00\x00\x00\x00",
        "empty": b"",
    }
    for what, data in cases.items():
        p.write_bytes(data)
        assert file_hashes(p).autov3 is None, what
        assert file_hashes(p) == reference(data), what
    # A header of no tensors: AutoV3 is the hash of nothing after it, as the scanner computes it.
    p.write_bytes(safetensors_like(8, b""))
    assert file_hashes(p).autov3 == hashlib.sha256(b"").hexdigest()[:12].upper()
    # N >= 16 MiB: the scanner hashes from offset 8 (header included).
    data = safetensors_like(16 * MiB, b"tensor bytes")
    p.write_bytes(data)
    assert file_hashes(p).autov3 == hashlib.sha256(data[8:]).hexdigest()[:12].upper() == reference(data).autov3


class Stop(Exception):
    pass


def test_progress_may_stop_hashing(tmp_path):
    p = tmp_path / "big.bin"
    p.write_bytes(bytes(20 * MiB))
    calls = []

    def progress(done, total):
        calls.append(done)
        if done >= 8 * MiB:
            raise Stop

    with pytest.raises(Stop):
        file_hashes(p, progress)
    assert calls[-1] < 20 * MiB
    with pytest.raises(Stop):
        StreamHasher.from_file_prefix(p, 20 * MiB, all_kinds=True, progress=progress)


def test_missing_file_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        file_hashes(tmp_path / "missing")
    with pytest.raises(OSError):
        sha256_file(tmp_path / "missing")


@settings(max_examples=40, deadline=None)
@given(length=st.integers(0, 2 * MiB + 300_000), header_len=st.integers(1, 3000),
       chunk=st.integers(1000, 400_000), ring=st.integers(1, 5), behind=st.integers(0, 3))
def test_any_read_size_ring_and_split_gives_the_definitions(tmp_path_factory, length, header_len, chunk, ring,
                                                            behind):
    # Small reads put chunk boundaries everywhere (header, AutoV1 window, tail start); behind=0
    # makes the reader thread take all the CRC work, a large one leaves it all to the worker.
    data = safetensors_like(header_len, _RANDOM[:length])
    p = tmp_path_factory.mktemp("h") / "f.safetensors"
    p.write_bytes(data)
    saved = hashing.CHUNK, hashing.RING, hashing.BEHIND
    hashing.CHUNK, hashing.RING, hashing.BEHIND = chunk, ring, behind
    try:
        assert file_hashes(p) == reference(data)
        assert sha256_file(p) == hashlib.sha256(data).hexdigest()
        cut = length // 3
        s = StreamHasher.from_file_prefix(p, cut, all_kinds=True)
        s.update(data[cut:cut + 5])
        s.update(memoryview(data)[cut + 5:])
        assert s.hashes() == reference(data)
    finally:
        hashing.CHUNK, hashing.RING, hashing.BEHIND = saved



@settings(max_examples=60, deadline=None)
@given(a=st.binary(max_size=3000), b=st.binary(max_size=3000))
def test_crc32_of_pieces_joins_to_the_whole(a, b):
    assert hashing._crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_stream_hasher_resumes_from_a_file_prefix(tmp_path):
    data = os.urandom(5 * MiB + 3)
    p = tmp_path / "part"
    p.write_bytes(data[:3 * MiB])
    s = StreamHasher.from_file_prefix(p, 3 * MiB)
    assert s.length == 3 * MiB
    s.update(data[3 * MiB:])
    assert s.hexdigest() == hashlib.sha256(data).hexdigest()
    with pytest.raises(ValueError, match="all_kinds=True"):
        s.hashes()
    with pytest.raises(ValueError, match="fewer than"):
        StreamHasher.from_file_prefix(p, 3 * MiB + 1)
    assert StreamHasher.from_file_prefix(p, 0).hexdigest() == hashlib.sha256(b"").hexdigest()


def test_cli_hash(tmp_path):
    p = tmp_path / "hello.bin"
    p.write_bytes(b"hello world")
    r = subprocess.run([sys.executable, "-m", "lora_ops", "hash", str(p), str(tmp_path / "missing")], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "AutoV2 B94D27B993" in r.stdout and "CRC32 85114A0D" in r.stdout and "ERROR" in r.stdout


def test_cli_hash_of_a_folder_hashes_every_model_file_in_it(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "t.safetensors").write_bytes(MINIMAL)
    (tmp_path / "hello.ckpt").write_bytes(b"hello world")
    (tmp_path / "notes.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, "-m", "lora_ops", "hash", str(tmp_path), str(tmp_path / "empty")], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1  # the empty folder
    lines = r.stdout.splitlines()
    assert lines[0] == f"ERROR {tmp_path / 'empty'}: no model files in this folder"
    assert lines[1].startswith(f"{tmp_path / 'hello.ckpt'}: size 11 SHA256 B94D27B993")
    assert "AutoV3 - (not a safetensors file) CRC32 85114A0D" in lines[1]
    assert lines[2].startswith(f"{tmp_path / 'sub' / 't.safetensors'}: size 112 ")
    assert "AutoV3 B9C80B5ADECA CRC32 EFC17050" in lines[2] and len(lines) == 3
