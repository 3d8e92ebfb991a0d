"""A local index of model files' hashes, so that files are identified by content without re-hashing.

The index is one SQLite file (stdlib ``sqlite3``) at a path the caller chooses; in ComfyUI,
the pack's private user folder. It holds two tables:

* ``files``: one row per file, keyed by its real path (symbolic links resolved, case folded
  where the platform's paths are), with its size (bytes), modification time (``st_mtime_ns``),
  the hashes of :mod:`lora_ops.hashing` (upper-case hex, as :class:`~lora_ops.hashing.Hashes`
  gives them) and when they were computed (``hashed_at``, Unix seconds). A verified download
  is recorded with its SHA-256 (and so AutoV2) only, since that is what the download computes
  (:meth:`HashIndex.record_sha256`); such a *partial* row (``crc32`` NULL) answers SHA-256 and
  AutoV2 lookups at once and gets its other hashes the first time a scan or
  :meth:`HashIndex.hashes_for` needs them. A row is trusted
  while the file's size and modification time are unchanged (the test ``make`` and ``rsync``
  use); a change that keeps both (on file systems with coarse timestamps) is not seen.
* ``sources``: what a source string (a URL, an AIR, an ``hf://`` path) resolved to: the
  SHA-256 of the content and a JSON provenance record, the latest per source.

Several threads may share one :class:`HashIndex` (one connection behind a lock; hashing runs
outside it) and several processes may open the same file: it is in WAL mode, writes are
short ``BEGIN IMMEDIATE`` transactions and a busy database is waited for up to
``BUSY_TIMEOUT_S`` seconds. An object must not be carried across ``fork``: a child process
that uses one gets a new connection.

A database file that SQLite cannot read (corrupt, not a database, or a schema this version
does not know) is moved aside to ``<name>.corrupt-<time>-<pid>`` with a logged warning and a
new index is started, rather than failing every call until someone deletes the file: the
files table is a cache that a scan rebuilds (the ``sources`` records are lost with it).
Damage found after opening fails that one call with :class:`HashIndexError`, and the next
call uses the new file. If the file cannot be moved aside, :class:`HashIndexError` says
which file to delete.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from .. import hashing
from ..hashing import HASH_LENGTHS, Hashes

log = logging.getLogger("lora_workbench.hash_index")

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0
# ComfyUI's folder_paths.supported_pt_extensions, plus .gguf (quantized models in custom loaders).
MODEL_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft", ".gguf"})
# Downloads in progress and sidecar files, never hashed whatever the extensions asked for.
SKIP_SUFFIXES = (".part", ".json", ".tmp", ".incomplete", ".crdownload", ".lock")
KINDS = tuple(HASH_LENGTHS)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    autov1 TEXT,
    autov2 TEXT NOT NULL,
    autov3 TEXT,
    crc32 TEXT,
    hashed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_sha256 ON files (sha256);
CREATE INDEX IF NOT EXISTS files_autov2 ON files (autov2);
CREATE INDEX IF NOT EXISTS files_autov3 ON files (autov3);
CREATE TABLE IF NOT EXISTS sources (
    source TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    provenance TEXT NOT NULL,
    recorded_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sources_sha256 ON sources (sha256, recorded_at);
"""
_HASH_COLUMNS = "sha256, autov1, autov2, autov3, crc32"
_HEX = re.compile(r"^[0-9A-F]+$")

ScanProgress = Callable[[int, int, str], None]
_Found = tuple[str, str, os.stat_result]  # (path as reached from its root, row key, stat)


class HashIndexError(RuntimeError):
    """The index file cannot be used and cannot be rebuilt; the message names the file and the fix."""


def _key(path: str | os.PathLike) -> str:
    """The row key of a file: its real absolute path, case-folded where paths are."""
    return os.path.normcase(os.path.realpath(os.fspath(path)))


