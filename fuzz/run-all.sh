#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each, one after another, starting from the
# committed seeds (fuzz/seeds/<target>/); new inputs go to fuzz/corpus/<target>/,
# crashes to fuzz/artifacts/<target>/. Exits non-zero if any target failed.
#
#   fuzz/run-all.sh 60                      # AddressSanitizer (the default)
#   FUZZ_SANITIZER=none fuzz/run-all.sh 60  # where -Zsanitizer=address does not work
set -uo pipefail

seconds=${1:?usage: fuzz/run-all.sh SECONDS}
# libFuzzer's default cap (4 KB) never reaches the deep paths: an RTMP command nesting
# AMF0 100,000 deep is 500 KB. Every target may grow inputs to 1 MiB.
max_len="${FUZZ_MAX_LEN:-1048576}"
cd "$(dirname "$0")/.."
# cargo-fuzz passes -Z flags; this lets the stable toolchain accept them.
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"
sanitizer="${FUZZ_SANITIZER:-address}"

failed=()
for target in $(cargo fuzz list); do
    echo "== $target: ${seconds}s"
    mkdir -p "fuzz/corpus/$target"
    if ! cargo fuzz run -s "$sanitizer" "$target" \
        "fuzz/corpus/$target" "fuzz/seeds/$target" \
        -- -max_total_time="$seconds" -max_len="$max_len"; then
        failed+=("$target")
    fi
done

if ((${#failed[@]})); then
    echo "failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "all targets ran ${seconds}s without a crash"
