//! Rates and latency percentiles of timed operations, and how the reports print them.

use std::time::Duration;

/// The value at quantile `q` (0..=1) of `sorted`, nearest rank; zero when there is none.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let last = sorted.len().saturating_sub(1) as f64;
    sorted
        .get((last * q).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// A duration in milliseconds, as the reports print latencies.
pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The two header lines of a Markdown table with these columns.
pub fn table_header(columns: &[&str]) -> String {
    format!(
        "| {} |\n|{}",
        columns.join(" | "),
        "---|".repeat(columns.len())
    )
}

/// Rate and latency of a batch of timed operations.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Operations that succeeded.
    pub count: usize,
    /// Operations that failed.
    pub failed: usize,
    /// Wall time of the whole batch.
    pub elapsed: Duration,
    /// The latency of each successful operation, in completion order.
    pub latencies: Vec<Duration>,
}

impl Figures {
    /// Successful operations per second.
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at quantile `p` (0..=1).
    pub fn percentile(&self, p: f64) -> Duration {
        quantile(&self.sorted(), p)
    }

    /// The slowest operation's latency.
    pub fn slowest(&self) -> Duration {
        self.latencies.iter().max().copied().unwrap_or_default()
    }

    /// A table row: rate, p50, p99, count, failed.
    pub fn row(&self, what: &str) -> String {
        format!(
            "| {what} | {:.0} | {:.1} ms | {:.1} ms | {} | {} |",
            self.rate(),
            millis(self.percentile(0.5)),
            millis(self.percentile(0.99)),
            self.count,
            self.failed
        )
    }

    fn sorted(&self) -> Vec<Duration> {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        sorted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank_and_zero_when_empty() {
        let sorted: Vec<Duration> = (1..=101).map(Duration::from_millis).collect();
        assert_eq!(quantile(&sorted, 0.5), Duration::from_millis(51));
        assert_eq!(quantile(&sorted, 0.99), Duration::from_millis(100));
        assert_eq!(quantile(&sorted, 1.0), Duration::from_millis(101));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn a_table_header_has_a_separator_cell_per_column() {
        assert_eq!(table_header(&["a", "b"]), "| a | b |\n|---|---|");
    }
}
