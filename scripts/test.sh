#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit tests and the
# end-to-end tests (real ffmpeg publishers against the real server).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh --test
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Licences, banned crates and sources of every dependency (deny.toml).
if ! command -v cargo-deny >/dev/null; then
  cargo install cargo-deny --locked --version 0.20.2
fi
cargo deny check licenses bans sources
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
# Fuzz seeds and past crash inputs, replayed through the fuzz targets' bodies.
cargo test --manifest-path fuzz/Cargo.toml 2>&1 | tee -a "$log"
# cargo's last line belongs to whichever crate ran last (often doc-tests with
# nothing to run); close with the totals over every test binary instead.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
