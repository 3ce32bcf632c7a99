//! What a run measures: the distribution of its predictions, the custom metrics logged during
//! it, and which of its records reach the prediction log.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serving_core::{
    DynMetricSink, DynRecordSink, MetricSample, MetricSink, MetricSummary, PredictionDistribution,
    PredictionRecord, RecordSink, RequestEvent,
};

/// Distinct categorical values counted at most; the rest are `other`.
const MAX_CATEGORIES: usize = 100;
/// Predictions kept for the quantiles (every n-th once full).
const QUANTILE_SAMPLE: usize = 10_000;

/// Gathers the distribution of a run's predictions.
#[derive(Debug, Default)]
pub(crate) struct Distribution {
    numeric: Option<MetricSummary>,
    sample: Vec<f64>,
    stride: u64,
    seen: u64,
    counts: BTreeMap<String, u64>,
    other: u64,
    categorical: bool,
}

impl Distribution {
    /// Counts one prediction, whatever its type.
    #[cfg(test)]
    pub(crate) fn add(&mut self, output: &serde_json::Value) {
        match output.as_f64() {
            Some(value) if !self.categorical => self.add_number(value),
            _ => match output {
                serde_json::Value::String(text) => self.add_category(text),
                other => self.add_category(&other.to_string()),
            },
        }
    }

    /// Counts one numeric prediction (a category once a prediction was not a number).
    pub(crate) fn add_number(&mut self, value: f64) {
        if self.categorical {
            let text = serde_json::Number::from_f64(value)
                .map_or_else(|| value.to_string(), |n| n.to_string());
            return self.add_category(&text);
        }
        match &mut self.numeric {
            Some(summary) => summary.add(value),
            None => self.numeric = Some(MetricSummary::of(value)),
        }
        self.seen += 1;
        if self.stride == 0 {
            self.stride = 1;
        }
        if self.seen % self.stride == 0 {
            self.sample.push(value);
            if self.sample.len() >= QUANTILE_SAMPLE {
                // Keep every other one: the sample stays spread over the whole run.
                let mut i = 0;
                self.sample.retain(|_| {
                    i += 1;
                    i % 2 == 0
                });
                self.stride *= 2;
            }
        }
    }

    /// Counts one categorical prediction.
    pub(crate) fn add_category(&mut self, key: &str) {
        self.categorical = true;
        if let Some(count) = self.counts.get_mut(key) {
            *count += 1;
        } else if self.counts.len() < MAX_CATEGORIES {
            self.counts.insert(key.to_owned(), 1);
        } else {
            self.other += 1;
        }
    }

    pub(crate) fn summary(&self) -> PredictionDistribution {
        if self.categorical {
            // Numbers seen before the first category count under their text.
            let mut counts = self.counts.clone();
            if let Some(numeric) = self.numeric {
                counts
                    .entry("(numeric)".to_owned())
                    .and_modify(|c| *c += numeric.count)
                    .or_insert(numeric.count);
            }
            return PredictionDistribution::Categorical {
                counts,
                other: self.other,
            };
        }
        let Some(summary) = self.numeric else {
            return PredictionDistribution::Empty;
        };
        let mut sorted = self.sample.clone();
        sorted.sort_by(f64::total_cmp);
        let quantile = |q: f64| {
            let index = ((sorted.len() - 1) as f64 * q).round() as usize;
            sorted[index]
        };
        let quantiles = [
            ("p05", 0.05),
            ("p25", 0.25),
            ("p50", 0.5),
            ("p75", 0.75),
            ("p95", 0.95),
        ]
        .into_iter()
        .filter(|_| !sorted.is_empty())
        .map(|(name, q)| (name.to_owned(), quantile(q)))
        .collect();
        PredictionDistribution::Numeric {
            count: summary.count,
            mean: summary.mean,
            min: summary.min,
            max: summary.max,
            quantiles,
        }
    }
}

/// The run's metric sink: summarises every custom metric logged during the run, then passes
/// everything on to the service's sink.
#[derive(Debug)]
pub(crate) struct RunMetrics {
    pub(crate) summaries: Mutex<BTreeMap<String, MetricSummary>>,
    inner: Option<Arc<DynMetricSink>>,
}

impl RunMetrics {
    pub(crate) fn new(inner: Option<Arc<DynMetricSink>>) -> Self {
        RunMetrics {
            summaries: Mutex::default(),
            inner,
        }
    }

