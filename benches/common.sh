# Shared by the benchmark scripts (sourced, not run): a scratch folder, the processes
# started (stopped on exit), and free loopback ports.
#   source benches/common.sh; bench_begin <name>
# sets $work; append started PIDs to the array `pids`. BENCH_KEEP=1 keeps $work.

bench_begin() {
  work=$(mktemp -d -t "sluice-$1.XXXXXX")
  pids=()
  trap bench_end EXIT
}

bench_end() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n ${BENCH_KEEP:-} ]] || rm -rf "$work"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
