"""Turn a remote reference into a download :class:`Plan`, using Civitai's and Hugging Face's APIs.

* Civitai (API as its developer docs and site code define it): ``GET /api/v1/model-versions/<id>``
  (``/api/v1/models/<id>`` first when only a model id is known, taking the first version in the
  page's order that can be downloaded now) and ``GET /api/v1/model-versions/by-hash/<hash>``. The
  file is the one Civitai's server would serve (:mod:`lora_ops.fetching.civitai_files`); files the
  metadata already rules out (training data, archives, pickles unless allowed) are refused before
  any byte. Expected SHA-256 from ``hashes.SHA256``; size from ``sizeKB`` (a float of KiB, so
  checked to within 1 KiB).
* Hugging Face: ``HEAD <endpoint>/<repo>/resolve/<revision>/<path>`` without following the CDN
  redirect; ``X-Linked-Etag`` is the SHA-256 of an LFS file, ``X-Linked-Size`` its size and
  ``X-Repo-Commit`` the commit, which is pinned in the recorded URL.
* Other URLs: only hosts in ``allowed_hosts`` (or loopback when allowed); nothing known up front.

Errors are :class:`~lora_ops.fetching.http_client.FetchError` saying what to do (which token, accept the
model's terms, early access until when); :mod:`lora_ops.fetching.service_errors` reads the services'
error bodies and headers.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from .civitai_files import choose_file, describe_file, pick_version, refusal, why_not
from .http_client import Answer, Client, FetchError
from .netguard import for_log, host_matches, is_loopback_host, literal_refusal, safe_filename
from .service_errors import explain, explain_hf
from .settings import FetchSettings
from .source_ref import CivitaiRef, HashRef, HFRef, Ref, UrlRef, describe

log = logging.getLogger("lora_workbench.fetch")

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass
class Plan:
    """What to download. ``url`` is where the transfer starts (it may redirect to a signed URL,
    which is never stored); sizes in bytes; ``expected_sha256`` lower-case hex or None;
    ``provenance`` is token-free and safe to record in a workflow."""

    url: str
    filename: str | None
    expected_size: int | None = None
    size_tolerance: int = 0
    expected_sha256: str | None = None
    provenance: dict = field(default_factory=dict)
    pickle_declared: bool = False
    notes: list[str] = field(default_factory=list)
    use_token: bool = True
    # (kind, upper-case hex) of a hash source: checked against the downloaded bytes' SHA-256
    # for sha256 and autov2 (its first 10 hex digits).
    wanted_hash: tuple[str, str] | None = None

    def key(self) -> str:
        """What identifies the object across runs (for resuming and locking)."""
        return self.expected_sha256 or self.provenance.get("url") or self.url


class Resolver:
    """Makes :class:`Plan` objects; one per fetch (it holds the client)."""

    def __init__(self, client: Client, settings: FetchSettings):
        self.client = client
        self.settings = settings

    def plan(self, ref: Ref, source_text: str) -> Plan:
        """The plan for ``ref``. Raises :class:`FetchError` (or ``UnsafeError`` for refused URLs)."""
        if isinstance(ref, CivitaiRef):
            plan = self._civitai(ref)
        elif isinstance(ref, HashRef):
            plan = self._by_hash(ref)
        elif isinstance(ref, HFRef):
            plan = self._hf(ref)
        elif isinstance(ref, UrlRef):
            plan = self._url(ref)
        else:
            raise TypeError(f"not a remote reference: {ref!r}")
        plan.provenance.setdefault("source", source_text)
        return plan

    # -- Civitai ---------------------------------------------------------------------------
    def _api(self, path: str, what: str):
        answer = self.client.request("GET", f"{self.settings.civitai_endpoint}{path}",
                                     headers={"Accept": "application/json"})
        if answer.status != 200:
            raise explain(answer, what, self.settings)
        return answer.json()

    def _civitai(self, ref: CivitaiRef) -> Plan:
        version_id = ref.version_id
        notes: list[str] = []
        if version_id is None:
            model = self._api(f"/api/v1/models/{ref.model_id}", f"Civitai model {ref.model_id}")
            picked, notes = pick_version(ref.model_id, _list(_dict(model).get("modelVersions")))
            version_id = picked["id"]
        version = self._api(f"/api/v1/model-versions/{version_id}", f"Civitai model version {version_id}")
        plan = self._civitai_plan(version, ref.file_id, dict(ref.filters), None)
        plan.notes[:0] = notes
        return plan

    def _by_hash(self, ref: HashRef) -> Plan:
        what = f"{ref.kind}:{ref.value}"
        answer = self.client.request("GET", f"{self.settings.civitai_endpoint}/api/v1/model-versions/by-hash/"
                                     f"{ref.value}", headers={"Accept": "application/json"})
        if answer.status == 404:
            answer.close()  # read and dropped, so the next request on this connection is not spoiled
            raise FetchError(f"No file with {what} is in this ComfyUI's model folders, and Civitai does not know "
                             "it either. Put the file in the folder, or give its URL instead.", 404)
        if answer.status != 200:
            raise explain(answer, f"Civitai lookup of {what}", self.settings)
        plan = self._civitai_plan(answer.json(), None, {}, ref)
        plan.wanted_hash = (ref.kind, ref.value)
        if ref.kind == "sha256":
            plan.expected_sha256 = ref.value.lower()
        elif plan.expected_sha256 is None and ref.kind != "autov2":
            raise FetchError(f"Civitai lists no SHA-256 for the file with {what}, so a download could not be "
                             "checked against it; give its URL and SHA-256 instead.")
        return plan

    def _civitai_plan(self, version: dict, file_id: int | None, filters: dict, by_hash: HashRef | None) -> Plan:
        if not isinstance(version, dict) or not isinstance(version.get("files"), list):
            raise FetchError("Civitai answered a model version without a file list; try again later.")
        vid = version.get("id")
        vname = version.get("name")
        label = f"Civitai model version {vname} ({vid})" if isinstance(vname, str) and vname else \
            f"Civitai model version {vid}"
        files = [f for f in version["files"] if isinstance(f, dict)]
        for f in files:  # the fields used below, with the types the API documents (metadata may be null)
            f["hashes"], f["metadata"] = _dict(f.get("hashes")), _dict(f.get("metadata"))
        if not files:
            raise FetchError(f"{label} was archived: Civitai lists no files for it and no longer serves them. "
                             "Nothing was downloaded. Look for another source of the same file; its SHA-256 "
                             "(from the model page or an old workflow, as sha256:<hash>) finds copies in your "
                             "folders.")
        chosen, why = choose_file(files, file_id, filters, by_hash.kind if by_hash else None,
                                  by_hash.value if by_hash else None)
        if chosen is None:
            names = "; ".join(f"{describe_file(f)} id {f.get('id')}" for f in files)
            raise FetchError(f"{label} has no file that fits: {why}. Nothing was downloaded. Its files: {names}. "
                             "Give one of these ids as ?fileId=<id> (or +<id> in an AIR), or copy the file's own "
                             "download link from the model page.")
        refused = refusal(chosen, vid, self.settings.allow_pickle, files, self.settings.settings_path)
        if refused:
            raise FetchError(refused)
        name = safe_filename(str(chosen.get("name") or ""), "Civitai file name")
        hashes = {str(k).lower(): str(v) for k, v in (chosen.get("hashes") or {}).items()}
        sha = hashes.get("sha256")
        sha = sha.lower() if sha and _HEX64.match(sha) else None
        size_kb = chosen.get("sizeKB")
        if not isinstance(size_kb, (int, float)) or isinstance(size_kb, bool) or not math.isfinite(size_kb) \
                or size_kb < 0:
            size_kb = None
        endpoint = self.settings.civitai_endpoint
        by_id = f"{endpoint}/api/download/models/{vid}?fileId={chosen.get('id')}"
        url = str(chosen.get("downloadUrl") or by_id)
        if not host_matches(urlsplit(url).hostname or "", self.settings.civitai_hosts()) or any(
                f is not chosen and f.get("downloadUrl") == url for f in files):
            url = by_id  # its own URL would not single it out (or points elsewhere): name the file exactly
        meta = chosen["metadata"]
        model = _dict(version.get("model"))
        plan = Plan(url=url, filename=name,
                    expected_size=int(float(size_kb) * 1024) if isinstance(size_kb, (int, float)) else None,
                    size_tolerance=1024, expected_sha256=sha,
                    pickle_declared=str(meta.get("format", "")).lower() == "pickletensor")
        plan.provenance = {
            "url": for_log(url), "air": version.get("air"), "host": "civitai",
            "civitai": {"model_id": version.get("modelId"), "version_id": vid, "file_id": chosen.get("id"),
                        "model_name": model.get("name"), "version_name": version.get("name")},
            "base_model": version.get("baseModel") if isinstance(version.get("baseModel"), str) else None,
            "trained_words": [w for w in _list(version.get("trainedWords")) if isinstance(w, str)],
        }
        if len(files) > 1:
            others = "; ".join(f"{describe_file(f)}: {why_not(f, filters, file_id, by_hash and by_hash.kind)}"
                               for f in files if f is not chosen)
            plan.notes.append(f"{label} has {len(files)} files; took {describe_file(chosen)}: {why}. "
                              f"Not taken: {others}.")
        if sha is None:
            plan.notes.append("Civitai lists no SHA-256 for this file; it is checked by size and structure only.")
        for scan in ("pickleScanResult", "virusScanResult"):
            if chosen.get(scan) not in (None, "Success"):
                plan.notes.append(f"Civitai's {scan} for this file is {chosen.get(scan)!r}.")
        return plan

    # -- Hugging Face -------------------------------------------------------------------------
    def _hf(self, ref: HFRef) -> Plan:
        base = self.settings.hf_endpoint
        path_q = quote(ref.path)
        url = f"{base}/{ref.repo}/resolve/{quote(ref.revision, safe='')}/{path_q}"
        answer = self._hf_head(url)
        notes = []
        token_refused = False
        if answer.status == 401 and answer.auth_sent:
            # A stale or wrong HF_TOKEN makes even public files answer 401 (ComfyUI #7517): try once without it.
            answer.close()
            token_refused = True
            anonymous = self._hf_head(url, use_token=False)
            if anonymous.status < 400:
                notes.append("HF_TOKEN was refused by Hugging Face (invalid or expired); the public file was "
                             "fetched without it. Replace or remove the token.")
            answer = anonymous
        if answer.status >= 400:
            raise explain_hf(answer, ref.repo, ref.path, ref.revision, token_refused)
        h = answer.response.headers
        commit = h.get("X-Repo-Commit")
        etag = (h.get("X-Linked-Etag") or h.get("ETag") or "").removeprefix("W/").strip('"')
        size = h.get("X-Linked-Size") or (h.get("Content-Length") if answer.status == 200 else None)
        answer.close()
        pinned = commit if commit and re.fullmatch(r"[0-9a-f]{40}", commit) else ref.revision
        pinned_url = f"{base}/{ref.repo}/resolve/{pinned}/{path_q}"
        plan = Plan(url=pinned_url, filename=safe_filename(ref.path.rsplit("/", 1)[-1], "Hugging Face file name"),
                    expected_size=int(size) if size and size.isdigit() else None,
                    expected_sha256=etag.lower() if _HEX64.match(etag) else None, notes=notes,
                    use_token=not notes)
        plan.provenance = {"url": pinned_url if base == "https://huggingface.co" else for_log(pinned_url),
                           "host": "huggingface",
                           "hf": {"repo": ref.repo, "path": ref.path, "revision": ref.revision, "commit": commit}}
        if plan.expected_sha256 is None:
            plan.notes.append("Hugging Face gives no SHA-256 for this file (not stored with LFS); it is checked "
                              "by size and structure only.")
        return plan

    def _hf_head(self, url: str, use_token: bool = True) -> Answer:
        # Follow only same-host redirects (renamed repositories); the CDN redirect of an LFS file
        # carries the X-Linked-* headers itself and is not followed.
        answer = self.client.request("HEAD", url, use_token=use_token, follow=False)
        for _ in range(self.settings.max_redirects):
            loc = answer.header("Location")
            if answer.status not in (301, 302, 307, 308) or not loc or urlsplit(loc).netloc:
                return answer
            answer.close()
            answer = self.client.request("HEAD", f"{self.settings.hf_endpoint}{loc}", use_token=use_token,
                                         follow=False)
        return answer

    # -- other hosts --------------------------------------------------------------------------
    def _url(self, ref: UrlRef) -> Plan:
        host = (urlsplit(ref.url).hostname or "").lower()
        allowed = host_matches(host, self.settings.allowed_hosts) or (
            self.settings.allow_loopback and is_loopback_host(host))
        never = literal_refusal(host)
        if never is not None:
            raise FetchError(f"{describe(ref)}: {host} is {never}. LoRA Workbench only downloads from public "
                             "hosts, and \"allowed_hosts\" cannot change that; use the file's public URL, or copy "
                             "the file into the model folder yourself.")
        if not allowed:
            hint = (f"for a mirror on this machine set \"allow_loopback\": true in {self.settings.settings_path} "
                    "(--allow-loopback on the command line)" if is_loopback_host(host) else
                    f"to fetch from another host, add {host!r} to \"allowed_hosts\" in {self.settings.settings_path}")
            raise FetchError(f"{describe(ref)}: {host} is not an allowed host. LoRA Workbench fetches from "
                             f"Civitai and Hugging Face; {hint}.")
        name = urlsplit(ref.url).path.rsplit("/", 1)[-1]
        plan = Plan(url=ref.url, filename=None)
        plan.provenance = {"url": for_log(ref.url), "host": host, "path_name": name}
        return plan


def _dict(x) -> dict:
    return x if isinstance(x, dict) else {}


def _list(x) -> list:
    return x if isinstance(x, list) else []


def _choose_file(files: list[dict], file_id: int | None, filters: dict, by_hash: HashRef | None) -> dict | None:
    """The file Civitai's server would serve (see :func:`lora_ops.fetching.civitai_files.choose_file`)."""
    for f in files:
        f["hashes"], f["metadata"] = _dict(f.get("hashes")), _dict(f.get("metadata"))
    return choose_file(files, file_id, filters, by_hash.kind if by_hash else None,
                       by_hash.value if by_hash else None)[0]
