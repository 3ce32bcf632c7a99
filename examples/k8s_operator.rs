//! Runs the `ServingEndpoint` operator against the cluster of `$KUBECONFIG`: installs (or
//! updates) the CRD, then reconciles every `ServingEndpoint` of every namespace into its
//! Deployment, Service, HPA, ConfigMap, Secret and PodDisruptionBudget until Ctrl-C or
//! SIGTERM.
//!
//! ```text
//! scripts/components/kube start          # a local control plane (prints its kubeconfig)
//! KUBECONFIG=/tmp/serving-kube-36443/admin.kubeconfig \
//!   cargo run --features k8s --example k8s_operator
//! ```
//!
//! `SERVING_OPERATOR_NAMESPACE` limits it to one namespace. The README's "Kubernetes" section
//! deploys the quickstart through it.

#[path = "common/mod.rs"]
mod common;

use std::future::Future;
use std::path::PathBuf;

use serving::k8s::kube::{Client, ResourceExt as _};
use serving::k8s::{Operator, client_from_kubeconfig, install_crd};

/// Installs (or updates) the CRD, says so, then runs the operator over `namespace` (every
/// namespace when `None`) until `shutdown`.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> serving::Result<()> {
    let crd = install_crd(&client).await?;
    println!(
        "CRD {} established; watching {}",
        crd.name_any(),
        namespace.as_deref().map_or_else(
            || "every namespace".to_owned(),
            |ns| format!("namespace {ns}")
        )
    );
    let operator = match namespace {
        Some(namespace) => Operator::namespaced(client, namespace),
        None => Operator::new(client),
    };
    // With the `kafka` feature too, a stream's partitions are read from its brokers when its
    // resource does not state them.
    #[cfg(feature = "kafka")]
    let operator = operator.with_partition_counter(serving::kafka_partition_counter());
    operator.run(shutdown).await?;
    println!("Stopped.");
    Ok(())
}

#[tokio::main]
#[allow(dead_code)] // the integration tests include this file for `run`
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logging();
    let kubeconfig = std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".kube/config")))
        .ok_or("set KUBECONFIG to the cluster's kubeconfig")?;
    let client = client_from_kubeconfig(&kubeconfig).await?;
    let namespace = std::env::var("SERVING_OPERATOR_NAMESPACE")
        .ok()
        .filter(|ns| !ns.is_empty());
    run(client, namespace, serving::shutdown_signal()).await?;
    Ok(())
}
