//! Batch endpoints on the cluster: a Deployment that sits at zero pods, scaled to one for a
//! run and back to zero afterwards, whatever the run did ([`Deployer::run_batch`]).

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serving_core::{BatchRequest, BatchRun, BatchStatus, Error, Result};

use crate::autoscaler::KubeAutoscaler;
use crate::deployer::{Deployer, EndpointStatus};
use crate::error::K8sError;
use crate::manifests::{PredictionToken, secret_name};

/// The header that carries the prediction token (`serving-http`'s `TOKEN_HEADER`).
pub const TOKEN_HEADER: &str = "Cnvrg-Api-Key";

/// Submits `request` to the batch endpoint `endpoint` served at `base_url` (the pod's
/// Service, [`Deployer::service_url`]) and polls the run every `poll` until it ends: the
/// runner [`Deployer::run_batch`] takes in real use.
///
/// ```no_run
/// # async fn run(deployer: serving_k8s::Deployer) -> serving_core::Result<()> {
/// use std::time::Duration;
/// use serving_core::BatchRequest;
///
/// let (url, token) = (deployer.service_url("nightly"), deployer.token("nightly").await?);
/// let request = BatchRequest::new("in.csv", "out.csv", "data");
/// let done = deployer
///     .run_batch("nightly", move |_| async move {
///         let client = reqwest::Client::new();
///         serving_k8s::submit_batch(&client, &url, "nightly", &token, &request, Duration::from_secs(1)).await
///     })
///     .await?;
/// println!("{} rows after a cold start of {:?}", done.output.rows_predicted, done.cold_start);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// [`Error::Action`] when the endpoint cannot be reached or refuses the request (its status
/// and body in the message), or when the run ends failed or cancelled (its error).
pub async fn submit_batch(
    client: &reqwest::Client,
    base_url: &str,
    endpoint: &str,
    token: &PredictionToken,
    request: &BatchRequest,
    poll: Duration,
) -> Result<BatchRun> {
    let action = format!("run a batch on endpoint `{endpoint}` at {base_url}");
    let fail = |message: String| K8sError::Other(message).into_core(action.clone());
    let runs = format!(
        "{}/api/v1/endpoints/{endpoint}/batches",
        base_url.trim_end_matches('/')
    );
    let answer = |response: reqwest::Response| async {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    };
    let submitted = client
        .post(&runs)
        .header(TOKEN_HEADER, token.expose())
        .json(request)
        .send()
        .await
        .map_err(|e| fail(format!("POST {runs}: {e}")))?;
    let body = answer(submitted)
        .await
        .map_err(|e| fail(format!("POST {runs}: {e}")))?;
    let id = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .ok_or_else(|| fail(format!("POST {runs}: no run id in `{body}`")))?;
    let url = format!("{runs}/{id}");
    loop {
        let response = client
            .get(&url)
            .header(TOKEN_HEADER, token.expose())
            .send()
            .await
            .map_err(|e| fail(format!("GET {url}: {e}")))?;
        let body = answer(response)
            .await
            .map_err(|e| fail(format!("GET {url}: {e}")))?;
        let run: BatchRun =
            serde_json::from_str(&body).map_err(|e| fail(format!("GET {url}: {e} in `{body}`")))?;
        match run.status {
            BatchStatus::Succeeded => return Ok(run),
            BatchStatus::Failed | BatchStatus::Cancelled => {
                // The status as the API writes it (`failed`, `cancelled`).
                let status = serde_json::to_value(run.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                return Err(fail(format!(
                    "run `{id}` ended {status}: {}",
                    run.error.as_deref().unwrap_or("no error given")
                )));
            }
            _ => tokio::time::sleep(poll).await,
        }
    }
}

/// What a batch run on the cluster gave: the cold start and the run's own output.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BatchOnCluster<T> {
    /// From the request for a pod to the pod ready (the scheduling, the image pull and the
    /// readiness probe); the in-process batch's `cold_start_seconds` on the cluster.
    pub cold_start: Duration,
    /// The endpoint as the run found it: one ready replica.
    pub status: EndpointStatus,
    /// What the run returned.
    pub output: T,
}

/// Scales the endpoint back to zero if the run is dropped (its caller cancelled) before
/// [`run_batch`](Deployer::run_batch) did.
struct BackToZero {
    autoscaler: KubeAutoscaler,
    endpoint: String,
    armed: bool,
}

impl Drop for BackToZero {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let autoscaler = self.autoscaler.clone();
            let endpoint = std::mem::take(&mut self.endpoint);
            runtime.spawn(async move {
                if let Err(error) = autoscaler.set_replicas(&endpoint, 0).await {
                    tracing::error!(endpoint, %error, "a cancelled batch run left its pod running");
                }
            });
        }
    }
}

