//! Predicting a chunk of requests in one call: for transports that read their input in
//! chunks (a batch file), where a task and a routing decision per request cost more than the
//! model.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::endpoint::{ModelEndpoint, PredictRequest, Prediction};
use crate::error::Result;
use crate::lifecycle::Served;
use crate::model::context::EndpointContext;
use crate::observe::metrics::RequestEvent;
use crate::sync::Locked as _;

/// A chunk's tally, handed to the endpoint's sinks when dropped.
struct Measured<'a> {
    endpoint: &'a ModelEndpoint,
    tally: Mutex<Tally>,
}

impl Drop for Measured<'_> {
    fn drop(&mut self) {
        self.endpoint.hand_over(&self.tally);
    }
}

/// Requests measured at most before a chunk hands their events over.
const TALLY_BURST: usize = 256;
/// How long a chunk keeps its requests' events at most (a slow model's chunk runs long).
const TALLY_AGE: Duration = Duration::from_millis(100);

impl ModelEndpoint {
    /// Predicts `requests` one after another on the calling task and answers their results
    /// in the same order; stops before taking the next request once `stop` is set (the
    /// answers then hold only the requests predicted). `requests` may make each request as it
    /// is taken: then only one input at a time is alive, which the allocator serves from its
    /// per-thread cache where a whole chunk's would not fit.
    ///
    /// Each request is a prediction of its own, made as
    /// [`Endpoint::predict`](crate::Endpoint::predict) makes it: its own id, outcome, latency
    /// (from its arrival), record and metrics, and its own canary routing (by its routing
    /// key). What the chunk shares is the routing table, taken once when the call starts, so
    /// a version switch falls between two chunks, in input order, as the
    /// [`Runner`](crate::runner::Runner) makes it fall between two items; and one of the
    /// endpoint's running slots (`concurrency`), since its requests run one at a time. Run
    /// several chunks at once (up to the endpoint's concurrency) to use several cores.
    ///
    /// The requests' [`RequestEvent`](crate::RequestEvent)s reach the metric sink (through
    /// [`MetricSink::record_requests`](crate::MetricSink::record_requests)) and the version
    /// statistics in bursts of up to 256, or of what 100 ms of requests finished: each one
    /// once, in order, all by the time the call returns or is dropped.
    ///
    /// `remake_input`, when given, makes the input of the request at an index again (a batch
    /// run parses it again from its file's cells). A record sink that keeps only failed
    /// predictions then costs no copy of every input: the input is made again for the
    /// records kept.
    ///
    /// ```
    /// # #[tokio::main] async fn main() {
    /// use std::sync::atomic::AtomicBool;
    /// use serving_core::{ModelEndpoint, PredictRequest, Result, predictor_fn};
    ///
    /// let endpoint = ModelEndpoint::builder("double", predictor_fn(|x: f64| -> Result<f64> {
    ///     Ok(2.0 * x)
    /// }))
    /// .build()
    /// .unwrap();
    /// let requests = (0..3).map(|i| PredictRequest::new(serde_json::json!([i])));
    /// let answers = endpoint.predict_chunk(requests, &AtomicBool::new(false), None).await;
    /// let outputs: Vec<f64> = answers
    ///     .into_iter()
    ///     .map(|answer| answer.unwrap().output.as_f64().unwrap())
    ///     .collect();
    /// assert_eq!(outputs, [0.0, 2.0, 4.0]);
    /// # }
    /// ```
    pub async fn predict_chunk(
        &self,
        requests: impl IntoIterator<Item = PredictRequest>,
        stop: &AtomicBool,
        remake_input: Option<&(dyn Fn(usize) -> Option<Value> + Sync)>,
    ) -> Vec<Result<Prediction>> {
        let snapshot = self.lifecycle.snapshot();
        let local = Local::new(self);
        // One running slot for the whole chunk, whose requests run one at a time; when none
        // is free now, each request waits for (or is refused) its own as `predict` does.
        let slot = self.admission.try_admit();
        // Handed over when dropped too: a caller that gives up on the chunk loses no event.
        let tally = Measured {
            endpoint: self,
            tally: Mutex::new(Tally::with_capacity(TALLY_BURST)),
        };
        let mut requests = requests.into_iter();
        let mut answers = Vec::with_capacity(requests.size_hint().0);
        // Checked before a request is taken: an iterator that makes its requests as they are
        // taken (a batch run parses its rows) makes none once stopped.
        while !stop.load(Ordering::Acquire) {
            let Some(request) = requests.next() else {
                break;
            };
            let index = answers.len();
            let remake = remake_input.map(|remake| move || remake(index));
            let chunk = InChunk {
                slot_held: slot.is_some(),
                remake_input: remake.as_ref().map(|r| r as RemakeInput<'_>),
                tally: Some(&tally.tally),
                routing: Some(&snapshot),
                local: Some(&local),
            };
            answers.push(self.predict_one(request, chunk).await);
        }
        answers
    }
}

/// Makes a request's input again, for its record.
pub(crate) type RemakeInput<'a> = &'a (dyn Fn() -> Option<Value> + Sync);

/// How a request predicted as part of a chunk differs from one on its own.
#[derive(Clone, Copy, Default)]
pub(crate) struct InChunk<'a> {
    /// The chunk holds a running slot for it (its requests run one after another), so it
    /// takes none of its own.
    pub(crate) slot_held: bool,
    /// Makes its input again for its record: then no copy of every input is kept up front
    /// for a sink that keeps only failed ones.
    pub(crate) remake_input: Option<RemakeInput<'a>>,
    /// Where it is measured until the chunk hands its events over together.
    pub(crate) tally: Option<&'a Mutex<Tally>>,
    /// The routing table the chunk took, lent rather than cloned per request (two cores
    /// cloning one `Arc` per request take turns at its count).
    pub(crate) routing: Option<&'a crate::lifecycle::RoutingSnapshot>,
    /// The chunk's own copies of the endpoint's shared handles.
    pub(crate) local: Option<&'a Local>,
}

