//! One module per output. Each implements [`crate::pipeline::Sink`].

pub mod http;
pub mod otlp;
pub mod raw_json;
