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

mod common;

use std::path::PathBuf;

use serving::k8s::{Operator, client_from_kubeconfig, install_crd};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logging();
    let kubeconfig = std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".kube/config")))
        .ok_or("set KUBECONFIG to the cluster's kubeconfig")?;
    let client = client_from_kubeconfig(&kubeconfig).await?;
    let crd = install_crd(&client).await?;
    println!(
        "CRD {} established; watching {}",
        serving::k8s::kube::ResourceExt::name_any(&crd),
        std::env::var("SERVING_OPERATOR_NAMESPACE").map_or_else(
            |_| "every namespace".to_owned(),
            |ns| format!("namespace {ns}")
        )
    );
    let operator = match std::env::var("SERVING_OPERATOR_NAMESPACE") {
        Ok(namespace) if !namespace.is_empty() => Operator::namespaced(client, namespace),
        _ => Operator::new(client),
    };
    operator.run(serving::shutdown_signal()).await?;
    println!("Stopped.");
    Ok(())
}
