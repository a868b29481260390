#!/usr/bin/env bash
# Profiles the bridge under the benchmark's scenarios, as done for BENCHMARKS.md.
#
#   scripts/bench-profile.sh callgrind   # instruction counts per function, standard scenario (300 invocations)
#   scripts/bench-profile.sh callgrind-big   # same, 3 invocations x 10,000 log lines, 1 MiB batches
#   scripts/bench-profile.sh heaptrack   # what holds the heap at its peak, 1 MiB-batch scenario
#   scripts/bench-profile.sh perf        # perf record (cpu-clock, DWARF call graphs), standard scenario
#
# Builds a copy of the release binary with symbols (strip off, line tables) in its own target
# directory (the shared target/ keeps its stripped binaries), wraps it so that the simulator launches
# it under the tool, and leaves the tool's output in $OUT (default /tmp/bench-profile).
# Needs valgrind, heaptrack or perf (Debian: valgrind, heaptrack, linux-perf).
set -euo pipefail
cd "$(dirname "$0")/.."
tool=${1:-callgrind}
out=${OUT:-/tmp/bench-profile}
prof_target=${PROF_TARGET:-target/profiling}
mkdir -p "$out"

CARGO_PROFILE_RELEASE_STRIP=none CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  cargo build --release -p lambda-telemetry-bridge --bin lambda-telemetry-bridge --target-dir "$prof_target"
cargo build --release --bin bridge-bench --bin bench-floor
binary="$(cd "$prof_target" && pwd)/release/lambda-telemetry-bridge"

# The wrapper keeps the binary's name: the bridge registers under the basename of argv[0].
wrapdir="$out/wrap"
mkdir -p "$wrapdir"
wrapper="$wrapdir/lambda-telemetry-bridge"
case "$tool" in
  callgrind|callgrind-big)
    tool_cmd="/usr/bin/valgrind -q --tool=callgrind --callgrind-out-file=$out/callgrind.%p.out" ;;
  heaptrack)
    tool_cmd="/usr/bin/heaptrack -o $out/heaptrack.\$\$" ;;
  perf)
    tool_cmd="/usr/bin/perf record -q -e cpu-clock -F 10000 --call-graph dwarf,32768 -o $out/perf.\$\$.data --" ;;
  *)
    echo "usage: $0 callgrind|callgrind-big|heaptrack|perf" >&2
    exit 2 ;;
esac
printf '#!/bin/sh\nexec %s %s "$@"\n' "$tool_cmd" "$binary" > "$wrapper"
chmod +x "$wrapper"

# The figures printed under a tool are the tool's, not the bridge's; only its output file counts.
case "$tool" in
  callgrind)
    target/release/bridge-bench --runs 1 --invocations 300 --skip-big --bridge "$wrapper" || true ;;
  callgrind-big|heaptrack)
    target/release/bridge-bench --runs 1 --invocations 2 --big-invocations 3 --bridge "$wrapper" || true ;;
  perf)
    target/release/bridge-bench --runs 1 --invocations ${PERF_INVOCATIONS:-2000} --skip-big --bridge "$wrapper" || true ;;
esac
echo "output in $out:"
ls -la "$out"
case "$tool" in
  callgrind*) echo "read with: callgrind_annotate --inclusive=yes $out/callgrind.<pid>.out | less -S" ;;
  heaptrack) echo "read with: heaptrack_print -f $out/heaptrack.<pid>.zst --print-peaks 1 | less" ;;
  perf) echo "read with: perf report -i $out/perf.<pid>.data --children --sort symbol" ;;
esac
