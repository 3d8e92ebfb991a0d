"""The SQLite hash index on real files: what a scan finds, what it re-reads, what it forgets."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers.paths import REPO
from lora_ops.fetching.hash_index import HashIndex
from lora_ops.hashing import Hashes, file_hashes

MINIMAL = (bytes.fromhex("6000000000000000")
           + b'{"__metadata__":{"ss_output_name":"t"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
           + b"    " + bytes.fromhex("0000803f00000040"))
MINIMAL_SHA256 = "4F370090E180A7AB1C22F29BF07B849DC8CDAF346D66E2D1209186F188C0ACD1"


def rows(db: Path) -> dict[str, tuple]:
    """The files table as SQLite itself reads it (a second, independent connection)."""
    with sqlite3.connect(db) as conn:
        return {r[0]: r[1:] for r in conn.execute("SELECT path, size, mtime_ns, sha256, autov3 FROM files")}


def rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    """New content of the same size with the old modification time: only a read can see it."""
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def library(tmp_path):
    lib = tmp_path / "loras"
    (lib / "sub").mkdir(parents=True)
    (lib / "a.safetensors").write_bytes(MINIMAL)
    (lib / "sub" / "b.CKPT").write_bytes(b"not a safetensors file")
    for skipped in ("notes.json", "c.safetensors.part", ".tmp-d.safetensors", "readme.txt"):
        (lib / skipped).write_bytes(b"skip me")
    (lib / ".git").mkdir()
    (lib / ".git" / "e.safetensors").write_bytes(b"in a hidden folder")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "f.pt").write_bytes(b"reached through a link")
    (lib / "linked").symlink_to(elsewhere, target_is_directory=True)
    (lib / "sub" / "loop").symlink_to(lib, target_is_directory=True)  # a cycle must not hang the walk
    (lib / "broken.safetensors").symlink_to(tmp_path / "missing")
    return lib


def test_scan_finds_model_files_follows_links_and_skips_the_rest(tmp_path, library):
    index = HashIndex(tmp_path / "index" / "hashes.db")
    found = dict(index.scan([library, tmp_path / "no such folder"]))
    lib = str(library)
    assert sorted(found) == sorted([os.path.join(lib, "a.safetensors"), os.path.join(lib, "linked", "f.pt"),
                                    os.path.join(lib, "sub", "b.CKPT")])
    a = found[os.path.join(lib, "a.safetensors")]
    assert a == file_hashes(library / "a.safetensors")
    assert (a.sha256, a.autov3, a.crc32) == (MINIMAL_SHA256, "B9C80B5ADECA", "EFC17050")
    assert found[os.path.join(lib, "sub", "b.CKPT")].autov3 is None
    # Rows are keyed by real path: the linked file is stored where it really is.
    assert str((tmp_path / "elsewhere" / "f.pt").resolve()) in rows(tmp_path / "index" / "hashes.db")
    only_pt = index.scan([library], extensions=["pt"])
    assert [p for p, _ in only_pt] == [os.path.join(lib, "linked", "f.pt")]


def test_unchanged_rescan_reads_no_file_and_a_new_mtime_is_rehashed(tmp_path, library):
    index = HashIndex(tmp_path / "hashes.db")
    first = dict(index.scan([library]))
    a = library / "a.safetensors"
    rewrite_keeping_mtime(a, MINIMAL.replace(b'"t"', b'"u"'))
    calls = []
    again = dict(index.scan([library], progress=lambda *args: calls.append(args)))
    assert again == first  # the old hashes: the new bytes were never read
    assert calls == []  # nothing to hash
    assert index.hashes_for(a).sha256 == MINIMAL_SHA256
    # Same size, new modification time: hashed again.
    st = a.stat()
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    changed = dict(index.scan([library], progress=lambda *args: calls.append(args)))
    assert changed[str(a)] == file_hashes(a) != first[str(a)]
    assert calls[-1] == (len(MINIMAL), len(MINIMAL), str(a))
    assert index.hashes_for(a) == file_hashes(a)


def test_a_second_object_on_the_same_file_sees_the_rows(tmp_path, library):
    db = tmp_path / "hashes.db"
    with HashIndex(db) as first:
        first.scan([library])
    a = library / "a.safetensors"
    rewrite_keeping_mtime(a, bytes(len(MINIMAL)))
    with HashIndex(db) as second:
        assert second.hashes_for(a).sha256 == MINIMAL_SHA256  # from the file, not the disk


def test_scan_progress_counts_bytes_of_the_files_to_hash(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    sizes = {"x.safetensors": 9 * 2**20 + 5, "y.safetensors": 3 * 2**20, "z.safetensors": 17}
    for name, size in sizes.items():
        (lib / name).write_bytes(os.urandom(size))
    seen = []
    HashIndex(tmp_path / "h.db").scan([lib], progress=lambda *args: seen.append(args))
    total = sum(sizes.values())
    assert all(t == total for _, t, _ in seen)
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)
    assert seen[-1][0] == total
    assert {p for _, _, p in seen} == {str(lib / name) for name in sizes}


def test_progress_may_stop_a_scan_and_the_hashed_files_stay(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        (lib / name).write_bytes(os.urandom(2**20))
    db = tmp_path / "h.db"

    def stop_in_the_second_file(done, total, path):
        if done > 2**20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        HashIndex(db).scan([lib], progress=stop_in_the_second_file)
    assert list(rows(db)) == [str((lib / "a.safetensors").resolve())]


def test_deleted_files_are_dropped_and_filtered_ones_kept(tmp_path, library):
    db = tmp_path / "hashes.db"
    index = HashIndex(db)
    index.scan([library])
    keys = set(rows(db))
    (library / "a.safetensors").unlink()
    index.scan([library], extensions=[".pt"])  # a.safetensors is gone; b.CKPT is only filtered out
    left = set(rows(db))
    assert keys - left == {str((library / "a.safetensors").resolve())}
    assert str((library / "sub" / "b.CKPT").resolve()) in left
    # A scan of another folder leaves this one's rows alone.
    other = tmp_path / "other"
    other.mkdir()
    (library / "sub" / "b.CKPT").unlink()
    index.scan([other])
    assert str((library / "sub" / "b.CKPT").resolve()) in rows(db)


def test_find_by_every_kind_best_first(tmp_path):
    lib = tmp_path / "lib"
    (lib / "deeper" / "still").mkdir(parents=True)
    data = MINIMAL[:8] + MINIMAL[8:] + os.urandom(3 * 2**20)  # over 2 MiB: AutoV1 exists too
    (lib / "deeper" / "still" / "model.safetensors").write_bytes(data)
    (lib / "model.safetensors").write_bytes(data)
    (lib / "other.safetensors").write_bytes(MINIMAL)
    index = HashIndex(tmp_path / "h.db")
    h = file_hashes(lib / "model.safetensors")
    assert h.autov1 and h.autov3
    want = [str(lib / "model.safetensors"), str(lib / "deeper" / "still" / "model.safetensors")]
    for kind in ("sha256", "autov1", "autov2", "autov3", "crc32"):
        assert index.find(kind, getattr(h, kind).lower(), [lib]) == want, kind
        assert index.find(kind.upper(), f" {getattr(h, kind)} ", [lib]) == want, kind
    assert index.find("autov3", "B9C80B5ADECA", [lib]) == [str(lib / "other.safetensors")]
    assert index.find("crc32", "00000000", [lib]) == []
    with pytest.raises(ValueError, match="10 hexadecimal digits"):
        index.find("autov2", h.sha256, [lib])
    with pytest.raises(ValueError, match="hexadecimal"):
        index.find("sha256", "z" * 64, [lib])
    with pytest.raises(ValueError, match="unknown hash kind"):
        index.find("blake3", "00", [lib])


def test_lookup_answers_from_the_index_alone(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "model.safetensors").write_bytes(MINIMAL)
    index = HashIndex(tmp_path / "h.db")
    assert index.lookup("sha256", MINIMAL_SHA256, [lib]) == []  # never scanned
    index.scan([lib])
    (lib / "copy.safetensors").write_bytes(MINIMAL)  # not indexed yet
    real = str((lib / "model.safetensors").resolve())
    assert index.lookup("autov3", "b9c80b5adeca", [lib]) == [real]
    assert index.lookup("sha256", MINIMAL_SHA256, [tmp_path / "elsewhere"]) == []
    assert index.lookup("sha256", MINIMAL_SHA256, [lib / "model.safetensors"]) == [real]
    assert len(index.find("sha256", MINIMAL_SHA256, [lib])) == 2
    st = (lib / "model.safetensors").stat()
    os.utime(lib / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert index.lookup("sha256", MINIMAL_SHA256, [lib]) == [str((lib / "copy.safetensors").resolve())]


def test_record_stores_known_hashes_without_reading(tmp_path):
    p = tmp_path / "download.safetensors"
    p.write_bytes(b"0123456789")
    index = HashIndex(tmp_path / "h.db")
    told = Hashes(10, "AB" * 32, None, "AB" * 5, None, "12345678")
    index.record(p, told)
    assert index.hashes_for(p) == told  # a read would have given the file's real hashes
    assert dict(index.scan([tmp_path]))[str(p)] == told
    with pytest.raises(ValueError, match="not this file's"):
        index.record(p, Hashes(11, "AB" * 32, None, "AB" * 5, None, "12345678"))
    with pytest.raises(FileNotFoundError):
        index.record(tmp_path / "missing", told)


def test_sources_and_provenance_round_trip(tmp_path):
    db = tmp_path / "h.db"
    index = HashIndex(db)
    sha = "4f370090e180a7ab1c22f29bf07b849dc8cdaf346d66e2d1209186f188c0acd1"
    assert index.source_sha256("hf://org/repo/x.safetensors") is None
    assert index.provenance(sha) is None
    index.remember_source("hf://org/repo/x.safetensors", sha, {"repo": "org/repo", "commit": "abc", "n": 1})
    index.remember_source("urn:air:sdxl:lora:civitai:1@2", sha.upper(), {"civitai": {"version": 2}})
    assert index.source_sha256("hf://org/repo/x.safetensors") == sha.upper()
    assert index.provenance(sha.upper()) == {"civitai": {"version": 2}}  # the latest for that content
    index.remember_source("hf://org/repo/x.safetensors", sha, {"repo": "org/repo", "commit": "def"})
    assert HashIndex(db).provenance(sha) == {"repo": "org/repo", "commit": "def"}
    with pytest.raises(ValueError):
        index.remember_source("x", "1234", {})
    with pytest.raises(TypeError):
        index.remember_source("x", sha, {"not json": object()})


def test_threads_share_one_index(tmp_path):
    files = []
    for i in range(12):
        p = tmp_path / f"m{i}.safetensors"
        p.write_bytes(os.urandom(1000 + i))
        files.append(p)
    index = HashIndex(tmp_path / "h.db")
    results: dict[Path, Hashes] = {}
    errors = []

    def work(part):
        try:
            for p in part:
                results[p] = index.hashes_for(p)
                index.remember_source(f"url:{p.name}", results[p].sha256, {"name": p.name})
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(files[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(results[p] == file_hashes(p) for p in files)
    assert len(rows(tmp_path / "h.db")) == 12


WORKER = """
import sys, time
from pathlib import Path
from lora_ops.fetching.hash_index import HashIndex
db, folder, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
index = HashIndex(db)
while not (folder.parent / "go").exists():  # start together, to overlap the writes
    time.sleep(0.005)
