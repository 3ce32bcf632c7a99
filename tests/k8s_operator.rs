//! The `ServingEndpoint` operator against the real control plane (see `tests/k8s.rs`): the CRD
//! installed and established, a resource created with kubectl reconciled into every object
//! with its status, a spec change applied, drift put back, an invalid spec reported without a
//! change, deletion through the finalizer, the schema refusing bad fields, a conflict and a
//! refusal reported with their reasons, a canary named in the resource run and rolled back,
//! and the README's YAML applied as written.
//!
//! Each test runs its own operator, limited to a namespace of its own; the CRD is
//! cluster-wide, installed idempotently and never deleted.

use std::time::Duration;

use serving::k8s::k8s_openapi::api::apps::v1::Deployment;
use serving::k8s::k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use serving::k8s::k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use serving::k8s::k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serving::k8s::k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use serving::k8s::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serving::k8s::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serving::k8s::kube::api::{Api, DeleteParams, ListParams, PostParams};
use serving::k8s::kube::config::{KubeConfigOptions, Kubeconfig};
use serving::k8s::kube::{Client, Config, ResourceExt};
use serving::k8s::{
    Deployer, FINALIZER, HttpRoute, Operator, READY, RECONCILED, ServingEndpoint, install_crd,
    reason,
};
use tokio::sync::oneshot;

use crate::k8s::{admin, api, cleanup, deployer, kubeconfig, kubectl, wait_for};
use crate::k8s_rollout::exists;

/// Reconciles take a few round trips each; the machine is shared.
const PATIENCE: Duration = Duration::from_secs(90);

/// An operator of one namespace, running in this process until dropped or stopped.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<serving::Result<()>>,
}

