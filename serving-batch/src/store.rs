//! Run records, one JSON object per run under `<datasets root>/.serving/batch-runs/<endpoint>/`.

use bytes::Bytes;
use futures::StreamExt as _;
use serving_core::datasets::Datasets;
use serving_core::prediction_log::object_store::path::Path;
use serving_core::prediction_log::object_store::{self, ObjectStoreExt as _, PutPayload};
use serving_core::{BatchRun, Error, Result};

/// Where runs are recorded.
#[derive(Debug, Clone)]
pub(crate) struct RunStore {
    datasets: Datasets,
}

fn storage(location: &Path) -> impl FnOnce(object_store::Error) -> Error + use<> {
    let location = location.to_string();
    move |error| Error::Storage {
        location,
        source: Box::new(error),
    }
}

impl RunStore {
    pub(crate) fn new(datasets: Datasets) -> Self {
        RunStore { datasets }
    }

    fn folder(&self, endpoint: &str) -> Result<Path> {
        self.datasets.system_path(&format!("batch-runs/{endpoint}"))
    }

    fn key(&self, endpoint: &str, id: &str) -> Result<Path> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(Error::BatchRunNotFound {
                endpoint: endpoint.to_owned(),
                id: id.to_owned(),
            });
        }
        self.datasets
            .system_path(&format!("batch-runs/{endpoint}/{id}.json"))
    }

    pub(crate) async fn save(&self, run: &BatchRun) -> Result<()> {
        let key = self.key(&run.endpoint, &run.id)?;
        let json = serde_json::to_vec_pretty(run).map_err(|error| Error::Storage {
            location: key.to_string(),
            source: Box::new(error),
        })?;
        self.datasets
            .store()
            .put(&key, PutPayload::from(Bytes::from(json)))
            .await
            .map(drop)
            .map_err(storage(&key))
    }

    pub(crate) async fn load(&self, endpoint: &str, id: &str) -> Result<Option<BatchRun>> {
        let key = self.key(endpoint, id)?;
        let bytes = match self.datasets.store().get(&key).await {
            Ok(result) => result.bytes().await.map_err(storage(&key))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(storage(&key)(error)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| Error::Storage {
                location: key.to_string(),
                source: Box::new(error),
            })
    }

    /// Every run of `endpoint`, newest first (ids sort by submission time).
    pub(crate) async fn list(&self, endpoint: &str) -> Result<Vec<BatchRun>> {
        let folder = self.folder(endpoint)?;
        let mut ids = Vec::new();
        let mut listing = self.datasets.store().list(Some(&folder));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(storage(&folder))?;
            if let Some(id) = meta
                .location
                .filename()
                .and_then(|name| name.strip_suffix(".json"))
            {
                ids.push(id.to_owned());
            }
        }
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let mut runs = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(run) = self.load(endpoint, &id).await? {
                runs.push(run);
            }
        }
        Ok(runs)
    }
}
