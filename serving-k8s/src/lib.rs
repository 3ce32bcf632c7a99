//! The Kubernetes backend of `serving` (planned; nothing here works yet).
//!
//! It will deploy endpoint specs to a cluster through `kube` and implement
//! [`serving_core::Autoscaler`] on a Deployment's scale.
