"""Download one planned file into a model folder: resumable, verified, published atomically.

The bytes go to ``<name>.<random>.part`` in the destination folder (ComfyUI lists only model
extensions, so a part file never shows up in a loader's list), with a ``.part.json`` sidecar
holding what identifies the object (expected SHA-256 or URL, ETag/Last-Modified, size). Only after
the size, the SHA-256 (computed while streaming) and the content (a safetensors header that
parses and whose tensors tile the file exactly; pickle refused unless allowed) all check out is
the part renamed onto the final name with ``os.replace``. Nothing unverified ever has the final name.

Resuming: a later run adopts a part whose sidecar matches and whose writer is gone (its process
is dead, or it has not grown for twice the stall timeout), re-hashes the bytes it has, and asks
for the rest with ``Range`` and ``If-Range``. Only a ``206`` starting at the right byte with the
right total is appended; a ``200`` (Range ignored or the object changed) restarts cleanly from
byte 0; a signed URL that has expired (400/401/403 from the storage host) is replaced by asking
the origin URL again.

Concurrency: one transfer per object in a process (a thread lock), and across processes a
``filelock`` lock in the private folder, so a second worker waits and then finds the published
file. Correctness does not rest on the lock: each writer has its own part file, adoption is an
atomic rename, and every publish is verified first, so two writers that both run (the lock is a
no-op on some network file systems) publish identical verified bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from filelock import FileLock
from filelock import Timeout as LockTimeout
from urllib3.exceptions import HTTPError as Urllib3Error

from ..hashing import StreamHasher, sha256_file
from ..safetensors_io import SafetensorsError, read_header, sniff_non_safetensors
from .http_client import Client, FetchError
from .netguard import content_disposition_filename, for_log, safe_filename, safe_join
from .remote import Plan, explain
from .settings import FetchSettings

log = logging.getLogger("lora_workbench.fetch")

CHUNK = 1 << 20
PART_SUFFIX = ".part"
SAFETENSORS_EXT = (".safetensors", ".sft")
PICKLE_EXT = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pt2")
ARCHIVE_EXT = (".zip", ".7z", ".rar", ".tar", ".gz")
_process_locks: dict[str, threading.Lock] = {}
_published: dict[tuple[str, str], dict] = {}  # (key, folder) -> last publish (see Downloader._record_published)
_process_locks_guard = threading.Lock()

Progress = Callable[[int, int | None], None]


@dataclass
class Downloaded:
    """A published, verified file: ``path`` absolute, ``size`` bytes, ``sha256`` lower-case hex;
    ``transferred`` bytes received in this run, ``resumed_from`` the byte a resume started at,
    ``seconds`` wall time of the transfer; ``fresh`` False when the file was already there."""

    path: str
    size: int
    sha256: str
    fresh: bool
    transferred: int = 0
    resumed_from: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _process_lock(key: str) -> threading.Lock:
    with _process_locks_guard:
        return _process_locks.setdefault(key, threading.Lock())


def _alive(pid: int, host: str) -> bool:
    """Whether the writer of a part may still be writing it."""
    if host != socket.gethostname():
        return True  # cannot tell: rely on staleness
    if pid == os.getpid():
        return False  # this process holds the key's lock, so none of its threads is writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # kill(pid, 0) also succeeds for a process that has exited but is not reaped yet (a zombie):
    # it writes nothing any more, and its lock is already released.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[-1].split()[:1]
        return state not in (["Z"], ["X"])
    except OSError:
        return True  # no /proc (not Linux): cannot tell, rely on staleness


class _Part:
    """One writer's part file and its sidecar."""

    def __init__(self, path: str, meta: dict):
        self.path = path
        self.meta = meta

    @property
    def sidecar(self) -> str:
        return self.path + ".json"

    def save_meta(self) -> None:
        tmp = f"{self.sidecar}.{uuid.uuid4().hex[:6]}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.meta, f)
        os.replace(tmp, self.sidecar)

    def size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except FileNotFoundError:
            return 0

    def remove(self) -> None:
        for p in (self.path, self.sidecar):
            try:
                os.remove(p)
            except FileNotFoundError:
                pass


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _open_part(path: str, truncate: bool):
    """The part file for writing, never through a symbolic link (one planted in a shared models
    folder must not redirect the write elsewhere)."""
    flags = os.O_WRONLY | _NOFOLLOW | (os.O_TRUNC if truncate else 0)
    return os.fdopen(os.open(path, flags), "wb" if truncate else "r+b")


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _new_part(folder: str, stem: str, key: str) -> _Part:
    path = os.path.join(folder, f"{stem}.{uuid.uuid4().hex[:8]}{PART_SUFFIX}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    os.close(fd)
    part = _Part(path, {"key": key, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    part.save_meta()
    return part


def _adopt_part(folder: str, key: str, stall_s: float) -> _Part | None:
    """Claim a resumable part for ``key`` left by a writer that is gone, the longest one when
    several were left (each run that died kept its own); None when there is none."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return None
    abandoned: list[tuple[int, str, str, dict]] = []
    for name in sorted(names):
        if not name.endswith(PART_SUFFIX + ".json"):
            continue
        sidecar = os.path.join(folder, name)
        try:
            if not _is_regular(sidecar):
                continue
            with open(sidecar, encoding="utf-8") as f:
                meta = json.load(f)
            part_path = sidecar[:-5]
            st = os.lstat(part_path)
        except (OSError, ValueError, RecursionError):
            continue
        if not isinstance(meta, dict) or meta.get("key") != key or not stat.S_ISREG(st.st_mode):
            continue
        try:
            pid = int(meta.get("pid", 0))
        except (TypeError, ValueError):
            continue
        stale = time.time() - st.st_mtime > 2 * stall_s
        if _alive(pid, str(meta.get("host", ""))) and not stale:
            continue
        abandoned.append((st.st_size, part_path, sidecar, meta))
    for _size, part_path, sidecar, meta in sorted(abandoned, key=lambda a: -a[0]):
        stem = os.path.basename(part_path).rsplit(".", 2)[0]
        mine = os.path.join(folder, f"{stem}.{uuid.uuid4().hex[:8]}{PART_SUFFIX}")
        try:
            os.rename(part_path, mine)  # atomic: only one adopter wins
        except FileNotFoundError:
            continue
        try:
            os.remove(sidecar)
        except FileNotFoundError:
            pass
        meta.update(pid=os.getpid(), host=socket.gethostname())
        part = _Part(mine, meta)
        part.save_meta()
        for _s, other, _sidecar, _m in abandoned:  # shorter leftovers of dead writers: only disk use
            if other != part_path:
                _Part(other, {}).remove()
        return part
    return None


def check_content(path: str, name: str, allow_pickle: bool) -> tuple[str, list[str]]:
    """Check what the bytes at ``path`` are, before they get the name ``name``.

    Returns the name to publish under (a safetensors file named ``.ckpt``/``.pt``/``.bin`` gets
    ``.safetensors``, since ComfyUI picks the loader by extension) and notes. Raises
    :class:`~lora_ops.safetensors_io.SafetensorsError` for a structurally invalid safetensors file,
    HTML/JSON/text/LFS pointers, and pickle content unless ``allow_pickle`` (and always for pickle
    content named ``.safetensors``).
    """
    with open(path, "rb") as f:
        head = f.read(72)
    notes: list[str] = []
    lower = name.lower()
    if head[8:9] == b"{" or lower.endswith(SAFETENSORS_EXT):
        read_header(path)  # raises with the reason and the fix
        if not lower.endswith(SAFETENSORS_EXT):
            new = os.path.splitext(name)[0] + ".safetensors"
            notes.append(f"{name} holds safetensors data; saved as {new} so ComfyUI reads it as such.")
            name = new
        return name, notes
    if head.startswith(b"PK\x03\x04") and (lower.endswith(ARCHIVE_EXT) or _plain_zip(path)):
        # A zip that is not a PyTorch checkpoint: training data, a packed Diffusers folder.
        raise SafetensorsError(name, "is a .zip archive (training data or a packed folder), not a model file "
                               "ComfyUI loads", "Fetch the model file itself (.safetensors); allow_pickle does "
                               "not change this")
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        if lower.endswith(SAFETENSORS_EXT):
            raise SafetensorsError(name, "is a pickle (PyTorch .ckpt/.pt) file under a .safetensors name",
                                   "Use the host's real .safetensors file; a pickle is only accepted under its own "
                                   "extension (.ckpt/.pt) with \"allow_pickle\": true in the pack's settings file")
        if not allow_pickle:
            raise SafetensorsError(name, "is a pickle (PyTorch .ckpt/.pt) file, which can run code when loaded",
                                   "Use a .safetensors release of this model, or set "
                                   "\"allow_pickle\": true in the pack's settings file if you trust its source")
        notes.append(f"{name} is a pickle file, accepted because allow_pickle is set.")
        return name, notes
    if head.startswith(b"GGUF"):
        return name, notes
    sniffed = sniff_non_safetensors(name, head)
    if sniffed is not None:
        raise sniffed
    if lower.endswith(PICKLE_EXT) and not allow_pickle:
        # Pickle streams need not start with a protocol marker; a file under a pickle extension
        # that is not recognisably something else is treated as one.
        raise SafetensorsError(name, "has a PyTorch pickle extension and is not a format that can be checked; it "
                               "could run code when loaded", "Use a .safetensors release of this model, or set "
                               "\"allow_pickle\": true in the pack's settings file if you trust its source")
    notes.append(f"{name}: format not recognised, so only its size (and its SHA-256, when the host gave one) "
                 "could be checked.")
    return name, notes


def _plain_zip(path: str) -> bool:
    """Whether ``path`` is a readable zip without the ``data.pkl`` every PyTorch checkpoint has
    (so an archive, not a model). Only the zip's directory is read, nothing is unpickled."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return not any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False  # not a readable zip: judged as a pickle below


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    # "bytes <start>-<end>/<total or *>"
    if not value or not value.startswith("bytes "):
        return None
    try:
        span, _, total = value[6:].partition("/")
        start = int(span.split("-")[0])
        return start, (int(total) if total.strip().isdigit() else None)
    except ValueError:
        return None


class Downloader:
    """Runs :meth:`download` for plans; ``progress(bytes_done, bytes_total_or_None)`` is called for
    every chunk and may raise to cancel (the part stays resumable)."""

    def __init__(self, client: Client, settings: FetchSettings, lock_dir: str | None,
                 progress: Progress | None = None):
        self.client = client
        self.settings = settings
        self.lock_dir = lock_dir
        self.progress = progress or (lambda done, total: None)

    def download(self, plan: Plan, folder: str, filename: str | None = None) -> Downloaded:
        """Fetch ``plan`` into the model folder ``folder`` (an absolute path).

        ``filename``: the name to save under (a relative path; else the plan's, the server's
        ``Content-Disposition`` or the URL's).
        Raises :class:`FetchError` (transfer or verification failed; a part file is kept when
        resuming can help, a mismatching file is kept as ``<name>.sha256-mismatch.part``),
        ``SafetensorsError`` (bad content, discarded), ``UnsafeError`` (refused URL or name).
        """
        key = plan.key()
        os.makedirs(folder, exist_ok=True)
        asked = time.time()
        with _process_lock(key):
            lock = FileLock(os.path.join(self.lock_dir, f"{_key_hash(key)}.lock")) if self.lock_dir else None
            if lock is not None:
                os.makedirs(self.lock_dir, exist_ok=True)
                while True:
                    try:
                        lock.acquire(timeout=0.25)
                        break
                    except LockTimeout:
                        self.client.check_cancel()
            try:
                done = self._published_meanwhile(key, folder, asked) if not (filename or plan.filename) else None
                if done is None:
                    done = self._download_locked(plan, folder, filename, key)
                    self._record_published(key, folder, done)
                return done
            finally:
                if lock is not None:
                    lock.release()

    def _record_path(self, key: str, folder: str) -> str | None:
        # One record per key and folder: a fetch of the same source into another folder must not
        # hide this folder's record from the fetches waiting here.
        return os.path.join(self.lock_dir, f"{_key_hash(key + chr(0) + os.path.realpath(folder))}.published.json") \
            if self.lock_dir else None

    def _record_published(self, key: str, folder: str, done: Downloaded) -> None:
        """Note, under the key's lock, which file this key was published as, for the fetches
        that waited on the lock (a plain URL has no file name until its server names it, so
        they could not look for the file otherwise)."""
        try:
            st = os.stat(done.path)
        except OSError:
            return
        record = {"folder": os.path.realpath(folder), "path": done.path, "size": st.st_size,
                  "mtime_ns": st.st_mtime_ns, "sha256": done.sha256, "at": time.time()}
        with _process_locks_guard:
            _published[(key, record["folder"])] = record
        path = self._record_path(key, folder)
        if path:
            tmp = f"{path}.{uuid.uuid4().hex[:6]}.tmp"
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(record, f)
                os.replace(tmp, path)
            except OSError as e:  # only an optimisation for waiters: never fail a finished download
                log.debug("could not record %s: %s", path, e)

    def _published_meanwhile(self, key: str, folder: str, since: float) -> Downloaded | None:
        """The file another fetch of ``key`` published into ``folder`` while this one waited for
        the lock (since ``since``), if it is still there unchanged; else None."""
        with _process_locks_guard:
            record = _published.get((key, os.path.realpath(folder)))
        path = self._record_path(key, folder)
        if path and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    on_disk = json.load(f)
                if isinstance(on_disk, dict) and (record is None or on_disk.get("at", 0) > record.get("at", 0)):
                    record = on_disk
            except (OSError, ValueError, RecursionError):
                pass
        if not isinstance(record, dict) or not isinstance(record.get("at"), (int, float)) or record["at"] < since \
                or record.get("folder") != os.path.realpath(folder):
            return None
        try:
            st = os.stat(record["path"])
        except (OSError, TypeError, KeyError):
            return None
        if st.st_size != record.get("size") or st.st_mtime_ns != record.get("mtime_ns"):
            return None
        return Downloaded(record["path"], st.st_size, str(record.get("sha256")), fresh=False,
                          notes=[f"{os.path.basename(record['path'])} was downloaded by another fetch of the same "
                                 "source while this one waited; used as it is."])

    def _existing(self, plan: Plan, folder: str, name: str) -> Downloaded | None:
        dest = safe_join(folder, name)
        if not os.path.isfile(dest):
            return None
        sha = sha256_file(dest)
        if plan.expected_sha256 and sha != plan.expected_sha256:
            raise FetchError(f"{dest} already exists with different content (SHA-256 {sha}, expected "
                             f"{plan.expected_sha256}). Rename or delete it, or give the node another filename.")
        return Downloaded(dest, os.path.getsize(dest), sha, fresh=False)

    def _download_locked(self, plan: Plan, folder: str, filename: str | None, key: str) -> Downloaded:
        name = filename or plan.filename
        if name:
            found = self._existing(plan, folder, name)
            if found is not None:
                return found
        stem = safe_filename(name.rsplit("/", 1)[-1]) if name else _provisional_stem(plan.url, key)
        part = _adopt_part(folder, key, self.settings.stall_timeout_s) or _new_part(folder, stem, key)
        started = time.monotonic()
        try:
            sha, total, final_url, disposition, resumed_from = self._transfer(plan, part)
        except BaseException:
            if part.size() == 0:
                part.remove()  # nothing to resume: leave no trace
            raise
        seconds = time.monotonic() - started
        size = part.size()
        if not _is_regular(part.path):
            raise FetchError(f"{part.path} was replaced by something that is not a plain file while downloading; "
                             "nothing was saved.")
        if size == 0:
            part.remove()
            raise FetchError(f"{for_log(plan.url)} sent an empty file; nothing was saved. Check the URL.")
        # -- verify: size, then SHA-256, then content -----------------------------------------
        expected = plan.expected_size
        if total is not None and size != total:
            raise FetchError(f"download of {for_log(plan.url)} ended at {size} of {total} bytes; run again to resume.")
        if expected is not None and abs(size - expected) > plan.size_tolerance:
            part.remove()
            raise FetchError(f"{for_log(plan.url)} sent {size} bytes but the host lists the file as {expected} "
                             "bytes; the file on the host may have changed. Nothing was saved.")
        wanted = plan.wanted_hash
        wrong_hash = None
        if plan.expected_sha256 and sha != plan.expected_sha256:
            wrong_hash = f"expected {plan.expected_sha256}"
        elif wanted and wanted[0] in ("sha256", "autov2") and not sha.upper().startswith(wanted[1]):
            wrong_hash = f"which does not match the {wanted[0]} {wanted[1]} asked for"
        if wrong_hash:
            bad = os.path.join(folder, f"{stem}.sha256-mismatch{PART_SUFFIX}")
            os.replace(part.path, bad)
            part.remove()
            raise FetchError(f"{stem}: downloaded bytes have SHA-256 {sha}, {wrong_hash}. "
                             f"Kept as {bad} and not used. If the host replaced the file on purpose, give its new "
                             "SHA-256 as the expected hash; otherwise try again later.")
        if not name:
            try:
                name = safe_filename(content_disposition_filename(disposition)
                                     or urlsplit(final_url).path.rsplit("/", 1)[-1]
                                     or urlsplit(plan.url).path.rsplit("/", 1)[-1], "the file name the server gives")
            except Exception:
                part.remove()
                raise
            existing = safe_join(folder, name)
            if os.path.isfile(existing):  # the server's name is taken: the same bytes, or refuse
                if sha256_file(existing) != sha:
                    raise FetchError(f"{existing} already exists with other content; the download is kept as "
                                     f"{part.path}. Rename one of them, or give a name to save it under (the "
                                     "node's save_as, or --filename on the command line).")
                part.remove()
                return Downloaded(existing, size, sha, fresh=False,
                                  notes=[f"{name} was already there with the same content."])
        try:
            publish_name, notes = check_content(part.path, name, self.settings.allow_pickle)
        except SafetensorsError as e:
            part.remove()
            raise FetchError(f"{name} from {for_log(plan.url)}: {e.reason}. Nothing was saved. "
                             f"{_download_fix(e.fix)}") from None
        if plan.pickle_declared and not self.settings.allow_pickle:
            part.remove()
            raise FetchError(f"{name}: the host declares this file as a pickle (PickleTensor) model; refused. "
                             "Choose the SafeTensor file of this model version.")
        dest = safe_join(folder, publish_name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(part.path, "rb") as f:
            os.fsync(f.fileno())
        if os.path.exists(dest):
            # Another writer published while we downloaded: identical bytes are fine, others are not overwritten.
            if sha256_file(dest) != sha:
                raise FetchError(f"{dest} appeared with different content while downloading; the download is "
                                 f"kept as {part.path}. Rename one of them.")
            part.remove()
        else:
            os.replace(part.path, dest)
            try:
                os.remove(part.sidecar)
            except FileNotFoundError:
                pass
        return Downloaded(dest, size, sha, fresh=True, transferred=size - resumed_from, resumed_from=resumed_from,
                          seconds=seconds, notes=plan.notes + notes)

    def _transfer(self, plan: Plan, part: _Part) -> tuple[str, int | None, str, str | None, int]:
        """Fill ``part`` with the object's bytes. Returns (sha256, total or None, final URL,
        Content-Disposition, the byte the transfer resumed from)."""
        settings = self.settings
        have = part.size()
        validator = part.meta.get("etag") or part.meta.get("last_modified")
        if have and not validator and not plan.expected_sha256:
            # Without a validator or a hash, the rest could come from a changed file and the
            # spliced result would pass every check: start over instead.
            _restart(part)
            have = 0
        hasher = StreamHasher.from_file_prefix(part.path, have) if have else StreamHasher()
        resumed_from = have
        total = part.meta.get("total")
        limit = plan.expected_size + plan.size_tolerance if plan.expected_size is not None else None
        url = plan.url  # the origin; a signed storage URL is reused for resumes until it fails
        signed: str | None = None
        failures = 0
        # Progress is a byte this run never had before: a transfer restarted from 0 that is cut again
        # at the same place is not progress, so a server that always forces a restart still ends.
        high_water = have
        refreshes = 0
        disposition = part.meta.get("disposition")
        while True:
            if total is not None and have == total:
                return hasher.hexdigest(), total, signed or url, disposition, resumed_from
            headers = {}
            validator = part.meta.get("etag") or part.meta.get("last_modified")
            if have:
                headers["Range"] = f"bytes={have}-"
                if validator:
                    headers["If-Range"] = validator
            self.client.check_cancel()
            try:
                answer = self.client.open("GET", signed or url, headers, use_token=plan.use_token)
            except (Urllib3Error, OSError) as e:
                if _is_tls_error(e):
                    raise FetchError(f"{for_log(signed or url)}: the secure (TLS) connection failed ({_why(e)}). "
                                     "Check the URL; a local mirror without TLS is reached with http:// and "
                                     "\"allow_loopback\".") from None
                failures += 1
                self._retry_or_fail(failures, f"connection failed ({_why(e)})", None, plan, have)
                continue
            status = answer.status
            storage_host = urlsplit(answer.url).hostname != urlsplit(url).hostname
            if status in (400, 401, 403) and (signed is not None or storage_host):
                # A signed storage URL that expired (or one the storage refuses): ask the origin for
                # a fresh one and resume. Once for a fresh redirect, a few times for reused ones.
                if refreshes < 3 and (signed is not None or refreshes == 0):
                    answer.close()
                    refreshes += 1
                    signed = None
                    log.info("storage URL refused (%s); asking %s again", status, for_log(url))
                    continue
                raise explain(answer, f"download of {for_log(plan.url)}", settings)
            if status in (429, 500, 502, 503, 504):
                retry_after = answer.header("Retry-After")
                _body, said = answer.server_says()
                failures += 1
                self._retry_or_fail(failures, f"HTTP {status}" + (f" (the server says: \"{said}\")" if said else ""),
                                    retry_after, plan, have)
                continue
            if status == 416:
                answer.close()
                _restart(part)
                have, hasher, total, resumed_from = 0, StreamHasher(), None, 0
                failures += 1
                self._retry_or_fail(failures, "the server refused the byte range (416)", None, plan)
                continue
            if status >= 400 or status not in (200, 206):
                raise explain(answer, f"download of {for_log(plan.url)}", settings)
            encoding = (answer.header("Content-Encoding") or "identity").strip().lower()
            if encoding != "identity":
                answer.close()
                raise FetchError(f"{for_log(url)} sent the file compressed ({encoding}) although it was asked not "
                                 "to; compressed bytes cannot be verified or resumed. Use another host or mirror.")
            length = answer.header("Content-Length")
            if status == 206:
                cr = _content_range(answer.header("Content-Range"))
                if _changed(part.meta, answer):
                    # The object changed since the part was written, and the server sent the rest of the
                    # new one anyway (it ignored If-Range): splicing would publish neither version.
                    log.info("%s changed since the part was written; starting over", for_log(url))
                    answer.close()
                    _restart(part)
                    have, hasher, resumed_from, total = 0, StreamHasher(), 0, None
                    part.meta.pop("etag", None)
                    part.meta.pop("last_modified", None)
                    failures += 1
                    self._retry_or_fail(failures, "the file changed on the server during the download", None, plan)
                    continue
                if cr is None or cr[0] != have or (total is not None and cr[1] is not None and cr[1] != total):
                    # Not the continuation we asked for: start over without Range.
                    answer.close()
                    _restart(part)
                    have, hasher, resumed_from = 0, StreamHasher(), 0
                    part.meta.pop("etag", None)
                    part.meta.pop("last_modified", None)
                    failures += 1
                    self._retry_or_fail(failures, "the server sent another byte range than asked", None, plan)
                    continue
                total = cr[1] if cr[1] is not None else total
            else:
                if have:
                    log.info("%s ignored the Range request; starting over", for_log(url))
                    _restart(part)
                    have, hasher, resumed_from = 0, StreamHasher(), 0
                total = int(length) if length and length.isdigit() else None
                part.meta.update(total=total, etag=_strong_etag(answer.header("ETag")),
                                 last_modified=answer.header("Last-Modified"), url=for_log(plan.url),
                                 disposition=answer.header("Content-Disposition"))
                disposition = part.meta["disposition"]
                part.save_meta()
            if plan.expected_size is not None and total is not None and \
                    abs(total - plan.expected_size) > plan.size_tolerance:
                answer.close()
                raise FetchError(f"{for_log(plan.url)} announces {total} bytes but the file is listed as "
                                 f"{plan.expected_size} bytes; nothing was saved. The file on the host may have "
                                 "changed: check the model page.")
            if answer.url != url:
                signed = answer.url
            try:
                have = self._stream(answer, part, hasher, have, total, limit)
            except (Urllib3Error, OSError) as e:
                if isinstance(e, OSError) and not isinstance(e, (ConnectionError, TimeoutError, socket.timeout)):
                    raise  # a local write error (disk full): not the network's fault
                have = part.size()  # what arrived before the cut (the stream raised before returning it)
                failures, high_water = (0, have) if have > high_water else (failures + 1, high_water)
                self._retry_or_fail(failures + 1, f"connection dropped at byte {have} ({_why(e)})",
                                    None, plan, have)
                continue
            finally:
                answer.close()
            if total is None:
                return hasher.hexdigest(), None, signed or url, disposition, resumed_from
            if have < total:
                failures, high_water = (0, have) if have > high_water else (failures + 1, high_water)
                self._retry_or_fail(failures + 1, f"connection closed at byte {have} of {total}", None, plan, have)

    def _stream(self, answer, part: _Part, hasher: StreamHasher, have: int, total: int | None,
                limit: int | None) -> int:
        """Append the response body to ``part``; ``limit`` bytes at most (the size the host lists)."""
        with _open_part(part.path, truncate=not have) as f, _HashFeeder(hasher) as feed:
            f.seek(have)
            f.truncate()
            # read1: whatever has arrived (up to CHUNK), so a stall loses no received bytes.
            while chunk := answer.response.read1(CHUNK):
                if total is not None and have + len(chunk) > total:
                    raise FetchError(f"{for_log(answer.url)} sent more bytes than the {total} it announced; "
                                     "nothing was saved. Try again later.")
                if limit is not None and have + len(chunk) > limit:
                    raise FetchError(f"{for_log(answer.url)} sent more than the {limit} bytes the host lists for "
                                     "this file; stopped there and nothing was saved.")
                f.write(chunk)
                feed.put(chunk)
                have += len(chunk)
                self.progress(have, total)
        return have

    def _retry_or_fail(self, failures: int, what: str, retry_after: str | None, plan: Plan,
                       kept: int = 0) -> None:
        if failures > self.settings.retries:
            keep = (f" The {kept} bytes downloaded so far are kept; run again to resume." if kept
                    else " Try again later.")
            if what.startswith("HTTP 429"):
                keep = " The host is limiting how fast you download: wait a few minutes, then run again." + (
                    keep if kept else "")
            raise FetchError(f"download of {for_log(plan.url)}: {what}, still after {self.settings.retries} "
                             f"retries.{keep}")
        wait = self.client.backoff_s(failures - 1, retry_after)
        log.info("%s: %s; retrying in %.1f s", for_log(plan.url), what, wait)
        self.client.sleep(wait)


class _HashFeeder:
    """Feeds chunks to a :class:`StreamHasher` on a worker thread, so that hashing overlaps
    receiving and writing (hashlib releases the GIL on large buffers); at most ``depth`` chunks
    wait, so memory stays bounded. Leaving the ``with`` block waits until every chunk put is
    hashed, also when the transfer stopped with an exception: the hash then matches the bytes
    written, which a retry in the same run continues from."""

    def __init__(self, hasher: StreamHasher, depth: int = 8):
        self._hasher = hasher
        self._queue: queue.Queue = queue.Queue(depth)
        self._thread = threading.Thread(target=self._run, name="lora-workbench-hash", daemon=True)

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hasher.update(chunk)

    def put(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def __enter__(self) -> _HashFeeder:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._queue.put(None)
        self._thread.join()


def _changed(meta: dict, answer) -> bool:
    """Whether a 206 answer comes from another version of the object than the part's bytes:
    its ETag (or, without ETags, its Last-Modified) differs from the one stored with the part."""
    stored, sent = meta.get("etag"), _strong_etag(answer.header("ETag"))
    if stored and sent:
        return stored != sent
    stored, sent = meta.get("last_modified"), answer.header("Last-Modified")
    return bool(stored and sent and stored != sent)


def _restart(part: _Part) -> None:
    """Empty ``part`` so the transfer starts again from byte 0."""
    with _open_part(part.path, truncate=True):
        pass


def _provisional_stem(url: str, key: str) -> str:
    """A part file's name before the server has named the file: the URL's last path segment
    when it is a safe name, so a user can tell which download a part belongs to."""
    try:
        return safe_filename(urlsplit(url).path.rsplit("/", 1)[-1])
    except Exception:
        return f"download-{_key_hash(key)[:8]}"


def _download_fix(fix: str) -> str:
    # The file-oriented advice ("download it again") does not fit a host that serves a broken file.
    if "download it again" in fix.lower() or "truncated" in fix.lower():
        return "The file on the host is incomplete or damaged; try again later or use another source."
    return fix


def _why(e: BaseException) -> str:
    """A short reason for a connection error, for messages."""
    text = str(e)
    for known in ("Connection refused", "timed out", "Name or service not known", "Connection reset"):
        if known.lower() in text.lower():
            return known.lower()
    return type(e).__name__


def _is_tls_error(e: BaseException) -> bool:
    import ssl

    from urllib3.exceptions import SSLError

    for _ in range(8):  # the cause chain, bounded
        if not isinstance(e, BaseException):
            return False
        if isinstance(e, (SSLError, ssl.SSLError)):
            return True
        e = e.__cause__ or e.__context__ or getattr(e, "reason", None)
    return False


def _strong_etag(value: str | None) -> str | None:
    # If-Range needs a strong validator; a weak ETag (W/...) cannot be used.
    if not value or value.startswith("W/"):
        return None
    return value
