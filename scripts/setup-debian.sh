#!/usr/bin/env bash
# Installs the system packages Sluice needs on Debian 12 / Ubuntu 22.04+, only
# when something is missing. Idempotent; uses sudo when not root.
#   scripts/setup-debian.sh          # build + run: GStreamer and its plugins
#   scripts/setup-debian.sh --test   # also ffmpeg/ffprobe for the test suite
set -euo pipefail

packages=(
  pkg-config gcc
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-x fonts-dejavu-core
)
if [[ "${1:-}" == "--test" ]]; then
  packages+=(ffmpeg)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null; then
    echo "sluice: missing system packages (${missing[*]}) and no apt-get: install GStreamer 1.22+ with its base/good/bad/ugly/libav plugins by hand" >&2
    exit 1
  fi
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  echo "sluice: installing ${missing[*]}" >&2
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "sluice: no Rust toolchain found. Install one (Rust 1.92 or newer) with rustup: https://rustup.rs" >&2
  exit 1
fi
