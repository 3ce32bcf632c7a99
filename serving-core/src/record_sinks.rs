//! More [`RecordSink`]s: [`TracingRecords`] (one log line per prediction) and
//! [`RecordFanOut`] (several sinks at once).

use std::sync::Arc;
use std::time::SystemTime;

use crate::record::{DynRecordSink, PredictionRecord, RecordSink};

/// The `tracing` target of the per-prediction log lines written by [`TracingRecords`].
pub const PREDICTION_TARGET: &str = "serving::prediction";

/// Writes every prediction as one `tracing` event (target [`PREDICTION_TARGET`], level INFO,
/// or WARN for a failure), with the original product's field names: `model`,
/// `model_version`, `endpoint`, `request_id`, `status`, `start_time` (seconds since the
/// epoch), `elapsed_time` (milliseconds), `input` and `output` (JSON text, as cropped and
/// filtered by the endpoint's logging spec) and `error_message`.
///
/// With a JSON subscriber on stdout (for example `serving::logging::init_json`), these lines
/// are what Kibana or any log shipper ingests.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingRecords;

impl RecordSink for TracingRecords {
    fn record(&self, record: PredictionRecord) {
        let start_time = record
            .start_time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(
                    target: PREDICTION_TARGET,
                    $level,
                    endpoint = %record.endpoint,
                    model = %record.model,
                    model_version = %record.model_version,
                    request_id = %record.request_id,
                    status = record.status,
                    start_time,
                    elapsed_time = record.elapsed_ms,
                    input = record.input.as_ref().map(tracing::field::display),
                    output = record.output.as_ref().map(tracing::field::display),
                    error_message = record.error.as_deref(),
                    "prediction"
                )
            };
        }
        if record.error.is_some() {
            emit!(tracing::Level::WARN);
        } else {
            emit!(tracing::Level::INFO);
        }
    }
}

/// Sends every record to each of several sinks, in order.
#[derive(Debug, Clone, Default)]
pub struct RecordFanOut {
    sinks: Vec<Arc<DynRecordSink>>,
}

impl RecordFanOut {
    /// Fans out to `sinks`.
    pub fn new(sinks: Vec<Arc<DynRecordSink>>) -> Self {
        RecordFanOut { sinks }
    }
}

impl RecordSink for RecordFanOut {
    fn record(&self, record: PredictionRecord) {
        if let Some((last, others)) = self.sinks.split_last() {
            others.iter().for_each(|sink| sink.record(record.clone()));
            last.record(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct Kept(Mutex<Vec<String>>);

    impl RecordSink for Kept {
        fn record(&self, record: PredictionRecord) {
            self.0.lock().unwrap().push(record.request_id);
        }
    }

    #[test]
    fn fan_out_reaches_every_sink() {
        let (a, b) = (Arc::new(Kept::default()), Arc::new(Kept::default()));
        let fan_out = RecordFanOut::new(vec![a.clone(), b.clone(), Arc::new(TracingRecords)]);
        fan_out.record(PredictionRecord {
            request_id: "r1".into(),
            endpoint: "e".into(),
            model: "m".into(),
            model_version: "1".into(),
            input: None,
            output: None,
            error: Some("boom".into()),
            status: 500,
            start_time: SystemTime::now(),
            elapsed_ms: 1.0,
            metrics: BTreeMap::new(),
            params: BTreeMap::new(),
        });
        assert_eq!(*a.0.lock().unwrap(), ["r1"]);
        assert_eq!(*b.0.lock().unwrap(), ["r1"]);
    }
}
