//! Builders for Telemetry API events and Extensions API events, as raw JSON shaped like the AWS
//! schema (see SPEC.md). Deliberately independent of the extension's own Rust types, so that a
//! mistake in those types cannot cancel out in tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

/// Runtime version reported in `platform.initStart` / `platform.restoreStart`.
pub const RUNTIME_VERSION: &str = "nodejs:20.v30";
/// Runtime version ARN reported with [`RUNTIME_VERSION`].
pub const RUNTIME_VERSION_ARN: &str = "arn:aws:lambda:us-east-1::runtime:da57c20c4b965d5b75540f6865a35fc8030358e33ec44ecfed33e90901a27a72";
/// Account id the simulated function lives in.
pub const ACCOUNT_ID: &str = "123456789012";
/// Region the simulated function lives in.
pub const REGION: &str = "us-east-1";

/// RFC 3339 UTC with millisecond precision, as Lambda writes `time`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Milliseconds since the Unix epoch.
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A duration in milliseconds as a float rounded to 3 decimals (Lambda's `durationMs`).
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// `n` random lowercase hex digits.
pub fn random_hex(n: usize) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    (0..n)
        .map(|_| char::from(DIGITS[fastrand::usize(..16)]))
        .collect()
}

/// A random UUID-v4-shaped id (`8-4-4-4-12` hex digits).
pub fn uuid() -> String {
    let variant = ['8', '9', 'a', 'b'][fastrand::usize(..4)];
    format!(
        "{}-{}-4{}-{}{}-{}",
        random_hex(8),
        random_hex(4),
        random_hex(3),
        variant,
        random_hex(3),
        random_hex(12)
    )
}

/// The X-Ray context of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// `1-<8 hex epoch seconds>-<24 hex>`.
    pub root: String,
    /// Parent span id (16 hex).
    pub parent: String,
    /// Span id of the invocation segment Lambda reports in `tracing.spanId` (16 hex).
    pub span_id: String,
    /// The full header value `Root=…;Parent=…;Sampled=1`.
    pub header: String,
}

impl Trace {
    /// A new sampled trace context, rooted at the current time.
    pub fn new() -> Trace {
        Trace::with(&mut fastrand::Rng::new(), true)
    }

    /// A trace context from `rng` (a seeded one repeats its ids run after run), its header
    /// saying `Sampled=1` or `Sampled=0`. The epoch part is fixed for a seeded `rng`, so that two
    /// runs give the same trace ids.
    pub fn with(rng: &mut fastrand::Rng, sampled: bool) -> Trace {
        let mut hex = |n: usize| -> String {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            (0..n)
                .map(|_| char::from(DIGITS[rng.usize(..16)]))
                .collect()
        };
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let root = format!("1-{:08x}-{}", secs & 0xffff_ffff, hex(24));
        let parent = hex(16);
        let span_id = hex(16);
        let header = format!(
            "Root={root};Parent={parent};Sampled={}",
            if sampled { 1 } else { 0 }
        );
        Trace {
            root,
            parent,
            span_id,
            header,
        }
    }