def _is_corruption(e: sqlite3.DatabaseError) -> bool:
    # SQLITE_CORRUPT and SQLITE_NOTADB arrive as DatabaseError itself; its subclasses are
    # other conditions (OperationalError: locked, busy, disk full; IntegrityError...).
    return type(e) is sqlite3.DatabaseError


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _wal(conn: sqlite3.Connection) -> None:
    """Put the database in WAL mode (it stays so). Switching needs the file to itself, and
    SQLite answers "locked" at once instead of waiting when another process is opening it
    too, so this waits here, up to ``BUSY_TIMEOUT_S``."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _check_hex(kind: str, value: str) -> str:
    """``value`` upper-cased, after checking it is ``HASH_LENGTHS[kind]`` hex digits."""
    if kind not in HASH_LENGTHS:
        raise ValueError(f"unknown hash kind {kind!r}: use one of {', '.join(KINDS)}")
    value = value.strip().upper()
    if len(value) != HASH_LENGTHS[kind] or not _HEX.match(value):
        raise ValueError(f"a {kind} hash is {HASH_LENGTHS[kind]} hexadecimal digits, got {value!r}")
    return value


class HashIndex:
    """The hash index stored in the SQLite file ``db_path`` (created with its folder if missing).

    Raises :class:`HashIndexError` when the file is unusable and cannot be moved aside, and
    ``sqlite3.OperationalError`` when another process holds it locked for longer than
    ``BUSY_TIMEOUT_S`` seconds. Usable as a context manager, which closes it.
    """

    def __init__(self, db_path: str | os.PathLike):
        self.path = os.path.abspath(os.fspath(db_path))
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._file_id: tuple[int, int] | None = None  # the database file the connection opened
        with self._lock:
            self._connection()

    # --- connection -------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            _wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL stays consistent; only the last commits may be lost
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {version}, this version of the pack reads "
                                            f"{SCHEMA_VERSION}")
            if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("PRAGMA quick_check found damage")
            if version == 0:  # new; IF NOT EXISTS lets two processes create it at once
                conn.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> sqlite3.Connection:
        """The open connection (call with the lock held); opens one, moving a damaged file aside."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        # After a fork the parent's connection is left alone: SQLite forbids using it here.
        self._conn = None
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._file_id = _file_id(self.path)
        if os.path.isdir(self.path):
            raise HashIndexError(f"The hash index {self.path} is a folder, not a file: move it away.")
        try:
            try:
                self._conn = self._open()
            except sqlite3.DatabaseError as e:
                if not _is_corruption(e):
                    raise
                self._set_aside(e)
                self._conn = self._open()
        except sqlite3.Error as e:
            raise HashIndexError(f"The hash index {self.path} cannot be opened ({e}); check the folder's "
                                 "permissions and free space, or delete the file (it is rebuilt).") from e
        self._file_id = _file_id(self.path)
        self._pid = os.getpid()
        return self._conn

    def _set_aside(self, error: Exception) -> None:
        """Move the unreadable database (and its WAL files, which belong to it) out of the way."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if _file_id(self.path) != self._file_id:
            return  # another process has already replaced it: that new file is not the damaged one
        aside = f"{self.path}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        try:
            for suffix in ("-wal", "-shm", ""):
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, aside + suffix)
        except OSError as e:
            raise HashIndexError(f"The hash index {self.path} is unreadable ({error}) and could not be moved "
                                 f"aside ({e.strerror or e}). Delete it (it is a cache and is rebuilt); "
                                 "stop other ComfyUI processes first if the system says it is in use.") from e
        log.warning("The hash index %s was unreadable (%s); it was moved to %s and a new one started.",
                    self.path, error, aside)

    @contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, in a write transaction when ``write``. A damaged
        database found here is moved aside and the block is NOT retried: the caller's data
        went with it, and the next call starts on the new file."""
        with self._lock:
            conn = self._connection()
            try:
                if write:
                    conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock on upgrade
                    try:
                        yield conn
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
                else:
                    yield conn
            except sqlite3.DatabaseError as e:
                if not _is_corruption(e):
                    raise
                self._set_aside(e)
                self._connection()
                raise HashIndexError(f"The hash index {self.path} was damaged ({e}); it was moved aside and a "
                                     "new one started: try again.") from e

    def close(self) -> None:
        """Close the database connection; a later call opens it again."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> HashIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- files ------------------------------------------------------------------------------

    @staticmethod
    def _hashes(row) -> Hashes:
        size, sha, autov1, autov2, autov3, crc = row
        return Hashes(size, sha, autov1, autov2, autov3, crc)

    def _store(self, key: str, st: os.stat_result, h: Hashes) -> None:
        with self._db(write=True) as conn:
            conn.execute(f"INSERT OR REPLACE INTO files (path, size, mtime_ns, {_HASH_COLUMNS}, hashed_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (key, st.st_size, st.st_mtime_ns, h.sha256, h.autov1, h.autov2, h.autov3, h.crc32,
                          time.time()))

    def _hash_and_store(self, key: str, st: os.stat_result,
                        progress: Callable[[int, int], None] | None) -> Hashes:
        h = hashing.file_hashes(key, progress)
        after = os.stat(key)
        # A file that changed while it was read has hashes of neither version: keep them out.
        if (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns) and h.size == st.st_size:
            self._store(key, st, h)
        return h

    def hashes_for(self, path: str | os.PathLike, progress: Callable[[int, int], None] | None = None) -> Hashes:
        """The hashes of the file at ``path``: from the index while its real path, size and
        modification time are unchanged, else computed (:func:`lora_ops.hashing.file_hashes`,
        with its ``progress(bytes_done, bytes_total)``) and stored. Raises ``OSError`` when
        the file cannot be read (``FileNotFoundError`` when it is not there)."""
        key = _key(path)
        st = os.stat(key)
        with self._db() as conn:
            row = conn.execute(f"SELECT size, mtime_ns, {_HASH_COLUMNS} FROM files WHERE path = ?",
                               (key,)).fetchone()
        if row is not None and (row[0], row[1]) == (st.st_size, st.st_mtime_ns) and row[-1] is not None:
            return self._hashes((row[0], *row[2:]))
        return self._hash_and_store(key, st, progress)

    def known_sha256(self, path: str | os.PathLike) -> str | None:
        """The SHA-256 (lower-case hex) the index holds for the file at ``path`` while its real
        path, size and modification time are unchanged (a partial row counts), else None; never
        reads the file. Raises ``OSError`` when the file is not there."""
        key = _key(path)
        st = os.stat(key)
        with self._db() as conn:
            row = conn.execute("SELECT size, mtime_ns, sha256 FROM files WHERE path = ?", (key,)).fetchone()
        if row is not None and (row[0], row[1]) == (st.st_size, st.st_mtime_ns) and row[2]:
            return row[2].lower()
        return None

    def record(self, path: str | os.PathLike, hashes: Hashes) -> None:
        """Store ``hashes`` as those of the file at ``path`` as it is now (its current size and
        modification time), without reading it: for a file whose hashes were computed while
        it was written, such as a verified download. Raises ``ValueError`` when
        ``hashes.size`` is not the file's size in bytes, ``OSError`` when it is not there."""
        key = _key(path)
        st = os.stat(key)
        if hashes.size != st.st_size:
            raise ValueError(f"the hashes are of {hashes.size} bytes but {os.fspath(path)} has {st.st_size}: "
                             "they are not this file's")
        self._store(key, st, hashes)

    def record_sha256(self, path: str | os.PathLike, sha256: str) -> None:
        """Store a partial row for the file at ``path`` as it is now: its SHA-256 (64 hex, any
        case) and the AutoV2 that follows from it, the other hashes pending (see the module
        docstring). For a download, whose SHA-256 was computed while it was written and
        verified. Raises ``ValueError`` for a bad hash, ``OSError`` when the file is not there."""
        sha = _check_hex("sha256", sha256)
        key = _key(path)
        st = os.stat(key)
        with self._db(write=True) as conn:
            conn.execute(f"INSERT OR REPLACE INTO files (path, size, mtime_ns, {_HASH_COLUMNS}, hashed_at) "
                         "VALUES (?, ?, ?, ?, NULL, ?, NULL, NULL, ?)",
                         (key, st.st_size, st.st_mtime_ns, sha, sha[:10], time.time()))

    def scan(self, roots: Iterable[str | os.PathLike], extensions: Iterable[str] | None = None,
             progress: ScanProgress | None = None) -> list[tuple[str, Hashes]]:
        """Every model file under ``roots`` with its hashes, hashing only new and changed files.

        Folders are walked recursively, following symbolic links to folders as ComfyUI does
        (each real folder once). Names starting with ``.`` (temporary files, version control,
        caches) and names ending in one of ``SKIP_SUFFIXES`` are skipped; so are files whose
        extension (case-insensitive, with or without the dot) is not in ``extensions``
        (default ``MODEL_EXTENSIONS``). A root that is a file is taken as it is; a missing
        root is skipped. An unchanged library costs one ``stat`` per file and one query.

        ``progress(bytes_done, bytes_total, path)`` is called while hashing (bytes of the files
        to hash in this scan, ``path`` the one being read); it may raise to stop the scan.
        Files that cannot be read are left out with a logged warning. Rows of files that
        were under the walked folders and no longer exist are removed.

        Returns ``(path, hashes)`` pairs sorted by path, each path absolute as reached from
        its root (a file reached twice is listed twice).
        """
        found, walked = _walk(roots, _extensions(extensions))
        with self._db() as conn:
            known = {row[0]: row[1:] for row in conn.execute(
                f"SELECT path, size, mtime_ns, {_HASH_COLUMNS} FROM files")}
        results: list[tuple[str, Hashes]] = []
        todo: dict[str, tuple[os.stat_result, list[str]]] = {}
        for shown, key, st in found:
            row = known.get(key)
            if row is not None and (row[0], row[1]) == (st.st_size, st.st_mtime_ns) and row[-1] is not None:
                results.append((shown, self._hashes((row[0], *row[2:]))))
            else:
                todo.setdefault(key, (st, []))[1].append(shown)
        total = sum(st.st_size for st, _ in todo.values())
        before = 0
        for key, (st, shown_paths) in todo.items():
            report = None
            if progress is not None:
                def report(done, _total, base=before, path=shown_paths[0]):
                    progress(base + done, max(total, base + done), path)
            try:
                h = self._hash_and_store(key, st, report)
            except OSError as e:
                log.warning("Could not hash %s: %s", shown_paths[0], e.strerror or e)
            else:
                results.extend((shown, h) for shown in shown_paths)
            before += st.st_size
        self._forget_vanished(known.keys() - {key for _, key, _ in found}, walked)
        results.sort(key=lambda item: item[0])
        return results

    def _forget_vanished(self, unseen: Iterable[str], walked: set[str]) -> None:
        prefixes = tuple(os.path.join(d, "") for d in walked)
        # Unseen rows under a walked folder are files that are gone, or files this scan's
        # extensions left out, which must stay: only the ones that are gone are removed.
        gone = [(key,) for key in unseen if key.startswith(prefixes) and not os.path.exists(key)]
        if gone:
            with self._db(write=True) as conn:
                conn.executemany("DELETE FROM files WHERE path = ?", gone)

    def lookup(self, kind: str, value: str, roots: Iterable[str | os.PathLike]) -> list[str]:
        """Like :meth:`find` from the index alone, without walking or hashing: the real paths
        of indexed files whose real path is under (or is) one of ``roots``' real paths and
        whose size and modification time are unchanged, best first. Files the index has not
        seen, and files reached only through a link to a folder elsewhere, are not found:
        :meth:`find` finds those. Raises ``ValueError`` as :meth:`find` does."""
        kind = kind.strip().lower()
        value = _check_hex(kind, value)
        root_keys = {_key(r) for r in roots}
        prefixes = tuple(os.path.join(k, "") for k in root_keys)
        with self._db() as conn:  # kind is one of the column names, checked above
            hits = conn.execute(f"SELECT path, size, mtime_ns FROM files WHERE {kind} = ?", (value,)).fetchall()
        paths = []
        for key, size, mtime_ns in hits:
            if not (key in root_keys or key.startswith(prefixes)):
                continue
            try:
                st = os.stat(key)
            except OSError:
                continue
            if (st.st_size, st.st_mtime_ns) == (size, mtime_ns):
                paths.append(key)
        return sorted(paths, key=lambda p: (len(p), p))

    def find(self, kind: str, value: str, roots: Iterable[str | os.PathLike],
             progress: ScanProgress | None = None) -> list[str]:
        """Paths of the files under ``roots`` whose hash of ``kind`` (sha256, autov1, autov2,
        autov3 or crc32, in Civitai's definitions) is ``value`` (hex, any case), best first:
        the shortest path, then alphabetical. Scans ``roots`` first (:meth:`scan`, with its
        ``progress``; cheap when nothing changed). Raises ``ValueError`` for an unknown kind
        or a value that is not that kind's number of hex digits."""
        kind = kind.strip().lower()
        value = _check_hex(kind, value)
        paths = {path for path, h in self.scan(roots, progress=progress) if getattr(h, kind) == value}
        return sorted(paths, key=lambda p: (len(p), p))

    # --- sources ----------------------------------------------------------------------------

    def remember_source(self, source: str, sha256: str, provenance: dict) -> None:
        """Record that ``source`` (a URL, AIR or ``hf://`` path; stored as given, so without
        tokens) resolved to content with SHA-256 ``sha256`` (64 hex, any case), with a
        JSON-serialisable ``provenance`` record; replaces what that source had. Raises
        ``ValueError`` for a bad hash and ``TypeError`` for a provenance JSON cannot hold."""
        sha = _check_hex("sha256", sha256)
        text = json.dumps(provenance, sort_keys=True)
        with self._db(write=True) as conn:
            conn.execute("INSERT OR REPLACE INTO sources (source, sha256, provenance, recorded_at) "
                         "VALUES (?, ?, ?, ?)", (source, sha, text, time.time()))

    def source_sha256(self, source: str) -> str | None:
        """The SHA-256 (upper-case hex) that ``source`` last resolved to, or None."""
        with self._db() as conn:
            row = conn.execute("SELECT sha256 FROM sources WHERE source = ?", (source,)).fetchone()
        return row[0] if row else None

    def provenance(self, sha256: str) -> dict | None:
        """The provenance recorded last for content with SHA-256 ``sha256`` (any case), or
        None. Raises ``ValueError`` for a value that is not 64 hex digits."""
        sha = _check_hex("sha256", sha256)
        with self._db() as conn:
            row = conn.execute("SELECT provenance FROM sources WHERE sha256 = ? "
                               "ORDER BY recorded_at DESC, rowid DESC LIMIT 1", (sha,)).fetchone()
        return json.loads(row[0]) if row else None


