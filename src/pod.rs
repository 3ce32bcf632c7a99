//! Running inside a pod that `serving-k8s` deployed: read the mounted spec and the token,
//! build the endpoint of the spec's kind, serve, and drain on SIGTERM.
//!
//! The pod's Deployment (built by `serving_k8s::Manifests`, the `k8s` feature) mounts the endpoint spec as YAML at `/etc/serving/spec.yaml` and says so in
//! `SERVING_SPEC`; the prediction token comes from the endpoint's Secret in the variable the
//! spec's `auth.token_env` names (`SERVING_TOKEN` by default); `SERVING_ADDR` and
//! `SERVING_DRAIN_TIMEOUT` configure the web server. The user's binary registers its models
//! and hands over:
//!
//! ```no_run
//! use std::sync::Arc;
//! use serving::prelude::*;
//!
//! # #[tokio::main] async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
//! let registry = Arc::new(ModelRegistry::new());
//! registry.register("iris-tree", "1", || {
//!     Ok(predictor_fn(|petal_len: f64| -> Result<&'static str> {
//!         Ok(if petal_len < 2.5 { "setosa" } else { "versicolor" })
//!     }))
//! });
//! serving::pod::Pod::from_env()?
//!     .serve(registry, serving::http::shutdown_signal())
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! | Spec kind | What runs | Feature |
//! |---|---|---|
//! | `web_service` | the REST API, `/readyz`, `/healthz`, `/metrics` | `http` |
//! | `kafka_stream` | the stream, with the same web side for probes and metrics | `kafka` |
//! | `batch` | the batch runs' REST API (`/api/v1/endpoints/{name}/batches`) | `batch` |
//!
//! On SIGTERM (or Ctrl-C) the pod reports not ready, stops accepting, finishes the requests in
//! flight within the drain timeout, and exits; Kubernetes waits for it longer than the drain.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serving_core::{EndpointKind, EndpointSpec, Error, ModelEndpoint, ModelRegistry, Result};
use serving_http::{Observability, Token, WebService, WebServiceBuilder, WebServiceConfig};
use tokio::net::TcpListener;

/// The variable that holds the spec's path.
pub const SPEC_ENV: &str = "SERVING_SPEC";
/// Where the spec is mounted when [`SPEC_ENV`] is unset.
pub const DEFAULT_SPEC_PATH: &str = "/etc/serving/spec.yaml";
/// The token's variable when the spec's `auth.token_env` names none.
pub const DEFAULT_TOKEN_ENV: &str = "SERVING_TOKEN";

/// An endpoint as its pod runs it: the spec read from its file and the prediction token.
#[derive(Debug, Clone)]
pub struct Pod {
    spec: EndpointSpec,
    token: Option<Token>,
    #[cfg_attr(not(feature = "batch"), allow(dead_code))]
    datasets: Option<serving_core::datasets::Datasets>,
}

fn failed(action: String, source: impl Into<serving_core::BoxError>) -> Error {
    Error::Action {
        action,
        source: source.into(),
    }
}

impl Pod {
    /// As the pod sees it: the spec at `$SERVING_SPEC` (or [`DEFAULT_SPEC_PATH`]), the token
    /// in the variable the spec names (or [`DEFAULT_TOKEN_ENV`]).
    ///
    /// # Errors
    /// What [`Pod::from_file`] returns; [`Error::InvalidSpec`] when the endpoint requires a
    /// token and its variable is unset or empty (the Secret is not mounted).
    pub fn from_env() -> Result<Self> {
        let path = std::env::var_os(SPEC_ENV)
            .map_or_else(|| PathBuf::from(DEFAULT_SPEC_PATH), PathBuf::from);
        let spec = read_spec(&path)?;
        let var = token_env(&spec);
        let token = std::env::var(&var).ok().filter(|t| !t.is_empty());
        if spec.auth.required && token.is_none() {
            return Err(Error::InvalidSpec {
                reason: format!(
                    "endpoint `{}` requires a token and `{var}` is unset: the pod takes it from the endpoint's Secret `{}-token`",
                    spec.name, spec.name
                ),
            });
        }
        Ok(Pod {
            spec,
            token: token.map(Token::new),
            datasets: None,
        })
    }

    /// The spec in the YAML (or JSON) file at `path`, behind `token` (none for an endpoint
    /// whose `auth.required` is false).
    ///
    /// # Errors
    /// [`Error::Action`] when the file does not read; [`Error::InvalidSpec`] when it does not
    /// parse or validate, or a token is required and none is given.
    pub fn from_file(path: &Path, token: Option<Token>) -> Result<Self> {
        let spec = read_spec(path)?;
        if spec.auth.required && token.is_none() {
            return Err(Error::InvalidSpec {
                reason: format!("endpoint `{}` requires a token", spec.name),
            });
        }
        Ok(Pod {
            spec,
            token,
            datasets: None,
        })
    }

    /// A batch endpoint's datasets; [`Datasets::from_env`](serving_core::datasets::Datasets::from_env)
    /// (`$SERVING_DATASETS`) when not given.
    pub fn with_datasets(mut self, datasets: serving_core::datasets::Datasets) -> Self {
        self.datasets = Some(datasets);
        self
    }

    /// The endpoint's spec.
    pub fn spec(&self) -> &EndpointSpec {
        &self.spec
    }

