#!/usr/bin/env bash
# Runs the bridge under lambda-sim against a real OpenTelemetry collector process (rotel, from PyPI)
# and checks from its debug log that spans, metrics and logs were accepted, for http/protobuf and
# http/json; and for grpc when GRPC_BRIDGE names a bridge built with `--features grpc`.
# Needs: `pip install --pre rotel` and the release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
agent=$(python3 -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')
[ -x "$agent" ] || { echo "rotel-agent not found (pip install --pre rotel)" >&2; exit 1; }
workdir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$workdir"' EXIT

port=$((20000 + RANDOM % 20000))
protocols="http/protobuf http/json"
[ -n "${GRPC_BRIDGE:-}" ] && protocols="$protocols grpc"
for protocol in $protocols; do
  out="$workdir/rotel-${protocol//\//-}.out"
  "$agent" start --otlp-http-endpoint "127.0.0.1:$port" --otlp-grpc-endpoint "127.0.0.1:$((port + 1))" \
    --exporter blackhole --debug-log traces --debug-log metrics --debug-log logs \
    --debug-log-verbosity detailed --log-file "$workdir/rotel.log" >"$out" 2>&1 &
  pid=$!
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  endpoint="http://127.0.0.1:$port"
  extension=target/release/lambda-telemetry-bridge
  if [ "$protocol" = grpc ]; then
    endpoint="http://127.0.0.1:$((port + 1))"
    extension=$GRPC_BRIDGE
  fi
  OTEL_EXPORTER_OTLP_ENDPOINT="$endpoint" OTEL_EXPORTER_OTLP_PROTOCOL="$protocol" \
    timeout 120 target/release/lambda-sim --extension "$extension" --invocations 5 --errors-every 3 --quiet
  sleep 1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  fail=0
  check() { grep -q -- "$1" "$out" || { echo "rotel ($protocol) never logged: $1" >&2; fail=1; }; }
  check "Kind           : SPAN_KIND_SERVER"
  check "Name           : responseLatency"
  check "Name           : extensionOverhead"
  check "SpanLink #0"
  check "-> Name: faas.invocations"
  check "-> Name: faas.errors"
  check "-> Name: faas.invoke_duration"
  check "-> Name: aws.lambda.billed_duration"
  check "LogRecord #0"
  check "-> cloud.account.id: Str(123456789012)"
  [ "$fail" = 0 ] || { tail -50 "$out" >&2; exit 1; }
  echo "rotel accepted spans, metrics and logs over $protocol"
  port=$((port + 2))
done
