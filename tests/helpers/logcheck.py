"""Find this pack's failures in a ComfyUI server log."""

from __future__ import annotations

from pathlib import Path


def pack_failures(log: str, repo: Path) -> list[str]:
    """Tracebacks through the pack's files, and import failures naming it.

    Not counted: the host's own tracebacks, and the traceback ComfyUI prints after
    "!!! Exception during processing !!!" for a node error it reports to the client as
    ``execution_error`` (tests check those through the prompt's status).
    """
    lines = log.splitlines()
    ours = (f"{repo}/", "custom_nodes/lora-workbench")
    bad = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("Traceback"):
            end = i + 1
            while end < len(lines) and lines[end].startswith(" "):
                end += 1
            block = lines[i:end + 1]  # the frames and the exception line
            reported = i > 0 and "Exception during processing" in lines[i - 1]
            if not reported and any(o in b for b in block for o in ours):
                bad.append("\n".join(block))
            i = end + 1
            continue
        if ("IMPORT FAILED" in line or "Cannot import" in line) and "lora-workbench" in line:
            bad.append(line)
        i += 1
    return bad
