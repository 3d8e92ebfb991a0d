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

from .netguard import CIVITAI_HOSTS, HF_HOSTS, host_of

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
    # Where these settings live, for messages that tell the user which file to edit.
    settings_path: str = field(default="the pack's settings.json", compare=False)

    def civitai_hosts(self) -> tuple[str, ...]:
        """Hosts whose URLs are read as Civitai's: the Civitai family and the configured endpoint's host."""
        return CIVITAI_HOSTS + tuple(h for h in (host_of(self.civitai_endpoint),) if h)

    def hf_hosts(self) -> tuple[str, ...]:
        """Hosts whose URLs are read as Hugging Face's: huggingface.co, hf.co and the configured endpoint's host."""
        return HF_HOSTS + tuple(h for h in (host_of(self.hf_endpoint),) if h)

    def with_overrides(self, **changes) -> FetchSettings:
        return replace(self, **changes)


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
        if key in ("stall_timeout_s", "connect_timeout_s") and value <= 0:
            raise SettingsError(f"{path}: {key} must be more than 0 seconds (got {value!r}).")
        if key == "user_agent" and not _printable(value):
            raise SettingsError(f"{path}: user_agent must be printable ASCII text on one line.")
        if want == "tuple[str, ...]":  # host names: "Host.org:8443" is taken as "host.org"
            value = tuple(urlsplit("//" + v.strip()).hostname or v.strip().lower() for v in value)
        out[key] = value
    return out


def _printable(text: str) -> bool:
    return all(32 <= ord(c) < 127 for c in text)


def _token(value: str | None, where: str) -> str | None:
    """A token as sent in an Authorization header: surrounding white space removed, then
    printable ASCII without spaces. The message never repeats the value."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if not all(33 <= ord(c) < 127 for c in value):
        raise SettingsError(f"the token in {where} contains spaces, line breaks or non-ASCII characters; "
                            "copy it again from the site's token page.")
    return value


def load_settings(folder: str | os.PathLike | None, environ: dict | None = None) -> FetchSettings:
    """Settings from ``folder/settings.json`` (missing file = defaults) and the environment.

    Raises :class:`SettingsError` when the file is not a JSON object of known keys and types.
    """
    env = os.environ if environ is None else environ
    values: dict = {}
    if folder is not None:
        path = os.path.join(folder, SETTINGS_FILE)
        values["settings_path"] = os.path.abspath(path)
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8-sig") as f:  # -sig: files saved by Windows Notepad
                    data = json.load(f)
            except (OSError, ValueError) as e:
                raise SettingsError(f"{path} cannot be read as JSON ({e}); fix or delete it.") from None
            if not isinstance(data, dict):
                raise SettingsError(f"{path} must hold a JSON object of settings; fix or delete it.")
            values.update(_checked(path, data))
            for key in ("civitai_token", "hf_token"):
                if key in values:
                    values[key] = _token(values[key], f"{path} ({key})")
    for key, names in (("civitai_token", ("CIVITAI_API_TOKEN", "CIVITAI_TOKEN")),
                       ("hf_token", ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"))):
        for name in names:
            if env.get(name, "").strip():
                values[key] = _token(env[name], f"the environment variable {name}")
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
