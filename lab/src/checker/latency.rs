//! Delivery latency: the histogram the checker keeps (microseconds, up to an hour) and its
//! summary for the panel (p50, p99, max and the drawn buckets).

use protocol::lab::Histogram;

/// Histogram bounds, microseconds (one hour).
pub(super) const HIST_MAX_US: u64 = 3_600_000_000;
/// Bucket bounds the panel draws, in milliseconds.
const BUCKETS_MS: &[f64] = &[
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
    200.0,
    500.0,
    1000.0,
    2000.0,
    5000.0,
    10000.0,
    // Everything above: the histogram's own top (an hour). A finite number, so that every
    // frame stays valid JSON that reads back as it was written.
    (HIST_MAX_US / 1000) as f64,
];

pub(super) fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, HIST_MAX_US, 2)
        .unwrap_or_else(|_| unreachable!("constant bounds are valid"))
}

/// p50, p99, max and the panel's buckets of a histogram of microseconds.
pub fn summarize(h: &hdrhistogram::Histogram<u64>) -> Histogram {
    if h.is_empty() {
        return Histogram {
            buckets: BUCKETS_MS.iter().map(|b| (*b, 0)).collect(),
            ..Histogram::default()
        };
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let mut buckets = Vec::with_capacity(BUCKETS_MS.len());
    let mut below = 0u64;
    for &bound in BUCKETS_MS {
        let upto = if bound.is_finite() {
            h.count_between(0, (bound * 1000.0) as u64)
        } else {
            h.len()
        };
        buckets.push((bound, upto.saturating_sub(below)));
        below = upto;
    }
    Histogram {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
        buckets,
    }
}
