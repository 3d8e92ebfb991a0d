#!/usr/bin/env bash
# Headless Chromium from Debian's packages, for the browser tests (tests/browser). Idempotent:
# a machine that has /usr/bin/chromium is left as it is. Needs root and apt-get to install;
# without them it says what to run and exits 0 (the browser tests then fail in CI, skip elsewhere).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  printf '[setup] installing Debian'"'"'s chromium for the browser tests\n' >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  printf '[setup] chromium is missing: run `sudo apt-get install chromium` for the browser tests\n' >&2
fi
