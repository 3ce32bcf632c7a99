//! Integration tests: one test binary, one module per area, each against real servers on
//! ephemeral loopback ports.

mod observability;
mod support;
mod web_service;
