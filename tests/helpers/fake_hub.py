"""A real HTTP server on loopback that plays Civitai, Hugging Face, an object store and a plain
file host, with switchable faults. Tests (and scripts/bench_fetch.py) start it; nothing here
touches the internet.

It follows ``../shared/research/real-services.md`` (the services' published server code and
recorded real answers), not our own reading of them:

* Civitai's API answers version JSON with the real field shapes: ``sizeKB`` a float, ``primary``
  only on the primary file, ``metadata`` reduced to format/size/fp (``quantType`` never listed;
  ``metadata`` may be null), upper-case hashes, any subset of hash kinds, non-primary
  ``downloadUrl``s with ``?type=&format=&size=&fp=`` (and ``quantType``), archived versions with
  ``files: []``; ``/models/<id>`` lists versions in page order (which may start with an Early
  Access version).
* Civitai's download endpoint chooses the file as the server does: ``fileId`` exact; ``type``
  strict; ``format``/``size``/``fp``/``quantType`` rule a file out only when its (full, server
  side) metadata has the key with another value; then the server's score (model file types,
  then format, size, fp: weights 1000/100/10/1); no query: the primary file. It answers the
  real JSON error bodies (404/410/403 Early Access/403/401 login/401 disabled/429/400) and a
  307 to the storage host, whose URL carries ``response-content-disposition``.
* Hugging Face: an LFS file answers 302 with a text body, ``X-Linked-Etag``/``X-Linked-Size``/
  ``X-Repo-Commit`` and an ``ETag`` that is not the SHA-256; a non-LFS file answers 307 with a
  relative ``Location`` to ``/api/resolve-cache/...``, then 200 with a git blob ``ETag``;
  errors carry ``X-Error-Code``/``X-Error-Message`` as the Hub sends them (a repository that
  does not exist answers an anonymous request 401 without a code).

Three listening sockets: the *API* host on 127.0.0.1 (Civitai ``/api/...``, plain
``/files/<name>``), the same handler on 127.0.0.3 playing Hugging Face, and the *storage* host
on 127.0.0.2 (``/obj/<id>``). Like Cloudflare R2 behind Civitai, the storage host answers 400
to any request that carries an ``Authorization`` header.

Faults (``Hub.faults``, per object id or "*"): ``drop_after`` bytes (close the connection; once,
or every time with ``drop_always``), ``stall_after`` bytes for ``stall_s`` seconds, ``corrupt``
(flip bytes), ``ignore_range``, ``ignore_if_range`` (answer 206 to any Range, whatever
``If-Range`` says), ``expire_after`` bytes (the signed URL then answers 403 until a new one is
issued by the API), ``status`` (answer that status, e.g. 429/503, ``status_times`` times, with
``retry_after``), ``throttle_s`` (sleep after each MiB sent; ``chunk`` sets the step),
``cut_each`` (every response ends after that many bytes), ``always_416``, ``range_offset``
(answer a Range request from a later byte than asked), ``gzip``
(claim a Content-Encoding), ``no_etag``, ``no_length`` (no Content-Length: the body ends when
the connection closes), ``listed_size`` (the size Hugging Face's HEAD announces, instead of
the real one). ``Hub.civitai_limit`` answers Civitai's 429 (with its JSON body) that many times.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Civitai's error bodies, as its download endpoint writes them (real-services.md).
CIVITAI_ERRORS = {
    "file_not_found": (404, {"error": "File not found"}),
    "model_not_found": (404, {"error": "Model not found"}),
    "missing_file": (404, {"error": "Missing model file"}),
    "archived": (410, {"error": "Model archived, not available for download"}),
    "no_access": (403, {"error": "You do not have access to download this file"}),
    "login": (401, {"error": "Unauthorized",
                    "message": "The creator of this asset requires you to be logged in to download it"}),
    "disabled": (401, {"error": "Unauthorized",
                       "message": "The creator of this asset has disabled downloads on this file"}),
    "rate_limit": (429, {"error": "We've noticed an unusual amount of downloading from your account. Please "
                                  "wait a moment before downloading more files."}),
}
CIVITAI_FILE_TYPES = ("Model", "Pruned Model", "Negative", "Training Data", "VAE", "Config", "Text Encoder",
                      "Archive")
CIVITAI_FORMATS = ("SafeTensor", "PickleTensor", "GGUF", "Diffusers", "Core ML", "ONNX", "Other")
ALL_HASH_KINDS = ("AutoV1", "AutoV2", "SHA256", "CRC32", "AutoV3")


@dataclass
class Blob:
    """One stored file: bytes in memory or a path on disk (for big benchmark files)."""

    id: str
    name: str
    data: bytes | None = None
    path: str | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else os.path.getsize(self.path)

    def sha256(self) -> str:
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        if not hasattr(self, "_sha"):
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
            self._sha = h.hexdigest()
        return self._sha

    def read(self, start: int, end: int) -> bytes:
        if self.data is not None:
            return self.data[start:end]
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(end - start)


def safetensors_bytes(seed: int = 0, n_floats: int = 64, metadata: dict | None = None) -> bytes:
    """A small valid safetensors file (one F32 tensor of ``n_floats`` values)."""
    vals = struct.pack(f"<{n_floats}f", *[(seed * 31 + i) % 97 / 7.0 for i in range(n_floats)])
    header = {"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, len(vals)]}}
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + vals


@dataclass
class CFile:
    """A file of a Civitai version, as the server's database holds it. ``quant`` is the GGUF
    quantType (server side only: the API never lists it); ``hash_kinds`` the hashes the API
    lists; ``metadata_null``: the API answers ``metadata: null``."""

    blob: str
    type: str = "Model"
    format: str | None = "SafeTensor"
    size: str | None = None
    fp: str | None = None
    quant: str | None = None
    primary: bool = False
    hash_kinds: tuple[str, ...] = ALL_HASH_KINDS
    metadata_null: bool = False
    name: str | None = None
    id: int = 0
    claimed: dict = field(default_factory=dict)  # hashes the API lists wrongly (kind -> value)

    def meta(self) -> dict:
        """The full metadata the server's download logic sees."""
        m = {"format": self.format, "size": self.size, "fp": self.fp}
        if self.quant:
            m["quantType"] = self.quant
        return m


