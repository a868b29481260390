//! One module per output. Each implements [`crate::pipeline::Sink`].

pub mod otlp;
pub mod raw_json;