def model_files(roots: Iterable[str | os.PathLike], extensions: Iterable[str] | None = None) -> list[str]:
    """The files :meth:`HashIndex.scan` would take under ``roots`` (same rules), as absolute
    paths reached from the roots, sorted; nothing is hashed."""
    found, _ = _walk(roots, _extensions(extensions))
    return sorted(shown for shown, _, _ in found)


def _extensions(extensions: Iterable[str] | None) -> frozenset[str]:
    if extensions is None:
        return MODEL_EXTENSIONS
    return frozenset(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def _walk(roots: Iterable[str | os.PathLike], exts: frozenset[str]) -> tuple[list[_Found], set[str]]:
    """The files to index under ``roots`` as ``(shown path, key, stat)`` and the real paths
    of the folders walked. One ``stat`` per file: real paths are built from each folder's
    real path, and only links are resolved on their own."""
    found: list[_Found] = []
    walked: set[str] = set()

    def wanted(name: str) -> bool:
        low = name.lower()
        return not low.endswith(SKIP_SUFFIXES) and os.path.splitext(low)[1] in exts

    def visit(shown_dir: str, real_dir: str) -> None:
        if real_dir in walked:  # a link back up the tree, or one folder linked twice
            return
        walked.add(real_dir)
        try:
            entries = list(os.scandir(shown_dir))
        except OSError as e:
            log.warning("Could not list %s: %s", shown_dir, e.strerror or e)
            return
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows links, as ComfyUI's walk does
                link = entry.is_symlink()
                real = _key(entry.path) if link else os.path.join(real_dir, os.path.normcase(entry.name))
                if is_dir:
                    visit(entry.path, real)
                elif wanted(entry.name) and entry.is_file():
                    found.append((entry.path, real, entry.stat()))
            except OSError as e:  # a broken link, or a file removed while listing
                log.debug("Skipping %s: %s", entry.path, e)

    for root in roots:
        shown = os.path.abspath(os.fspath(root))
        if os.path.isdir(shown):
            visit(shown, _key(shown))
        elif os.path.isfile(shown):
            found.append((shown, _key(shown), os.stat(shown)))
    return found, walked
