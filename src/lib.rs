//! lambda-telemetry-bridge: an AWS Lambda extension that subscribes to the Lambda Telemetry API and
//! sends every event to several sinks through one batching core.
//!
//! The data flow reads from the module names:
//! `lifecycle` (Extensions API) → `telemetry` (subscription + listener) → `event` → `pipeline`
//! (queue + flush policy) → `sinks` (raw JSON, …). `app` wires them together; `sim` is a loopback
//! stand-in for the Lambda control plane used by the `lambda-sim` binary and the tests.

pub mod app;
pub mod config;
pub mod event;
pub mod lifecycle;
pub mod pipeline;
pub mod self_metrics;
pub mod sim;
pub mod sinks;
pub mod telemetry;
