//! How an endpoint is configured: its whole [`EndpointSpec`](crate::EndpointSpec), the
//! KEY-VALUE settings helper every settings type uses, and exporting server settings to the
//! process environment.

pub(crate) mod environment;
#[cfg(feature = "schema")]
mod schema;
pub mod setting;
pub(crate) mod spec;
