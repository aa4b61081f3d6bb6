#!/usr/bin/env bash
# Idempotent set-up for development, CI and `make run`: Debian packages, then the venv.
# Fast when everything is already in place: it checks before it installs.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
    qemu-system-x86 qemu-utils e2fsprogs kmod fakeroot cpio
    libparted-dev pkg-config gdisk fdisk
    dnsmasq-base iproute2 strace
)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    echo "setup: installing Debian packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
# Reinstall only when the project's metadata changed since the last install.
stamp=.venv/.installed-pyproject
if ! cmp -s pyproject.toml "$stamp"; then
    echo "setup: installing the project into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    cp pyproject.toml "$stamp"
fi
