#!/bin/sh
# Install the system packages and the Python virtual environment that the
# service, its demo and its tests need. Safe to run again: it installs only
# what is missing. Needs root for apt-get (Debian 12 or later).
set -eu

cd "$(dirname "$0")/.."

PACKAGES="swtpm swtpm-tools libtss2-dev dbus dbus-bin pkg-config gcc openssl util-linux python3-venv python3-dev tpm2-tools"

missing=""
for package in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $package"
    fi
done

if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: missing packages:$missing; run as root or install them" >&2
        exit 1
    fi
    echo "install-deps: installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
