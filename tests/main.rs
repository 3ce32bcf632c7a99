//! Integration tests: one test binary, one module per area, each against real servers on
//! ephemeral loopback ports.

mod lifecycle;
mod observability;
mod support;
mod web_service;
