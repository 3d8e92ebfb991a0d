"""Fetching across processes, through the command line: a download killed with SIGKILL resumes
on the next run, and two processes fetching one file at once end with one correct file, with
the cross-process lock working and with it disabled (verification alone guards the result)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers.fake_hub import Hub, safetensors_bytes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIB = 2**20


@pytest.fixture
def hub():
    h = Hub(token=None)
    h.add_blob("big", "big_lora.safetensors", safetensors_bytes(7, 3 * MIB))  # 12 MiB
    h.add_civitai(10, 101, ["big"])
    with h:
        yield h


def home_for(tmp_path, hub, name="home") -> str:
    home = tmp_path / name
    home.mkdir()
    (home / "settings.json").write_text(json.dumps({
        "civitai_endpoint": hub.api_base, "allow_loopback": True, "backoff_s": 0.05, "stall_timeout_s": 30}))
    return str(home)


def cli(home: str, folder, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lora_ops", "fetch", "civitai:10@101", "--dir", str(folder),
                             "--home", home, "-q", *extra], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def parts(folder) -> list[str]:
    return [n for n in os.listdir(folder) if ".part" in n] if os.path.isdir(folder) else []


def test_sigkilled_download_resumes_and_verifies(hub, tmp_path):
    folder = tmp_path / "loras"
    home = home_for(tmp_path, hub)
    hub.fault("big", stall_after=5 * MIB, stall_s=20)
    proc = cli(home, folder)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = [os.path.getsize(folder / n) for n in parts(folder) if n.endswith(".part")]
        if done and done[0] >= 5 * MIB:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"the download never reached 5 MiB: {proc.communicate()}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert not (folder / "big_lora.safetensors").exists()
    hub.faults.clear()
    hub.requests.clear()
    second = cli(home, folder)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert "resumed at byte 5242880" in out
    assert (folder / "big_lora.safetensors").read_bytes() == hub.blobs["big"].data
    assert [h.get("Range") for r, _m, _p, h in hub.requests if r == "storage"] == ["bytes=5242880-"]
    assert parts(folder) == []


@pytest.mark.parametrize("locked", [True, False], ids=["with-lock", "lock-disabled"])
def test_two_processes_end_with_one_correct_file(hub, tmp_path, locked):
    folder = tmp_path / "loras"
    hub.fault("big", throttle_s=0.05)
    extra = () if locked else ("--no-lock",)
    home = home_for(tmp_path, hub)  # one home, so one lock folder (and one hash index) for both
    procs = [cli(home, folder, *extra) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert os.listdir(folder) == ["big_lora.safetensors"]
    assert (folder / "big_lora.safetensors").read_bytes() == hub.blobs["big"].data
    size = hub.blobs["big"].size
    if locked:
        assert hub.served_bytes["big"] == size  # one transfer; the other process waited and found the file
    else:
        assert hub.served_bytes["big"] >= size


@pytest.mark.parametrize("changed", [False, True], ids=["steady", "file-changes-and-if-range-ignored"])
def test_stress_workers_kills_and_cuts_serve_the_file_about_once_per_folder(hub, tmp_path, changed):
    """Bounded stress run: eight fetch processes of one plain URL (no file name until the server
    names it), six into a shared folder and two into a private one, the server throttled and
    cutting every response after 2 MiB, and the workers writing a part SIGKILLed mid-run and
    restarted at once (before the dead ones are reaped). Every surviving worker ends with one
    served version of the file, no part is left, and the server sends about one copy per folder,
    not one per worker. ``changed``: after the first kill the file changes on the server, which
    ignores ``If-Range``: no folder may end with a splice of the two versions."""
    import random

    rnd = random.Random(14)
    blob = hub.add_blob("plain", "plain_model.safetensors", safetensors_bytes(21, 2 * MIB))  # 8 MiB
    versions = [blob.data, safetensors_bytes(22, 2 * MIB)]
    hub.fault("plain", throttle_s=0.03, chunk=256 * 1024, cut_each=2 * MIB, ignore_if_range=changed)
    home = home_for(tmp_path, hub)
    shared, private = tmp_path / "shared", tmp_path / "private"
    url = f"{hub.api_base}/files/plain_model.safetensors"

    def start(folder) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "lora_ops", "fetch", url, "--dir", str(folder), "--home",
                                 home, "-q"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    workers = [(start(shared), shared) for _ in range(6)] + [(start(private), private) for _ in range(2)]
    killed, holders_killed = [], 0
    deadline = time.monotonic() + 60
    for _kill in range(3):
        # Wait until some worker holds the lock and writes a part (a few hundred ms in), then kill it.
        i, wait_until = None, time.monotonic() + 10
        while i is None and time.monotonic() < wait_until:
            writers = []
            for folder in (shared, private):
                for n in parts(folder):
                    if n.endswith(".part.json"):
                        try:
                            writers.append(json.loads((folder / n).read_text())["pid"])
                        except (OSError, ValueError, KeyError):
                            pass
            i = next((k for k, (p, _f) in enumerate(workers) if p.pid in writers and p.poll() is None), None)
            time.sleep(0.05)
        if i is None:
            break  # everything finished already
        time.sleep(rnd.uniform(0.05, 0.3))  # somewhere into its transfer
        proc, folder = workers[i]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            holders_killed += 1
            killed.append(proc)  # reaped only at the end: it stays a zombie meanwhile
            workers[i] = (start(folder), folder)
            if changed:
                blob.data = versions[1]
    results = []
    for proc, _folder in workers:
        results.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic())))
    for proc in killed:
        proc.wait(10)
    assert [p.returncode for p, _f in workers] == [0] * 8, results
    for folder in (shared, private):
        assert os.listdir(folder) == ["plain_model.safetensors"], os.listdir(folder)
        assert (folder / "plain_model.safetensors").read_bytes() in (versions if changed else versions[:1])
    served = hub.served_bytes["plain"] / blob.size
    print(f"stress: served {served:.2f} copies of the file, {len(killed)} workers killed, "
          f"{holders_killed} of them while writing")
    assert holders_killed >= 1  # a writer's part was taken over, not only waiters killed
    # One copy per folder, plus what a killed worker had in flight (socket buffers on loopback hold
    # a few hundred KB to a few MB); before waiters looked for the published file: 8 copies.
    assert served <= (4.0 if changed else 3.0), \
        f"served {served:.2f} copies for two folders: " + " | ".join(o for o, _e in results)
