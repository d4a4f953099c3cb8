#!/usr/bin/env bash
# Builds and runs Sluice on its embedded default configuration (or pass
# `--config FILE`): installs missing system packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
cargo build --release -p sluice-server
exec target/release/sluice serve "$@"
