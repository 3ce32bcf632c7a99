//! [`JoinedEndpoint`]: a stream's endpoint as its web side shows it, ready only once the
//! stream has joined its group and holds its starting offsets.

use serving_core::{
    Endpoint, EndpointSpec, Lifecycle, PredictRequest, Prediction, Refused, Result,
};
use tokio::sync::watch;

/// Wraps the endpoint a [`KafkaStream`](crate::KafkaStream) predicts with, for the web side
/// (`/readyz`, the admin API): [`Endpoint::is_ready`] is true only while the stream is ready
/// ([`KafkaStream::ready`](crate::KafkaStream::ready)) and the endpoint is; everything else
/// is the endpoint's own.
#[derive(Debug)]
pub struct JoinedEndpoint<E> {
    endpoint: E,
    ready: watch::Receiver<bool>,
}

impl<E: Endpoint> JoinedEndpoint<E> {
    /// `endpoint`, ready while `ready` (a stream's [`KafkaStream::ready`](crate::KafkaStream::ready)) is true.
    pub fn new(endpoint: E, ready: watch::Receiver<bool>) -> Self {
        JoinedEndpoint { endpoint, ready }
    }
}

#[async_trait::async_trait]
impl<E: Endpoint> Endpoint for JoinedEndpoint<E> {
    fn name(&self) -> &str {
        self.endpoint.name()
    }

    fn spec(&self) -> &EndpointSpec {
        self.endpoint.spec()
    }

    fn is_ready(&self) -> bool {
        *self.ready.borrow() && self.endpoint.is_ready()
    }

    async fn predict(&self, request: PredictRequest) -> Result<Prediction> {
        self.endpoint.predict(request).await
    }

    fn lifecycle(&self) -> Option<&Lifecycle> {
        self.endpoint.lifecycle()
    }

    fn refused(&self, refused: Refused) {
        self.endpoint.refused(refused);
    }

    fn records_ready(&self, records: usize) -> serving_core::SinkReady<'_> {
        self.endpoint.records_ready(records)
    }
}
