#!/usr/bin/env bash
# Ingest-to-part delay: how long after a frame is pushed over RTMP its LL-HLS part is
# listed, p50/p95, on the default 720p/480p/360p ladder (veryfast), for each rendition and
# audio. A poller follows each media playlist the way an LL-HLS player does (a blocking
# reload for the hinted part; the answer comes as soon as the part is listed) and compares
# the moment each part appears with the moment its last frame was pushed: push start (the
# launch of `ffmpeg -re`) plus the part's end in media time, counted from the session's
# first segment. ffmpeg's own start-up and the RTMP handshake (about 0.2 s here) count as
# delay; the table also gives the figures net of the first part's delay (the constant start
# offset), which is the pipeline's steady cost per part.
#
#   benches/part_delay.sh                     # 30 s, part_seconds 0.5
#   BENCH_SECONDS=60 BENCH_PART=0.333 benches/part_delay.sh
#
# Loopback only; every started process is stopped on exit. Needs cargo, ffmpeg, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${BENCH_SECONDS:-30}
part=${BENCH_PART:-0.5}
for tool in ffmpeg curl python3 cargo; do
  command -v "$tool" >/dev/null || { echo "bench: $tool not found" >&2; exit 1; }
done
source benches/common.sh
bench_begin part-delay
http=$(free_port); rtmp=$(free_port)

cargo build --release -q -p sluice-server --bin sluice
cat >"$work/sluice.toml" <<EOF
[server]
http_listen = "127.0.0.1:$http"
rtmp_listen = "127.0.0.1:$rtmp"
data_dir = "$work/data"

[ladders.bench]
segment_seconds = 2.0
part_seconds = $part
window_seconds = 30
audio_kbps = 128
encoder_preset = "veryfast"
renditions = [
  { name = "720p", width = 1280, height = 720, video_kbps = 2500 },
  { name = "480p", width = 854, height = 480, video_kbps = 1200 },
  { name = "360p", width = 640, height = 360, video_kbps = 700 },
]

[channels.bench.ingests.main]
protocol = "rtmp"
stream_key = "bench-key"
[channels.bench.engines.main]
ladder = "bench"
outputs = ["cmaf"]

[distributions.bench]
channel = "bench"
EOF
target/release/sluice serve --config "$work/sluice.toml" 2>"$work/sluice.log" &
pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && break; sleep 0.1; done

push_start=$(python3 -c 'import time; print(time.time())')
ffmpeg -hide_banner -loglevel error -re -f lavfi -i testsrc2=size=1280x720:rate=30 \
  -f lavfi -i sine=frequency=440:sample_rate=48000 -t $((seconds + 8)) \
  -c:v libx264 -preset veryfast -tune zerolatency -b:v 4000k -g 60 -keyint_min 60 \
  -sc_threshold 0 -pix_fmt yuv420p -c:a aac -b:a 128k -f flv "rtmp://127.0.0.1:$rtmp/live/bench-key" &
pids+=($!)

python3 - "$http" "$push_start" "$seconds" "$part" <<'PY'
import statistics, sys, threading, time, urllib.request

port, push_start, seconds, part_target = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
base = f"http://127.0.0.1:{port}/live/bench/cmaf"
results = {}

def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()

def parse(text):
    """[(msn, [(part uri, duration)], complete)], hint uri"""
    segs, parts, hint = [], [], None
    for line in text.splitlines():
        if line.startswith("#EXT-X-PART:"):
            attrs = dict(a.split("=", 1) for a in line[len("#EXT-X-PART:"):].split(","))
            parts.append((attrs["URI"].strip('"'), float(attrs["DURATION"])))
        elif line.startswith("#EXT-X-PRELOAD-HINT:"):
            hint = line.split('URI="')[1].rstrip('"')
        elif line and not line.startswith("#"):
            segs.append((int(line.split(".")[0]), parts, True))
            parts = []
    if parts:
        msn = int(parts[0][0].split(".")[0])
        segs.append((msn, parts, False))
    return segs, hint

def follow(rendition):
    url = f"{base}/{rendition}/index.m3u8"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            text = get(url)
            break
        except Exception:
            time.sleep(0.2)
    else:
        return
    segs, hint = parse(text)
    first_msn = segs[0][0]  # a fresh server: the session's first segment is listed
    seen, delays = set(), []
    end = time.time() + seconds
    while time.time() < end and hint:
        msn, idx, _ = hint.split(".")
        try:
            text = get(f"{url}?_HLS_msn={msn}&_HLS_part={idx}")
        except Exception:
            continue
        now = time.time()
        segs, hint = parse(text)
        for seg_msn, parts, _ in segs:
            offset = (seg_msn - first_msn) * 2.0
            for uri, d in parts:
                offset += d
                if uri in seen:
                    continue
                seen.add(uri)
                if uri.split(".")[0] == msn and uri.split(".")[1] == idx:
                    delays.append(now - (push_start + offset))
    results[rendition] = delays

threads = [threading.Thread(target=follow, args=(r,)) for r in ["720p", "480p", "360p", "audio"]]
for t in threads: t.start()
for t in threads: t.join()

def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round((len(v) - 1) * p)))]

print(f"\npart_seconds {part_target}: delay from the push of a part's last frame to the part listed (s)")
print(f"{'rendition':10} {'parts':>6} {'p50':>7} {'p95':>7} {'max':>7}   {'net p50':>8} {'net p95':>8}")
summary = {}
for r in ["720p", "480p", "360p", "audio"]:
    d = results.get(r, [])
    if len(d) < 3:
        print(f"{r:10} too few parts ({len(d)})")
        continue
    base_delay = min(d[:5])
    net = [x - base_delay for x in d]
    summary[r] = {"parts": len(d), "p50": round(pct(d, .5), 3), "p95": round(pct(d, .95), 3),
                  "max": round(max(d), 3), "net_p50": round(pct(net, .5), 3), "net_p95": round(pct(net, .95), 3)}
    s = summary[r]
    print(f"{r:10} {s['parts']:>6} {s['p50']:>7.3f} {s['p95']:>7.3f} {s['max']:>7.3f}   {s['net_p50']:>8.3f} {s['net_p95']:>8.3f}")
import json
print("BENCH_JSON " + json.dumps({"part_seconds": float(part_target), "seconds": seconds, "renditions": summary}))
PY