    /// Serves on `$SERVING_ADDR` with [`WebServiceConfig::from_env`] until `shutdown`
    /// completes (pass [`shutdown_signal`](serving_http::shutdown_signal) for SIGTERM), then
    /// drains.
    ///
    /// # Errors
    /// As [`Pod::serve_on`]; [`Error::Action`] when the address cannot be bound.
    pub async fn serve(
        self,
        registry: Arc<ModelRegistry>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let config = WebServiceConfig::from_env()?;
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|e| failed(format!("listen on {}", config.addr), e))?;
        self.serve_on(registry, config, listener, shutdown).await
    }

    /// Builds the endpoint of the spec's kind with its model from `registry` and serves it on
    /// `listener` until `shutdown` completes; returns once it has drained.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] when the spec's model is not registered, its kind's section does
    /// not parse, or its kind needs a feature this build lacks; what building the service or
    /// the stream returns.
    pub async fn serve_on(
        self,
        registry: Arc<ModelRegistry>,
        config: WebServiceConfig,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let observability = Observability::new();
        let builder = WebService::builder()
            .config(config)
            .observability(observability.clone());
        let name = self.spec.name.clone();
        tracing::info!(endpoint = %name, kind = self.spec.kind.name(), "pod starting");
        match &self.spec.kind {
            EndpointKind::WebService => {
                let endpoint = ModelEndpoint::from_spec(self.spec.clone(), &registry)?;
                let endpoint = observability.instrument(endpoint).build()?;
                let service = with_token(builder, endpoint, self.token).build()?;
                serve(service, listener, shutdown, &name).await
            }
            #[cfg(feature = "kafka")]
            EndpointKind::KafkaStream(_) => {
                self.serve_stream(registry, builder, observability, listener, shutdown)
                    .await
            }
            #[cfg(feature = "batch")]
            EndpointKind::Batch(_) => {
                let datasets = match self.datasets {
                    Some(datasets) => datasets,
                    None => serving_core::datasets::Datasets::from_env()?,
                };
                let batches = serving_batch::BatchService::builder(datasets)
                    .registry(registry)
                    .endpoint(self.spec.clone())?
                    .build()?;
                let runs = Arc::new(batches);
                let builder = match self.token {
                    Some(token) => builder.batch_endpoint_with_token(&name, runs, token),
                    None => builder.batch_endpoint(&self.spec, runs),
                };
                serve(builder.build()?, listener, shutdown, &name).await
            }
            #[allow(unreachable_patterns)]
            other => Err(Error::InvalidSpec {
                reason: format!(
                    "endpoint `{name}` is a {} endpoint: build with serving's `{}` feature",
                    other.name(),
                    match other {
                        EndpointKind::KafkaStream(_) => "kafka",
                        _ => "batch",
                    }
                ),
            }),
        }
    }

    /// The stream and its web side (probes, metrics, admin API); one signal stops both: the
    /// stream drains and commits, then the web side closes.
    #[cfg(feature = "kafka")]
    async fn serve_stream(
        self,
        registry: Arc<ModelRegistry>,
        builder: WebServiceBuilder,
        observability: Observability,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        use serving_kafka::{JoinedEndpoint, KafkaStream, KafkaStreamConfig};
        let name = self.spec.name.clone();
        let kafka = KafkaStreamConfig::from_spec(&self.spec)?;
        let endpoint = ModelEndpoint::from_spec(self.spec.clone(), &registry)?;
        let endpoint = Arc::new(observability.instrument(endpoint).build()?);
        let stream =
            KafkaStream::new(Arc::clone(&endpoint), kafka)?.with_observability(&observability);
        let joined = JoinedEndpoint::new(endpoint, stream.ready());
        let service = with_token(builder, joined, self.token).build()?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let streaming = tokio::spawn(stream.run(stop(stop_rx.clone())));
        let web = serve(service, listener, stop(stop_rx), &name);
        let (streamed, served) = tokio::join!(streaming, web);
        let summary = streamed.map_err(|e| failed(format!("run the stream `{name}`"), e))??;
        tracing::info!(endpoint = %name, ?summary, "stream stopped");
        served
    }
}

fn with_token(
    builder: WebServiceBuilder,
    endpoint: impl serving_core::Endpoint,
    token: Option<Token>,
) -> WebServiceBuilder {
    match token {
        Some(token) => builder.endpoint_with_token(endpoint, token),
        None => builder.endpoint(endpoint),
    }
}

async fn serve(
    service: WebService,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    name: &str,
) -> Result<()> {
    service
        .serve_on(listener, shutdown)
        .await
        .map_err(|e| failed(format!("serve endpoint `{name}`"), e))?;
    tracing::info!(endpoint = %name, "pod drained");
    Ok(())
}

/// The variable the token is in: the spec's `auth.token_env`, or [`DEFAULT_TOKEN_ENV`] (as
/// the Deployment sets it).
pub fn token_env(spec: &EndpointSpec) -> String {
    spec.auth
        .token_env
        .clone()
        .unwrap_or_else(|| DEFAULT_TOKEN_ENV.to_owned())
}

fn read_spec(path: &Path) -> Result<EndpointSpec> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| failed(format!("read the endpoint spec `{}`", path.display()), e))?;
    EndpointSpec::from_yaml(&text).map_err(|e| match e {
        Error::InvalidSpec { reason } => Error::InvalidSpec {
            reason: format!("{}: {reason}", path.display()),
        },
        other => other,
    })
}
