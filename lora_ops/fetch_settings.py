"""Settings of fetching: tokens, allowed hosts, endpoints, retry policy.

Read from the environment and from ``settings.json`` in the pack's private folder (inside
ComfyUI: ``user/__lora_workbench/``, which ComfyUI never serves over HTTP; on the command line:
``$LORA_WORKBENCH_HOME``, default ``~/.local/share/lora-workbench``). Workflows never carry any
of this, so a shared workflow cannot carry a token or widen what a host may contact.

``settings.json`` keys (all optional)::

    {"civitai_token": "...", "hf_token": "...",
     "allowed_hosts": ["models.example.org"],   # other https hosts whose URLs may be fetched
     "allow_loopback": false,                   # allow 127.0.0.0/8 and http:// on it (mirrors, tests)
     "allow_pickle": false,                     # accept pickle (.ckpt/.pt) content
     "civitai_endpoint": "https://civitai.com", "hf_endpoint": "https://huggingface.co",
     "retries": 5, "backoff_s": 1.0, "stall_timeout_s": 60, "connect_timeout_s": 20}

Environment: ``CIVITAI_API_TOKEN`` (then ``CIVITAI_TOKEN``), ``HF_TOKEN`` (then
``HUGGING_FACE_HUB_TOKEN``) and ``HF_ENDPOINT`` take precedence over the file, as in
comfy-cli and huggingface_hub.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from urllib.parse import urlsplit

from .netguard import CIVITAI_HOSTS, HF_HOSTS

SETTINGS_FILE = "settings.json"


class SettingsError(ValueError):
    """The settings file cannot be used; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class FetchSettings:
    """What fetching may do. Times in seconds."""

    civitai_token: str | None = field(default=None, repr=False)
    hf_token: str | None = field(default=None, repr=False)
    allowed_hosts: tuple[str, ...] = ()
    allow_loopback: bool = False
    allow_pickle: bool = False
    civitai_endpoint: str = "https://civitai.com"
    hf_endpoint: str = "https://huggingface.co"
    retries: int = 5
    backoff_s: float = 1.0
    stall_timeout_s: float = 60.0
    connect_timeout_s: float = 20.0
    max_redirects: int = 5
    user_agent: str = "lora-workbench/0.1"

    def civitai_hosts(self) -> tuple[str, ...]:
        """Hosts that get the Civitai token: the Civitai family and the configured endpoint's host."""
        return CIVITAI_HOSTS + ((_host(self.civitai_endpoint),) if _host(self.civitai_endpoint) else ())

    def hf_hosts(self) -> tuple[str, ...]:
        """Hosts that get the Hugging Face token: huggingface.co, hf.co and the configured endpoint's host."""
        return HF_HOSTS + ((_host(self.hf_endpoint),) if _host(self.hf_endpoint) else ())

    def with_overrides(self, **changes) -> FetchSettings:
        return replace(self, **changes)


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _checked(path: str, data: dict) -> dict:
    known = {f.name: f for f in fields(FetchSettings)}
    out = {}
    for key, value in data.items():
        if key not in known:
            raise SettingsError(f"{path}: unknown setting {key!r}; known: {', '.join(sorted(known))}.")
        want = known[key].type
        ok = {"bool": isinstance(value, bool),
              "int": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
              "float": isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
              "str": isinstance(value, str),
              "str | None": value is None or isinstance(value, str),
              "tuple[str, ...]": isinstance(value, list) and all(isinstance(v, str) for v in value)}.get(want, True)
        if not ok:
            raise SettingsError(f"{path}: setting {key!r} = {value!r} should be of type {want}; fix the file.")
        if key in ("civitai_endpoint", "hf_endpoint") and urlsplit(value).scheme not in ("https", "http"):
            raise SettingsError(f"{path}: {key} must be a URL like https://civitai.com (got {value!r}).")
        out[key] = tuple(v.lower() for v in value) if want == "tuple[str, ...]" else value
    return out


def load_settings(folder: str | os.PathLike | None, environ: dict | None = None) -> FetchSettings:
    """Settings from ``folder/settings.json`` (missing file = defaults) and the environment.

    Raises :class:`SettingsError` when the file is not a JSON object of known keys and types.
    """
    env = os.environ if environ is None else environ
    values: dict = {}
    if folder is not None:
        path = os.path.join(folder, SETTINGS_FILE)
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError) as e:
                raise SettingsError(f"{path} cannot be read as JSON ({e}); fix or delete it.") from None
            if not isinstance(data, dict):
                raise SettingsError(f"{path} must hold a JSON object of settings; fix or delete it.")
            values = _checked(path, data)
    for key, names in (("civitai_token", ("CIVITAI_API_TOKEN", "CIVITAI_TOKEN")),
                       ("hf_token", ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"))):
        for name in names:
            if env.get(name, "").strip():
                values[key] = env[name].strip()
                break
    if env.get("HF_ENDPOINT", "").strip():
        values["hf_endpoint"] = env["HF_ENDPOINT"].strip().rstrip("/")
    for key in ("civitai_endpoint", "hf_endpoint"):
        if key in values:
            values[key] = values[key].rstrip("/")
    return FetchSettings(**values)


def default_home() -> str:
    """The private folder used outside ComfyUI (command line)."""
    return os.environ.get("LORA_WORKBENCH_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share", "lora-workbench")
