#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit tests and the
# end-to-end tests (real ffmpeg publishers against the real server).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh --test
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