for round in range(3):
    found = index.scan([folder])
    assert len(found) == 40, len(found)
    for path, h in found:
        index.record(path, h)
        index.remember_source(f"{me}:{Path(path).name}", h.sha256, {"by": me, "round": round})
print(len(found))
"""


def test_two_processes_on_one_index_do_not_corrupt_it(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    for i in range(40):
        (folder / f"m{i:02}.safetensors").write_bytes(os.urandom(50_000 + i))
    db = tmp_path / "shared.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(db), str(folder), name], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("p1", "p2")]
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM sources").fetchone()[0] == 80
    stored = rows(db)
    assert len(stored) == 40
    index = HashIndex(db)
    for p in folder.iterdir():
        assert stored[str(p.resolve())][2] == file_hashes(p).sha256
        assert index.provenance(file_hashes(p).sha256)["round"] == 2


def test_an_unreadable_index_is_set_aside_and_rebuilt(tmp_path, caplog):
    db = tmp_path / "h.db"
    db.write_bytes(b"this is not an SQLite database" * 200)
    p = tmp_path / "a.safetensors"
    p.write_bytes(MINIMAL)
    index = HashIndex(db)
    assert index.hashes_for(p).sha256 == MINIMAL_SHA256
    aside = [q for q in tmp_path.iterdir() if q.name.startswith("h.db.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    assert "moved to" in caplog.text and str(db) in caplog.text
    index.close()
    # A schema from a newer version of the pack is set aside too, not misread.
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    assert HashIndex(db).hashes_for(p).sha256 == MINIMAL_SHA256
    assert rows(db) != {} and sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == 1

