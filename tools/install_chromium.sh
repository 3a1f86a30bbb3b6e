#!/usr/bin/env bash
# Run by `make test` (the README's test command).
set -eu
# The page test (tests/test_serve_page.py) drives Debian's headless Chromium: install it where it is absent and
# we may (as root, or through sudo without a password). Where we may not, that test fails and says what to install.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  as_root=none
  if [ "$(id -u)" = 0 ]; then
    as_root=""
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
  fi
  if [ "$as_root" != none ] && command -v apt-get >/dev/null; then
    # a failed install (no network, no mirror) leaves the page test to fail and say what is missing: the
    # rest of the suite still runs
    { $as_root apt-get update -qq && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } ||
      echo "tools/install_chromium.sh: apt-get could not install chromium and chromium-driver" >&2
  else
    echo "tools/install_chromium.sh: chromium and chromium-driver are missing and cannot be installed here (needs apt-get, and root or sudo)" >&2
  fi
fi

