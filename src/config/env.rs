//! Reading variables: one reader that every section of the configuration uses, so that a bad
//! value always becomes the same kind of [`ConfigIssue`] (variable, value, what is allowed, what
//! the bridge does instead) and adding a variable is one call in the section it belongs to.

use super::url::redact_url_text;
use super::ConfigIssue;

/// The environment (or a map, in tests), and the issues found reading it.
pub struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    issues: Vec<ConfigIssue>,
}

impl<'a> Env<'a> {
    pub fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Env<'a> {
        Env {
            lookup,
            issues: Vec::new(),
        }
    }

    /// A variable's value; unset and blank are the same.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    pub fn issue(
        &mut self,
        variable: impl Into<String>,
        value: impl Into<String>,
        allowed: impl Into<String>,
        consequence: impl Into<String>,
    ) {
        self.issues.push(ConfigIssue {
            variable: variable.into(),
            value: value.into(),
            allowed: allowed.into(),
            consequence: consequence.into(),
        });
    }

    /// `name` through `parse` (given the trimmed value): `None` when unset, or (with an issue)
    /// when `parse` refuses it.
    pub fn parse<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str) -> Option<T>,
        allowed: &str,
        consequence: impl Into<String>,
    ) -> Option<T> {
        self.parse_shown(name, parse, allowed, consequence, str::to_string)
    }

    /// As [`parse`](Self::parse) for a URL: the value is shown redacted in the issue.
    pub fn parse_url<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str) -> Option<T>,
        allowed: &str,
        consequence: impl Into<String>,
    ) -> Option<T> {
        self.parse_shown(name, parse, allowed, consequence, redact_url_text)
    }

    /// As [`parse`](Self::parse) for a secret: the value is never shown.
    pub fn parse_secret<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str) -> Option<T>,
        allowed: &str,
        consequence: impl Into<String>,
    ) -> Option<T> {
        self.parse_shown(name, parse, allowed, consequence, |_| "<redacted>".into())
    }

    fn parse_shown<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str) -> Option<T>,
        allowed: &str,
        consequence: impl Into<String>,
        show: impl FnOnce(&str) -> String,
    ) -> Option<T> {
        let raw = self.get(name)?;
        let parsed = parse(raw.trim());
        if parsed.is_none() {
            self.issue(name, show(&raw), allowed, consequence);
        }
        parsed
    }

    /// An integer in `min..=max`, else `default` (with an issue when set but out of range).
    pub fn ranged(&mut self, name: &str, min: u32, max: u32, default: u32) -> u32 {
        self.parse(
            name,
            |v| v.parse::<u32>().ok().filter(|v| (min..=max).contains(v)),
            &format!("an integer from {min} to {max}"),
            format!("using the default {default}"),
        )
        .unwrap_or(default)
    }

    /// `true`/`false` (also 1/0, yes/no, on/off), else `default`.
    pub fn flag(&mut self, name: &str, default: bool, consequence: &str) -> bool {
        self.parse(name, parse_bool, "true or false", consequence)
            .unwrap_or(default)
    }

    /// The issues, one per bad value: a general `OTEL_EXPORTER_OTLP_*` variable is read once per
    /// signal, so its issue would otherwise be reported three times.
    pub fn into_issues(self) -> Vec<ConfigIssue> {
        let mut merged: Vec<ConfigIssue> = Vec::with_capacity(self.issues.len());
        for issue in self.issues {
            match merged
                .iter_mut()
                .find(|m| m.variable == issue.variable && m.value == issue.value)
            {
                Some(m) if m.consequence.contains(&issue.consequence) => {}
                Some(m) => {
                    m.consequence.push_str("; ");
                    m.consequence.push_str(&issue.consequence);
                }
                None => merged.push(issue),
            }
        }
        merged
    }
}

pub fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Reads settings with `read` from these variables only; what it read, and the variables it
/// found an issue with (the unit tests' way to give a reader its environment).
#[cfg(test)]
pub fn read_from<T>(vars: &[(&str, &str)], read: impl FnOnce(&mut Env) -> T) -> (T, Vec<String>) {
    let lookup = |k: &str| {
        vars.iter()
            .find(|(name, _)| *name == k)
            .map(|(_, value)| value.to_string())
    };
    let mut env = Env::new(&lookup);
    let value = read(&mut env);
    let issues = env.into_issues().into_iter().map(|i| i.variable).collect();
    (value, issues)
}