/// The endpoint's shared handles as one chunk holds them: copies whose reference counts only
/// its task touches. Two cores predicting two chunks would otherwise take turns at the same
/// counts (the name's, the version's, the context's) several times per request.
#[derive(Debug)]
pub(crate) struct Local {
    /// The parts every request's context shares.
    pub(crate) context: Arc<EndpointContext>,
    /// The endpoint's name, for its requests' events.
    pub(crate) name: Arc<str>,
    /// Each version seen.
    versions: Mutex<Vec<LocalVersion>>,
}

/// A version as a chunk holds it: found by the address of its routing entry's id.
#[derive(Debug)]
struct LocalVersion {
    key: usize,
    id: Arc<str>,
    model: Arc<str>,
}

impl Local {
    pub(crate) fn new(endpoint: &ModelEndpoint) -> Self {
        let shared = &endpoint.context;
        Local {
            context: Arc::new(EndpointContext {
                endpoint: Arc::from(&*shared.endpoint),
                settings: Arc::clone(&shared.settings),
                pool: shared.pool.clone(),
                sink: Arc::clone(&shared.sink),
            }),
            name: Arc::from(&*endpoint.name),
            versions: Mutex::default(),
        }
    }

    /// The id and model name of `served`, as this chunk holds them.
    pub(crate) fn version(&self, served: &Served) -> (Arc<str>, Arc<str>) {
        let key = Arc::as_ptr(&served.id).cast::<u8>() as usize;
        let mut versions = self.versions.locked();
        if let Some(seen) = versions.iter().find(|seen| seen.key == key) {
            return (Arc::clone(&seen.id), Arc::clone(&seen.model));
        }
        let (id, model): (Arc<str>, Arc<str>) = (Arc::from(&*served.id), Arc::from(&*served.model));
        versions.push(LocalVersion {
            key,
            id: Arc::clone(&id),
            model: Arc::clone(&model),
        });
        (id, model)
    }
}

/// What a chunk's requests measured, not yet handed over: the metric sink and the version
/// stats take them together, so two cores predicting two chunks do not take turns at the
/// same locks for every request.
#[derive(Debug)]
pub(crate) struct Tally {
    events: Vec<RequestEvent>,
    ended: Vec<Instant>,
    /// When the tally is due, by the age of its first request.
    due: Instant,
}

impl Tally {
    /// Room for `burst` requests.
    pub(crate) fn with_capacity(burst: usize) -> Self {
        Tally {
            events: Vec::with_capacity(burst),
            ended: Vec::with_capacity(burst),
            due: Instant::now(),
        }
    }

    /// Adds a request that ended at `ended`; answers whether the tally is due to be handed
    /// over: a full burst, or one whose first request ended [`TALLY_AGE`] before this one
    /// (so that a slow model's metrics stay live).
    pub(crate) fn push(&mut self, event: RequestEvent, ended: Instant) -> bool {
        if self.events.is_empty() {
            // A comparison per request, where a difference of instants cost several.
            self.due = ended.checked_add(TALLY_AGE).unwrap_or(ended);
        }
        self.events.push(event);
        self.ended.push(ended);
        self.events.len() >= TALLY_BURST || ended >= self.due
    }
}

