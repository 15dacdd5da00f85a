#!/usr/bin/env bash
# Idempotent set-up on Debian 12 as root: Debian packages, then .venv.
# Used by `make demo` and `make test`; safe to run any number of times.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(nftables python3-nftables python3-systemd python3-venv iproute2 systemd
              chromium nginx wrk sqlite3 procps)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 2
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The venv must be built by Debian's interpreter with system site packages so
# that python3-nftables and python3-systemd (not on PyPI) import.
stamp=.venv/.installed-$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import nftables, systemd.daemon' 2>/dev/null; then
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
  fi
  echo "setup: installing pinned Python dependencies into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.lock
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi
