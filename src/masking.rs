//! Masking of sensitive text before it leaves: named presets for the common sequences
//! (`BRIDGE_MASK_PRESETS`) and the user's own rules (`BRIDGE_MASK_RULES`), applied in that order
//! to the OTLP log records' text (body and string fields) and to the spans' string attributes;
//! to the raw JSON batch only with `BRIDGE_MASK_RAW=true` (it is the raw batch: by default its
//! bytes leave as Lambda sent them). Every rule counts the values it changed, per output.

use std::borrow::Cow;

use memchr::memmem::Finder;
use prometheus::IntCounter;
use regex::Regex;

use crate::config::env::Env;
use crate::config::rules::{compile, read_rules};
use crate::self_metrics::{SinkLabel, METRICS};

/// What a rule does with a match besides replacing it.
#[derive(Clone, Copy, PartialEq)]
enum Check {
    None,
    /// Only a match that passes the Luhn check is replaced (card numbers: a 13-digit
    /// millisecond timestamp is not one, nine times in ten).
    Luhn,
    /// The match's first word and the blanks after it stay (`Bearer `), so a reader sees what
    /// was there; done here rather than with a capture group, which would cost the slower
    /// capturing engine on every match.
    KeepScheme,
}

/// A preset: its name, its pattern, its replacement and its check, and the literals one of
/// which every match contains (a line with none of them is passed over without running the
/// pattern: most lines have nothing to mask).
struct Preset {
    name: &'static str,
    pattern: &'static str,
    replacement: &'static str,
    check: Check,
    required: &'static [&'static str],
}

const PRESETS: [Preset; 4] = [
    Preset {
        name: "card_numbers",
        // 13 to 19 digits, single spaces or dashes between them, not inside a longer number.
        pattern: r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)",
        replacement: "[masked:card_number]",
        check: Check::Luhn,
        required: &[],
    },
    Preset {
        name: "bearer_tokens",
        // The spellings clients write (the scheme is case-insensitive in HTTP, but a mixed-case
        // one is not seen in practice); the prefilter below is exact for them.
        pattern: r"(?-u:\b)(?:[Bb]earer|BEARER)\s+[A-Za-z0-9._~+/-]+=*",
        replacement: "[masked:bearer_token]",
        check: Check::KeepScheme,
        required: &["earer", "EARER"],
    },
    Preset {
        name: "emails",
        pattern: r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
        replacement: "[masked:email]",
        check: Check::None,
        required: &["@"],
    },
    Preset {
        name: "aws_access_keys",
        pattern: r"(?-u:\b)(?:AKIA|ASIA)[A-Z0-9]{16}(?-u:\b)",
        replacement: "[masked:aws_access_key]",
        check: Check::None,
        required: &["AKIA", "ASIA"],
    },
];

/// Where a rule's counters go: the OTLP output or the raw batch.
const OUTPUTS: [SinkLabel; 2] = [SinkLabel::Otlp, SinkLabel::RawJson];

struct MaskRule {
    name: String,
    regex: Regex,
    replacement: String,
    /// The replacement names capture groups (`$1`), so matches are expanded, not copied.
    expands: bool,
    check: Check,
    /// One of these occurs in every match (none: no prefilter).
    required: Vec<Finder<'static>>,
    /// Values changed, per output in [`OUTPUTS`]' order.
    masked: [IntCounter; 2],
}

