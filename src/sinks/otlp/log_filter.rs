//! Which function and extension log lines become OTLP log records: a minimum severity
//! (`BRIDGE_LOGS_MIN_SEVERITY`, for records whose level is known), lines without a level
//! (`BRIDGE_LOGS_DROP_UNLEVELED`), and drop rules by regular expression on the body
//! (`BRIDGE_LOGS_DROP_RULES`). Only the OTLP logs are filtered: `platform.*` events never go
//! through here (they are spans and metrics), the raw batch keeps every event, and no metric is
//! made from a log line. Each rule counts what it dropped.

use opentelemetry::logs::Severity;
use prometheus::IntCounter;
use regex::Regex;

use crate::config::env::Env;
use crate::config::rules::read_rules;
use crate::self_metrics::METRICS;

/// Severity names as runtimes write them, and the OTLP severity they are.
pub fn severity(level: &str) -> Option<(Severity, &'static str)> {
    let known = [
        ("TRACE", Severity::Trace, "TRACE"),
        ("DEBUG", Severity::Debug, "DEBUG"),
        ("INFO", Severity::Info, "INFO"),
        ("WARN", Severity::Warn, "WARN"),
        ("WARNING", Severity::Warn, "WARN"),
        ("ERROR", Severity::Error, "ERROR"),
        ("FATAL", Severity::Fatal, "FATAL"),
        ("CRITICAL", Severity::Fatal, "FATAL"),
    ];
    known
        .into_iter()
        .find(|(name, _, _)| name.eq_ignore_ascii_case(level))
        .map(|(_, number, text)| (number, text))
}

/// A JSON record's `level`: a name, or the numbers of pino and bunyan (10 trace, 20 debug,
/// 30 info, 40 warn, 50 error, 60 fatal).
pub fn json_severity(level: &serde_json::Value) -> Option<(Severity, &'static str)> {
    match level {
        serde_json::Value::String(name) => severity(name),
        serde_json::Value::Number(n) => match n.as_u64()? {
            10 => Some((Severity::Trace, "TRACE")),
            20 => Some((Severity::Debug, "DEBUG")),
            30 => Some((Severity::Info, "INFO")),
            40 => Some((Severity::Warn, "WARN")),
            50 => Some((Severity::Error, "ERROR")),
            60 => Some((Severity::Fatal, "FATAL")),
            _ => None,
        },
        _ => None,
    }
}

/// The level of a text line in the format of Lambda's managed runtimes: Node.js writes
/// `<time>\t<requestId>\t<LEVEL>\t<message>`, Python `[LEVEL]\t<time>\t<requestId>\t<message>`.
/// Other text has no level.
pub fn text_severity(line: &str) -> Option<(Severity, &'static str)> {
    if let Some(rest) = line.strip_prefix('[') {
        let (level, after) = rest.split_once(']')?;
        return after.starts_with('\t').then(|| severity(level)).flatten();
    }
    let mut fields = line.splitn(4, '\t');
    let (_time, _request, level) = (fields.next()?, fields.next()?, fields.next()?);
    fields.next()?;
    severity(level)
}

struct DropRule {
    regex: Regex,
    dropped: IntCounter,
}

/// The filters, read once at start. The default keeps every line.
#[derive(Default)]
pub struct LogFilter {
    min_severity: Option<(Severity, IntCounter)>,
    unleveled: Option<IntCounter>,
    rules: Vec<DropRule>,
}

impl std::fmt::Debug for LogFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFilter")
            .field("min_severity", &self.min_severity.as_ref().map(|(s, _)| s))
            .field("drop_unleveled", &self.unleveled.is_some())
            .field("rules", &self.rules.len())
            .finish()
    }
}