    /// [`Trace::with`] for invocation `index` of a run seeded with `seed`: the same ids in every
    /// run with that seed (the epoch part `5f5e1000`, a fixed time), whatever else varies.
    pub fn seeded(seed: u64, index: usize, sampled: bool) -> Trace {
        let mut rng =
            fastrand::Rng::with_seed(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut trace = Trace::with(&mut rng, sampled);
        let fixed = format!("1-5f5e1000-{}", &trace.root[11..]);
        trace.header = trace.header.replacen(&trace.root, &fixed, 1);
        trace.root = fixed;
        trace
    }

    /// The `tracing` object of platform events: `{spanId, type, value}`.
    pub fn platform_json(&self) -> Value {
        json!({"spanId": self.span_id, "type": "X-Amzn-Trace-Id", "value": self.header})
    }

    /// The `tracing` object of the INVOKE event: `{type, value}`.
    pub fn invoke_json(&self) -> Value {
        json!({"type": "X-Amzn-Trace-Id", "value": self.header})
    }
}

impl Default for Trace {
    fn default() -> Self {
        Trace::new()
    }
}

/// A Telemetry API event `{"time", "type", "record"}`.
pub fn event(ty: &str, time: SystemTime, record: Value) -> Value {
    json!({"time": rfc3339(time), "type": ty, "record": record})
}

/// A `spans[]` element.
pub fn span(name: &str, start: SystemTime, duration: Duration) -> Value {
    json!({"name": name, "start": rfc3339(start), "durationMs": ms(duration)})
}

/// The category (subscription type) of an event type: `platform`, `function` or `extension`.
pub fn category(ty: &str) -> &str {
    if ty.starts_with("platform.") {
        "platform"
    } else {
        ty
    }
}

/// `platform.initStart`.
pub fn init_start(
    time: SystemTime,
    initialization_type: &str,
    function_name: &str,
    function_version: &str,
) -> Value {
    event(
        "platform.initStart",
        time,
        json!({
            "initializationType": initialization_type,
            "phase": "init",
            "runtimeVersion": RUNTIME_VERSION,
            "runtimeVersionArn": RUNTIME_VERSION_ARN,
            "functionName": function_name,
            "functionVersion": function_version,
        }),
    )
}

/// `platform.initRuntimeDone` (success).
pub fn init_runtime_done(time: SystemTime, initialization_type: &str) -> Value {
    event(
        "platform.initRuntimeDone",
        time,
        json!({
            "initializationType": initialization_type,
            "phase": "init",
            "status": "success",
            "spans": [],
        }),
    )
}

/// `platform.initReport` (success).
pub fn init_report(time: SystemTime, initialization_type: &str, duration: Duration) -> Value {
    event(
        "platform.initReport",
        time,
        json!({
            "initializationType": initialization_type,
            "phase": "init",
            "status": "success",
            "metrics": {"durationMs": ms(duration)},
        }),
    )
}

/// `platform.restoreStart` (SnapStart).
pub fn restore_start(time: SystemTime) -> Value {
    event(
        "platform.restoreStart",
        time,
        json!({"runtimeVersion": RUNTIME_VERSION, "runtimeVersionArn": RUNTIME_VERSION_ARN}),
    )
}

/// `platform.restoreRuntimeDone` (success).
pub fn restore_runtime_done(time: SystemTime) -> Value {
    event(
        "platform.restoreRuntimeDone",
        time,
        json!({"status": "success", "spans": []}),
    )
}

/// `platform.restoreReport` (success).
pub fn restore_report(time: SystemTime, duration: Duration) -> Value {
    event(
        "platform.restoreReport",
        time,
        json!({"status": "success", "metrics": {"durationMs": ms(duration)}}),
    )
}

/// `platform.extension`: an extension finished its init.
pub fn platform_extension(time: SystemTime, name: &str, events: &[String]) -> Value {
    event(
        "platform.extension",
        time,
        json!({"name": name, "state": "Ready", "events": events}),
    )
}

/// `platform.telemetrySubscription`.
pub fn telemetry_subscription(time: SystemTime, name: &str, types: &[String]) -> Value {
    event(
        "platform.telemetrySubscription",
        time,
        json!({"name": name, "state": "Subscribed", "types": types}),
    )
}

/// `platform.start`.
pub fn platform_start(
    time: SystemTime,
    request_id: &str,
    version: &str,
    trace: Option<&Trace>,
) -> Value {
    let mut record = Map::new();
    record.insert("requestId".into(), json!(request_id));
    record.insert("version".into(), json!(version));
    if let Some(t) = trace {
        record.insert("tracing".into(), t.platform_json());
    }
    event("platform.start", time, Value::Object(record))
}

/// A `function` log event in text format (the record is a string).
pub fn function_text_log(time: SystemTime, request_id: &str, level: &str, message: &str) -> Value {
    event(
        "function",
        time,
        json!(format!(
            "{}\t{request_id}\t{level}\t{message}\n",
            rfc3339(time)
        )),
    )
}

/// A `function` log event in JSON format (the record is an object).
pub fn function_json_log(time: SystemTime, request_id: &str, level: &str, message: &str) -> Value {
    event(
        "function",
        time,
        json!({
            "timestamp": rfc3339(time),
            "level": level,
            "message": message,
            "requestId": request_id,
        }),
    )
}

/// Reason Lambda gives in `platform.logsDropped`.
pub const LOGS_DROPPED_REASON: &str =
    "Consumer seems to have fallen behind as it has not acknowledged receipt of logs.";

/// `platform.logsDropped`: Lambda dropped log records because a subscriber fell behind.
pub fn logs_dropped(time: SystemTime, dropped_records: u64, dropped_bytes: u64) -> Value {
    event(
        "platform.logsDropped",
        time,
        json!({
            "reason": LOGS_DROPPED_REASON,
            "droppedRecords": dropped_records,
            "droppedBytes": dropped_bytes,
        }),
    )
}

/// What happened in one invocation's runtime phase.
#[derive(Debug, Clone)]
pub struct RuntimeOutcome {
    /// Request id.
    pub request_id: String,
    /// `success`, `error`, `failure` or `timeout`.
    pub status: String,
    /// Error type when the status is not `success`.
    pub error_type: Option<String>,
    /// When the runtime received the event.
    pub start: SystemTime,
    /// Runtime duration (INVOKE handed over → runtime done).
    pub duration: Duration,
    /// Bytes of the response.
    pub produced_bytes: u64,
    /// X-Ray context, when tracing is on.
    pub trace: Option<Trace>,
    /// Its tenant, in tenant isolation mode.
    pub tenant_id: Option<String>,
}

impl RuntimeOutcome {
    /// The runtime phase as `spans[]`: responseLatency, responseDuration, runtimeOverhead, back to
    /// back, summing to the runtime duration. Empty for a timeout (no response was produced).
    pub fn spans(&self) -> Vec<Value> {
        if self.status == "timeout" {
            return Vec::new();
        }
        let total = self.duration;
        let response = Duration::from_micros(40 + fastrand::u64(..260)).min(total / 4);
        let overhead = Duration::from_micros(100 + fastrand::u64(..900)).min(total / 4);
        let latency = total.saturating_sub(response + overhead);
        let t1 = self.start + latency;
        let t2 = t1 + response;
        vec![
            span("responseLatency", self.start, latency),
            span("responseDuration", t1, response),
            span("runtimeOverhead", t2, overhead),
        ]
    }
}

/// `platform.runtimeDone`.
pub fn runtime_done(time: SystemTime, o: &RuntimeOutcome) -> Value {
    let mut record = Map::new();
    record.insert("requestId".into(), json!(o.request_id));
    record.insert("status".into(), json!(o.status));
    if let Some(e) = &o.error_type {
        record.insert("errorType".into(), json!(e));
    }
    let mut metrics = Map::new();
    metrics.insert("durationMs".into(), json!(ms(o.duration)));
    if o.status != "timeout" {
        metrics.insert("producedBytes".into(), json!(o.produced_bytes));
    }
    record.insert("metrics".into(), Value::Object(metrics));
    let spans = o.spans();
    if !spans.is_empty() {
        record.insert("spans".into(), Value::Array(spans));
    }
    if let Some(t) = &o.trace {
        record.insert("tracing".into(), t.platform_json());
    }
    with_tenant(
        event("platform.runtimeDone", time, Value::Object(record)),
        o.tenant_id.as_deref(),
    )
}

/// The numbers of a `platform.report`.
#[derive(Debug, Clone)]
pub struct ReportArgs {
    /// Total duration (runtime + extension overhead).
    pub duration: Duration,
    /// Configured memory.
    pub memory_mb: u64,
    /// Peak memory of the invocation.
    pub max_memory_used_mb: u64,
    /// Init duration, on the first invocation after an on-demand init.
    pub init_duration: Option<Duration>,
    /// Restore duration, on the first invocation after a SnapStart restore.
    pub restore_duration: Option<Duration>,
    /// When the extensions' overhead started (runtime done) and how long it was.
    pub extension_overhead: Option<(SystemTime, Duration)>,
}

/// `platform.report`.
pub fn report(time: SystemTime, o: &RuntimeOutcome, a: &ReportArgs) -> Value {
    let mut record = Map::new();
    record.insert("requestId".into(), json!(o.request_id));
    record.insert("status".into(), json!(o.status));
    if let Some(e) = &o.error_type {
        record.insert("errorType".into(), json!(e));
    }
    let duration_ms = ms(a.duration);
    let mut metrics = Map::new();
    metrics.insert("durationMs".into(), json!(duration_ms));
    metrics.insert("billedDurationMs".into(), json!(billed(duration_ms)));
    metrics.insert("memorySizeMB".into(), json!(a.memory_mb));
    metrics.insert("maxMemoryUsedMB".into(), json!(a.max_memory_used_mb));
    if let Some(d) = a.init_duration {
        metrics.insert("initDurationMs".into(), json!(ms(d)));
    }
    if let Some(d) = a.restore_duration {
        let restore_ms = ms(d);
        metrics.insert("restoreDurationMs".into(), json!(restore_ms));
        metrics.insert("billedRestoreDurationMs".into(), json!(billed(restore_ms)));
    }
    record.insert("metrics".into(), Value::Object(metrics));
    if let Some(t) = &o.trace {
        record.insert("tracing".into(), t.platform_json());
    }
    if let Some((start, d)) = a.extension_overhead {
        record.insert(
            "spans".into(),
            Value::Array(vec![span("extensionOverhead", start, d)]),
        );
    }
    with_tenant(
        event("platform.report", time, Value::Object(record)),
        o.tenant_id.as_deref(),
    )
}

/// `platform.report` under Lambda Managed Instances (schema 2025-01-29): status, `durationMs`
/// only (no billed duration, memory size, max memory used or init duration), the runtime's
/// `responseLatency` and `responseDuration` spans, and no runtimeDone before it.
pub fn managed_report(time: SystemTime, o: &RuntimeOutcome) -> Value {
    let mut record = Map::new();
    record.insert("requestId".into(), json!(o.request_id));
    record.insert("status".into(), json!(o.status));
    if let Some(e) = &o.error_type {
        record.insert("errorType".into(), json!(e));
    }
    record.insert("metrics".into(), json!({"durationMs": ms(o.duration)}));
    let spans: Vec<Value> = o
        .spans()
        .into_iter()
        .filter(|s| s["name"] != "runtimeOverhead")
        .collect();
    if !spans.is_empty() {
        record.insert("spans".into(), Value::Array(spans));
    }
    if let Some(t) = &o.trace {
        record.insert("tracing".into(), t.platform_json());
    }
    with_tenant(
        event("platform.report", time, Value::Object(record)),
        o.tenant_id.as_deref(),
    )
}

/// The event with `tenantId` in its record (tenant isolation mode: platform.start,
/// platform.runtimeDone, platform.report and JSON function log records carry it).
pub fn with_tenant(mut event: Value, tenant_id: Option<&str>) -> Value {
    if let (Some(tenant), Some(record)) = (tenant_id, event.get_mut("record")) {
        if let Some(fields) = record.as_object_mut() {
            fields.insert("tenantId".into(), json!(tenant));
        }
    }
    event
}

/// Billed milliseconds: the duration rounded up to the next whole millisecond.
pub fn billed(duration_ms: f64) -> u64 {
    // Durations are far below 2^53 ms; the float-to-int cast saturates anyway.
    duration_ms.ceil().max(0.0) as u64
}

/// The INVOKE event of `/event/next`.
pub fn invoke(
    deadline_ms: u64,
    request_id: &str,
    function_name: &str,
    trace: Option<&Trace>,
) -> Value {
    let mut ev = Map::new();
    ev.insert("eventType".into(), json!("INVOKE"));
    ev.insert("deadlineMs".into(), json!(deadline_ms));
    ev.insert("requestId".into(), json!(request_id));
    ev.insert(
        "invokedFunctionArn".into(),
        json!(function_arn(function_name)),
    );
    if let Some(t) = trace {
        ev.insert("tracing".into(), t.invoke_json());
    }
    Value::Object(ev)
}

/// The SHUTDOWN event of `/event/next`.
pub fn shutdown(deadline_ms: u64, reason: &str) -> Value {
    json!({"eventType": "SHUTDOWN", "shutdownReason": reason, "deadlineMs": deadline_ms})
}

/// `arn:aws:lambda:us-east-1:123456789012:function:<name>`.
pub fn function_arn(function_name: &str) -> String {
    format!("arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{function_name}")
}

/// The event's bytes as Lambda might write them, in one of several styles chosen by `n`: AWS's key
/// order (`time`, `type`, `record`), with or without spaces, some characters as `\u` escapes, and
/// decimals with a trailing zero (`100.50`). The value is the same JSON; the bytes are not what
/// `serde_json` would write, so an extension that re-serialised events instead of passing them on
/// unchanged would be caught by a byte-for-byte comparison.
pub fn encode_like_lambda(value: &Value, n: usize) -> Vec<u8> {
    let style = Style {
        spaced: n % 2 == 1,
        escaped: n % 3 == 2,
        padded_decimals: n % 4 != 0,
    };
    let mut out = String::new();
    write_value(&mut out, value, &style, true);
    out.into_bytes()
}

/// The event's `time` in another RFC 3339 form Lambda's clock may produce, chosen by `n`:
/// milliseconds with `Z` (as before), microseconds, or a `+00:00` offset.
pub fn vary_time(value: &mut Value, n: usize) {
    let Some(Value::String(time)) = value.get_mut("time") else {
        return;
    };
    let Some(base) = time.strip_suffix('Z').map(str::to_string) else {
        return;
    };
    match n % 3 {
        1 => *time = format!("{base}{:03}Z", n % 1000),
        2 => *time = format!("{base}+00:00"),
        _ => {}
    }
}

struct Style {
    spaced: bool,
    escaped: bool,
    padded_decimals: bool,
}

fn write_value(out: &mut String, value: &Value, style: &Style, top: bool) {
    let (colon, comma) = if style.spaced {
        (": ", ", ")
    } else {
        (":", ",")
    };
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            if top {
                // AWS writes time, type, record; anything else after them.
                let rank = |k: &str| match k {
                    "time" => 0,
                    "type" => 1,
                    "record" => 2,
                    _ => 3,
                };
                keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(comma);
                }
                write_string(out, key, style);
                out.push_str(colon);
                write_value(out, &map[key.as_str()], style, false);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(comma);
                }
                write_value(out, item, style, false);
            }
            out.push(']');
        }
        Value::String(s) => write_string(out, s, style),
        Value::Number(number) => match number.as_f64() {
            // A decimal with one digit after the point gets a second one: 100.5 -> 100.50.
            Some(f)
                if number.is_f64()
                    && style.padded_decimals
                    && (f * 10.0).fract() == 0.0
                    && f.fract() != 0.0 =>
            {
                out.push_str(&format!("{f:.2}"))
            }
            _ => out.push_str(&number.to_string()),
        },
        other => out.push_str(&other.to_string()),
    }
}