impl MaskRule {
    fn new(
        name: String,
        regex: Regex,
        replacement: String,
        check: Check,
        required: &'static [&'static str],
    ) -> MaskRule {
        let masked = OUTPUTS.map(|sink| METRICS.masked_by(&name, sink));
        MaskRule {
            expands: replacement.contains('$'),
            name,
            regex,
            replacement,
            check,
            required: required.iter().map(|r| Finder::new(r.as_bytes())).collect(),
            masked,
        }
    }

    /// `text` with this rule's matches replaced; `None` when nothing matched.
    fn apply(&self, text: &str) -> Option<String> {
        if !self.required.is_empty()
            && !self
                .required
                .iter()
                .any(|f| f.find(text.as_bytes()).is_some())
        {
            return None;
        }
        let mut out = String::new();
        let mut last = 0;
        let mut changed = false;
        if self.expands {
            for caps in self.regex.captures_iter(text) {
                let Some(m) = caps.get(0) else { continue };
                out.push_str(&text[last..m.start()]);
                caps.expand(&self.replacement, &mut out);
                last = m.end();
                changed = true;
            }
        } else {
            for m in self.regex.find_iter(text) {
                let kept = match self.check {
                    Check::None => 0,
                    Check::Luhn if luhn(m.as_str()) => 0,
                    Check::Luhn => {
                        // Digits that run on (an expiry, a CVV, a quantity before it) make the
                        // match fail the check while a card number sits inside it.
                        for (start, end) in card_runs(m.as_str()) {
                            out.push_str(&text[last..m.start() + start]);
                            out.push_str(&self.replacement);
                            last = m.start() + end;
                            changed = true;
                        }
                        continue;
                    }
                    Check::KeepScheme => scheme_len(m.as_str()),
                };
                out.push_str(&text[last..m.start() + kept]);
                out.push_str(&self.replacement);
                last = m.end();
                changed = true;
            }
        }
        if !changed {
            return None;
        }
        out.push_str(&text[last..]);
        Some(out)
    }
}

/// The length of the first word of `matched` and the blanks after it.
fn scheme_len(matched: &str) -> usize {
    let word = matched.find(char::is_whitespace).unwrap_or(matched.len());
    word + matched[word..]
        .find(|c: char| !c.is_whitespace())
        .unwrap_or(matched.len() - word)
}

/// The card numbers inside `matched`, a run of digits and single separators that fails the
/// Luhn check as a whole: runs of 13 to 19 digits that begin and end at a separator (or an end)
/// and pass it, the longest first (then the leftmost), and so on in what is left on each side.
/// Byte ranges within `matched`, in order. Only a failed match gets here, and it has at most 19
/// digits, so at most a few hundred candidates.
fn card_runs(matched: &str) -> Vec<(usize, usize)> {
    let bytes = matched.as_bytes();
    let starts = (0..bytes.len())
        .filter(|&i| bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit()));
    let mut best: Option<(usize, usize, usize)> = None; // (digits, start, end)
    for start in starts {
        for end in (start + 1..=bytes.len()).filter(|&e| {
            bytes[e - 1].is_ascii_digit() && (e == bytes.len() || !bytes[e].is_ascii_digit())
        }) {
            let candidate = &matched[start..end];
            let digits = candidate.bytes().filter(u8::is_ascii_digit).count();
            if (13..=19).contains(&digits)
                && best.is_none_or(|(d, _, _)| digits > d)
                && luhn(candidate)
            {
                best = Some((digits, start, end));
            }
        }
    }
    let Some((_, start, end)) = best else {
        return Vec::new();
    };
    let mut runs = card_runs(&matched[..start]);
    runs.push((start, end));
    runs.extend(
        card_runs(&matched[end..])
            .into_iter()
            .map(|(a, b)| (a + end, b + end)),
    );
    runs
}

/// The Luhn check over the digits of `candidate` (separators skipped).
fn luhn(candidate: &str) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    for b in candidate.bytes().rev().filter(u8::is_ascii_digit) {
        let mut d = u32::from(b - b'0');
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
    }
    sum % 10 == 0
}

/// The mask rules, compiled once at start.
#[derive(Default)]
pub struct Masking {
    rules: Vec<MaskRule>,
    /// Mask the raw JSON batch too (`BRIDGE_MASK_RAW`).
    pub raw: bool,
}

impl std::fmt::Debug for Masking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masking")
            .field(
                "rules",
                &self
                    .rules
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("raw", &self.raw)
            .finish()
    }
}

