//! Lists of regular-expression rules in one variable (`BRIDGE_MASK_RULES`,
//! `BRIDGE_LOGS_DROP_RULES`): a JSON array whose items are a pattern, or an object with the
//! pattern, a name and (for mask rules) a replacement. Each rule is checked on its own: a bad
//! rule is one issue and is left out, the others apply.

use regex::Regex;
use serde::Deserialize;

use super::env::Env;

/// More rules than this in one variable are left out (each costs CPU on every value).
pub const MAX_RULES: usize = 32;
/// The compiled program of one rule may use this much memory; a larger one is refused.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One rule as read: its name (for the bridge's own metrics), its compiled pattern and, for a
/// mask rule, the replacement given (`None`: the caller's default).
#[derive(Debug, Clone)]
pub struct RuleSpec {
    pub name: String,
    pub regex: Regex,
    pub replacement: Option<String>,
}

/// A rule given as an object; a misspelt field is an error, not a rule that silently lacks it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleObject {
    pattern: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    replacement: Option<String>,
}

/// A rule name is a metric label value: short, and of characters every backend keeps.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Compiles `pattern`, bounded in size; the error's last line (what is wrong), without the
/// pattern echoed over several lines.
pub fn compile(pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let text = e.to_string();
            text.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid regular expression")
                .trim()
                .trim_start_matches("error: ")
                .to_string()
        })
}

/// The rules in `variable` (unset: none). `prefix` names the rules given as a bare pattern
/// (`<prefix>_<position>`); `replacements` says whether the rules may carry one.
pub fn read_rules(
    env: &mut Env,
    variable: &str,
    prefix: &str,
    replacements: bool,
    taken: &[&str],
) -> Vec<RuleSpec> {
    let Some(raw) = env.get(variable) else {
        return Vec::new();
    };
    let shape = if replacements {
        "a JSON array of patterns or of {\"pattern\", \"name\", \"replacement\"} objects"
    } else {
        "a JSON array of patterns or of {\"pattern\", \"name\"} objects"
    };
    let items: Vec<serde_json::Value> = match serde_json::from_str(raw.trim()) {
        Ok(serde_json::Value::Array(items)) => items,
        Ok(_) => {
            env.issue(variable, raw, shape, "none of its rules apply");
            return Vec::new();
        }
        Err(e) => {
            env.issue(
                variable,
                raw,
                format!("{shape} (not JSON: {e})"),
                "none of its rules apply",
            );
            return Vec::new();
        }
    };
    let mut rules: Vec<RuleSpec> = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let position = index + 1;
        let shown = item.to_string();
        if position > MAX_RULES {
            env.issue(
                variable,
                format!("rule {position}: {shown}"),
                format!("at most {MAX_RULES} rules"),
                "this rule is left out; the first ones apply",
            );
            continue;
        }
        let parsed = match item {
            serde_json::Value::String(pattern) => Some((pattern, None, None)),
            other => serde_json::from_value::<RuleObject>(other)
                .ok()
                .map(|o| (o.pattern, o.name, o.replacement)),
        };
        let Some((pattern, name, replacement)) = parsed else {
            env.issue(
                variable,
                format!("rule {position}: {shown}"),
                shape,
                "this rule is left out; the others apply",
            );
            continue;
        };
        if replacement.is_some() && !replacements {
            env.issue(
                variable,
                format!("rule {position}: {shown}"),
                shape,
                "this rule is left out (a drop rule has no replacement); the others apply",
            );
            continue;
        }
        let name = name.unwrap_or_else(|| format!("{prefix}_{position}"));
        let duplicate = taken.contains(&name.as_str()) || rules.iter().any(|r| r.name == name);
        if !valid_name(&name) || duplicate {
            env.issue(
                variable,
                format!("rule {position}: {shown}"),
                "a unique name of up to 64 letters, digits, '_', '-' or '.'",
                "this rule is left out; the others apply",
            );
            continue;
        }
        match compile(&pattern) {
            Ok(regex) => rules.push(RuleSpec {
                name,
                regex,
                replacement,
            }),
            Err(why) => env.issue(
                variable,
                format!("rule {position} ({name}): {pattern}"),
                format!("a regular expression in the Rust regex crate's syntax ({why})"),
                "this rule is left out; the others apply",
            ),
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(value: &str) -> (Vec<RuleSpec>, Vec<String>) {
        let value = value.to_string();
        let lookup = move |k: &str| (k == "V").then(|| value.clone());
        let mut env = Env::new(&lookup);
        let rules = read_rules(&mut env, "V", "mask", true, &["emails"]);
        let issues = env.into_issues().into_iter().map(|i| i.value).collect();
        (rules, issues)
    }

    #[test]
    fn patterns_and_objects_are_rules() {
        let (rules, issues) =
            read(r#"["ORD-\\d+", {"name":"ids","pattern":"id=\\w+","replacement":"id=?"}]"#);
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].name, "mask_1");
        assert!(rules[0].regex.is_match("ORD-12"));
        assert_eq!(rules[1].name, "ids");
        assert_eq!(rules[1].replacement.as_deref(), Some("id=?"));
    }

    #[test]
    fn each_bad_rule_is_one_issue_and_the_others_apply() {
        let (rules, issues) = read(
            r#"["(unclosed", "fine", {"pattern":"x","nme":"typo"}, {"name":"emails","pattern":"y"}, 7]"#,
        );
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].name, "mask_2");
        assert_eq!(issues.len(), 4, "{issues:?}");
        assert!(issues[0].starts_with("rule 1 (mask_1): (unclosed"));
        let (rules, issues) = read("not json");
        assert!(rules.is_empty());
        assert_eq!(issues.len(), 1);
    }

    #[test]
    fn a_compile_error_says_what_is_wrong_on_one_line() {
        let why = compile("a(b").expect_err("unclosed group");
        assert!(!why.contains('\n'));
        assert!(why.contains("unclosed"), "{why}");
    }
}