@dataclass
class CivitaiVersion:
    """A model version. ``early_access``: a deadline string, or "permanent" (paid access without
    an end); ``archived``: files withdrawn (API ``files: []``, download 410); ``error``: a key of
    :data:`CIVITAI_ERRORS` the download endpoint answers (``status`` the legacy form of it)."""

    model_id: int
    version_id: int
    files: list[CFile]
    require_token: bool = False
    early_access: str | None = None
    archived: bool = False
    disabled: bool = False
    error: str | None = None
    status: int | None = None
    name: str | None = None
    base_model: str = "SD 1.5"
    trained_words: list[str] = field(default_factory=lambda: ["wbstyle"])


@dataclass
class HfFile:
    blob: str
    lfs: bool = True


class Hub:
    """The shared state of both hosts. ``requests`` logs (host role, method, path, headers)."""

    def __init__(self, token: str | None = "planted-civitai-token", hf_token: str | None = None):
        self.blobs: dict[str, Blob] = {}
        self.versions: dict[int, CivitaiVersion] = {}
        self.hf: dict[tuple[str, str], HfFile] = {}  # (repo, path) -> file
        self.hf_gated: set[str] = set()
        self.hf_accepted: bool = True  # whether the token's user accepted gated repos' terms
        self.hf_commit = "0123456789abcdef0123456789abcdef01234567"
        self.hf_revisions = {"main", "v1.0", self.hf_commit}
        self.token = token
        self.hf_token = hf_token
        self.faults: dict[str, dict] = {}
        self.civitai_limit = 0
        self.requests: list[tuple[str, str, str, dict]] = []
        self.signature = 1
        self.served_bytes: dict[str, int] = {}
        self.lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self.api_base = self.storage_base = self.hf_base = ""

    # -- content ----------------------------------------------------------------------------
    def add_blob(self, id: str, name: str, data: bytes | None = None, path: str | None = None) -> Blob:
        blob = Blob(id, name, data, path)
        self.blobs[id] = blob
        return blob

    def add_civitai(self, model_id: int, version_id: int, blob_ids: list[str] | None = None, primary: int = 0,
                    hashes: bool = True, files: list[CFile] | None = None, **kw) -> CivitaiVersion:
        """A version whose files are ``files``, or one file per blob in ``blob_ids`` (format from
        the name's extension, ``size: pruned, fp: fp16``; the ``primary``-th is primary).
        ``hashes=False``: the API lists no hashes."""
        if files is None:
            files = [CFile(bid, format="SafeTensor" if self.blobs[bid].name.endswith(".safetensors")
                           else "PickleTensor", size="pruned", fp="fp16", primary=i == primary,
                           hash_kinds=ALL_HASH_KINDS if hashes else ())
                     for i, bid in enumerate(blob_ids or [])]
        for i, f in enumerate(files):
            f.id = f.id or version_id * 10 + i
            f.name = f.name or self.blobs[f.blob].name
        v = CivitaiVersion(model_id, version_id, files, **kw)
        self.versions[version_id] = v
        return v

    def civitai_hashes(self, b: Blob) -> dict:
        """Every hash kind Civitai lists for ``b`` (upper-case hex), computed here independently."""
        data = b.read(0, b.size)
        sha = hashlib.sha256(data).hexdigest().upper()
        out = {"SHA256": sha, "AutoV2": sha[:10], "CRC32": zlib.crc32(data).to_bytes(4, "little").hex().upper()}
        if len(data) >= 0x200000:
            out["AutoV1"] = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8].upper()
        if data[8:9] == b"{":
            n = struct.unpack("<Q", data[:8])[0]
            out["AutoV3"] = hashlib.sha256(data[8 + n:]).hexdigest()[:12].upper()
        return out

    def add_hf(self, repo: str, path: str, blob_id: str, gated: bool = False, lfs: bool = True) -> None:
        self.hf[(repo, path)] = HfFile(blob_id, lfs)
        if gated:
            self.hf_gated.add(repo)

    def fault(self, blob_id: str = "*", **kw) -> None:
        self.faults[blob_id] = dict(kw)

    def count(self, role: str, needle: str) -> int:
        return sum(1 for r, _m, p, _h in self.requests if r == role and needle in p)

    # -- what the real server would do ---------------------------------------------------------
    def serve_choice(self, vid: int, query: dict[str, str]) -> CFile | None:
        """The file Civitai's download endpoint serves for ``query`` (None: 404 File not found)."""
        v = self.versions[vid]
        files = v.files
        if "fileId" in query:
            return next((f for f in files if str(f.id) == query["fileId"]), None)
        prefs = {k: query[k] for k in ("type", "format", "size", "fp", "quantType") if k in query}
        if not prefs:
            return next((f for f in files if f.primary), None) or _best(files, {})
        if "type" in prefs:
            files = [f for f in files if f.type == prefs["type"]]
        for key in ("format", "size", "fp", "quantType"):
            if key in prefs:
                files = [f for f in files if f.meta().get(key) in (None, prefs[key])]
        return _best(files, prefs) if files else None

    # -- life -------------------------------------------------------------------------------
    def start(self) -> Hub:
        # Civitai's API on 127.0.0.1, Hugging Face on 127.0.0.3 (so each token has its own host), storage on .2.
        for role, host in (("api", "127.0.0.1"), ("storage", "127.0.0.2"), ("hf", "127.0.0.3")):
            handler = type(f"{role}Handler", (_Handler,), {"hub": self, "role": role})
            srv = ThreadingHTTPServer((host, 0), handler)
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._servers.append(srv)
            base = f"http://{host}:{srv.server_address[1]}"
            if role == "hf":
                self.hf_base = base
            elif role == "api":
                self.api_base = base
            else:
                self.storage_base = base
        return self

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def download_url(self, v: CivitaiVersion, f: CFile) -> str:
        """The file's ``downloadUrl`` as the API writes it: bare for the primary file, else the
        file's type and metadata as query parameters (never ``fileId``)."""
        base = f"{self.api_base}/api/download/models/{v.version_id}"
        if f.primary:
            return base
        q = {"type": f.type, **{k: val for k, val in f.meta().items() if val}}
        return base + "?" + urllib.parse.urlencode(q, quote_via=urllib.parse.quote)

    def file_json(self, v: CivitaiVersion, f: CFile) -> dict:
        b = self.blobs[f.blob]
        hashes = {k: val for k, val in self.civitai_hashes(b).items() if k in f.hash_kinds} | f.claimed
        out = {"id": f.id, "sizeKB": b.size / 1024, "name": f.name, "type": f.type,
               "pickleScanResult": "Success", "pickleScanMessage": "No Pickle imports",
               "virusScanResult": "Success", "virusScanMessage": None, "scannedAt": "2025-01-08T06:16:27.731Z",
               "metadata": None if f.metadata_null else {"format": f.format, "size": f.size, "fp": f.fp},
               "hashes": hashes, "downloadUrl": self.download_url(v, f)}
        if f.primary:
            out["primary"] = True
        return out

    def version_json(self, v: CivitaiVersion) -> dict:
        out = {"id": v.version_id, "modelId": v.model_id, "name": v.name or f"v{v.version_id}",
               "status": "Published", "availability": "EarlyAccess" if v.early_access else "Public",
               "air": f"urn:air:sd1:lora:civitai:{v.model_id}@{v.version_id}", "baseModel": v.base_model,
               "baseModelType": "Standard", "trainedWords": v.trained_words,
               "earlyAccessEndsAt": v.early_access if v.early_access and v.early_access != "permanent" else None,
               "model": {"name": f"model {v.model_id}", "type": "LORA", "nsfw": False, "poi": False},
               "files": [] if v.archived else [self.file_json(v, f) for f in v.files], "images": []}
        if not v.archived:
            out["downloadUrl"] = f"{self.api_base}/api/download/models/{v.version_id}"
        return out


