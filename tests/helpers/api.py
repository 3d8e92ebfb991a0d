"""Run API-format prompts through a running ComfyUI's HTTP API."""

from __future__ import annotations

import time
import uuid

import requests


class PromptFailed(AssertionError):
    """The prompt was rejected at validation or raised ``execution_error`` while running."""

    def __init__(self, message: str, details: dict):
        self.details = details
        super().__init__(message)


def run_prompt(url: str, prompt: dict, timeout: float = 600.0, extra_data: dict | None = None) -> dict:
    """POST ``prompt`` to ``/prompt``, wait until it finishes, return its ``/history`` entry.

    Raises :class:`PromptFailed` with the host's message when validation rejects the
    prompt or a node raises while executing.
    """
    body = {"prompt": prompt, "client_id": uuid.uuid4().hex}
    if extra_data:
        body["extra_data"] = extra_data
    r = requests.post(f"{url}/prompt", json=body, timeout=30)
    if r.status_code != 200:
        body = r.json()
        raise PromptFailed(f"prompt rejected: {body}", body)
    prompt_id = r.json()["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = requests.get(f"{url}/history/{prompt_id}", timeout=30).json()
        entry = h.get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            status = entry["status"]
            for kind, data in status.get("messages", []):
                if kind == "execution_error":
                    raise PromptFailed(f"{data['node_type']} failed: {data['exception_message']}", data)
            if status.get("status_str") != "success":
                raise PromptFailed(f"prompt ended with {status.get('status_str')}", entry)
            return entry
        time.sleep(0.25)
    raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s")
