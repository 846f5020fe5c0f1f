//! Runs an operation many times with a number of clients in flight and times each run.

use crate::figures::Figures;
use futures_util::stream::{self, StreamExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Runs `operation(i)` with `clients` in flight: for i in 0..count, or for `duration` when given
/// (i then cycles through 0..count). The operation answers whether it succeeded.
pub async fn drive<F, Fut>(
    clients: usize,
    count: usize,
    duration: Option<Duration>,
    operation: F,
) -> Figures
where
    F: Fn(usize) -> Fut + Sync,
    Fut: std::future::Future<Output = bool>,
{
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let results: Vec<(Vec<Duration>, usize)> = stream::iter(0..clients)
        .map(|_| async {
            let mut latencies = Vec::new();
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                match duration {
                    Some(limit) if started.elapsed() >= limit => break,
                    None if i >= count => break,
                    _ => {}
                }
                let t = Instant::now();
                if operation(i % count.max(1)).await {
                    latencies.push(t.elapsed());
                } else {
                    failed += 1;
                }
            }
            (latencies, failed)
        })
        .buffer_unordered(clients)
        .collect()
        .await;
    let mut figures = Figures {
        elapsed: started.elapsed(),
        ..Figures::default()
    };
    for (latencies, failed) in results {
        figures.count += latencies.len();
        figures.failed += failed;
        figures.latencies.extend(latencies);
    }
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_index_runs_once_and_failures_are_counted_apart() {
        let figures = drive(4, 10, None, |i| async move { i % 5 != 0 }).await;
        assert_eq!(figures.count, 8);
        assert_eq!(figures.failed, 2);
        assert_eq!(figures.latencies.len(), 8);
    }
}
