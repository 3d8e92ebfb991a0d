"""A real HTTP server on loopback that plays Civitai, Hugging Face, an object store and a plain
file host, with switchable faults. Tests (and scripts/bench_fetch.py) start it; nothing here
touches the internet.

Three listening sockets: the *API* host on 127.0.0.1 (Civitai ``/api/...``, plain
``/files/<name>``), the same handler on 127.0.0.3 playing Hugging Face
(``/<org>/<repo>/resolve/<rev>/<path>``), and the *storage* host on 127.0.0.2 (``/obj/<id>``,
what Civitai and Hugging Face redirect to). Like Cloudflare R2 behind Civitai, the storage host
answers 400 to any request that carries an ``Authorization`` header.

Faults (``Hub.faults``, per object id or "*"): ``drop_after`` bytes (close the connection; once,
or every time with ``drop_always``), ``stall_after`` bytes for ``stall_s`` seconds, ``corrupt``
(flip bytes), ``ignore_range``, ``expire_after`` bytes (the signed URL then answers 403 until a
new one is issued by the API), ``status`` (answer that status, e.g. 429/503, ``status_times``
times, with ``retry_after``), ``throttle_s`` (sleep after each MiB sent), ``always_416``,
``range_offset`` (answer a Range request from a later byte than asked), ``gzip`` (claim a
Content-Encoding), ``no_etag``, ``no_length`` (no Content-Length: the body ends when the
connection closes), ``listed_size`` (the size Hugging Face's HEAD announces, instead of the real one).
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
class CivitaiVersion:
    """A model version with its files (blob ids); ``early_access`` = deadline string."""

    model_id: int
    version_id: int
    files: list[dict]
    require_token: bool = False
    early_access: str | None = None
    status: int | None = None  # e.g. 404, 410 for the download URL
    base_model: str = "SD 1.5"
    trained_words: list[str] = field(default_factory=lambda: ["wbstyle"])


class Hub:
    """The shared state of both hosts. ``requests`` logs (host role, method, path, headers)."""

    def __init__(self, token: str | None = "planted-civitai-token", hf_token: str | None = None):
        self.blobs: dict[str, Blob] = {}
        self.versions: dict[int, CivitaiVersion] = {}
        self.hf: dict[tuple[str, str], str] = {}  # (repo, path) -> blob id
        self.hf_gated: set[str] = set()
        self.hf_commit = "0123456789abcdef0123456789abcdef01234567"
        self.token = token
        self.hf_token = hf_token
        self.faults: dict[str, dict] = {}
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

    def add_civitai(self, model_id: int, version_id: int, blob_ids: list[str], primary: int = 0,
                    hashes: bool = True, **kw) -> CivitaiVersion:
        files = []
        for i, bid in enumerate(blob_ids):
            b = self.blobs[bid]
            files.append({"id": int(version_id * 10 + i), "blob": bid, "name": b.name, "type": "Model",
                          "primary": i == primary, "hashes": self._civitai_hashes(b) if hashes else {},
                          "metadata": {"format": "SafeTensor" if b.name.endswith(".safetensors") else "PickleTensor",
                                       "fp": "fp16", "size": "pruned"}})
        v = CivitaiVersion(model_id, version_id, files, **kw)
        self.versions[version_id] = v
        return v

    @staticmethod
    def _civitai_hashes(b: Blob) -> dict:
        if b.path is not None:
            return {"SHA256": b.sha256().upper(), "AutoV2": b.sha256()[:10].upper()}
        data = b.read(0, b.size)
        sha = hashlib.sha256(data).hexdigest().upper()
        n = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0
        tail = hashlib.sha256(data[8 + n:]).hexdigest()[:12].upper()
        return {"SHA256": sha, "AutoV2": sha[:10], "AutoV3": tail,
                "CRC32": zlib.crc32(data).to_bytes(4, "little").hex().upper()}

    def add_hf(self, repo: str, path: str, blob_id: str, gated: bool = False) -> None:
        self.hf[(repo, path)] = blob_id
        if gated:
            self.hf_gated.add(repo)

    def fault(self, blob_id: str = "*", **kw) -> None:
        self.faults[blob_id] = dict(kw)

    def count(self, role: str, needle: str) -> int:
        return sum(1 for r, _m, p, _h in self.requests if r == role and needle in p)

    # -- life -------------------------------------------------------------------------------
    def start(self) -> Hub:
        # Civitai's API on 127.0.0.1, Hugging Face on 127.0.0.3 (so each token has its own host), storage on .2.
        for role, host in (("api", "127.0.0.1"), ("storage", "127.0.0.2"), ("api", "127.0.0.3")):
            handler = type(f"{role}Handler", (_Handler,), {"hub": self, "role": role})
            srv = ThreadingHTTPServer((host, 0), handler)
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            self._servers.append(srv)
            base = f"http://{host}:{srv.server_address[1]}"
            if host == "127.0.0.3":
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

    def version_json(self, v: CivitaiVersion) -> dict:
        files = []
        for f in v.files:
            b = self.blobs[f["blob"]]
            q = "" if f["primary"] else f"?fileId={f['id']}"
            files.append({k: val for k, val in f.items() if k != "blob"} | {
                "sizeKB": b.size / 1024, "downloadUrl": f"{self.api_base}/api/download/models/{v.version_id}{q}",
                "pickleScanResult": "Success", "virusScanResult": "Success"})
        return {"id": v.version_id, "modelId": v.model_id, "name": f"v{v.version_id}",
                "air": f"urn:air:sd1:lora:civitai:{v.model_id}@{v.version_id}", "baseModel": v.base_model,
                "trainedWords": v.trained_words, "model": {"name": f"model {v.model_id}", "type": "LORA"},
                "files": files, "downloadUrl": f"{self.api_base}/api/download/models/{v.version_id}"}


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
        self._send(status, json.dumps(obj).encode(), headers, "application/json")

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
        query = urllib.parse.parse_qs(url.query)
        if parts[:3] == ["api", "v1", "model-versions"] and len(parts) == 5 and parts[3] == "by-hash":
            return self._by_hash(parts[4])
        if parts[:3] == ["api", "v1", "model-versions"] and len(parts) == 4:
            v = hub.versions.get(int(parts[3])) if parts[3].isdigit() else None
            return self._json(200, hub.version_json(v)) if v else self._json(404, {"error": "Not found"})
        if parts[:3] == ["api", "v1", "models"] and len(parts) == 4:
            vs = [v for v in hub.versions.values() if str(v.model_id) == parts[3]]
            if not vs:
                return self._json(404, {"error": "Not found"})
            vs.sort(key=lambda v: -v.version_id)
            return self._json(200, {"id": int(parts[3]), "modelVersions": [hub.version_json(v) for v in vs]})
        if parts[:3] == ["api", "download", "models"] and len(parts) == 4:
            return self._download(int(parts[3]), query)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._hf("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        if parts[:1] == ["files"] and len(parts) >= 2:
            blob = next((b for b in hub.blobs.values() if b.name == "/".join(parts[1:])), None)
            if blob is None:
                return self._send(404, b"no such file")
            return self._serve(blob, cd=blob.name if "cd" in query else None)
        if parts[:1] == ["redirect"]:
            return self._send(302, b"", {"Location": query["to"][0]})
        self._send(404, b"unknown path")

    def _by_hash(self, value: str) -> None:
        # By the hashes the version lists, as Civitai's database does (they may be wrong).
        for v in self.hub.versions.values():
            for f in v.files:
                if value.upper() in {str(h).upper() for h in f["hashes"].values()}:
                    return self._json(200, self.hub.version_json(v))
        self._json(404, {"error": "Model not found"})

    def _download(self, vid: int, query: dict) -> None:
        hub = self.hub
        v = hub.versions.get(vid)
        if v is None:
            return self._json(404, {"error": "Not found"})
        if v.status:
            return self._json(v.status, {"error": {410: "Archived", 404: "Not found"}.get(v.status, "Error")})
        if v.require_token and self._bearer() != hub.token:
            return self._json(401, {"error": "Unauthorized", "message": "The creator of this asset requires you "
                                    "to be logged in to download it"})
        if v.early_access:
            return self._json(403, {"error": "Early Access", "deadline": v.early_access})
        fid = query.get("fileId", [None])[0]
        f = next((f for f in v.files if str(f["id"]) == fid), None) if fid else next(
            (f for f in v.files if f["primary"]), v.files[0])
        if f is None:
            return self._json(404, {"error": "File not found"})
        b = hub.blobs[f["blob"]]
        cd = urllib.parse.quote(f'attachment; filename="{b.name}"')
        with hub.lock:
            sig = hub.signature
        self._send(302, b"", {"Location": f"{hub.storage_base}/obj/{b.id}?sig={sig}&X-Amz-Expires=86400"
                                          f"&response-content-disposition={cd}"})

    def _hf(self, repo: str, rev: str, path: str) -> None:
        hub = self.hub
        bid = hub.hf.get((repo, path))
        token = self._bearer()
        if token is not None and token != hub.hf_token:
            return self._json(401, {"error": "Invalid credentials in Authorization header"})
        if bid is None:
            return self._json(404, {"error": "Entry not found"})
        if repo in hub.hf_gated and token is None:
            return self._json(401, {"error": "Access to this model is restricted; accept its terms."})
        b = hub.blobs[bid]
        self._send(302, b"", {"Location": f"{hub.storage_base}/obj/{b.id}?sig={hub.signature}",
                              "X-Repo-Commit": hub.hf_commit, "X-Linked-Etag": f'"{b.sha256()}"',
                              "X-Linked-Size": str(hub.faults.get(b.id, {}).get("listed_size", b.size)),
                              "ETag": f'"{b.sha256()}"'})

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
            if if_range is None or if_range == etag:
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
        pos = start
        if blob.path is not None and not fault and start == 0:
            self._sendfile(blob.path, size)
            return
        while pos < limit:
            end = min(limit, pos + (1 << 20))
            chunk = blob.read(pos, end)
            if fault.get("corrupt"):
                chunk = bytes(b ^ 0xFF for b in chunk[:16]) + chunk[16:]
            self.wfile.write(chunk)
            pos = end
            if fault.get("throttle_s"):
                time.sleep(fault["throttle_s"])  # per MiB: keeps a transfer in flight for concurrency tests
        with hub.lock:
            hub.served_bytes[blob.id] = hub.served_bytes.get(blob.id, 0) + pos - start
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
