//! Groups of ended environments on the Pushgateway. Every environment pushes its own group
//! (`job="lambda-telemetry-bridge"`, `instance=<log stream>`), and a Pushgateway keeps a group
//! until it is deleted, so a fleet's groups would pile up for ever. Once per environment, in the
//! background after init, the bridge reads the Pushgateway's `push_time_seconds` series (one per
//! group) and deletes its job's groups whose last push is older than
//! `BRIDGE_PUSHGATEWAY_STALE_AFTER_MS`. The listing is read as it streams, bounded in bytes and
//! time, and at most [`MAX_DELETES`] groups go per environment; its own group and other jobs'
//! groups are never touched.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use super::config::Pushgateway;
use super::{base64url, JOB};
use crate::http::{Endpoint, Transport};

/// The most of the Pushgateway's exposition read (its `push_time_seconds` lines are a small
/// part of it: every group's every series comes with them).
const MAX_LISTING_BYTES: usize = 32 * 1024 * 1024;
/// The listing and the deletions together, at most.
const BUDGET: Duration = Duration::from_secs(5);
/// Groups deleted per environment at most (the next environments delete the rest).
pub const MAX_DELETES: usize = 100;

/// The labels and value of one `push_time_seconds{name="value",…} <value>` line (label values
/// escape `\\`, `\"` and `\n`, as the text exposition format does).
fn push_time(line: &str) -> Option<(BTreeMap<String, String>, f64)> {
    let rest = line.strip_prefix("push_time_seconds{")?;
    let value_after =
        |i: usize| -> Option<f64> { rest[i + 1..].split_whitespace().next()?.parse().ok() };
    let mut labels = BTreeMap::new();
    let mut chars = rest.char_indices();
    loop {
        let mut name = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '=' => break,
                '}' if name.is_empty() => return Some((labels, value_after(i)?)),
                _ => name.push(c),
            }
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(name, value);
        match chars.next()? {
            (_, ',') => {}
            (i, '}') => return Some((labels, value_after(i)?)),
            _ => return None,
        }
    }
}

/// What a cleanup did.
#[derive(Debug, Default, PartialEq)]
pub struct Cleanup {
    pub deleted: usize,
    pub failed: usize,
    /// Stale groups left for a later environment (beyond [`MAX_DELETES`]).
    pub left: usize,
}

/// The instances of this job's groups, other than `own`, last pushed more than `stale_after`
/// before `now` (seconds since the epoch), from the Pushgateway's exposition lines.
pub fn stale_instances<'a>(
    lines: impl Iterator<Item = &'a str>,
    own: &str,
    now: f64,
    stale_after: Duration,
) -> Vec<String> {
    lines
        .filter_map(push_time)
        .filter(|(labels, pushed)| {
            labels.len() == 2
                && labels.get("job").map(String::as_str) == Some(JOB)
                && labels.get("instance").is_some_and(|i| i != own)
                && now - pushed > stale_after.as_secs_f64()
        })
        .filter_map(|(mut labels, _)| labels.remove("instance"))
        .collect()
}

/// Lists the Pushgateway's groups and deletes this job's stale ones (see the module's comment).
pub async fn delete_stale(
    client: &Transport,
    gateway: &Pushgateway,
    headers: &HeaderMap,
    own: &str,
    stale_after: Duration,
) -> Result<Cleanup, String> {
    let deadline = tokio::time::Instant::now() + BUDGET;
    let mut listing_url = gateway.url.clone();
    if let Ok(mut segments) = listing_url.path_segments_mut() {
        segments.pop_if_empty().push("metrics");
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let mut stale = Vec::new();
    let listing = client
        .get_lines(
            &Endpoint::new(listing_url),
            headers,
            BUDGET,
            MAX_LISTING_BYTES,
            |line| {
                stale.extend(stale_instances(
                    std::iter::once(line),
                    own,
                    now,
                    stale_after,
                ))
            },
        )
        .await?;
    if !listing.status.is_success() {
        return Err(format!(
            "the listing was answered {}",
            listing.status.as_u16()
        ));
    }
    if listing.truncated {
        tracing::warn!(
            limit_bytes = MAX_LISTING_BYTES,
            "Pushgateway: its listing is longer than the bridge reads; only the groups in its first part were considered"
        );
    }
    let mut cleanup = Cleanup {
        left: stale.len().saturating_sub(MAX_DELETES),
        ..Cleanup::default()
    };
    for instance in stale.into_iter().take(MAX_DELETES) {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            cleanup.left += 1;
            continue;
        }
        let mut url = gateway.url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend([
                "metrics",
                "job",
                JOB,
                "instance@base64",
                base64url(instance.as_bytes()).as_str(),
            ]);
        }
        match client
            .send(
                reqwest::Method::DELETE,
                &Endpoint::new(url),
                headers,
                bytes::Bytes::new(),
                remaining,
            )
            .await
        {
            Ok(answer) if answer.status.is_success() => cleanup.deleted += 1,
            _ => cleanup.failed += 1,
        }
    }
    Ok(cleanup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_time_lines_are_read_with_their_labels() {
        let (labels, value) = push_time(
            r#"push_time_seconds{instance="2026/12/08/[$LATEST]ab\"c",job="lambda-telemetry-bridge"} 1.7336e+09"#,
        )
        .expect("parsed");
        assert_eq!(labels["instance"], "2026/12/08/[$LATEST]ab\"c");
        assert_eq!(labels["job"], JOB);
        assert_eq!(value, 1.7336e9);
        assert_eq!(push_time("push_time_seconds 5"), None);
        assert_eq!(push_time("bridge_invocations_total{job=\"x\"} 5"), None);
    }

    #[test]
    fn only_this_jobs_old_groups_but_its_own_are_stale() {
        let lines = [
            r#"# TYPE push_time_seconds gauge"#,
            r#"push_time_seconds{instance="old",job="lambda-telemetry-bridge"} 1000"#,
            r#"push_time_seconds{instance="young",job="lambda-telemetry-bridge"} 1990"#,
            r#"push_time_seconds{instance="mine",job="lambda-telemetry-bridge"} 1000"#,
            r#"push_time_seconds{instance="old",job="another-job"} 1000"#,
            r#"push_time_seconds{extra="x",instance="old2",job="lambda-telemetry-bridge"} 1000"#,
            r#"bridge_invocations_total{instance="old",job="lambda-telemetry-bridge"} 7"#,
        ];
        let stale = stale_instances(lines.into_iter(), "mine", 2000.0, Duration::from_secs(60));
        assert_eq!(stale, vec!["old".to_string()]);
    }
}
