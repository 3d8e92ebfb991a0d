"""scripts/setup.sh is idempotent: a second run only checks, builds nothing, changes nothing."""

from __future__ import annotations

import os
import subprocess

from helpers.paths import REPO


def snapshot(root):
    """Every path under .host/base with its link target (links are what set-up makes)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = os.readlink(p) if os.path.islink(p) else None
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return out


def test_second_setup_run_builds_and_changes_nothing():
    base = REPO / ".host" / "base"
    before = snapshot(base)
    env_target = os.readlink(REPO / ".host" / "env")
    r = subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "building" not in r.stderr and "generating" not in r.stderr
    assert "[setup] ready" in r.stderr
    assert snapshot(base) == before
    assert os.readlink(REPO / ".host" / "env") == env_target