    pub(crate) fn summaries(&self) -> BTreeMap<String, MetricSummary> {
        self.summaries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl MetricSink for RunMetrics {
    fn request_started(&self, endpoint: &str) {
        if let Some(inner) = &self.inner {
            inner.request_started(endpoint);
        }
    }

    fn request_finished(&self, endpoint: &str) {
        if let Some(inner) = &self.inner {
            inner.request_finished(endpoint);
        }
    }

    fn record_request(&self, event: &RequestEvent) {
        if let Some(inner) = &self.inner {
            inner.record_request(event);
        }
    }

    fn record_requests(&self, events: &[RequestEvent]) {
        if let Some(inner) = &self.inner {
            inner.record_requests(events);
        }
    }

    fn record_metric(&self, sample: &MetricSample) {
        self.summaries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(sample.key.clone())
            .and_modify(|summary| summary.add(sample.value))
            .or_insert_with(|| MetricSummary::of(sample.value));
        if let Some(inner) = &self.inner {
            inner.record_metric(sample);
        }
    }
}

/// Passes a run's records on to the prediction log: every one when `all`, else only failed
/// ones, at most `bound`. With `all`, records are held until [`RunRecords::pass_on`] hands them
/// over in bursts the sink has room for, so a run waits for the log rather than have it drop
/// records; the held ones are those of the chunks in flight, so memory stays bounded.
#[derive(Debug)]
pub(crate) struct RunRecords {
    inner: Arc<DynRecordSink>,
    all: bool,
    bound: u64,
    failed: AtomicU64,
    held: Mutex<Vec<PredictionRecord>>,
}

/// Records handed to the sink at a time, each burst after [`RecordSink::ready`].
const BURST: usize = 256;

impl RunRecords {
    pub(crate) fn new(inner: Arc<DynRecordSink>, all: bool, bound: u64) -> Self {
        RunRecords {
            inner,
            all,
            bound,
            failed: AtomicU64::new(0),
            held: Mutex::default(),
        }
    }

    /// Whether a row's record goes to the log (a failed one counts toward the bound): asked
    /// before the record is made, so rows that are not logged cost nothing.
    pub(crate) fn admits(&self, failed: bool) -> bool {
        self.all || (failed && self.failed.fetch_add(1, Ordering::Relaxed) < self.bound)
    }

    /// Whether every row is logged.
    pub(crate) fn every_row(&self) -> bool {
        self.all
    }

    /// Failed rows logged at most.
    pub(crate) fn bound(&self) -> usize {
        usize::try_from(self.bound).unwrap_or(usize::MAX)
    }

    /// Passes on a record [`RunRecords::admits`] admitted (held when every row is logged).
    pub(crate) fn push(&self, record: PredictionRecord) {
        if self.all {
            self.held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(record);
        } else {
            self.inner.record(record);
        }
    }

    /// Hands the held records to the sink, each burst once the sink has room for it. Called
    /// by the run between chunks and at its end.
    pub(crate) async fn pass_on(&self) {
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(PoisonError::into_inner));
        let mut records = held.into_iter();
        loop {
            let burst = records.len().min(BURST);
            if burst == 0 {
                return;
            }
            self.inner.ready(burst).await;
            records
                .by_ref()
                .take(burst)
                .for_each(|record| self.inner.record(record));
        }
    }
}

impl RecordSink for RunRecords {
    fn record(&self, record: PredictionRecord) {
        if self.admits(record.error.is_some()) {
            self.push(record);
        }
    }

    fn keeps(&self, failed: bool) -> bool {
        self.all || (failed && self.failed.load(Ordering::Relaxed) < self.bound)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numeric_and_categorical() {
        let mut numbers = Distribution::default();
        for i in 0..=100 {
            numbers.add(&json!(i as f64));
        }
        let PredictionDistribution::Numeric {
            count,
            mean,
            min,
            max,
            quantiles,
        } = numbers.summary()
        else {
            panic!("numeric");
        };
        assert_eq!((count, mean, min, max), (101, 50.0, 0.0, 100.0));
        assert_eq!(quantiles["p50"], 50.0);
        assert_eq!(quantiles["p95"], 95.0);
        let mut labels = Distribution::default();
        for label in ["setosa", "setosa", "virginica"] {
            labels.add(&json!(label));
        }
        let PredictionDistribution::Categorical { counts, other } = labels.summary() else {
            panic!("categorical");
        };
        assert_eq!((counts["setosa"], counts["virginica"], other), (2, 1, 0));
    }
}
