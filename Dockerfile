# Images of this repository for the local observability stack (docker-compose.yml):
# lambda-sim, the bridge it runs (lambda-telemetry-bridge, next to it) and raw-json-mock.
#
#   docker build -t lambda-telemetry-bridge-stack .
#
# Both stages are Debian 12 (bookworm), so the binaries find the glibc they were linked against.

FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
# The workspace: the extension (root), the simulator and the harness (every member must be present).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY lambda-sim ./lambda-sim
COPY bridge-bench ./bridge-bench
RUN cargo build --release --locked -p lambda-telemetry-bridge -p lambda-sim \
        --bin lambda-telemetry-bridge --bin lambda-sim --bin raw-json-mock \
    && mkdir -p /out \
    && cp target/release/lambda-telemetry-bridge target/release/lambda-sim \
          target/release/raw-json-mock /out/

FROM debian:bookworm-20260803-slim
# lambda-sim starts the extension found next to itself.
COPY --from=builder /out/ /usr/local/bin/
# Nothing here needs root.
USER 65534:65534
EXPOSE 8080 9464
CMD ["lambda-sim", "--help"]