impl LogFilter {
    pub fn read(env: &mut Env) -> LogFilter {
        let min_severity = env
            .parse(
                "BRIDGE_LOGS_MIN_SEVERITY",
                |v| severity(v).map(|(s, _)| s),
                "trace, debug, info, warn, error or fatal",
                "log lines of every severity are kept",
            )
            .map(|s| (s, METRICS.logs_filtered_by("min_severity")));
        let unleveled = env
            .flag(
                "BRIDGE_LOGS_DROP_UNLEVELED",
                false,
                "log lines without a level are kept",
            )
            .then(|| METRICS.logs_filtered_by("unleveled"));
        let rules = read_rules(
            env,
            "BRIDGE_LOGS_DROP_RULES",
            "drop",
            false,
            &["min_severity", "unleveled"],
        )
        .into_iter()
        .map(|spec| DropRule {
            dropped: METRICS.logs_filtered_by(&spec.name),
            regex: spec.regex,
        })
        .collect();
        LogFilter {
            min_severity,
            unleveled,
            rules,
        }
    }

    /// Whether the filters need the body's text (else it is not built for them).
    pub fn reads_body(&self) -> bool {
        !self.rules.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.min_severity.is_none() && self.unleveled.is_none() && self.rules.is_empty()
    }

    /// Whether a line of this severity (`None`: no level known) and body is kept; a dropped
    /// line is counted by the first rule that drops it.
    pub fn keeps(&self, severity: Option<Severity>, body: &str) -> bool {
        match (severity, &self.min_severity, &self.unleveled) {
            (Some(s), Some((min, dropped)), _) if (s as i32) < (*min as i32) => {
                dropped.inc();
                return false;
            }
            (None, _, Some(dropped)) => {
                dropped.inc();
                return false;
            }
            _ => {}
        }
        match self.rules.iter().find(|r| r.regex.is_match(body)) {
            Some(rule) => {
                rule.dropped.inc();
                false
            }
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(vars: &[(&str, &str)]) -> (LogFilter, Vec<String>) {
        crate::config::env::read_from(vars, LogFilter::read)
    }

    #[test]
    fn the_runtimes_text_formats_carry_a_level() {
        let node = "2024-01-01T00:00:00.000Z\t8f5e0c9a\tWARN\tslow call\n";
        assert_eq!(text_severity(node).map(|s| s.1), Some("WARN"));
        let python = "[ERROR]\t2024-01-01T00:00:00.000Z\t8f5e0c9a\tboom";
        assert_eq!(text_severity(python).map(|s| s.1), Some("ERROR"));
        assert_eq!(text_severity("plain print output"), None);
        assert_eq!(text_severity("[x] not a level"), None);
        assert_eq!(text_severity("a\tb\tINFO"), None, "no message field");
    }

    #[test]
    fn severity_unleveled_and_rules_each_drop_their_own() {
        let (f, issues) = filter(&[
            ("BRIDGE_LOGS_MIN_SEVERITY", "warn"),
            ("BRIDGE_LOGS_DROP_UNLEVELED", "true"),
            (
                "BRIDGE_LOGS_DROP_RULES",
                r#"[{"name":"health","pattern":"GET /health"}, "(bad"]"#,
            ),
        ]);
        assert_eq!(issues, vec!["BRIDGE_LOGS_DROP_RULES".to_string()]);
        assert!(!f.keeps(Some(Severity::Info), "hello"));
        assert!(f.keeps(Some(Severity::Warn), "hello"));
        assert!(f.keeps(Some(Severity::Fatal), "hello"));
        assert!(!f.keeps(None, "hello"));
        assert!(!f.keeps(Some(Severity::Error), "GET /health 200"));
    }

    #[test]
    fn by_default_every_line_is_kept() {
        let (f, issues) = filter(&[]);
        assert!(issues.is_empty());
        assert!(f.is_empty());
        assert!(f.keeps(None, "x"));
        assert!(f.keeps(Some(Severity::Trace), "x"));
        let (f, issues) = filter(&[("BRIDGE_LOGS_MIN_SEVERITY", "loud")]);
        assert_eq!(issues, vec!["BRIDGE_LOGS_MIN_SEVERITY".to_string()]);
        assert!(f.is_empty());
    }
}
