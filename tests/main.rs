//! Integration tests: one test binary, one module per area, each against real servers on
//! ephemeral loopback ports.

#[cfg(feature = "batch")]
mod batch;
#[cfg(feature = "batch")]
mod batch_example;
mod connections;
#[cfg(feature = "batch")]
mod datasets;
mod hostile;
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
