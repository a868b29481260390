//! X-Ray trace header → OpenTelemetry trace context.
//!
//! `Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1`: the trace id is
//! the 8 hex digits of the epoch part followed by the 24 of the unique part; `Parent` is the
//! parent span id; `Sampled=1` sets the sampled flag.

use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XrayContext {
    pub trace_id: TraceId,
    pub parent: Option<SpanId>,
    pub flags: TraceFlags,
}

pub fn parse(header: &str) -> Option<XrayContext> {
    let mut trace_id = None;
    let mut parent = None;
    let mut flags = TraceFlags::SAMPLED;
    for part in header.split(';') {
        let (key, value) = match part.trim().split_once('=') {
            Some(kv) => kv,
            None => continue,
        };
        match key.trim() {
            "Root" => {
                let mut pieces = value.trim().split('-');
                let (Some("1"), Some(epoch), Some(unique), None) =
                    (pieces.next(), pieces.next(), pieces.next(), pieces.next())
                else {
                    return None;
                };
                if epoch.len() != 8 || unique.len() != 24 {
                    return None;
                }
                let id = TraceId::from_hex(&format!("{epoch}{unique}")).ok()?;
                if id == TraceId::INVALID {
                    return None;
                }
                trace_id = Some(id);
            }
            "Parent" => {
                parent = SpanId::from_hex(value.trim())
                    .ok()
                    .filter(|id| *id != SpanId::INVALID && value.trim().len() == 16);
            }
            "Sampled" if value.trim() == "0" => flags = TraceFlags::NOT_SAMPLED,
            _ => {}
        }
    }
    Some(XrayContext {
        trace_id: trace_id?,
        parent,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_maps() {
        let ctx =
            parse("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1")
                .expect("valid header");
        assert_eq!(
            ctx.trace_id,
            TraceId::from_hex("5759e988bd862e3fe1be46a994272793").expect("hex")
        );
        assert_eq!(
            ctx.parent,
            Some(SpanId::from_hex("53995c3f42cd8ad8").expect("hex"))
        );
        assert!(ctx.flags.is_sampled());
    }

    #[test]
    fn partial_and_bad_headers() {
        let ctx = parse("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=0").expect("root only");
        assert_eq!(ctx.parent, None);
        assert!(!ctx.flags.is_sampled());
        assert!(parse("Parent=53995c3f42cd8ad8").is_none());
        assert!(parse("Root=2-5759e988-bd862e3fe1be46a994272793").is_none());
        assert!(parse("Root=1-5759e98-bd862e3fe1be46a994272793").is_none());
        assert!(parse("Root=1-zzzzzzzz-bd862e3fe1be46a994272793").is_none());
        assert!(parse("").is_none());
    }
}
