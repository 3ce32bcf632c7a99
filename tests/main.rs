//! Integration tests: one test binary, one module per area, each against real servers on
//! ephemeral loopback ports.

mod connections;
mod hostile;
#[cfg(feature = "k8s")]
mod k8s;
#[cfg(feature = "kafka")]
mod kafka;
mod lifecycle;
mod observability;
mod oip;
mod openapi;
mod routers;
mod shedding;
mod support;
mod transport;
mod web_service;
