#!/usr/bin/env bash
# Installs the system packages Sluice needs on Debian 12 / Ubuntu 22.04+, only
# when something is missing. Idempotent; uses sudo when not root.
#   scripts/setup-debian.sh          # build + run: GStreamer and its plugins
#   scripts/setup-debian.sh --test   # also every program the test suite runs
#
# Programs are checked by command name, not only by package: a package that is
# "installed" but whose binary is gone still counts as missing. Anything still
# missing afterwards fails in one line naming it.
set -euo pipefail

packages=(
  pkg-config gcc
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-x fonts-dejavu-core
)
# command -> the package that provides it
declare -A commands=([pkg-config]=pkg-config [cc]=gcc)
if [[ "${1:-}" == "--test" ]]; then
  # ffmpeg: the publishers and decoders of the end-to-end tests; ffprobe: segment
  # checks; gst-launch-1.0: a GStreamer RTMP publisher; curl: the CI's own checks;
  # c++: libFuzzer's runtime, built by the fuzz crate whose seeds the suite replays;
  # nginx: the HTTP cache of docker/nginx-cache.conf, tested in front of the server;
  # libnginx-mod-rtmp: nginx-rtmp, the RTMP server rtmp-pull ingests are tested against;
  # python3-m3u8: the independent LL-HLS playlist parser of the LL-HLS oracle test;
  # chromium: the headless browser that plays the status page's player (and a recording);
  # mount: the size-limited tmpfs a recording is made to fill up (the suite runs as root).
  packages+=(ffmpeg gstreamer1.0-tools curl g++ nginx-light libnginx-mod-rtmp python3-m3u8 chromium mount)
  commands+=([ffmpeg]=ffmpeg [ffprobe]=ffmpeg [gst-launch-1.0]=gstreamer1.0-tools [curl]=curl [c++]=g++ [python3]=python3-m3u8 [chromium]=chromium [mount]=mount [umount]=mount)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
for c in "${!commands[@]}"; do
  command -v "$c" >/dev/null || missing+=("${commands[$c]}")
done
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')

if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null; then
    echo "sluice: missing system packages (${missing[*]}) and no apt-get: install GStreamer 1.22+ with its base/good/bad/ugly/libav plugins (and ffmpeg, gstreamer tools for the tests) by hand" >&2
    exit 1
  fi
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  echo "sluice: installing ${missing[*]}" >&2
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends --reinstall "${missing[@]}"
fi

for c in "${!commands[@]}"; do
  if ! command -v "$c" >/dev/null; then
    echo "sluice: required program '$c' not found on PATH after installing ${commands[$c]}" >&2
    exit 1
  fi
done

if [[ "${1:-}" == "--test" ]] && [[ ! -e /usr/lib/nginx/modules/ngx_rtmp_module.so ]]; then
  echo "sluice: the nginx RTMP module (/usr/lib/nginx/modules/ngx_rtmp_module.so) is missing after installing libnginx-mod-rtmp" >&2
  exit 1
fi

if [[ "${1:-}" == "--test" ]] && ! /usr/bin/python3 -c 'import m3u8' 2>/dev/null; then
  echo "sluice: the python3 module m3u8 is not importable by /usr/bin/python3 after installing python3-m3u8" >&2
  exit 1
fi

if ! command -v cargo >/dev/null; then
  echo "sluice: no Rust toolchain found. Install one (Rust 1.92 or newer) with rustup: https://rustup.rs" >&2
  exit 1
fi
