"""Structure validation of safetensors files: real broken fixtures and synthetic ones."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from helpers.paths import REAL_LORAS
from lora_ops.safetensors_io import SafetensorsError, read_header

needs_real = pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="../shared/fixtures/real is not present")


def write_raw(path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@needs_real
def test_real_lokr_fixture_parses_with_its_training_metadata():
    h = read_header(REAL_LORAS / "lycoris_lokr" / "smart_falcon_4_lokr.safetensors")
    assert len(h.tensors) == 1750
    assert h.metadata["ss_network_dim"] == "4"
    assert h.dtype_counts().keys() == {"F16"}
    assert h.data_start + sum(t.nbytes for t in h.tensors.values()) == h.file_size


@needs_real
def test_git_lfs_pointer_is_named_as_such():
    with pytest.raises(SafetensorsError) as e:
        read_header(REAL_LORAS / "edge_cases" / "HK200202-hub__emojii" / "lora.safetensors")
    assert "Git LFS pointer" in str(e.value) and "lora.safetensors" in str(e.value)
    assert "git lfs pull" in e.value.fix


@needs_real
def test_truncated_real_download_reports_missing_bytes():
    path = REAL_LORAS / "edge_cases" / "Srikanth1408__Stable_Diffusion-Hackathon" / "pytorch_lora_weights.safetensors"
    with pytest.raises(SafetensorsError) as e:
        read_header(path)
    # the header promises 23,401,064 bytes; 1,310,720 are there
    assert "truncated download" in str(e.value)
    assert "1310720 of 23401064 bytes" in str(e.value)


def test_valid_file_round_trips(tmp_path):
    p = tmp_path / "x.safetensors"
    save_file({"a.weight": torch.zeros(3, 4, dtype=torch.float16), "b": torch.ones(2, dtype=torch.bfloat16)},
              str(p), metadata={"k": "v"})
    h = read_header(p)
    assert h.metadata == {"k": "v"}
    assert {k: (t.dtype, t.shape) for k, t in h.tensors.items()} == {"a.weight": ("F16", (3, 4)), "b": ("BF16", (2,))}
    assert h.parameters == 14


def test_trailing_bytes_are_refused(tmp_path):
    p = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(4)}, str(p))
    p.write_bytes(p.read_bytes() + b"junk")
    with pytest.raises(SafetensorsError, match="4 bytes after its last tensor"):
        read_header(p)


@pytest.mark.parametrize("header, data, message", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlaps"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "leaves a gap at byte 0"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12"),
    ({"a": {"dtype": "Q4", "shape": [3], "data_offsets": [0, 3]}}, b"\0" * 3, "dtype 'Q4'"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "invalid header entry"),
    ({"__metadata__": {"k": 1}}, b"", "__metadata__"),
    ({"__metadata__": []}, b"", "__metadata__"),
    ({"__metadata__": ""}, b"", "__metadata__"),
    ({"a": {"dtype": [], "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "has dtype"),
    ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4, "invalid header entry"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [False, 4]}}, b"\0" * 4, "invalid header entry"),
    ({"a": {"dtype": "F32", "shape": [2**32, 2**32, 0], "data_offsets": [0, 0]}}, b"", "too large to address"),
])
def test_corrupt_headers_name_the_tensor_and_problem(tmp_path, header, data, message):
    p = tmp_path / "bad.safetensors"
    write_raw(p, header, data)
    with pytest.raises(SafetensorsError, match=message) as e:
        read_header(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("content, message", [
    (b"<!DOCTYPE html><html><body>Sign in</body></html>", "HTML page"),
    (b"PK\x03\x04" + b"\0" * 40, "pickle"),
    (b"\x80\x02}q\x00(X" + b"\0" * 40, "pickle"),
    (b'{"error": "model not found"}', "JSON document"),
    (b"root:x:0:0:root:/root:/bin/bash\n", "text file"),
    (b"\x01\x02", "too small"),
    (b"\xff" * 8 + b"{}", "declares a"),
    (struct.pack("<Q", 5) + b"{nope", "not valid JSON"),
])
def test_other_formats_are_recognised(tmp_path, content, message):
    p = tmp_path / "model.safetensors"
    p.write_bytes(content)
    with pytest.raises(SafetensorsError, match=message):
        read_header(p)


def test_duplicate_tensor_names_are_refused(tmp_path):
    p = tmp_path / "dup.safetensors"
    raw = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4)
    with pytest.raises(SafetensorsError, match="names tensor 'a' twice"):
        read_header(p)


@pytest.mark.parametrize("raw, message", [
    (b"[" * 100000 + b"]" * 100000, "nests too deeply"),
    (b'{"a":{"dtype":"F32","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,4]}}', "not valid JSON"),
])
def test_hostile_headers_give_safetensors_errors(tmp_path, raw, message):
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(SafetensorsError, match=message):
        read_header(p)


def test_directories_and_fifos_are_refused_without_blocking(tmp_path):
    import os

    with pytest.raises(SafetensorsError, match="is a directory"):
        read_header(tmp_path)
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(SafetensorsError, match="not a regular file"):
        read_header(fifo)


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.int8, torch.uint8, torch.int64]


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(
    st.text("abcdefgh._0123456789", min_size=1, max_size=12),
    st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 5), max_size=3)),
    max_size=6))
def test_agrees_with_safetensors_and_catches_every_truncation(tmp_path_factory, spec):
    # Header lengths vary with the names, so the first byte takes many values (0x80 too):
    # the sniffing of other formats must never reject a real safetensors file.
    p = tmp_path_factory.mktemp("h") / "x.safetensors"
    tensors = {k: torch.zeros(shape, dtype=dt) for k, (dt, shape) in spec.items()}
    save_file(tensors, str(p))
    h = read_header(p)
    with safe_open(str(p), "pt") as f:
        assert sorted(f.keys()) == sorted(h.tensors)
        for k in f.keys():
            assert list(f.get_slice(k).get_shape()) == list(h.tensors[k].shape)
    data_len = h.file_size - h.data_start
    if data_len:
        p.write_bytes(p.read_bytes()[:-1])
        with pytest.raises(SafetensorsError, match="truncated download"):
            read_header(p)
