//! Integration tests: one test binary, one module per area, each against real servers on
//! ephemeral loopback ports.

#[cfg(feature = "batch")]
mod batch;
#[cfg(feature = "batch")]
mod batch_example;
mod connections;
#[cfg(feature = "batch")]
mod datasets;
mod feedback;
mod hostile;
#[cfg(feature = "k8s")]
mod k8s;
#[cfg(feature = "k8s")]
mod k8s_operator;
#[cfg(feature = "k8s")]
mod k8s_rollout;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "kafka")]
mod kafka_fault;
mod lifecycle;
mod observability;
mod oip;
mod openapi;
#[cfg(feature = "http")]
mod pod;
mod routers;
mod shedding;
mod support;
mod transport;
mod triggers;
mod web_service;
