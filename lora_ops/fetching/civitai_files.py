"""Which Civitai version and file a source means, decided from the API's JSON the way Civitai's
own server decides it, and which files are refused from their metadata before any byte.

File choice (Civitai's download endpoint, ``/api/download/models/<version>?...``):

* ``fileId``: exactly that file.
* ``type`` is a strict filter. ``format``, ``size``, ``fp`` and ``quantType`` are preferences:
  a file is ruled out only when its metadata has the key with another value (``size: null``
  fits ``size=pruned``). The API never lists ``quantType`` in ``metadata``; it is in the file's
  own ``downloadUrl``, so that is read too (several GGUF quants of a version share one name).
* Among the files left, the server's score: model file types (``Model``, ``Pruned Model``)
  first, then ``format``, ``size``, ``fp`` against the preferences (SafeTensor, pruned, fp16
  unless the query says otherwise), weights 100/10/1; the first of equals wins.
* No query: the ``primary`` file (else the best score).

Version choice for a model id alone: the first version in the model page's order that can be
downloaded now; Early Access and archived versions are skipped, and said so.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from .http_client import FetchError
from .service_errors import civitai_date

PREFERENCE_KEYS = ("format", "size", "fp", "quantType")
_WEIGHTS = (("format", 100), ("size", 10), ("fp", 1))
_DEFAULTS = {"format": "SafeTensor", "size": "pruned", "fp": "fp16"}
MODEL_TYPES = ("Model", "Pruned Model")
# The values Civitai's download endpoint accepts (others get 400).
FILE_TYPES = ("Model", "Pruned Model", "Negative", "Training Data", "VAE", "Config", "Text Encoder", "Archive")
FORMATS = ("SafeTensor", "PickleTensor", "GGUF", "Diffusers", "Core ML", "ONNX", "Other")
_HASH_KEYS = {"sha256": "sha256", "autov1": "autov1", "autov2": "autov2", "autov3": "autov3", "crc32": "crc32"}


def _eq(a, b) -> bool:
    return str(a).lower() == str(b).lower()


def file_facts(f: dict) -> dict:
    """The file's metadata (format/size/fp, None when unknown) with what its ``downloadUrl``'s
    query adds (``quantType`` is only there)."""
    meta = dict(f.get("metadata") or {})
    try:
        query = parse_qs(urlsplit(str(f.get("downloadUrl") or "")).query)
    except ValueError:
        query = {}
    for key in PREFERENCE_KEYS:
        if meta.get(key) is None and query.get(key):
            meta[key] = query[key][0]
    return meta


def _ruled_out(f: dict, filters: dict) -> str | None:
    """Why ``f`` does not fit ``filters`` (None when it fits)."""
    if "type" in filters and not _eq(f.get("type"), filters["type"]):
        return f"type {f.get('type')}, not {filters['type']}"
    facts = file_facts(f)
    for key in PREFERENCE_KEYS:
        if key in filters and facts.get(key) is not None and not _eq(facts[key], filters[key]):
            return f"{key} {facts[key]}, not {filters[key]}"
    return None


def _score(f: dict, prefs: dict) -> int:
    score = 1000 + (1000 if f.get("type") in MODEL_TYPES else 0)
    meta = f.get("metadata") or {}
    for key, weight in _WEIGHTS:
        if key in meta:
            score += weight if meta[key] is not None and _eq(meta[key], prefs[key]) else -weight
    return score


def choose_file(files: list[dict], file_id: int | None, filters: dict, hash_kind: str | None = None,
                hash_value: str | None = None) -> tuple[dict | None, str]:
    """(the file Civitai would serve, why) or (None, why none fits). ``files`` as the API lists
    them (``metadata``/``hashes`` dicts); ``hash_kind``/``hash_value`` (upper-case hex) pick the
    file with that hash and no other."""
    if file_id is not None:
        chosen = next((f for f in files if f.get("id") == file_id), None)
        return chosen, f"file id {file_id}" if chosen else f"no file has id {file_id}"
    if hash_kind is not None:
        key = _HASH_KEYS[hash_kind]
        chosen = next((f for f in files if str({str(k).lower(): v for k, v in (f.get("hashes") or {}).items()}
                                                 .get(key, "")).upper() == hash_value), None)
        return chosen, f"the file with {hash_kind} {hash_value}" if chosen else f"no file has {hash_kind} {hash_value}"
    if not filters:
        primary = next((f for f in files if f.get("primary")), None)
        if primary is not None:
            return primary, "the version's primary file, which Civitai serves when nothing else is asked"
        best = max(files, key=lambda f: _score(f, _DEFAULTS)) if files else None
        return best, "the model file Civitai serves first (no file is marked primary)"
    for key, known in (("type", FILE_TYPES), ("format", FORMATS)):
        if key in filters and not any(_eq(filters[key], k) for k in known):
            raise FetchError(f"{key}={filters[key]} is not a file {key} Civitai knows (it takes "
                             f"{', '.join(known)}); copy the download URL again from the model page. Nothing was "
                             "downloaded.")
    fitting = [f for f in files if _ruled_out(f, filters) is None]
    if not fitting:
        why = "; ".join(f"{f.get('name')}: {_ruled_out(f, filters)}" for f in files)
        return None, why
    prefs = {**_DEFAULTS, **{k: v for k, v in filters.items() if k in _DEFAULTS}}
    best = max(fitting, key=lambda f: _score(f, prefs))  # max keeps the first of equal scores
    asked = "&".join(f"{k}={v}" for k, v in filters.items())
    return best, f"the file Civitai serves for {asked}"


def why_not(f: dict, filters: dict, file_id: int | None, hash_kind: str | None) -> str:
    """Why ``f`` was not the file taken, in a few words."""
    if file_id is not None:
        return "another file id"
    if hash_kind is not None:
        return f"another {hash_kind}"
    if filters:
        return _ruled_out(f, filters) or "further down Civitai's preference order"
    return "not the primary file"


def describe_file(f: dict) -> str:
    facts = file_facts(f)
    bits = [str(f.get("type") or "?")] + [str(facts[k]) for k in PREFERENCE_KEYS if facts.get(k)]
    return f"{f.get('name')} ({', '.join(bits)})"


def refusal(f: dict, vid, allow_pickle: bool, files: list[dict], settings_path: str) -> str | None:
    """Why ``f`` must not be downloaded, known from the metadata alone (None: it may be): training
    data, an archive or a Diffusers folder (never, whatever ``allow_pickle`` says), a pickle
    (unless ``allow_pickle``). The message names what the file is and which file to take instead."""
    facts = file_facts(f)
    name = str(f.get("name") or "")
    fmt = str(facts.get("format") or "")
    ftype = str(f.get("type") or "")
    where = f"{name} in Civitai model version {vid}"
    never = " allow_pickle does not change this."
    instead = _alternatives(files, f)
    if ftype == "Training Data":
        return (f"{where} is training data (a .zip of the images it was trained on), not a model; refused. "
                f"Nothing was downloaded.{never}{instead}")
    if _eq(fmt, "Diffusers"):
        return (f"{where} is a Diffusers folder packed as a .zip (format Diffusers), not a file ComfyUI loads; "
                f"refused. Nothing was downloaded.{never}{instead}")
    if ftype == "Archive" or name.lower().endswith((".zip", ".7z", ".rar", ".tar", ".gz")):
        return (f"{where} is an archive ({ftype or 'a .zip'}), not a file ComfyUI loads; refused. Nothing was "
                f"downloaded.{never}{instead}")
    if _eq(fmt, "PickleTensor") and not allow_pickle:
        return (f"{where} is a pickle (PickleTensor) file, which can run code when loaded; refused. Nothing was "
                f"downloaded. Set \"allow_pickle\": true in {settings_path} only if you trust its source.{instead}")
    return None


def _alternatives(files: list[dict], not_this: dict) -> str:
    good = [f for f in files if f is not not_this and f.get("type") in MODEL_TYPES + ("VAE",)
            and str(file_facts(f).get("format") or "").lower() in ("safetensor", "gguf")]
    if not good:
        return " This version has no SafeTensor model file."
    listed = "; ".join(f"{describe_file(f)}: {f.get('downloadUrl')}" for f in good[:4])
    return f" Fetch the version's SafeTensor file instead: {listed}."


def version_state(v: dict) -> str | None:
    """Why a version from ``/models/<id>`` cannot be downloaded now (None: it can)."""
    if str(v.get("availability") or "") == "EarlyAccess" or v.get("earlyAccessEndsAt") or \
            v.get("earlyAccessDeadline"):
        deadline = v.get("earlyAccessEndsAt") or v.get("earlyAccessDeadline")
        paid = v.get("paidAccess") if isinstance(v.get("paidAccess"), dict) else {}
        if deadline and not paid.get("permanent"):
            return f"Early Access until {civitai_date(deadline)}"
        return "paid Early Access (no end date)"
    if isinstance(v.get("files"), list) and not v["files"]:
        return "archived (no files)"
    if v.get("status") not in (None, "Published"):
        return f"not published ({v.get('status')})"
    return None


def pick_version(model_id, versions: list[dict]) -> tuple[dict, list[str]]:
    """(the first version that can be downloaded, notes saying which was taken and which were
    skipped and why). Raises :class:`FetchError` when none can be."""
    skipped, skipped_ids = [], []
    for v in versions:
        if not isinstance(v, dict) or not isinstance(v.get("id"), int) or isinstance(v.get("id"), bool):
            continue
        label = f"{v.get('name') or 'version'} ({v['id']})"
        why = version_state(v)
        if why is None:
            notes = [f"Civitai model {model_id}: took version {label}, the first one on the model page that can be "
                     "downloaded now."]
            if skipped:
                notes.append("Skipped " + "; ".join(skipped) + ". To fetch one of those, give its version, e.g. "
                             f"civitai:{model_id}@{skipped_ids[0]}.")
            return v, notes
        skipped.append(f"{label}: {why}")
        skipped_ids.append(v["id"])
    if not skipped:
        raise FetchError(f"Civitai model {model_id} has no published version to download.")
    raise FetchError(f"Civitai model {model_id} has no version you can download now: " + "; ".join(skipped) +
                     ". Wait for the Early Access to end, or buy access and give the version "
                     f"(civitai:{model_id}@<version id>) with CIVITAI_API_TOKEN set.")