def _best(files: list[CFile], prefs: dict) -> CFile | None:
    """The server's score: model file types first, then format, size, fp against the preferences
    (SafeTensor, pruned, fp16 unless the query says otherwise); the first of equals wins."""
    want = {"format": "SafeTensor", "size": "pruned", "fp": "fp16", **prefs}

    def score(f: CFile) -> int:
        s = 1000 + (1000 if f.type in ("Model", "Pruned Model") else 0)
        if not f.metadata_null:
            for key, weight in (("format", 100), ("size", 10), ("fp", 1)):
                s += weight if f.meta().get(key) == want[key] else -weight
        return s

    return max(files, key=score) if files else None  # max keeps the first of equal scores


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: Hub
    role: str
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    # -- helpers ----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers, "application/json; charset=utf-8")

    def _civitai_error(self, key: str, **extra) -> None:
        status, body = CIVITAI_ERRORS[key]
        self._json(status, {**body, **extra})

    def _bearer(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        hub = self.hub
        url = urllib.parse.urlsplit(self.path)
        with hub.lock:
            hub.requests.append((self.role, self.command, self.path, dict(self.headers)))
        if self.role == "storage":
            return self._storage(url)
        parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        if self.role == "hf":
            if parts[:2] == ["api", "resolve-cache"] and len(parts) >= 6:
                return self._hf_cache("/".join(parts[3:5]), "/".join(parts[6:]))
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._hf("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            return self._send(404, b"Not Found", {"X-Error-Code": "RepoNotFound"})
        if parts[:3] == ["api", "v1", "model-versions"] and len(parts) == 5 and parts[3] == "by-hash":
            return self._by_hash(parts[4])
        if parts[:3] == ["api", "v1", "model-versions"] and len(parts) == 4:
            v = hub.versions.get(int(parts[3])) if parts[3].isdigit() else None
            return self._json(200, hub.version_json(v)) if v else self._json(404, {"error": "Model not found"})
        if parts[:3] == ["api", "v1", "models"] and len(parts) == 4:
            vs = [v for v in hub.versions.values() if str(v.model_id) == parts[3]]  # page order, as added
            if not vs:
                return self._json(404, {"error": "Model not found"})
            return self._json(200, {"id": int(parts[3]), "name": f"model {parts[3]}", "type": "LORA",
                                    "modelVersions": [hub.version_json(v) for v in vs]})
        if parts[:3] == ["api", "download", "models"] and len(parts) == 4:
            return self._download(int(parts[3]), query)
        if parts[:1] == ["files"] and len(parts) >= 2:
            blob = next((b for b in hub.blobs.values() if b.name == "/".join(parts[1:])), None)
            if blob is None:
                return self._send(404, b"no such file")
            return self._serve(blob, cd=blob.name if "cd" in query else None)
        if parts[:1] == ["redirect"]:
            return self._send(302, b"", {"Location": query["to"]})
        if parts[:1] == ["limited"]:  # an endpoint that always answers Civitai's 429 with its body
            return self._civitai_error("rate_limit")
        self._send(404, b"unknown path")

    def _by_hash(self, value: str) -> None:
        # By the hashes the version lists, as Civitai's database does (they may be wrong).
        for v in self.hub.versions.values():
            for f in v.files:
                listed = self.hub.file_json(v, f)["hashes"]
                if value.upper() in set(listed.values()):
                    return self._json(200, self.hub.version_json(v))
        self._json(404, {"error": "Model not found"})

    def _download(self, vid: int, query: dict) -> None:
        hub = self.hub
        v = hub.versions.get(vid)
        if v is None:
            return self._civitai_error("model_not_found")
        bad = next((k for k, known in (("type", CIVITAI_FILE_TYPES), ("format", CIVITAI_FORMATS))
                    if k in query and query[k] not in known), None)
        if bad:
            return self._json(400, {"error": f"Invalid enum value for {bad}: {query[bad]!r}"})
        if v.archived:
            return self._civitai_error("archived")
        if v.status:  # the legacy form: a bare status
            return self._civitai_error({410: "archived", 404: "model_not_found"}.get(v.status, "no_access"))
        f = hub.serve_choice(vid, query)
        if f is None:
            return self._civitai_error("file_not_found")
        if v.disabled:  # sent with a valid token too
            return self._civitai_error("disabled")
        if v.require_token and self._bearer() != hub.token:
            return self._civitai_error("login")
        if v.error:
            return self._civitai_error(v.error)
        if v.early_access:
            extra = {} if v.early_access == "permanent" else {"deadline": v.early_access}
            return self._json(403, {"error": "Early Access", **extra,
                                    "message": "This asset is in Early Access. You can use Buzz access it now!"})
        with hub.lock:
            if hub.civitai_limit > 0:
                hub.civitai_limit -= 1
                limited = True
            else:
                limited = False
            sig = hub.signature
        if limited:
            return self._civitai_error("rate_limit")
        b = hub.blobs[f.blob]
        cd = urllib.parse.quote(f'attachment; filename="{f.name}"')
        # Next.js answers a redirect with 307 and a short body.
        self._send(307, b"Temporary Redirect", {
            "Location": f"{hub.storage_base}/obj/{b.id}?sig={sig}&X-Amz-Expires=86400"
                        f"&response-content-disposition={cd}"})

    # -- Hugging Face ---------------------------------------------------------------------------
    def _hf_error(self, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers)

    def _hf_check(self, repo: str, rev: str, path: str) -> HfFile | None:
        """Answers the Hub's error for the request and returns None, or returns the file."""
        hub = self.hub
        token = self._bearer()
        if token is not None and token != hub.hf_token:
            self._hf_error(401, None, "Invalid credentials in Authorization header")
            return None
        if not any(r == repo for r, _p in hub.hf):
            if token is None:  # anti-enumeration: a missing repository looks like a private one
                self._hf_error(401, None, "Invalid username or password.")
            else:
                self._hf_error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
            return None
        if repo in hub.hf_gated and (token is None or not hub.hf_accepted):
            if token is None:
                self._hf_error(401, "GatedRepo", f"Access to model {repo} is restricted. You must have access "
                                                 "to it and be authenticated to access it. Please log in.")
            else:
                self._hf_error(403, "GatedRepo", f"Access to model {repo} is restricted and you are not in the "
                                                 "authorized list. Visit the model page to ask for access.")
            return None
        if rev not in hub.hf_revisions:
            self._hf_error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        f = hub.hf.get((repo, path))
        if f is None:
            self._hf_error(404, "EntryNotFound", f"{path} does not exist on \"{rev}\"")
            return None
        return f

    def _hf(self, repo: str, rev: str, path: str) -> None:
        hub = self.hub
        f = self._hf_check(repo, rev, path)
        if f is None:
            return
        b = hub.blobs[f.blob]
        if not f.lfs:
            loc = f"/api/resolve-cache/models/{repo}/{hub.hf_commit}/{urllib.parse.quote(path)}"
            return self._send(307, f"Temporary Redirect. Redirecting to {loc}".encode(),
                              {"Location": loc, "X-Repo-Commit": hub.hf_commit})
        loc = f"{hub.storage_base}/obj/{b.id}?sig={hub.signature}"
        self._send(302, f"Found. Redirecting to {loc}".encode(), {
            "Location": loc, "X-Repo-Commit": hub.hf_commit, "X-Linked-Etag": f'"{b.sha256()}"',
            "X-Linked-Size": str(hub.faults.get(b.id, {}).get("listed_size", b.size)),
            "ETag": f'"{git_blob_sha1(b.sha256().encode())}"'})

    def _hf_cache(self, repo: str, path: str) -> None:
        hub = self.hub
        f = hub.hf.get((repo, urllib.parse.unquote(path)))
        if f is None:
            return self._hf_error(404, "EntryNotFound", "Entry not found")
        b = hub.blobs[f.blob]
        data = b.read(0, b.size)
        self._send(200, data, {"ETag": f'"{git_blob_sha1(data)}"', "X-Repo-Commit": hub.hf_commit},
                   ctype="application/octet-stream")

    # -- storage --------------------------------------------------------------------------------
    def _storage(self, url) -> None:
        hub = self.hub
        if "Authorization" in self.headers:
            return self._send(400, b"<Error><Code>InvalidArgument</Code><Message>Missing x-amz-content-sha256"
                              b"</Message></Error>", ctype="application/xml")
        parts = [p for p in url.path.split("/") if p]
        query = urllib.parse.parse_qs(url.query)
        blob = hub.blobs.get(parts[1]) if len(parts) == 2 and parts[0] == "obj" else None
        if blob is None:
            return self._send(404, b"NoSuchKey")
        fault = hub.faults.get(blob.id) or hub.faults.get("*") or {}
        if "expire_after" in fault and int(query.get("sig", ["0"])[0]) < hub.signature:
            return self._send(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>")
        cd = query.get("response-content-disposition", [None])[0]
        self._serve(blob, cd=cd, fault=fault, raw_cd=True)

    def _serve(self, blob: Blob, cd: str | None, fault: dict | None = None, raw_cd: bool = False) -> None:
        hub = self.hub
        fault = fault if fault is not None else (hub.faults.get(blob.id) or hub.faults.get("*") or {})
        if fault.get("status") and fault.get("status_times", 1) > 0:
            fault["status_times"] = fault.get("status_times", 1) - 1
            hdrs = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else {}
            return self._send(fault["status"], b"try later", hdrs)
        size = blob.size
        if fault.get("always_416"):
            return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
        etag = f'"{blob.sha256()[:32]}"' if not fault.get("no_etag") else None
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and not fault.get("ignore_range"):
            if_range = self.headers.get("If-Range")
            if if_range is None or if_range == etag or fault.get("ignore_if_range"):
                start = int(rng.split("=")[1].split("-")[0]) + fault.get("range_offset", 0)
                if start >= size:
                    return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
                status = 206
        headers = {"Accept-Ranges": "bytes", "Content-Length": str(size - start)}
        if fault.get("no_length"):  # a body without a length, ended by closing the connection
            headers = {"Connection": "close"}
            self.close_connection = True
        if etag:
            headers["ETag"] = etag
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        if fault.get("gzip"):
            headers["Content-Encoding"] = "gzip"
        if cd:
            headers["Content-Disposition"] = urllib.parse.unquote(cd) if raw_cd else \
                f"attachment; filename*=UTF-8''{urllib.parse.quote(cd)}"
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        limit = size
        for key in ("drop_after", "stall_after", "expire_after"):
            if fault.get(key) is not None and start < fault[key]:
                limit = min(limit, fault[key])
        if fault.get("drop_always") and fault.get("drop_after") is not None and start >= fault["drop_after"]:
            limit = start  # dropped at that byte every time: a resume from there gets nothing
        if fault.get("cut_each"):
            limit = min(limit, start + fault["cut_each"])
        pos = start
        if blob.path is not None and not fault and start == 0:
            self._sendfile(blob.path, size)
            with hub.lock:
                hub.served_bytes[blob.id] = hub.served_bytes.get(blob.id, 0) + size
            return
        step = fault.get("chunk", 1 << 20)
        try:
            while pos < limit:
                end = min(limit, pos + step)
                chunk = blob.read(pos, end)
                if fault.get("corrupt"):
                    chunk = bytes(b ^ 0xFF for b in chunk[:16]) + chunk[16:]
                self.wfile.write(chunk)
                with hub.lock:
                    hub.served_bytes[blob.id] = hub.served_bytes.get(blob.id, 0) + len(chunk)
                pos = end
                if fault.get("throttle_s"):
                    time.sleep(fault["throttle_s"])  # per step: keeps a transfer in flight for concurrency tests
        except OSError:
            self.close_connection = True  # the client went away (killed or cut)
            return
        if pos >= size:
            return
        self.wfile.flush()
        if fault.get("stall_after") is not None:
            if not fault.get("drop_always"):
                fault.pop("stall_after", None)
            time.sleep(fault.get("stall_s", 5))
        elif fault.get("expire_after") is not None:
            with hub.lock:
                hub.signature += 1  # the URL just used is now expired
            fault_done = fault.get("expire_once", True)
            if fault_done:
                fault["expire_after"] = None
                fault["expire_after_done"] = True
        elif not fault.get("drop_always"):
            fault.pop("drop_after", None)
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _sendfile(self, path: str, size: int) -> None:
        self.wfile.flush()
        with open(path, "rb") as f:
            offset = 0
            while offset < size:
                sent = os.sendfile(self.connection.fileno(), f.fileno(), offset, size - offset)
                if sent == 0:
                    break
                offset += sent