impl Masking {
    /// `BRIDGE_MASK_PRESETS`, `BRIDGE_MASK_RULES` and `BRIDGE_MASK_RAW`; each bad preset name
    /// or rule is one issue, and only that one is left out.
    pub fn read(env: &mut Env) -> Masking {
        let mut rules = Vec::new();
        if let Some(list) = env.get("BRIDGE_MASK_PRESETS") {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
            for wanted in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let chosen: Vec<&Preset> = if wanted.eq_ignore_ascii_case("all") {
                    PRESETS.iter().collect()
                } else {
                    PRESETS
                        .iter()
                        .filter(|p| p.name.eq_ignore_ascii_case(wanted))
                        .collect()
                };
                if chosen.is_empty() {
                    env.issue(
                        "BRIDGE_MASK_PRESETS",
                        wanted,
                        format!("a comma-separated list of {} or all", names.join(", ")),
                        "this preset is left out; the others apply",
                    );
                }
                for preset in chosen {
                    if rules.iter().any(|r: &MaskRule| r.name == preset.name) {
                        continue;
                    }
                    match compile(preset.pattern) {
                        Ok(regex) => rules.push(MaskRule::new(
                            preset.name.to_string(),
                            regex,
                            preset.replacement.to_string(),
                            preset.check,
                            preset.required,
                        )),
                        // The presets are tested; this would be a build without the Unicode
                        // tables they need.
                        Err(why) => env.issue(
                            "BRIDGE_MASK_PRESETS",
                            preset.name,
                            format!("a preset this build can compile ({why})"),
                            "this preset is left out",
                        ),
                    }
                }
            }
        }
        let presets: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        for spec in read_rules(env, "BRIDGE_MASK_RULES", "mask", true, &presets) {
            let replacement = spec
                .replacement
                .unwrap_or_else(|| format!("[masked:{}]", spec.name));
            rules.push(MaskRule::new(
                spec.name,
                spec.regex,
                replacement,
                Check::None,
                &[],
            ));
        }
        let raw = env.flag("BRIDGE_MASK_RAW", false, "the raw JSON batch is not masked");
        Masking { rules, raw }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules' names, in the order they apply.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// `text` with every rule applied in turn, counted for `sink`; `None` (and no allocation)
    /// when no rule matched.
    pub fn mask(&self, text: &str, sink: SinkLabel) -> Option<String> {
        let output = usize::from(sink == SinkLabel::RawJson);
        let mut current: Cow<str> = Cow::Borrowed(text);
        for rule in &self.rules {
            if let Some(next) = rule.apply(&current) {
                rule.masked[output].inc();
                current = Cow::Owned(next);
            }
        }
        match current {
            Cow::Owned(s) => Some(s),
            Cow::Borrowed(_) => None,
        }
    }

    /// As [`mask`](Self::mask), in place.
    pub fn mask_string(&self, text: &mut String, sink: SinkLabel) {
        if let Some(masked) = self.mask(text, sink) {
            *text = masked;
        }
    }

