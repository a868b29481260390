#!/usr/bin/env bash
# Builds extension.zip: the layout Lambda expects, extensions/<name> at the zip's root, which
# Lambda unpacks to /opt/extensions/<name> and launches.
#
#   scripts/build-layer.sh                     # x86_64, for the host's target
#   TARGET=aarch64-unknown-linux-gnu scripts/build-layer.sh   # arm64 (needs that target and a linker)
set -euo pipefail
cd "$(dirname "$0")/.."
name=lambda-telemetry-bridge
target=${TARGET:-}
if [ -n "$target" ]; then
  cargo build --release -p "$name" --bin "$name" --target "$target"
  binary="target/$target/release/$name"
else
  cargo build --release -p "$name" --bin "$name"
  binary="target/release/$name"
fi

# Amazon Linux 2023 ships glibc 2.34: refuse a binary that needs newer symbols.
max_glibc=$(objdump -T "$binary" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
if [ "$(printf '%s\n2.34\n' "$max_glibc" | sort -V | tail -1)" != "2.34" ]; then
  echo "error: $binary needs glibc $max_glibc; Amazon Linux 2023 has 2.34" >&2
  exit 1
fi

install -m 0755 "$binary" "extensions/$name"
rm -f extension.zip
python3 - "$name" <<'PY'
import sys, zipfile
name = sys.argv[1]
with zipfile.ZipFile("extension.zip", "w", zipfile.ZIP_DEFLATED) as z:
    info = zipfile.ZipInfo(f"extensions/{name}")
    info.external_attr = (0o100755 << 16)  # a regular, executable file
    info.compress_type = zipfile.ZIP_DEFLATED
    with open(f"extensions/{name}", "rb") as f:
        z.writestr(info, f.read())
PY
echo "extension.zip: $(stat -c %s extension.zip) bytes; binary $(stat -c %s "$binary") bytes, glibc >= $max_glibc"
