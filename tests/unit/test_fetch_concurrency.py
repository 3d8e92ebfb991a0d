"""Downloads under concurrency and faults: waiters find what the lock holder published, a cut
connection that delivered bytes is progress, a dead lock holder's part is resumed (the longest
one), and a server that ignores ``If-Range`` never yields a spliced file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from helpers.fake_hub import Hub, safetensors_bytes
from lora_ops.fetching.download import _adopt_part, _alive
from lora_ops.fetching.fetch import Fetcher
from lora_ops.fetching.hash_index import HashIndex
from lora_ops.fetching.http_client import FetchError
from lora_ops.fetching.settings import FetchSettings

MIB = 2**20


@pytest.fixture
def hub():
    h = Hub(token=None)
    h.add_blob("big", "big_lora.safetensors", safetensors_bytes(7, MIB))  # 4 MiB
    with h:
        yield h


def settings_for(hub: Hub, **kw) -> FetchSettings:
    base = dict(civitai_endpoint=hub.api_base, hf_endpoint=hub.hf_base, allow_loopback=True, retries=2,
                backoff_s=0.01, stall_timeout_s=2, connect_timeout_s=2)
    base.update(kw)
    return FetchSettings(**base)


def test_waiters_on_a_plain_url_find_the_published_file(hub, tmp_path):
    """Point 6: a plain URL has no file name until the server names it; a waiter that gets the
    lock must still find the file the holder published, not download it again."""
    hub.fault("big", throttle_s=0.02, chunk=256 * 1024)
    folder = tmp_path / "checkpoints"
    url = f"{hub.api_base}/files/big_lora.safetensors"
    results, errors = [], []

    def worker():
        try:
            f = Fetcher(settings_for(hub), HashIndex(tmp_path / "index.sqlite"), str(tmp_path / "locks"))
            results.append(f.fetch(url, [str(folder)], "checkpoints"))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(results) == 4
    assert {r.path for r in results} == {str(folder / "big_lora.safetensors")}
    assert hub.served_bytes["big"] == hub.blobs["big"].size  # one transfer, not four
    assert sorted(os.listdir(folder)) == ["big_lora.safetensors"]


def test_cut_connections_that_deliver_bytes_are_progress(hub, tmp_path):
    """Point 7: every response is cut after 600 KB; with 2 retries the 4 MiB file still arrives,
    because each cut delivered bytes."""
    hub.fault("big", cut_each=600_000)
    f = Fetcher(settings_for(hub, retries=2), None, str(tmp_path / "locks"))
    r = f.fetch(f"{hub.api_base}/files/big_lora.safetensors", [str(tmp_path / "m")], "checkpoints")
    assert open(r.path, "rb").read() == hub.blobs["big"].data
    assert hub.served_bytes["big"] == hub.blobs["big"].size


def _zombie() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return proc
        time.sleep(0.01)
    raise AssertionError("the child never became a zombie")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_a_dead_unreaped_writer_is_dead_and_the_longest_part_is_adopted(tmp_path):
    """Point 8: kill(pid, 0) succeeds for a zombie; its part must still be adopted, and of two
    abandoned parts the longer one."""
    proc = _zombie()
    try:
        assert _alive(proc.pid, socket.gethostname()) is False
        for name, size in (("a.1111.part", 1000), ("a.2222.part", 5000), ("a.3333.part", 3000)):
            (tmp_path / name).write_bytes(b"x" * size)
            (tmp_path / (name + ".json")).write_text(json.dumps({"key": "k", "pid": proc.pid,
                                                                 "host": socket.gethostname()}))
        part = _adopt_part(str(tmp_path), "k", stall_s=3600)
        assert part is not None and part.size() == 5000
        assert [n for n in os.listdir(tmp_path) if n.endswith(".part")] == [os.path.basename(part.path)]
    finally:
        proc.wait()
    assert _alive(os.getpid() + 10**6, socket.gethostname()) is False  # no such process


def test_a_206_from_a_changed_file_restarts_instead_of_splicing(hub, tmp_path):
    """Point 9: killed at about half, the file changes on the server, and the server ignores
    If-Range: the 206 carries the new ETag, so the download restarts from byte 0."""
    folder = tmp_path / "m"
    url = f"{hub.api_base}/files/big_lora.safetensors"
    old = hub.blobs["big"].data
    hub.fault("big", drop_after=len(old) * 53 // 100, drop_always=True)
    with pytest.raises(FetchError, match="run again to resume"):
        Fetcher(settings_for(hub, retries=0), None, str(tmp_path / "locks")).fetch(url, [str(folder)], "loras")
    new = safetensors_bytes(8, MIB)
    assert len(new) == len(old) and new != old
    hub.blobs["big"].data = new
    hub.faults.clear()
    hub.fault("big", ignore_if_range=True)
    index = HashIndex(tmp_path / "index.sqlite")
    r = Fetcher(settings_for(hub), index, str(tmp_path / "locks")).fetch(url, [str(folder)], "loras")
    assert open(r.path, "rb").read() == new
    assert index.source_sha256(url).lower() == r.sha256
