//! [`BatchService`]: the batch endpoints of one process, their runs and their records.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use futures::StreamExt as _;
use serving_core::datasets::{Datasets, check_relative_path};
use serving_core::{
    BatchComparison, BatchRequest, BatchRun, BatchRuns, BatchStatus, DynAutoscaler, DynMetricSink,
    DynRecordSink, EndpointSpec, Error, InMemoryAutoscaler, ModelRegistry, OutputFormat,
    PredictionDiff, Result,
};
use tokio::sync::mpsc;

use crate::chunk::{ChunkPredictor, DynChunkPredictor};
use crate::config::BatchJobConfig;
use crate::run::{Live, execute};
use crate::source::ChannelReader;
use crate::store::RunStore;

type ChunkFactory = Arc<dyn Fn() -> Result<Arc<DynChunkPredictor>> + Send + Sync>;

/// Where a batch endpoint's model comes from.
pub(crate) enum EndpointModel {
    /// The [`ModelRegistry`]'s factory of the spec's model: a row-wise [`Predictor`](serving_core::Predictor).
    Registry,
    /// A [`ChunkPredictor`] factory: the vectorised path.
    Chunks(ChunkFactory),
}

/// One batch endpoint: its spec, its `batch` section and its model's factory.
pub(crate) struct BatchEndpoint {
    pub(crate) spec: EndpointSpec,
    pub(crate) config: BatchJobConfig,
    pub(crate) model: EndpointModel,
}

pub(crate) struct Inner {
    pub(crate) datasets: Datasets,
    pub(crate) registry: Arc<ModelRegistry>,
    pub(crate) autoscaler: Arc<DynAutoscaler>,
    pub(crate) record_sink: Option<Arc<DynRecordSink>>,
    pub(crate) metric_sink: Option<Arc<DynMetricSink>>,
    pub(crate) local_input: bool,
    pub(crate) store: RunStore,
    endpoints: RwLock<BTreeMap<String, Arc<BatchEndpoint>>>,
    live: Mutex<HashMap<(String, String), Arc<Live>>>,
}

impl Inner {
    /// Forgets a run that has ended (its record is stored).
    pub(crate) fn finished(&self, endpoint: &str, id: &str) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(endpoint.to_owned(), id.to_owned()));
    }

    fn live(&self, endpoint: &str, id: &str) -> Option<Arc<Live>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(endpoint.to_owned(), id.to_owned()))
            .cloned()
    }

    fn endpoint(&self, name: &str) -> Result<Arc<BatchEndpoint>> {
        self.endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| Error::EndpointNotFound {
                endpoint: name.to_owned(),
            })
    }

    /// A stored record as it stands: one left running by a process that stopped is failed.
    fn settled(&self, mut run: BatchRun) -> BatchRun {
        if !run.status.is_finished() && self.live(&run.endpoint, &run.id).is_none() {
            run.status = BatchStatus::Failed;
            run.error = Some("the batch runner stopped before the run ended".to_owned());
        }
        run
    }
}

/// The batch endpoints of one process: each sits at zero replicas until a run arrives, builds
/// its model for the run, reads the input CSV in chunks, predicts every row, writes the output
/// CSV to a dataset atomically, and scales back to zero; every run is recorded beside the
/// datasets. It implements [`BatchRuns`], which the web service serves over REST.
///
/// See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct BatchService {
    inner: Arc<Inner>,
}

impl fmt::Debug for BatchService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchService")
            .field("datasets", &self.inner.datasets)
            .field("endpoints", &self.endpoints())
            .finish_non_exhaustive()
    }
}

/// Builds a [`BatchService`].
pub struct BatchServiceBuilder {
    datasets: Datasets,
    registry: Arc<ModelRegistry>,
    autoscaler: Arc<DynAutoscaler>,
    record_sink: Option<Arc<DynRecordSink>>,
    metric_sink: Option<Arc<DynMetricSink>>,
    local_input: bool,
    endpoints: BTreeMap<String, Arc<BatchEndpoint>>,
}

