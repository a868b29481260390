//! The raw JSON sink's settings: the seed's `DISPATCH_*` variables and `BRIDGE_DISPATCH_HEADERS`.

use std::fmt;

use crate::config::env::Env;
use crate::config::url::{add_authorization, endpoint_url, parse_headers, redact_url};

#[derive(Clone)]
pub struct DispatchConfig {
    pub uri: reqwest::Url,
    pub min_batch_size: usize,
    /// `BRIDGE_DISPATCH_HEADERS` (and Basic authorization from the URL): secrets, never logged
    /// (no Debug impl prints them).
    pub headers: Vec<(String, String)>,
}

impl fmt::Debug for DispatchConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DispatchConfig")
            .field("uri", &redact_url(&self.uri))
            .field("min_batch_size", &self.min_batch_size)
            .field(
                "headers",
                &format_args!("[{} redacted]", self.headers.len()),
            )
            .finish()
    }
}

impl DispatchConfig {
    /// `None` when `DISPATCH_POST_URI` is unset or unusable (then with an issue).
    pub fn read(env: &mut Env) -> Option<DispatchConfig> {
        let (uri, authorization) = env.parse_url(
            "DISPATCH_POST_URI",
            endpoint_url,
            "an absolute http:// or https:// URL",
            "the raw JSON sink is disabled",
        )?;
        let min_batch_size = env
            .parse(
                "DISPATCH_MIN_BATCH_SIZE",
                |v| v.parse::<usize>().ok(),
                "a non-negative integer",
                "using 0 (dispatch at every flush)",
            )
            .unwrap_or(0);
        let mut headers = match env.get("BRIDGE_DISPATCH_HEADERS") {
            None => Vec::new(),
            Some(_) => env.parse_secret(
                "BRIDGE_DISPATCH_HEADERS",
                parse_headers,
                "comma-separated key=value pairs (values may be percent-encoded)",
                "the raw JSON sink is disabled (its endpoint would reject us)",
            )?,
        };
        add_authorization(&mut headers, authorization);
        Some(DispatchConfig {
            uri,
            min_batch_size,
            headers,
        })
    }
}
