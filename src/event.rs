//! The event model: one Telemetry API event, kept as the exact bytes Lambda sent.
//!
//! The core only needs an event's type (and, for a few platform events, the request id), so
//! that is all that is read on the request path; sinks that need more parse the raw JSON
//! themselves. Keeping the bytes makes the raw JSON sink's output unchanged by construction.

use bytes::Bytes;

/// The `type` of a Telemetry API event, as far as the core cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    InitStart,
    InitRuntimeDone,
    InitReport,
    Start,
    RuntimeDone,
    Report,
    RestoreStart,
    RestoreRuntimeDone,
    RestoreReport,
    Extension,
    TelemetrySubscription,
    LogsDropped,
    /// A `platform.*` type this version does not know.
    OtherPlatform,
    FunctionLog,
    ExtensionLog,
    /// Not an object with a string `type`, or a type outside the schema. Still passed on raw.
    Unknown,
}

impl EventKind {
    pub fn from_type(kind: &str) -> EventKind {
        match kind {
            "platform.initStart" => EventKind::InitStart,
            "platform.initRuntimeDone" => EventKind::InitRuntimeDone,
            "platform.initReport" => EventKind::InitReport,
            "platform.start" => EventKind::Start,
            "platform.runtimeDone" => EventKind::RuntimeDone,
            "platform.report" => EventKind::Report,
            "platform.restoreStart" => EventKind::RestoreStart,
            "platform.restoreRuntimeDone" => EventKind::RestoreRuntimeDone,
            "platform.restoreReport" => EventKind::RestoreReport,
            "platform.extension" => EventKind::Extension,
            "platform.telemetrySubscription" => EventKind::TelemetrySubscription,
            "platform.logsDropped" => EventKind::LogsDropped,
            "function" => EventKind::FunctionLog,
            "extension" => EventKind::ExtensionLog,
            other if other.starts_with("platform.") => EventKind::OtherPlatform,
            _ => EventKind::Unknown,
        }
    }

    /// A stable label (for logs and metrics).
    pub fn label(self) -> &'static str {
        match self {
            EventKind::InitStart => "platform.initStart",
            EventKind::InitRuntimeDone => "platform.initRuntimeDone",
            EventKind::InitReport => "platform.initReport",
            EventKind::Start => "platform.start",
            EventKind::RuntimeDone => "platform.runtimeDone",
            EventKind::Report => "platform.report",
            EventKind::RestoreStart => "platform.restoreStart",
            EventKind::RestoreRuntimeDone => "platform.restoreRuntimeDone",
            EventKind::RestoreReport => "platform.restoreReport",
            EventKind::Extension => "platform.extension",
            EventKind::TelemetrySubscription => "platform.telemetrySubscription",
            EventKind::LogsDropped => "platform.logsDropped",
            EventKind::OtherPlatform => "platform.other",
            EventKind::FunctionLog => "function",
            EventKind::ExtensionLog => "extension",
            EventKind::Unknown => "unknown",
        }
    }
}

/// One event: its exact JSON text (a zero-copy slice of the POST body) and its kind.
#[derive(Debug, Clone)]
pub struct Event {
    raw: Bytes,
    kind: EventKind,
}

impl Event {
    pub fn new(raw: Bytes, kind: EventKind) -> Event {
        Event { raw, kind }
    }

    /// The event's JSON exactly as Lambda sent it.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn kind(&self) -> EventKind {
        self.kind
    }

    /// Bytes this event holds (for the queue's byte limit).
    pub fn size(&self) -> usize {
        self.raw.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_labels() {
        for kind in [
            EventKind::InitStart,
            EventKind::RuntimeDone,
            EventKind::Report,
            EventKind::RestoreReport,
            EventKind::LogsDropped,
            EventKind::FunctionLog,
        ] {
            assert_eq!(EventKind::from_type(kind.label()), kind);
        }
        assert_eq!(
            EventKind::from_type("platform.somethingNew"),
            EventKind::OtherPlatform
        );
        assert_eq!(EventKind::from_type("metrics"), EventKind::Unknown);
    }
}