    /// A JSON event with its text masked, every other byte as it was; `None` when nothing was
    /// masked. For the raw batch, whose events must stay Lambda's bytes but for what a rule
    /// replaced: string values and the keys inside the record, and integers (a card number
    /// written as a number becomes the masked text, a string); the envelope's `time` and `type`
    /// (Lambda's, not the function's text) are left alone. A masked string is written again
    /// whole, with serde_json's escapes. `json` is well-formed (the listener parsed it).
    pub fn mask_json(&self, json: &[u8], sink: SinkLabel) -> Option<Vec<u8>> {
        if self.rules.is_empty() {
            return None;
        }
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0;
        let mut replace = |out: &mut Option<Vec<u8>>, start: usize, end: usize, text: &str| {
            let out = out.get_or_insert_with(|| Vec::with_capacity(json.len() + 64));
            out.extend_from_slice(&json[copied..start]);
            // serde_json writes the string with its quotes and escapes.
            if serde_json::to_writer(&mut *out, text).is_err() {
                out.extend_from_slice(&json[start..end]);
            }
            copied = end;
        };
        let mut depth = 0usize;
        // The next value is the envelope's `time` or `type`.
        let mut envelope_value = false;
        let mut i = 0;
        while i < json.len() {
            match json[i] {
                b'"' => {}
                b'-' | b'0'..=b'9' => {
                    let start = i;
                    while i < json.len()
                        && matches!(json[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                    {
                        i += 1;
                    }
                    let literal = &json[start..i];
                    let integer = literal.iter().all(|b| b.is_ascii_digit() || *b == b'-');
                    if std::mem::take(&mut envelope_value) || !integer {
                        continue;
                    }
                    let masked = std::str::from_utf8(literal)
                        .ok()
                        .and_then(|text| self.mask(text, sink));
                    if let Some(text) = masked {
                        replace(&mut out, start, i, &text);
                    }
                    continue;
                }
                b'{' | b'[' => {
                    depth += 1;
                    envelope_value = false;
                    i += 1;
                    continue;
                }
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    i += 1;
                    continue;
                }
                b if b.is_ascii_whitespace() || b == b':' || b == b',' => {
                    i += 1;
                    continue;
                }
                _ => {
                    // true, false, null
                    envelope_value = false;
                    i += 1;
                    continue;
                }
            }
            let start = i;
            let mut escaped = false;
            i += 1;
            while i < json.len() && json[i] != b'"' {
                if json[i] == b'\\' {
                    escaped = true;
                    i += 1;
                }
                i += 1;
            }
            if i >= json.len() {
                break; // unterminated: not from the listener, left as it is
            }
            i += 1;
            let literal = &json[start..i];
            let is_key = json[i..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b':');
            if is_key {
                envelope_value = depth == 1 && (literal == b"\"time\"" || literal == b"\"type\"");
                if depth == 1 {
                    continue; // the envelope's own keys: time, type, record
                }
            } else if std::mem::take(&mut envelope_value) {
                continue;
            }
            if let Some(text) = self.mask_literal(literal, escaped, sink) {
                replace(&mut out, start, i, &text);
            }
        }
        let mut out = out?;
        out.extend_from_slice(&json[copied..]);
        Some(out)
    }

    /// A JSON string literal (with its quotes), decoded and masked; `None` when nothing was
    /// masked. A lone surrogate escape (`\ud800`), which no Rust string can hold, is read as
    /// U+FFFD, so that the rest of the string is still masked.
    fn mask_literal(&self, literal: &[u8], escaped: bool, sink: SinkLabel) -> Option<String> {
        if !escaped {
            let text = std::str::from_utf8(&literal[1..literal.len() - 1]).ok()?;
            return self.mask(text, sink);
        }
        let text = serde_json::from_slice::<String>(literal)
            .ok()
            .or_else(|| serde_json::from_slice::<String>(&without_surrogates(literal)).ok())?;
        self.mask(&text, sink)
    }
}

/// `literal` with every `\uD800`–`\uDFFF` escape replaced by `\uFFFD`.
fn without_surrogates(literal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(literal.len());
    let mut i = 0;
    while i < literal.len() {
        let is_surrogate = literal[i] == b'\\'
            && literal.get(i + 1) == Some(&b'u')
            && literal
                .get(i + 2)
                .is_some_and(|b| b.eq_ignore_ascii_case(&b'd'))
            && literal
                .get(i + 3)
                .is_some_and(|b| matches!(b.to_ascii_lowercase(), b'8'..=b'9' | b'a'..=b'f'))
            && literal.len() >= i + 6;
        if is_surrogate {
            out.extend_from_slice(b"\\uFFFD");
            i += 6;
        } else if literal[i] == b'\\' && i + 1 < literal.len() {
            out.extend_from_slice(&literal[i..i + 2]);
            i += 2;
        } else {
            out.push(literal[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masking(vars: &[(&str, &str)]) -> (Masking, Vec<String>) {
        crate::config::env::read_from(vars, Masking::read)
    }

    fn all() -> Masking {
        let (m, issues) = masking(&[("BRIDGE_MASK_PRESETS", "all")]);
        assert!(issues.is_empty(), "{issues:?}");
        m
    }

    #[test]
    fn presets_mask_what_they_name() {
        let m = all();
        let text = "paid with 4111 1111 1111 1111 by jane.doe+x@example.co.uk using \
                    Authorization: Bearer eyJhbGciOi.J9x_y-z== key AKIAIOSFODNN7EXAMPLE";
        let masked = m.mask(text, SinkLabel::Otlp).expect("masked");
        assert_eq!(
            masked,
            "paid with [masked:card_number] by [masked:email] using \
             Authorization: Bearer [masked:bearer_token] key [masked:aws_access_key]"
        );
    }

    #[test]
    fn numbers_that_are_not_cards_stay() {
        let m = all();
        // 4111 1111 1111 1112 fails the Luhn check; 20 digits is no card number.
        for text in [
            "card 4111-1111-1111-1112 declined",
            "order 12345678901234567890",
            "took 12 ms",
            "request 8f5e0c9a-1b2c-4d3e-9f00-123456789abc",
        ] {
            assert_eq!(m.mask(text, SinkLabel::Otlp), None, "{text}");
        }
        assert!(m
            .mask("card 4111-1111-1111-1111 ok", SinkLabel::Otlp)
            .is_some());
    }

    #[test]
    fn a_card_number_among_other_digits_is_found() {
        let m = all();
        for (text, expected) in [
            (
                "card 4111 1111 1111 1111 12/26",
                "card [masked:card_number] 12/26",
            ),
            (
                "card 4111 1111 1111 1111 123",
                "card [masked:card_number] 123",
            ),
            ("qty 2 4111 1111 1111 1111", "qty 2 [masked:card_number]"),
            (
                "cards 4111-1111-1111-1111 5500 0000 0000 0004",
                "cards [masked:card_number] [masked:card_number]",
            ),
        ] {
            assert_eq!(
                m.mask(text, SinkLabel::Otlp).as_deref(),
                Some(expected),
                "{text}"
            );
        }
    }

    #[test]
    fn user_rules_follow_the_presets_with_their_replacement() {
        let (m, issues) = masking(&[
            ("BRIDGE_MASK_PRESETS", "emails,nonsense"),
            (
                "BRIDGE_MASK_RULES",
                r#"[{"name":"orders","pattern":"ORD-(\\d+)","replacement":"ORD-#"}, "secret=\\S+"]"#,
            ),
        ]);
        assert_eq!(issues, vec!["BRIDGE_MASK_PRESETS".to_string()]);
        assert_eq!(
            m.rule_names().collect::<Vec<_>>(),
            ["emails", "orders", "mask_2"]
        );
        assert_eq!(
            m.mask("ORD-77 for a@b.io secret=hunter2", SinkLabel::Otlp)
                .as_deref(),
            Some("ORD-# for [masked:email] [masked:mask_2]")
        );
    }

    #[test]
    fn json_strings_are_masked_and_nothing_else_changes() {
        let m = all();
        let raw = br#"{"time":"2024-01-01T00:00:00Z","type":"function","record":{"a@b.io":1,"message":"mail a@b.io","n":4111111111111111,"esc":"tab\t\"a@b.io\""}}"#;
        let masked = m.mask_json(raw, SinkLabel::RawJson).expect("masked");
        let text = String::from_utf8(masked).expect("utf-8");
        assert_eq!(
            text,
            r#"{"time":"2024-01-01T00:00:00Z","type":"function","record":{"[masked:email]":1,"message":"mail [masked:email]","n":"[masked:card_number]","esc":"tab\t\"[masked:email]\""}}"#
        );
        serde_json::from_str::<serde_json::Value>(&text).expect("still JSON");
        // The envelope's time and type are Lambda's: a rule that matches them leaves them be.
        let (digits, issues) = masking(&[("BRIDGE_MASK_RULES", r#"["[0-9]{2}", "function"]"#)]);
        assert!(issues.is_empty(), "{issues:?}");
        let raw = br#"{"time":"2024-01-01T00:00:00Z","type":"function","record":{"function":"function 42","n":12}}"#;
        let masked = String::from_utf8(digits.mask_json(raw, SinkLabel::RawJson).expect("masked"))
            .expect("utf-8");
        assert_eq!(
            masked,
            r#"{"time":"2024-01-01T00:00:00Z","type":"function","record":{"[masked:mask_2]":"[masked:mask_2] [masked:mask_1]","n":"[masked:mask_1]"}}"#
        );
        // A lone surrogate cannot be decoded: read as U+FFFD, the rest of the string masked.
        let raw = br#"{"time":"t","type":"function","record":"bad \ud800 a@b.io"}"#;
        let masked = String::from_utf8(m.mask_json(raw, SinkLabel::RawJson).expect("masked"))
            .expect("utf-8");
        assert_eq!(
            masked,
            "{\"time\":\"t\",\"type\":\"function\",\"record\":\"bad \u{FFFD} [masked:email]\"}"
        );
        assert_eq!(
            m.mask_json(
                br#"{"type":"platform.start","x":"plain"}"#,
                SinkLabel::RawJson
            ),
            None
        );
    }

    #[test]
    fn no_rules_mask_nothing() {
        let (m, issues) = masking(&[]);
        assert!(issues.is_empty());
        assert!(m.is_empty());
        assert_eq!(m.mask("a@b.io", SinkLabel::Otlp), None);
        assert!(!m.raw);
    }
}
