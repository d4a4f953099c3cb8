#!/usr/bin/env bash
# Requests per second for segments and playlists, in one run, from:
#   nginx     serving the same bytes from files (sendfile, open_file_cache): the peer,
#             asked the same request each Sluice distribution is asked (for the guarded
#             one: the session path, X-Forwarded-For and Origin, answered with CORS);
#   open      a Sluice distribution with no rules;
#   guarded   a Sluice distribution with every rule: JWT (checked on the multivariant),
#             then on each child request the session, geo (country database), IP rule
#             and allowed origin, with X-Forwarded-For from a trusted proxy.
# wrk drives each for BENCH_SECONDS (default 10) with BENCH_CONNECTIONS (default 64) on
# loopback; the last line is BENCH_JSON {...}. Ratios matter, not absolute numbers: the
# machine is shared and has two cores (wrk, the server and nginx share them).
#
#   benches/http_vs_nginx.sh
#   BENCH_SECONDS=20 BENCH_CONNECTIONS=128 benches/http_vs_nginx.sh
#
# Needs: cargo, ffmpeg, curl, python3, wrk and nginx (the last two installed with apt-get when
# missing and running as root). Everything listens on 127.0.0.1; every wait is bounded;
# every process started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${BENCH_SECONDS:-10}
conns=${BENCH_CONNECTIONS:-64}
for tool in wrk nginx; do
  if ! command -v "$tool" >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      apt-get install -y -q "$( [[ $tool == nginx ]] && echo nginx-light || echo wrk )" >/dev/null
    else
      echo "bench: $tool not found; install it" >&2
      exit 1
    fi
  fi
done
for tool in ffmpeg curl cargo; do
  command -v "$tool" >/dev/null || { echo "bench: $tool not found" >&2; exit 1; }
done

source benches/common.sh
bench_begin http-bench
http=$(free_port); rtmp=$(free_port); nginx_port=$(free_port)

cargo build --release -q -p sluice-server
cargo run -q -p sluice-distribution --example test_country_db -- "$work/country.mmdb"
secret=bench-secret-0123456789
cat >"$work/sluice.toml" <<EOF
[server]
http_listen = "127.0.0.1:$http"
rtmp_listen = "127.0.0.1:$rtmp"
data_dir = "$work/data"
trusted_proxies = ["127.0.0.1/32"]
geoip_database = "$work/country.mmdb"

[channels.c.ingests.main]
protocol = "rtmp"
stream_key = "bench-key"
[channels.c.engines.copy]
ladder = "passthrough"

[distributions.open]
channel = "c"

[distributions.guarded]
channel = "c"
geo = { mode = "allow", countries = ["GB"] }
ip = { mode = "allow", cidrs = ["81.2.69.0/24"] }
allowed_origins = ["https://eu.example.com"]
[distributions.guarded.token]
required = true
keys = [{ id = "k", algorithm = "HS256", secret = "$secret" }]
EOF
target/release/sluice serve --config "$work/sluice.toml" 2>"$work/sluice.log" &
pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && break; sleep 0.1; done

# 640x360 at 1.5 Mbit/s, a keyframe a second, for as long as the benchmark needs.
ffmpeg -hide_banner -loglevel error -re -f lavfi -i testsrc2=size=640x360:rate=30 \
  -f lavfi -i sine=frequency=440:sample_rate=48000 -t $((seconds * 6 + 60)) \
  -c:v libx264 -preset ultrafast -tune zerolatency -b:v 1500k -g 30 -pix_fmt yuv420p \
  -c:a aac -b:a 96k -f flv "rtmp://127.0.0.1:$rtmp/live/bench-key" &
pids+=($!)
media="http://127.0.0.1:$http/live/open/cmaf/source/index.m3u8"
for _ in $(seq 1 300); do
  [[ $(curl -sf "$media" | grep -c '\.m4s' || true) -ge 3 ]] && break
  sleep 0.2
done

token=$(target/release/sluice token --config "$work/sluice.toml" --distribution guarded --ttl 1h)
hdr=(-H "X-Forwarded-For: 81.2.69.142" -H "Origin: https://eu.example.com")
multi=$(curl -sf "${hdr[@]}" "http://127.0.0.1:$http/live/guarded/cmaf/index.m3u8?token=$token")
child=$(grep -v '^#' <<<"$multi" | head -1)                  # ../s-…/cmaf/source/index.m3u8
session=$(cut -d/ -f2 <<<"$child")
playlist_path=/live/open/cmaf/source/index.m3u8
seg=$(curl -sf "$media" | grep '\.m4s' | head -1)
seg_path=/live/open/cmaf/source/$seg
guarded_playlist=/live/guarded/$session/cmaf/source/index.m3u8
guarded_seg=/live/guarded/$session/cmaf/source/$seg
for p in "$guarded_playlist" "$guarded_seg"; do
  curl -sf "${hdr[@]}" -o /dev/null "http://127.0.0.1:$http$p" || { echo "bench: $p refused" >&2; exit 1; }
