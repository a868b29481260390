//! lambda-telemetry-bridge: an AWS Lambda extension that subscribes to the Lambda Telemetry API and
//! sends every event to several sinks through one batching core.
//!
//! The data flow reads from the module names:
//! `lifecycle` (Extensions API) → `telemetry` (subscription + listener) → `event` → `pipeline`
//! (queue + flush policy) → `sinks` (raw JSON, OTLP), which send through `http` (one client for
//! every output, the self-metrics' Pushgateway included). `app` wires them together. The Lambda
//! stand-in the tests and `lambda-sim` use is a crate of its own (`lambda-sim/`), which does not
//! depend on this one.

pub mod app;
pub mod awake;
pub mod config;
pub mod event;
pub mod http;
pub mod lifecycle;
pub mod masking;
pub mod pipeline;
pub mod self_metrics;
pub mod settings;
pub mod sinks;
pub mod telemetry;