impl Running {
    async fn start(client: Client, namespace: &str) -> Running {
        install_crd(&client).await.expect("the CRD installs");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(Operator::namespaced(client, namespace).run(async move {
            let _ = stopped.await;
        }));
        Running {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("the operator stops")
            .expect("no panic")
            .expect("the operator returns without error");
    }
}

impl Running {
    /// Deletes the namespace's resources while this operator runs (their finalizer is its to
    /// remove), stops it, and deletes the namespace.
    async fn finish(self, deployer: &Deployer) {
        let api = resources(deployer);
        api.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await
            .unwrap();
        wait_for("the resources gone", PATIENCE, || async {
            api.list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
        })
        .await;
        self.stop().await;
        cleanup(deployer).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `ServingEndpoint` named `name` as a user writes it.
fn resource_yaml(name: &str, version: &str, min: u32, max: u32) -> String {
    format!(
        "apiVersion: serving.dev/v1alpha1\nkind: ServingEndpoint\nmetadata:\n  name: {name}\nspec:\n  image: registry.test/iris:{version}\n  endpoint:\n    name: {name}\n    model: {{name: iris-knn, version: \"{version}\"}}\n    preprocess: standardise\n    autoscale: {{min_replicas: {min}, max_replicas: {max}}}\n"
    )
}

fn apply(namespace: &str, yaml: &str) -> (bool, String, String) {
    kubectl(&["apply", "-n", namespace, "-f", "-"], Some(yaml))
}

fn applied(namespace: &str, yaml: &str) {
    let (ok, out, err) = apply(namespace, yaml);
    assert!(ok, "kubectl apply: {out} {err}");
}

fn resources(deployer: &Deployer) -> Api<ServingEndpoint> {
    api::<ServingEndpoint>(deployer)
}

/// Waits until the resource's status satisfies `check`; returns the resource.
async fn wait_status(
    deployer: &Deployer,
    name: &str,
    what: &str,
    check: impl Fn(&ServingEndpoint) -> bool,
) -> ServingEndpoint {
    let api = resources(deployer);
    let mut last = None;
    let start = std::time::Instant::now();
    loop {
        if let Some(resource) = api.get_opt(name).await.unwrap() {
            if check(&resource) {
                return resource;
            }
            last = Some(resource);
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{what} within {PATIENCE:?}; last status: {:?}",
            last.and_then(|r| r.status)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn condition<'a>(
    resource: &'a ServingEndpoint,
    type_: &str,
) -> Option<(&'a str, &'a str, &'a str)> {
    let condition = resource.status.as_ref()?.condition(type_)?;
    Some((
        condition.status.as_str(),
        condition.reason.as_str(),
        condition.message.as_str(),
    ))
}

fn is_ready(resource: &ServingEndpoint) -> bool {
    let status = resource.status.as_ref();
    status.is_some_and(|s| s.observed_generation == resource.metadata.generation)
        && condition(resource, READY).is_some_and(|(status, _, _)| status == "True")
}

/// The `kind/name` of every object of `name` that exists.
async fn objects(deployer: &Deployer, name: &str) -> Vec<String> {
    let token = format!("{name}-token");
    let spec = format!("{name}-spec");
    let found = [
        (
            "Deployment",
            name,
            exists::<Deployment>(deployer, name).await,
        ),
        ("Service", name, exists::<Service>(deployer, name).await),
        (
            "HorizontalPodAutoscaler",
            name,
            exists::<HorizontalPodAutoscaler>(deployer, name).await,
        ),
        (
            "PodDisruptionBudget",
            name,
            exists::<PodDisruptionBudget>(deployer, name).await,
        ),
        (
            "ConfigMap",
            &spec,
            exists::<ConfigMap>(deployer, &spec).await,
        ),
        ("Secret", &token, exists::<Secret>(deployer, &token).await),
    ];
    found
        .into_iter()
        .filter(|(_, _, exists)| *exists)
        .map(|(kind, object, _)| format!("{kind}/{object}"))
        .collect()
}

const ALL: usize = 6;

/// What [`deleted_with_kubectl`] waits to see gone.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Gone {
    Resource,
    WithItsObjects,
}

/// Deletes resource `name` with kubectl and waits until it (and, with
/// [`Gone::WithItsObjects`], every object made for it) is gone.
async fn deleted_with_kubectl(deployer: &Deployer, namespace: &str, name: &str, gone: Gone) {
    // `--wait=false`: kubectl blocks this test's thread, which the operator's task shares.
    let (ok, _, err) = kubectl(
        &[
            "delete",
            "servingendpoint",
            name,
            "-n",
            namespace,
            "--wait=false",
        ],
        None,
    );
    assert!(ok, "{err}");
    wait_for(&format!("`{name}` gone ({gone:?})"), PATIENCE, || async {
        resources(deployer).get_opt(name).await.unwrap().is_none()
            && (gone == Gone::Resource || objects(deployer, name).await.is_empty())
    })
    .await;
}

async fn hpa_max(deployer: &Deployer, name: &str) -> Option<i32> {
    api::<HorizontalPodAutoscaler>(deployer)
        .get_opt(name)
        .await
        .unwrap()
        .map(|hpa| hpa.spec.max_replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_is_installed_idempotently_and_established() {
    let client = admin().await;
    let first = install_crd(&client).await.unwrap();
    let again = install_crd(&client).await.unwrap();
    assert_eq!(first.name_any(), "servingendpoints.serving.dev");
    assert_eq!(
        first.metadata.generation, again.metadata.generation,
        "a second install changes nothing"
    );
    let crd = Api::<CustomResourceDefinition>::all(client)
        .get("servingendpoints.serving.dev")
        .await
        .unwrap();
    let conditions = crd.status.unwrap().conditions.unwrap_or_default();
    for type_ in ["Established", "NamesAccepted"] {
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == "True"),
            "{type_}: {conditions:?}"
        );
    }
    // kubectl knows the kind, its short name and columns.
    let (ok, out, err) = kubectl(&["get", "sep", "-A"], None);
    assert!(ok, "{out} {err}");
    // The schema is published with the docs of the Rust types (once the API server's OpenAPI
    // aggregation has caught up).
    wait_for("kubectl explain of the spec", PATIENCE, || async {
        let (ok, out, _) = kubectl(
            &["explain", "servingendpoints.spec.endpoint.autoscale"],
            None,
        );
        ok && out.contains("max_replicas") && out.contains("Most replicas")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_made_with_kubectl_is_reconciled_reported_changed_healed_and_deleted() {
    let deployer = deployer("op-life").await;
    let ns = deployer.namespace().to_owned();
    let operator = Running::start(deployer.client().clone(), &ns).await;

    applied(&ns, &resource_yaml("iris", "1", 2, 3));
    let resource = wait_status(&deployer, "iris", "Ready=True with 2 pods", |r| {
        is_ready(r) && r.status.as_ref().is_some_and(|s| s.ready_replicas == 2)
    })
    .await;
    let status = resource.status.clone().unwrap();
    assert_eq!((status.replicas, status.ready_replicas), (2, 2));
    assert_eq!(
        status.url.as_deref(),
        Some(format!("http://iris.{ns}.svc:80").as_str())
    );
    let stable = status.stable.clone().unwrap();
    assert_eq!(
        (
            stable.image.as_str(),
            stable.model_version.as_str(),
            stable.weight
        ),
        ("registry.test/iris:1", "1", 100)
    );
    assert_eq!(status.canary, None);
    let (_, ready_reason, ready_message) = condition(&resource, READY).unwrap();
    assert_eq!(ready_reason, reason::ALL_REPLICAS_READY);
    assert_eq!(ready_message, "2 of 2 replicas ready");
    assert_eq!(
        condition(&resource, RECONCILED).map(|(s, r, _)| (s, r)),
        Some(("True", reason::APPLIED))
    );
    assert!(resource.finalizers().iter().any(|f| f == FINALIZER));

    // Every object, each owned by the resource (controller reference).
    assert_eq!(objects(&deployer, "iris").await.len(), ALL);
    let uid = resource.uid().unwrap();
    let deployment = api::<Deployment>(&deployer).get("iris").await.unwrap();
    let owner = &deployment.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("ServingEndpoint", uid.as_str(), Some(true))
    );
    let (ok, table, err) = kubectl(&["get", "servingendpoints", "-n", &ns], None);
    assert!(ok, "{err}");
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(
        row.starts_with("iris")
            && row.contains("True")
            && row.contains(&format!("http://iris.{ns}.svc:80")),
        "{table}"
    );

    // A spec change: a new version and a higher bound.
    applied(&ns, &resource_yaml("iris", "2", 2, 4));
    let changed = wait_status(&deployer, "iris", "version 2 reported", |r| {
        is_ready(r)
            && r.status
                .as_ref()
                .and_then(|s| s.stable.as_ref())
                .is_some_and(|v| v.model_version == "2")
    })
    .await;
    assert!(changed.metadata.generation > resource.metadata.generation);
    assert_eq!(hpa_max(&deployer, "iris").await, Some(4));
    let deployment = api::<Deployment>(&deployer).get("iris").await.unwrap();
    assert_eq!(
        deployment
            .annotations()
            .get("serving.dev/model")
            .map(String::as_str),
        Some("iris-knn@2")
    );
    let image = deployment.spec.template.spec.unwrap().containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("registry.test/iris:2"));

    // Drift by hand: an edited bound and a deleted ConfigMap are put back by the operator.
    let (ok, _, err) = kubectl(
        &[
            "patch",
            "hpa",
            "iris",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"maxReplicas":9}}"#,
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = kubectl(&["delete", "configmap", "iris-spec", "-n", &ns], None);
    assert!(ok, "{err}");
    wait_for("the drift put back", PATIENCE, || async {
        hpa_max(&deployer, "iris").await == Some(4)
            && api::<ConfigMap>(&deployer)
                .get_opt("iris-spec")
                .await
                .unwrap()
                .is_some()
    })
    .await;

    // Deleting the resource removes everything, then the resource (the finalizer).
    deleted_with_kubectl(&deployer, &ns, "iris", Gone::WithItsObjects).await;
    operator.finish(&deployer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_in_the_resource_runs_beside_the_stable_and_goes_when_removed() {
    let deployer = deployer("op-canary").await;
    let ns = deployer.namespace().to_owned();
    let operator = Running::start(deployer.client().clone(), &ns).await;
    let stable_yaml = resource_yaml("iris", "1", 2, 4);
    applied(&ns, &stable_yaml);
    wait_status(&deployer, "iris", "Ready=True", is_ready).await;

    // The candidate named in the resource: a second Deployment and a 80/20 route.
    let canary_yaml = format!(
        "{stable_yaml}  canary: {{image: registry.test/iris:2, model_version: \"2\", weight: 20}}\n"
    );
    applied(&ns, &canary_yaml);
    let resource = wait_status(&deployer, "iris", "the canary in the status", |r| {
        is_ready(r) && r.status.as_ref().is_some_and(|s| s.canary.is_some())
    })
    .await;
    let status = resource.status.unwrap();
    let canary = status.canary.unwrap();
    assert_eq!(
        (
            canary.image.as_str(),
            canary.model_version.as_str(),
            canary.weight
        ),
        ("registry.test/iris:2", "2", 20)
    );
    assert_eq!(status.stable.unwrap().weight, 80);
    let candidate = api::<Deployment>(&deployer)
        .get("iris-canary")
        .await
        .unwrap();
    assert_eq!(
        candidate.spec.template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("registry.test/iris:2")
    );
    let route = api::<HttpRoute>(&deployer).get("iris").await.unwrap();
    assert_eq!(
        (route.weight_of("iris"), route.weight_of("iris-canary")),
        (80, 20)
    );
    let deployed = deployer.status("iris").await.unwrap();
    assert_eq!(deployed.canary.map(|c| c.weight), Some(20));

    // The canary taken out of the resource: rolled back, the stable serving everything.
    applied(&ns, &stable_yaml);
    let resource = wait_status(&deployer, "iris", "no canary in the status", |r| {
        is_ready(r) && r.status.as_ref().is_some_and(|s| s.canary.is_none())
    })
    .await;
    assert_eq!(resource.status.unwrap().stable.unwrap().weight, 100);
    wait_for("the canary's Deployment gone", PATIENCE, || async {
        api::<Deployment>(&deployer)
            .get_opt("iris-canary")
            .await
            .unwrap()
            .is_none()
    })
    .await;
    let route = api::<HttpRoute>(&deployer).get("iris").await.unwrap();
    assert_eq!(
        (route.weight_of("iris"), route.weight_of("iris-canary")),
        (100, 0)
    );
    let stable = api::<Deployment>(&deployer).get("iris").await.unwrap();
    assert_eq!(
        stable.spec.template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("registry.test/iris:1"),
        "a rollback leaves the stable untouched"
    );
    operator.finish(&deployer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_spec_is_reported_and_changes_nothing() {
    let deployer = deployer("op-invalid").await;
    let ns = deployer.namespace().to_owned();
    let operator = Running::start(deployer.client().clone(), &ns).await;

    // New and invalid: min above max passes the schema, not serving.
    applied(&ns, &resource_yaml("bad", "1", 5, 2));
    let bad = wait_status(&deployer, "bad", "Ready=False/InvalidSpec", |r| {
        condition(r, READY)
            .is_some_and(|(s, reason, _)| s == "False" && reason == reason::INVALID_SPEC)
    })
    .await;
    let (_, _, message) = condition(&bad, READY).unwrap();
    assert!(message.contains("autoscale"), "{message}");
    assert_eq!(
        condition(&bad, RECONCILED).map(|(s, r, _)| (s, r)),
        Some(("False", reason::INVALID_SPEC))
    );
    assert!(
        objects(&deployer, "bad").await.is_empty(),
        "nothing was created"
    );

    // Running, then made invalid: its objects stay as they were.
    applied(&ns, &resource_yaml("iris", "1", 1, 2));
    wait_status(&deployer, "iris", "Ready=True", is_ready).await;
    let before = crate::k8s::versions(&deployer, "iris").await;
    let renamed = resource_yaml("iris", "1", 1, 2).replace("    name: iris\n", "    name: other\n");
    applied(&ns, &renamed);
    let invalid = wait_status(
        &deployer,
        "iris",
        "InvalidSpec for the new generation",
        |r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.observed_generation == r.metadata.generation)
                && condition(r, READY).is_some_and(|(_, reason, _)| reason == reason::INVALID_SPEC)
        },
    )
    .await;
    let (_, _, message) = condition(&invalid, READY).unwrap();
    assert!(
        message.contains("spec.endpoint.name `other` must be the resource's name `iris`"),
        "{message}"
    );
    assert_eq!(
        crate::k8s::versions(&deployer, "iris").await,
        before,
        "no object changed"
    );
    // The last good figures stay in the status.
    assert_eq!(invalid.status.as_ref().unwrap().replicas, 1);

    // Fixed: ready again.
    applied(&ns, &resource_yaml("iris", "1", 1, 2));
    wait_status(&deployer, "iris", "Ready=True again", is_ready).await;
    operator.finish(&deployer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_refuses_unknown_and_mistyped_fields_with_a_clear_message() {
    let deployer = deployer("op-schema").await;
    let ns = deployer.namespace().to_owned();
    install_crd(deployer.client()).await.unwrap();
    let good = resource_yaml("iris", "1", 1, 2);
    let cases = [
        (
            good.replace(
                "    preprocess: standardise\n",
                "    preprocess: standardise\n    colour: red\n",
            ),
            r#"unknown field "spec.endpoint.colour""#,
        ),
        (
            good.replace(
                "  image: registry.test/iris:1\n",
                "  image: registry.test/iris:1\n  replicas: 3\n",
            ),
            r#"unknown field "spec.replicas""#,
        ),
        (
            good.replace(
                "  image: registry.test/iris:1\n",
                "  image: registry.test/iris:1\n  port: http\n",
            ),
            "spec.port",
        ),
        (
            good.replace(
                "    preprocess: standardise\n",
                "    preprocess: standardise\n    kind: {type: ftp}\n",
            ),
            r#"Unsupported value: "ftp""#,
        ),
        (
            good.replace("  image: registry.test/iris:1\n", ""),
            "spec.image: Required value",
        ),
    ];
    for (yaml, expected) in cases {
        let (ok, out, err) = apply(&ns, &yaml);
        assert!(!ok, "refused: {out}");
        assert!(err.contains(expected), "`{expected}` in: {err}");
    }
    assert!(
        resources(&deployer)
            .get_opt("iris")
            .await
            .unwrap()
            .is_none()
    );
    cleanup(&deployer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_with_another_manager_is_reported_with_its_reason() {
    let deployer = deployer("op-conflict").await;
    let ns = deployer.namespace().to_owned();
    let operator = Running::start(deployer.client().clone(), &ns).await;
    applied(&ns, &resource_yaml("iris", "1", 1, 3));
    wait_status(&deployer, "iris", "Ready=True", is_ready).await;

    // Another platform takes the HPA's bound with its own server-side apply.
    let hpa = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: iris\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: iris}\n  maxReplicas: 7\n";
    let (ok, out, err) = kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager=platform",
            "--force-conflicts",
            "-n",
            &ns,
            "-f",
            "-",
        ],
        Some(hpa),
    );
    assert!(ok, "{out} {err}");
    let conflicted = wait_status(
        &deployer,
        "iris",
        "Reconciled=False/FieldManagerConflict",
        |r| {
            condition(r, RECONCILED).is_some_and(|(s, reason, _)| {
                s == "False" && reason == reason::FIELD_MANAGER_CONFLICT
            })
        },
    )
    .await;
    let (_, _, message) = condition(&conflicted, RECONCILED).unwrap();
    assert!(message.contains("`platform`"), "{message}");
    assert_eq!(
        hpa_max(&deployer, "iris").await,
        Some(7),
        "the other manager's value stands"
    );
    operator.finish(&deployer).await;
}

/// A client that acts as `user` (impersonated by the admin), who holds only the rights given.
async fn impersonating(user: &str) -> Client {
    let mut kubeconfig = Kubeconfig::read_from(kubeconfig()).unwrap();
    for auth in &mut kubeconfig.auth_infos {
        if let Some(info) = auth.auth_info.as_mut() {
            info.impersonate = Some(user.to_owned());
        }
    }
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_the_api_server_refuses_reports_forbidden() {
    let deployer = deployer("op-rbac").await;
    let ns = deployer.namespace().to_owned();
    install_crd(deployer.client()).await.unwrap();
    let user = format!("operator-{ns}");
    // It may read everything and write its resources, but not the endpoint's objects.
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(groups.iter().map(|g| (*g).to_owned()).collect()),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    };
    let read = ["get", "list", "watch"];
    let role = Role {
        metadata: ObjectMeta {
            name: Some("operator".into()),
            ..ObjectMeta::default()
        },
        rules: Some(vec![
            rule(
                &["serving.dev"],
                &["servingendpoints", "servingendpoints/status"],
                &["get", "list", "watch", "patch", "update"],
            ),
            rule(&["", "apps", "autoscaling", "policy"], &["*"], &read),
        ]),
    };
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("operator".into()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "operator".into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: user.clone(),
            ..Subject::default()
        }]),
    };
    api::<Role>(&deployer)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    api::<RoleBinding>(&deployer)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    let operator = Running::start_without_install(impersonating(&user).await, &ns);
    applied(&ns, &resource_yaml("iris", "1", 1, 2));
    let refused = wait_status(&deployer, "iris", "Reconciled=False/Forbidden", |r| {
        condition(r, RECONCILED)
            .is_some_and(|(s, reason, _)| s == "False" && reason == reason::FORBIDDEN)
    })
    .await;
    let (_, _, message) = condition(&refused, RECONCILED).unwrap();
    assert!(message.contains("refused"), "{message}");
    assert!(
        objects(&deployer, "iris").await.is_empty(),
        "nothing was created"
    );
    operator.stop().await;

    // Without even the right to list its resources, the operator does not start, and says so.
    let stranger = Operator::namespaced(impersonating("nobody-at-all").await, &ns)
        .run(async {})
        .await
        .unwrap_err()
        .to_string();
    assert!(stranger.contains("is the CRD installed"), "{stranger}");
    // The finalizer is the operator's: remove the resource with the admin's operator.
    let admin_operator = Running::start(deployer.client().clone(), &ns).await;
    deleted_with_kubectl(&deployer, &ns, "iris", Gone::Resource).await;
    admin_operator.finish(&deployer).await;
}

impl Running {
    /// For an operator whose client may not install the CRD.
    fn start_without_install(client: Client, namespace: &str) -> Running {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(Operator::namespaced(client, namespace).run(async move {
            let _ = stopped.await;
        }));
        Running {
            stop: Some(stop),
            task,
        }
    }
}

/// The YAML between the README's markers, as `kubectl apply -f - <<'EOF' ... EOF` gives it.
fn readme_yaml() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = "<!-- k8s-operator-yaml:start -->";
    let end = "<!-- k8s-operator-yaml:end -->";
    let block = readme
        .split_once(start)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(block, _)| block)
        .expect("the README marks its ServingEndpoint YAML");
    let heredoc = block
        .split_once("<<'EOF'\n")
        .and_then(|(_, rest)| rest.split_once("\nEOF"))
        .map(|(yaml, _)| yaml)
        .expect("a kubectl apply -f - <<'EOF' heredoc between the markers");
    heredoc.to_owned()
}

/// The operator example's logic, run as its `main` runs it.
#[path = "../examples/k8s_operator.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod operator_example;

/// The README's steps as written: the example operator, the quickstart applied with kubectl,
/// its status read back, deleted, and the operator stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_deploys_the_quickstart_as_written() {
    let deployer = deployer("op-readme").await;
    let ns = deployer.namespace().to_owned();
    let (stop, stopped) = oneshot::channel::<()>();
    let example = tokio::spawn(operator_example::run(
        deployer.client().clone(),
        Some(ns.clone()),
        async move {
            let _ = stopped.await;
        },
    ));
    let operator = Running {
        stop: Some(stop),
        task: example,
    };
    let yaml = readme_yaml();
    assert!(yaml.contains("kind: ServingEndpoint"), "{yaml}");
    applied(&ns, &yaml);
    let name = "iris";
    let resource = wait_status(&deployer, name, "the README's endpoint ready", is_ready).await;
    assert_eq!(objects(&deployer, name).await.len(), ALL);
    let stable = resource.status.unwrap().stable.unwrap();
    assert_eq!(stable.model_version, "1");
    let (ok, table, err) = kubectl(&["get", "servingendpoints", "-n", &ns], None);
    assert!(ok && table.contains("True"), "{table} {err}");
    deleted_with_kubectl(&deployer, &ns, name, Gone::WithItsObjects).await;
    operator.finish(&deployer).await;
}
