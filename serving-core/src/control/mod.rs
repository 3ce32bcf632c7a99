//! What acts on an endpoint: scaling ([`Autoscaler`](crate::Autoscaler)), triggers on its
//! metrics ([`Trigger`](crate::Trigger)) and feedback exports ([`FeedbackSink`](crate::FeedbackSink)).

pub(crate) mod actions;
pub(crate) mod autoscale;
pub(crate) mod feedback;
pub(crate) mod trigger;
pub(crate) mod triggers;