impl Deployer {
    /// The URL of `endpoint`'s Service inside the cluster: `http://<endpoint>.<namespace>.svc`.
    pub fn service_url(&self, endpoint: &str) -> String {
        format!("http://{endpoint}.{}.svc", self.namespace)
    }

    /// The prediction token of `endpoint`, from its Secret.
    ///
    /// # Errors
    /// [`Error::EndpointNotFound`] when it has no Secret holding a token; [`Error::Action`]
    /// when the API server refuses.
    pub async fn token(&self, endpoint: &str) -> Result<PredictionToken> {
        let name = secret_name(endpoint);
        self.api::<Secret>()
            .get_opt(&name)
            .await
            .map_err(|e| {
                K8sError::from_kube(e, "read", &format!("Secret/{name}"), &self.namespace)
                    .into_core(format!("read the token of endpoint `{endpoint}`"))
            })?
            .as_ref()
            .and_then(PredictionToken::from_secret)
            .ok_or_else(|| Error::EndpointNotFound {
                endpoint: endpoint.to_owned(),
            })
    }

    /// Runs one batch on the batch endpoint `endpoint`: scales its Deployment from 0 to 1,
    /// waits until the pod is ready (up to [`with_rollout_timeout`](Self::with_rollout_timeout)),
    /// runs `run` with the endpoint's status, and scales back to 0, also when the run fails or
    /// panics (and, from a task spawned then, when this future is dropped mid-run).
    ///
    /// `run` does the batch. In real use it is [`submit_batch`]: it posts the batch to the
    /// pod through the endpoint's Service (`POST <service_url>/api/v1/endpoints/<endpoint>/batches`
    /// with the prediction token) and polls `GET …/batches/{id}` until the run ends. Any other
    /// future will do:
    ///
    /// ```no_run
    /// # async fn run(deployer: serving_k8s::Deployer) -> serving_core::Result<()> {
    /// let done = deployer
    ///     .run_batch("nightly", |status| async move {
    ///         // POST …/batches, poll …/batches/{id}; here, only the pod's readiness.
    ///         Ok(status.ready_replicas)
    ///     })
    ///     .await?;
    /// println!("cold start {:?}, output {}", done.cold_start, done.output);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// One run at a time per endpoint: a second one would scale the first one's pod away.
    ///
    /// # Errors
    /// After scaling back to 0 (except for the first two, which change nothing):
    /// - [`Error::EndpointNotFound`] when the endpoint is not deployed;
    /// - [`Error::InvalidRequest`] when it is not a batch endpoint;
    /// - [`Error::Timeout`] when the pod is not ready in time;
    /// - what `run` returned, or [`Error::Action`] when it panicked;
    /// - [`Error::Action`] when the API server refuses.
    pub async fn run_batch<F, Fut, T>(&self, endpoint: &str, run: F) -> Result<BatchOnCluster<T>>
    where
        F: FnOnce(EndpointStatus) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let action = format!(
            "run a batch on endpoint `{endpoint}` in namespace `{}`",
            self.namespace
        );
        let fail = |e: K8sError| e.into_core(action.clone());
        let deployment = self.deployment_of(endpoint, &action).await?;
        let kind = deployment
            .labels()
            .get("app.kubernetes.io/component")
            .cloned()
            .unwrap_or_default();
        if kind != "batch" {
            return Err(Error::InvalidRequest {
                reason: format!(
                    "endpoint `{endpoint}` is a {kind} endpoint; only batch endpoints sit at zero and run batches"
                ),
            });
        }

        let autoscaler = self.autoscaler();
        let mut guard = BackToZero {
            autoscaler: autoscaler.clone(),
            endpoint: endpoint.to_owned(),
            armed: true,
        };
        let requested = Instant::now();
        let outcome = async {
            autoscaler.set_replicas(endpoint, 1).await.map_err(fail)?;
            let status = self.wait_ready(endpoint, 1, self.rollout_timeout).await?;
            let cold_start = requested.elapsed();
            tracing::info!(endpoint, ?cold_start, "batch pod ready");
            // Its own task, so that a panic in the run is caught and the pod still goes.
            let output = match tokio::spawn(run(status.clone())).await {
                Ok(output) => output?,
                Err(join) => {
                    let message = match join.try_into_panic() {
                        Ok(payload) => payload
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic without a message".to_owned()),
                        Err(join) => join.to_string(),
                    };
                    return Err(
                        K8sError::Other(format!("the batch run panicked: {message}"))
                            .into_core(action.clone()),
                    );
                }
            };
            Ok(BatchOnCluster {
                cold_start,
                status,
                output,
            })
        }
        .await;
        let down = autoscaler.set_replicas(endpoint, 0).await.map_err(fail);
        guard.armed = false;
        let done = outcome?;
        down?;
        Ok(done)
    }
}