done

# nginx serves the same bytes from files, at the open paths and at the guarded paths (the
# same request line and headers as the guarded distribution gets, answered with the same
# CORS headers), so each Sluice figure is compared with nginx answering the same request.
mkdir -p "$work/www/live/open/cmaf/source" "$work/www/live/guarded/$session/cmaf/source"
curl -sf "http://127.0.0.1:$http$playlist_path" -o "$work/www$playlist_path"
curl -sf "http://127.0.0.1:$http$seg_path" -o "$work/www$seg_path"
cp "$work/www$playlist_path" "$work/www$guarded_playlist"
cp "$work/www$seg_path" "$work/www$guarded_seg"
seg_bytes=$(stat -c %s "$work/www$seg_path")
cat >"$work/nginx.conf" <<EOF
user root;
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on; tcp_nopush on; keepalive_requests 1000000;
  open_file_cache max=100; open_file_cache_valid 60s;
  types { application/vnd.apple.mpegurl m3u8; video/iso.segment m4s; }
  server {
    listen 127.0.0.1:$nginx_port;
    root $work/www;
    location /live/guarded/ {
      add_header Access-Control-Allow-Origin \$http_origin;
      add_header Vary Origin;
    }
  }
}
EOF
nginx -c "$work/nginx.conf" -g 'daemon off;' &
pids+=($!)
for _ in $(seq 1 50); do curl -sf -o /dev/null "http://127.0.0.1:$nginx_port$seg_path" && break; sleep 0.1; done

rps() { # url [header...]
  local url=$1; shift
  local args=()
  for h in "$@"; do args+=(-H "$h"); done
  wrk -t2 -c"$conns" -d"${seconds}s" "${args[@]}" "$url" | awk '/Requests\/sec/ {print $2}'
}
viewer=("X-Forwarded-For: 81.2.69.142" "Origin: https://eu.example.com")
n_seg=$(rps "http://127.0.0.1:$nginx_port$seg_path")
o_seg=$(rps "http://127.0.0.1:$http$seg_path")
ng_seg=$(rps "http://127.0.0.1:$nginx_port$guarded_seg" "${viewer[@]}")
g_seg=$(rps "http://127.0.0.1:$http$guarded_seg" "${viewer[@]}")
n_pl=$(rps "http://127.0.0.1:$nginx_port$playlist_path")
o_pl=$(rps "http://127.0.0.1:$http$playlist_path")
ng_pl=$(rps "http://127.0.0.1:$nginx_port$guarded_playlist" "${viewer[@]}")
g_pl=$(rps "http://127.0.0.1:$http$guarded_playlist" "${viewer[@]}")
g_mv=$(rps "http://127.0.0.1:$http/live/guarded/cmaf/index.m3u8?token=$token" "${viewer[@]}")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
row() { printf '%-46s %12s %10s\n' "$@"; }
echo
row "what ($seg_bytes-byte segment)" "req/s" "vs nginx"
row "segment, nginx (file)" "$n_seg" "1.00"
row "segment, open distribution" "$o_seg" "$(ratio "$o_seg" "$n_seg")"
row "segment, nginx (file, the guarded request)" "$ng_seg" "1.00"
row "segment, guarded (full policy)" "$g_seg" "$(ratio "$g_seg" "$ng_seg")"
row "playlist, nginx (file)" "$n_pl" "1.00"
row "playlist, open distribution" "$o_pl" "$(ratio "$o_pl" "$n_pl")"
row "playlist, nginx (file, the guarded request)" "$ng_pl" "1.00"
row "playlist, guarded (full policy)" "$g_pl" "$(ratio "$g_pl" "$ng_pl")"
row "multivariant, guarded (JWT each), vs playlist" "$g_mv" "$(ratio "$g_mv" "$ng_pl")"
echo "BENCH_JSON {\"seconds\":$seconds,\"connections\":$conns,\"segment_bytes\":$seg_bytes,\"nginx_segment\":$n_seg,\"open_segment\":$o_seg,\"nginx_guarded_segment\":$ng_seg,\"guarded_segment\":$g_seg,\"nginx_playlist\":$n_pl,\"open_playlist\":$o_pl,\"nginx_guarded_playlist\":$ng_pl,\"guarded_playlist\":$g_pl,\"guarded_multivariant\":$g_mv}"
