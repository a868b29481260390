//! Summaries of measured figures, shared by `lambda-sim`'s summary and `bridge-bench`.

use std::time::Duration;

/// The median of the finite values; `None` when there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let v = sorted_finite(values);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The `p`th percentile (nearest rank) of the finite values; `None` when there are none.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let v = sorted_finite(values);
    let last = v.len().checked_sub(1)?;
    let rank = ((p / 100.0) * last as f64).round() as usize;
    v.get(rank.min(last)).copied()
}

/// The median of durations.
pub fn median_duration(values: &[Duration]) -> Option<Duration> {
    let secs: Vec<f64> = values.iter().map(Duration::as_secs_f64).collect();
    median(&secs).map(Duration::from_secs_f64)
}

fn sorted_finite(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 100.0), Some(5.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 50.0), Some(3.0));
        assert_eq!(percentile(&[], 99.0), None);
        assert_eq!(
            median_duration(&[Duration::from_millis(1), Duration::from_millis(3)]),
            Some(Duration::from_millis(2))
        );
    }
}