impl ModelEndpoint {
    /// Hands `tally`'s events to the metric sink and the version stats.
    pub(crate) fn hand_over(&self, tally: &Mutex<Tally>) {
        let mut tally = tally.locked();
        let Tally { events, ended, .. } = &mut *tally;
        self.metrics.record_requests(events);
        self.lifecycle
            .record_all(events.iter().zip(ended.iter().copied()));
        // Kept for the next burst: no allocation per burst.
        events.clear();
        ended.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use serde_json::json;

    use crate::{InMemoryMetrics, ModelEndpoint, Outcome, PredictRequest, Result, predictor_fn};

    #[tokio::test]
    async fn each_request_of_a_chunk_is_its_own_prediction() {
        let metrics = std::sync::Arc::new(InMemoryMetrics::new());
        let endpoint = ModelEndpoint::builder(
            "half",
            predictor_fn(|x: f64| -> Result<f64> {
                if x < 0.0 {
                    Err(crate::Error::rejected("negative"))
                } else {
                    Ok(x / 2.0)
                }
            }),
        )
        .metric_sink(metrics.clone())
        .build()
        .unwrap();
        let requests: Vec<_> = [4.0, -1.0, 2.0]
            .into_iter()
            .enumerate()
            .map(|(i, x)| PredictRequest::new(json!([x])).with_request_id(format!("r{i}")))
            .collect();
        let answers = endpoint
            .predict_chunk(requests, &AtomicBool::new(false), None)
            .await;
        assert_eq!(answers.len(), 3);
        assert_eq!(answers[0].as_ref().unwrap().output, json!(2.0));
        assert_eq!(answers[0].as_ref().unwrap().request_id, "r0");
        assert!(answers[1].is_err());
        assert_eq!(answers[2].as_ref().unwrap().output, json!(1.0));
        let outcomes: Vec<Outcome> = metrics.requests().iter().map(|e| e.outcome).collect();
        assert_eq!(
            outcomes,
            [Outcome::Ok, Outcome::RejectedInput, Outcome::Ok],
            "one event per request, in order"
        );
        // A stopped chunk predicts nothing more.
        let stopped = endpoint
            .predict_chunk(
                vec![PredictRequest::new(json!([1.0]))],
                &AtomicBool::new(true),
                None,
            )
            .await;
        assert!(stopped.is_empty());
    }

    /// A chunk whose caller gives up (its future dropped) still counts the requests it
    /// finished.
    #[tokio::test]
    async fn a_chunk_given_up_counts_the_requests_it_finished() {
        #[derive(Debug)]
        struct SlowOnThree;
        #[async_trait::async_trait]
        impl crate::Predictor for SlowOnThree {
            async fn predict(
                &self,
                input: crate::Input,
                _: &crate::Context,
            ) -> Result<serde_json::Value> {
                let crate::Input::Json(value) = input else {
                    unreachable!("the test sends JSON");
                };
                if value == json!(3) {
                    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                }
                Ok(value)
            }
        }
        let metrics = std::sync::Arc::new(InMemoryMetrics::new());
        let endpoint = ModelEndpoint::builder("slow", SlowOnThree)
            .metric_sink(metrics.clone())
            .build()
            .unwrap();
        let requests: Vec<_> = (1..=4).map(|i| PredictRequest::new(json!(i))).collect();
        let stop = AtomicBool::new(false);
        let chunk = endpoint.predict_chunk(requests, &stop, None);
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(200), chunk).await;
        assert!(gave_up.is_err(), "the third request never answers");
        assert_eq!(metrics.requests().len(), 2, "the two finished are counted");
    }

    /// A chunk's requests split between two versions by key: each answer and each event
    /// names the version that answered, as a request on its own would.
    #[tokio::test]
    async fn a_canary_splits_a_chunk_by_key_and_each_event_names_its_version() {
        let metrics = std::sync::Arc::new(InMemoryMetrics::new());
        let endpoint =
            ModelEndpoint::builder("split", predictor_fn(|x: f64| -> Result<f64> { Ok(x) }))
                .model("m", "1")
                .metric_sink(metrics.clone())
                .build()
                .unwrap();
        let doubled =
            crate::ModelUpdate::new(predictor_fn(|x: f64| -> Result<f64> { Ok(2.0 * x) }));
        endpoint
            .lifecycle()
            .update_model(doubled, Some(50))
            .unwrap();
        let requests: Vec<_> = (0..200)
            .map(|i| PredictRequest::new(json!([1.0])).with_routing_key(format!("key-{i}")))
            .collect();
        let answers = endpoint
            .predict_chunk(requests, &AtomicBool::new(false), None)
            .await;
        let versions: Vec<String> = answers
            .iter()
            .map(|answer| {
                let answer = answer.as_ref().unwrap();
                let expected = if &*answer.model_version == "2" {
                    2.0
                } else {
                    1.0
                };
                assert_eq!(answer.output, json!(expected), "{answer:?}");
                answer.model_version.to_string()
            })
            .collect();
        assert!(versions.iter().any(|v| v == "1") && versions.iter().any(|v| v == "2"));
        let events: Vec<String> = metrics
            .requests()
            .iter()
            .map(|event| event.model_version.to_string())
            .collect();
        assert_eq!(
            events, versions,
            "one event per request, in order, with its version"
        );
    }
}
