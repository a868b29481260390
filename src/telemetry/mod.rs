//! The Telemetry API side: the subscription request, the HTTP listener Lambda POSTs batches to,
//! the batch parser, and the progress signal ("runtimeDone for request R has arrived") that the
//! lifecycle waits on before letting the environment freeze.

pub mod batch;
pub mod listener;
pub mod progress;
pub mod subscription;