impl fmt::Debug for BatchServiceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchServiceBuilder")
            .field("datasets", &self.datasets)
            .field("endpoints", &self.endpoints.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl BatchServiceBuilder {
    /// The registry whose factories build the models of row-wise endpoints (an empty one by
    /// default).
    pub fn registry(mut self, registry: Arc<ModelRegistry>) -> Self {
        self.registry = registry;
        self
    }

    /// The autoscaler that takes each endpoint from 0 to 1 replica for a run and back (an
    /// [`InMemoryAutoscaler`] by default).
    pub fn autoscaler(mut self, autoscaler: Arc<DynAutoscaler>) -> Self {
        self.autoscaler = autoscaler;
        self
    }

    /// Where runs' records go (the prediction log): failed rows up to
    /// [`BatchJobConfig::failed_rows_logged`], or every row with
    /// [`BatchJobConfig::log_every_row`].
    pub fn record_sink(mut self, sink: Arc<DynRecordSink>) -> Self {
        self.record_sink = Some(sink);
        self
    }

    /// Where request measurements and custom metrics go, besides each run's own summary.
    pub fn metric_sink(mut self, sink: Arc<DynMetricSink>) -> Self {
        self.metric_sink = Some(sink);
        self
    }

    /// Lets runs read input from local paths (`/…`, `./…`, `file://…`) as well as from
    /// datasets; off by default, so that callers over the network read only datasets.
    pub fn local_input(mut self, allowed: bool) -> Self {
        self.local_input = allowed;
        self
    }

    /// Adds a row-wise batch endpoint: `spec` (of kind `batch`) names a model the registry
    /// builds when a run starts.
    ///
    /// # Errors
    /// What [`BatchJobConfig::from_spec`] refuses; [`Error::Conflict`] for a second endpoint
    /// of the same name.
    pub fn endpoint(self, spec: EndpointSpec) -> Result<Self> {
        self.add(spec, EndpointModel::Registry)
    }

    /// Adds a vectorised batch endpoint: `factory` builds its [`ChunkPredictor`] when a run
    /// starts.
    ///
    /// # Errors
    /// As [`BatchServiceBuilder::endpoint`].
    pub fn chunk_endpoint<P, F>(self, spec: EndpointSpec, factory: F) -> Result<Self>
    where
        P: ChunkPredictor,
        F: Fn() -> Result<P> + Send + Sync + 'static,
    {
        let factory: ChunkFactory =
            Arc::new(move || factory().map(|p| Arc::new(p) as Arc<DynChunkPredictor>));
        self.add(spec, EndpointModel::Chunks(factory))
    }

    fn add(mut self, spec: EndpointSpec, model: EndpointModel) -> Result<Self> {
        spec.validate()?;
        let config = BatchJobConfig::from_spec(&spec)?;
        let name = spec.name.clone();
        if self.endpoints.contains_key(&name) {
            return Err(Error::Conflict {
                endpoint: name,
                reason: "a batch endpoint of this name is already added".to_owned(),
            });
        }
        self.endpoints.insert(
            name,
            Arc::new(BatchEndpoint {
                spec,
                config,
                model,
            }),
        );
        Ok(self)
    }

    /// The service.
    ///
    /// # Errors
    /// None yet; kept so that checks can be added.
    pub fn build(self) -> Result<BatchService> {
        Ok(BatchService {
            inner: Arc::new(Inner {
                store: RunStore::new(self.datasets.clone()),
                datasets: self.datasets,
                registry: self.registry,
                autoscaler: self.autoscaler,
                record_sink: self.record_sink,
                metric_sink: self.metric_sink,
                local_input: self.local_input,
                endpoints: RwLock::new(self.endpoints),
                live: Mutex::default(),
            }),
        })
    }
}

impl BatchService {
    /// Starts building a service over `datasets` (where inputs are read, outputs written and
    /// runs recorded).
    pub fn builder(datasets: Datasets) -> BatchServiceBuilder {
        BatchServiceBuilder {
            datasets,
            registry: Arc::new(ModelRegistry::new()),
            autoscaler: Arc::new(InMemoryAutoscaler::new()),
            record_sink: None,
            metric_sink: None,
            local_input: false,
            endpoints: BTreeMap::new(),
        }
    }

    /// The datasets it reads and writes.
    pub fn datasets(&self) -> &Datasets {
        &self.inner.datasets
    }

    /// The names of its endpoints.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner
            .endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Submits a run and waits for its end: the record of a finished run (succeeded, failed
    /// or cancelled).
    ///
    /// # Errors
    /// What [`BatchRuns::submit`] refuses; a run that fails is `Ok` with its error in the
    /// record.
    pub async fn run(&self, endpoint: &str, request: BatchRequest) -> Result<BatchRun> {
        let id = self.submit(endpoint, request).await?;
        self.wait(endpoint, &id).await
    }

    /// Waits for a run's end and answers its record.
    ///
    /// # Errors
    /// [`Error::BatchRunNotFound`] for an unknown run.
    pub async fn wait(&self, endpoint: &str, id: &str) -> Result<BatchRun> {
        if let Some(live) = self.inner.live(endpoint, id) {
            live.finished().await;
            return Ok(live.snapshot());
        }
        self.get(endpoint, id).await
    }

    fn new_id() -> String {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!("{millis:013}-{}", &random[..8])
    }
}

#[async_trait]
impl BatchRuns for BatchService {
    async fn submit(&self, endpoint: &str, request: BatchRequest) -> Result<String> {
        let batch = self.inner.endpoint(endpoint)?;
        let dataset = self.inner.datasets.existing(&request.dataset).await?;
        check_relative_path(&request.output_file)?;
        if request.input_file.trim().is_empty() {
            return Err(Error::invalid_request("input_file is empty"));
        }
        if !request.overwrite && dataset.head(&request.output_file).await?.is_some() {
            return Err(Error::AlreadyExists {
                location: dataset.location(&request.output_file)?.to_string(),
            });
        }
        let id = Self::new_id();
        let model = &batch.spec.model;
        let run = BatchRun::queued(
            id.clone(),
            endpoint,
            model.name.clone(),
            model.version.clone(),
            request,
        );
        self.inner.store.save(&run).await?;
        let live = Arc::new(Live::new(run));
        self.inner
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((endpoint.to_owned(), id.clone()), Arc::clone(&live));
        tokio::spawn(execute(Arc::clone(&self.inner), batch, live));
        Ok(id)
    }

    async fn list(&self, endpoint: &str) -> Result<Vec<BatchRun>> {
        self.inner.endpoint(endpoint)?;
        let stored = self.inner.store.list(endpoint).await?;
        Ok(stored
            .into_iter()
            .map(|run| match self.inner.live(endpoint, &run.id) {
                Some(live) => live.snapshot(),
                None => self.inner.settled(run),
            })
            .collect())
    }

    async fn get(&self, endpoint: &str, id: &str) -> Result<BatchRun> {
        self.inner.endpoint(endpoint)?;
        if let Some(live) = self.inner.live(endpoint, id) {
            return Ok(live.snapshot());
        }
        match self.inner.store.load(endpoint, id).await? {
            Some(run) => Ok(self.inner.settled(run)),
            None => Err(Error::BatchRunNotFound {
                endpoint: endpoint.to_owned(),
                id: id.to_owned(),
            }),
        }
    }

    async fn cancel(&self, endpoint: &str, id: &str) -> Result<BatchRun> {
        self.inner.endpoint(endpoint)?;
        match self.inner.live(endpoint, id) {
            Some(live) => {
                live.cancel();
                live.finished().await;
                Ok(live.snapshot())
            }
            None => self.get(endpoint, id).await,
        }
    }

    async fn compare(&self, endpoint: &str, ids: &[String]) -> Result<BatchComparison> {
        if ids.is_empty() {
            return Err(Error::invalid_request("compare needs at least one run id"));
        }
        let mut runs = Vec::with_capacity(ids.len());
        for id in ids {
            runs.push(self.get(endpoint, id).await?);
        }
        let mut differences = Vec::new();
        for (i, a) in runs.iter().enumerate() {
            for b in &runs[i + 1..] {
                let same_input = a.request.input_file == b.request.input_file
                    && a.request.dataset == b.request.dataset;
                if same_input
                    && a.status == BatchStatus::Succeeded
                    && b.status == BatchStatus::Succeeded
                {
                    differences.push(self.diff(a, b).await?);
                }
            }
        }
        Ok(BatchComparison::new(runs, differences))
    }
}

impl BatchService {
    /// Compares two outputs row by row, streaming both.
    pub(crate) async fn diff(&self, a: &BatchRun, b: &BatchRun) -> Result<PredictionDiff> {
        let open = |run: &BatchRun| {
            let datasets = self.inner.datasets.clone();
            let request = run.request.clone();
            async move {
                let dataset = datasets.dataset(&request.dataset)?;
                let mut stream = dataset.read(&request.output_file).await?;
                let (tx, rx) = mpsc::channel(4);
                tokio::spawn(async move {
                    while let Some(chunk) = stream.next().await {
                        if tx.send(chunk).await.is_err() {
                            break;
                        }
                    }
                });
                Ok::<_, Error>((ChannelReader::new(rx), request.output_format))
            }
        };
        let (left, left_format) = open(a).await?;
        let (right, right_format) = open(b).await?;
        let (rows, differing) = tokio::task::spawn_blocking(move || {
            let mut left = csv::Reader::from_reader(left);
            let mut right = csv::Reader::from_reader(right);
            let (mut rows, mut differing) = (0_u64, 0_u64);
            let mut l = csv::StringRecord::new();
            let mut r = csv::StringRecord::new();
            loop {
                let more_left = left.read_record(&mut l).unwrap_or(false);
                let more_right = right.read_record(&mut r).unwrap_or(false);
                if !more_left || !more_right {
                    break;
                }
                rows += 1;
                if answer(&l, left_format) != answer(&r, right_format) {
                    differing += 1;
                }
            }
            (rows, differing)
        })
        .await
        .map_err(|error| Error::Action {
            action: "comparing batch outputs".to_owned(),
            source: Box::new(error),
        })?;
        Ok(PredictionDiff::new(
            a.id.clone(),
            b.id.clone(),
            rows,
            differing,
        ))
    }
}

/// A row's prediction, or `None` when the row failed, whatever the output's format.
fn answer(record: &csv::StringRecord, format: OutputFormat) -> Option<&str> {
    let n = record.len();
    match format {
        OutputFormat::Full if n >= 2 => {
            let failed = record.get(n - 1).is_some_and(|error| !error.is_empty());
            record.get(n - 2).filter(|_| !failed)
        }
        _ => record.get(n.saturating_sub(1)).filter(|p| !p.is_empty()),
    }
}
