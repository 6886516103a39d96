//! Metrics through the `metrics` facade (feature `metrics`): every handle
//! is registered once, when a layer is built, so the request path pays one
//! atomic add per event and nothing at all without the feature. Install the
//! recorder (e.g. a Prometheus exporter) before building the layers.
//!
//! The metrics are listed in the crate docs ("Metrics").

#![cfg_attr(not(feature = "metrics"), allow(dead_code, unused_variables))]

use std::time::Duration;

/// The labels of one metric, owned by its handle.
#[cfg(feature = "metrics")]
fn owned(labels: &[(&'static str, &str)]) -> Vec<metrics::Label> {
    labels
        .iter()
        .map(|(k, v)| metrics::Label::new(*k, v.to_string()))
        .collect()
}

/// Counters for a fixed set of outcomes, registered once.
#[derive(Clone, Default)]
pub(crate) struct Outcomes {
    #[cfg(feature = "metrics")]
    counters: Box<[metrics::Counter]>,
}

impl std::fmt::Debug for Outcomes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outcomes")
    }
}

impl Outcomes {
    /// `name{labels…, outcome}` for each of `outcomes`, in order.
    pub(crate) fn new(
        name: &'static str,
        labels: &[(&'static str, &str)],
        outcomes: &[&'static str],
    ) -> Self {
        #[cfg(feature = "metrics")]
        {
            let counters = outcomes
                .iter()
                .map(|o| {
                    let mut l = owned(labels);
                    l.push(metrics::Label::new("outcome", *o));
                    metrics::counter!(name, l)
                })
                .collect();
            Self { counters }
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }

    /// Counts one event of outcome `i` (its index in the list given to `new`).
    #[inline]
    pub(crate) fn inc(&self, i: usize) {
        #[cfg(feature = "metrics")]
        if let Some(c) = self.counters.get(i) {
            c.increment(1);
        }
    }
}

/// One counter, registered once.
#[derive(Clone, Default)]
pub(crate) struct Count {
    #[cfg(feature = "metrics")]
    counter: Option<metrics::Counter>,
}

impl std::fmt::Debug for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Count")
    }
}

impl Count {
    pub(crate) fn new(name: &'static str, labels: &[(&'static str, &str)]) -> Self {
        #[cfg(feature = "metrics")]
        {
            Self {
                counter: Some(metrics::counter!(name, owned(labels))),
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }

    #[inline]
    pub(crate) fn add(&self, n: u64) {
        #[cfg(feature = "metrics")]
        if let Some(c) = &self.counter {
            c.increment(n);
        }
    }
}

/// A gauge, registered once.
#[derive(Clone, Default)]
pub(crate) struct Level {
    #[cfg(feature = "metrics")]
    gauge: Option<metrics::Gauge>,
}

impl std::fmt::Debug for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Level")
    }
}

impl Level {
    pub(crate) fn new(name: &'static str, labels: &[(&'static str, &str)]) -> Self {
        #[cfg(feature = "metrics")]
        {
            Self {
                gauge: Some(metrics::gauge!(name, owned(labels))),
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }

    #[inline]
    pub(crate) fn set(&self, v: f64) {
        #[cfg(feature = "metrics")]
        if let Some(g) = &self.gauge {
            g.set(v);
        }
    }

    #[inline]
    pub(crate) fn add(&self, v: f64) {
        #[cfg(feature = "metrics")]
        if let Some(g) = &self.gauge {
            g.increment(v);
        }
    }
}

/// The store-call metrics of one lane.
#[derive(Clone, Default, Debug)]
pub(crate) struct StoreCalls {
    #[cfg(feature = "metrics")]
    durations: Option<[metrics::Histogram; 3]>,
    pub(crate) skipped: Count,
    pub(crate) breakers_open: Level,
}

/// Outcomes of a store call, as the `outcome` label says them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CallOutcome {
    Ok = 0,
    Error = 1,
    Timeout = 2,
}

impl StoreCalls {
    pub(crate) fn new(layer: &'static str) -> Self {
        #[cfg(feature = "metrics")]
        let durations = Some(["ok", "error", "timeout"].map(|o| {
            metrics::histogram!("trl_store_call_duration_seconds", "layer" => layer, "outcome" => o)
        }));
        Self {
            #[cfg(feature = "metrics")]
            durations,
            skipped: Count::new("trl_store_calls_skipped_total", &[("layer", layer)]),
            breakers_open: Level::new("trl_store_breakers_open", &[("layer", layer)]),
        }
    }

    #[inline]
    pub(crate) fn record(&self, outcome: CallOutcome, took: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.durations {
            h[outcome as usize].record(took.as_secs_f64());
        }
    }
}