fn write_string(out: &mut String, s: &str, style: &Style) {
    if !style.escaped {
        out.push_str(&Value::String(s.to_string()).to_string());
        return;
    }
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            c if (c as u32) < 0x20 || !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_right_shape() {
        let id = uuid();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            vec![8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        let t = Trace::new();
        assert!(t.header.starts_with("Root=1-"));
        assert_eq!(t.root.len(), 2 + 8 + 1 + 24);
        assert!(t.header.ends_with(";Sampled=1"));
        assert_eq!(t.span_id.len(), 16);
    }

    #[test]
    fn spans_sum_to_the_runtime_duration() {
        let o = RuntimeOutcome {
            request_id: uuid(),
            status: "success".into(),
            error_type: None,
            start: SystemTime::now(),
            duration: Duration::from_millis(8),
            produced_bytes: 10,
            trace: None,
            tenant_id: None,
        };
        let spans = o.spans();
        let total: f64 = spans.iter().filter_map(|s| s["durationMs"].as_f64()).sum();
        assert!((total - 8.0).abs() < 0.01, "{total}");
        let ev = runtime_done(SystemTime::now(), &o);
        assert_eq!(ev["type"], "platform.runtimeDone");
        assert_eq!(ev["record"]["metrics"]["durationMs"], 8.0);
        assert!(ev["record"].get("tracing").is_none());
    }

    #[test]
    fn time_is_rfc3339_millis() {
        let ev = event("function", UNIX_EPOCH, json!("x"));
        assert_eq!(ev["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(billed(1.0001), 2);
        assert_eq!(billed(3.0), 3);
    }

    #[test]
    fn lambda_style_bytes_hold_the_same_json_but_not_serdes_bytes() {
        let value = json!({"record": {"requestId": "r/1", "message": "héllo \"x\"", "durationMs": 100.5, "n": 3},
                           "type": "function", "time": "2026-01-01T00:00:00.000Z"});
        let mut differ = 0;
        for n in 0..12 {
            let bytes = encode_like_lambda(&value, n);
            let back: Value = serde_json::from_slice(&bytes).expect("valid JSON");
            assert_eq!(back, value, "style {n}");
            let text = String::from_utf8(bytes).expect("utf-8");
            assert!(text.starts_with("{\"time\""), "AWS key order: {text}");
            if text != serde_json::to_string(&value).expect("json") {
                differ += 1;
            }
        }
        assert_eq!(differ, 12, "every style differs from serde_json's bytes");
        let mut timed = value.clone();
        vary_time(&mut timed, 2);
        assert_eq!(timed["time"], "2026-01-01T00:00:00.000+00:00");
        vary_time(&mut timed, 1);
        let mut micro = value;
        vary_time(&mut micro, 4);
        assert_eq!(micro["time"], "2026-01-01T00:00:00.000004Z");
    }
}
