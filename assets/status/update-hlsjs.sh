#!/usr/bin/env bash
# Refreshes the hls.js the status page serves, from the npm registry:
#   assets/status/update-hlsjs.sh 1.7.4
# The tarball's integrity is checked against what the registry publishes; the file is
# kept as hls-<version>.min.js (its URL changes with the version, so it is cached as
# immutable) without its source map reference (the page makes no request for it).
# Then point the include_bytes! in crates/sluice-server/src/page.rs at the new file.
set -euo pipefail
version=${1:?usage: $0 VERSION}
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tarball="https://registry.npmjs.org/hls.js/-/hls.js-$version.tgz"
curl -fsSL "$tarball" -o "$tmp/hls.tgz"
want=$(curl -fsSL "https://registry.npmjs.org/hls.js/$version" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["dist"]["integrity"])')
got="sha512-$(openssl dgst -sha512 -binary "$tmp/hls.tgz" | base64 -w0)"
[[ "$want" == "$got" ]] || { echo "integrity mismatch: $got, registry says $want" >&2; exit 1; }
tar -xzf "$tmp/hls.tgz" -C "$tmp"
rm -f hls-*.min.js
grep -v '^//# sourceMappingURL=' "$tmp/package/dist/hls.min.js" > "hls-$version.min.js"
cp "$tmp/package/LICENSE" hls.js-LICENSE
echo "hls-$version.min.js ($(wc -c < "hls-$version.min.js") bytes), integrity $got"
