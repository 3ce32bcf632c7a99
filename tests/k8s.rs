//! The Kubernetes backend against a real control plane (`scripts/components/kube`: etcd,
//! kube-apiserver, controller manager, scheduler and kwok's fake node, kubeconfig in
//! `$SERVING_TEST_KUBECONFIG`): all three kinds applied and read back, a second apply that
//! changes nothing, drift put back, scaling within bounds and the partition cap, batch
//! 0 → 1 → 0, bad input, and a strict server-side validation of every manifest.
//!
//! Each test works in a namespace of its own.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serving::k8s::k8s_openapi::api::apps::v1::Deployment;
use serving::k8s::k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use serving::k8s::k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use serving::k8s::k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serving::k8s::k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serving::k8s::kube::api::{Api, PostParams};
use serving::k8s::kube::{Client, ResourceExt};
use serving::k8s::{
    BOUNDS_ANNOTATION, Deployer, ENDPOINT_LABEL, LagScaling, Manifests, PredictionToken, SPEC_KEY,
    ServingEndpointSpec, client_from_kubeconfig,
};
use serving::{
    AutoscaleBounds, Autoscaler, BackendSection, EndpointKind, EndpointSpec, Error, ModelRef,
};

pub(crate) const IMAGE: &str = "registry.test/iris:1";

/// The admin kubeconfig; the tests fail (never skip) without a cluster.
pub(crate) fn kubeconfig() -> PathBuf {
    match std::env::var_os("SERVING_TEST_KUBECONFIG") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "SERVING_TEST_KUBECONFIG is not set: run `scripts/components/kube start` (scripts/test-setup does) and export the path it prints"
        ),
    }
}

pub(crate) fn kubectl_path() -> PathBuf {
    match std::env::var_os("SERVING_TEST_KUBECTL") {
        Some(path) => PathBuf::from(path),
        None => panic!("SERVING_TEST_KUBECTL is not set: see `scripts/components/kube env`"),
    }
}

/// Runs kubectl as admin with `stdin`; returns its status, stdout and stderr.
pub(crate) fn kubectl(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(kubectl_path())
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    if let Some(input) = stdin {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub(crate) fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{:x}",
        (nanos ^ u128::from(std::process::id())) & 0xff_ffff_ffff
    )
}

pub(crate) async fn admin() -> Client {
    let path = kubeconfig();
    let client = client_from_kubeconfig(&path).await.unwrap();
    if let Err(error) = client.apiserver_version().await {
        panic!(
            "no API server through {} ({error}): run `scripts/components/kube start`",
            path.display()
        );
    }
    client
}

/// A deployer into a new namespace of its own.
pub(crate) async fn deployer(prefix: &str) -> Deployer {
    let client = admin().await;
    let namespace = unique(prefix);
    let object = Namespace {
        metadata: ObjectMeta {
            name: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    Deployer::new(client, namespace)
}

pub(crate) fn endpoint(name: &str, kind: EndpointKind, min: u32, max: u32) -> ServingEndpointSpec {
    let mut spec = EndpointSpec::new(name, ModelRef::new("iris-tree", "1"));
    spec.kind = kind;
    spec.autoscale = AutoscaleBounds::new(min, max).unwrap();
    ServingEndpointSpec::new(spec, IMAGE)
}

pub(crate) fn kafka_kind() -> EndpointKind {
    let section = serde_json::json!({
        "brokers": ["127.0.0.1:9092"], "input_topics": ["in"], "output_topic": "out",
    });
    EndpointKind::KafkaStream(BackendSection::from_config(&section).unwrap())
}

pub(crate) fn batch_kind() -> EndpointKind {
    EndpointKind::Batch(BackendSection::new())
}

pub(crate) fn api<K>(deployer: &Deployer) -> Api<K>
where
    K: serving::k8s::kube::Resource<Scope = serving::k8s::k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    Api::namespaced(deployer.client().clone(), deployer.namespace())
}

/// What changes only when something writes an object of `name` (not its status): the
/// `resourceVersion` of the ConfigMap, Secret and Service, and the `generation` of the
/// Deployment, HPA and PDB, whose status controllers write; `None` for an absent object.
/// With it, the labels and annotations of the Deployment, which no generation counts.
pub(crate) async fn versions(deployer: &Deployer, name: &str) -> Vec<Option<String>> {
    let config_map = api::<ConfigMap>(deployer)
        .get_opt(&format!("{name}-spec"))
        .await
        .unwrap();
    let secret = api::<Secret>(deployer)
        .get_opt(&format!("{name}-token"))
        .await
        .unwrap();
    let deployment = api::<Deployment>(deployer).get_opt(name).await.unwrap();
    let service = api::<Service>(deployer).get_opt(name).await.unwrap();
    let hpa = api::<HorizontalPodAutoscaler>(deployer)
        .get_opt(name)
        .await
        .unwrap();
    let pdb = api::<PodDisruptionBudget>(deployer)
        .get_opt(name)
        .await
        .unwrap();
    let generation = |meta: &ObjectMeta| meta.generation.map(|g| g.to_string());
    vec![
        config_map.and_then(|o| o.resource_version()),
        secret.and_then(|o| o.resource_version()),
        deployment.as_ref().and_then(|o| generation(&o.metadata)),
        service.and_then(|o| o.resource_version()),
        hpa.and_then(|o| generation(&o.metadata)),
        pdb.and_then(|o| generation(&o.metadata)),
        deployment.map(|o| format!("{:?} {:?}", o.metadata.labels, o.metadata.annotations)),
    ]
}

pub(crate) async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn cleanup(deployer: &Deployer) {
    let _ = Api::<Namespace>::all(deployer.client().clone())
        .delete(deployer.namespace(), &Default::default())
        .await;
}

#[tokio::test]
async fn all_three_kinds_are_applied_and_read_back() {
    // The HPA, whether or not KEDA's CRD is installed (tests/k8s_rollout.rs installs it).
    let deployer = deployer("kinds").await.with_lag_scaling(LagScaling::Hpa);
    let web = endpoint("web", EndpointKind::WebService, 1, 3);
    let stream = endpoint("stream", kafka_kind(), 1, 4).with_partitions(2);
    let batch = endpoint("nightly", batch_kind(), 1, 2);
    for spec in [&web, &stream, &batch] {
        let applied = deployer.apply(spec, None).await.unwrap();
        assert!(applied.created, "{}", spec.name());
        assert_eq!(applied.replicas, spec.initial_replicas(), "{}", spec.name());
    }

    let deployment = api::<Deployment>(&deployer).get("web").await.unwrap();
    assert_eq!(deployment.labels()[ENDPOINT_LABEL], "web");
    assert_eq!(
        deployment.labels()["app.kubernetes.io/component"],
        "web-service"
    );
    assert_eq!(deployment.annotations()[BOUNDS_ANNOTATION], "1..3");
    assert_eq!(deployment.spec.replicas, Some(1));
    let pod = deployment.spec.template.spec.unwrap();
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some(IMAGE));
    let readiness = container.readiness_probe.clone().unwrap().http_get.unwrap();
    assert_eq!(readiness.path.as_deref(), Some("/readyz"));
    assert_eq!(pod.termination_grace_period_seconds, Some(45));
    let config_map = api::<ConfigMap>(&deployer).get("web-spec").await.unwrap();
    let yaml = &config_map.data.unwrap()[SPEC_KEY];
    assert_eq!(EndpointSpec::from_yaml(yaml).unwrap(), web.endpoint);
    let secret = api::<Secret>(&deployer).get("web-token").await.unwrap();
    let token = PredictionToken::from_secret(&secret).expect("a generated token");
    assert_eq!(token.expose().len(), 43);
    assert!(!yaml.contains(token.expose()));
    let service = api::<Service>(&deployer).get("web").await.unwrap();
    assert_eq!(
        service.spec.unwrap().selector.unwrap()[ENDPOINT_LABEL],
        "web"
    );
    let hpa = api::<HorizontalPodAutoscaler>(&deployer)
        .get("web")
        .await
        .unwrap();
    assert_eq!((hpa.spec.min_replicas, hpa.spec.max_replicas), (Some(1), 3));
    assert!(
        api::<PodDisruptionBudget>(&deployer)
            .get_opt("web")
            .await
            .unwrap()
            .is_some()
    );

    // The stream: no Service, its HPA capped by the two partitions.
    assert!(
        api::<Service>(&deployer)
            .get_opt("stream")
            .await
            .unwrap()
            .is_none()
    );
    let hpa = api::<HorizontalPodAutoscaler>(&deployer)
        .get("stream")
        .await
        .unwrap();
    assert_eq!(hpa.spec.max_replicas, 2);
    // The batch endpoint: at zero, no HPA, a Service for when it runs.
    assert!(
        api::<HorizontalPodAutoscaler>(&deployer)
            .get_opt("nightly")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        api::<Service>(&deployer)
            .get_opt("nightly")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(deployer.status("nightly").await.unwrap().replicas, 0);

    // kwok's fake node runs the pods: the web service and the stream become ready.
    let status = deployer
        .wait_ready("web", 1, Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!((status.replicas, status.ready_replicas), (1, 1));
    assert_eq!(status.model.as_deref(), Some("iris-tree@1"));
    assert_eq!(status.bounds, Some(AutoscaleBounds::new(1, 3).unwrap()));
    deployer
        .wait_ready("stream", 1, Duration::from_secs(90))
        .await
        .unwrap();

    let deleted = deployer.delete("web").await.unwrap();
    assert_eq!(deleted.len(), 6, "{deleted:?}");
    assert_eq!(versions(&deployer, "web").await, vec![None; 7]);
    assert!(
        deployer.delete("web").await.unwrap().is_empty(),
        "deleting twice is fine"
    );
    assert!(matches!(
        deployer.status("web").await,
        Err(Error::EndpointNotFound { .. })
    ));
    cleanup(&deployer).await;
}

#[tokio::test]
async fn a_second_apply_changes_nothing_and_a_changed_spec_only_what_changed() {
    let deployer = deployer("noop").await;
    let spec = endpoint("web", EndpointKind::WebService, 1, 2);
    deployer.apply(&spec, None).await.unwrap();
    deployer
        .wait_ready("web", 1, Duration::from_secs(90))
        .await
        .unwrap();
    let before = versions(&deployer, "web").await;
    let settled = api::<Deployment>(&deployer)
        .get("web")
        .await
        .unwrap()
        .resource_version();
    let generation = api::<Deployment>(&deployer)
        .get("web")
        .await
        .unwrap()
        .metadata
        .generation;
    let again = deployer.apply(&spec, None).await.unwrap();
    assert!(!again.created);
    assert!(again.changed.is_empty(), "{:?}", again.changed);
    assert!(!again.corrected_drift);
    assert_eq!(versions(&deployer, "web").await, before);
    let after = api::<Deployment>(&deployer).get("web").await.unwrap();
    assert_eq!(after.metadata.generation, generation);
    assert_eq!(after.resource_version(), settled, "no new resourceVersion");

    // A new image: only the Deployment changes (the spec in the ConfigMap is the same).
    let mut newer = spec.clone();
    newer.image = "registry.test/iris:2".into();
    let applied = deployer.apply(&newer, None).await.unwrap();
    assert_eq!(applied.changed, ["Deployment/web"]);
    let now = versions(&deployer, "web").await;
    assert_eq!(now[0], before[0], "ConfigMap untouched");
    assert_ne!(now[2], before[2], "Deployment patched");
    // A new bound: the HPA and the Deployment's bounds annotation change.
    let mut wider = newer.clone();
    wider.endpoint.autoscale = AutoscaleBounds::new(1, 4).unwrap();
    let applied = deployer.apply(&wider, None).await.unwrap();
    assert!(
        applied
            .changed
            .contains(&"HorizontalPodAutoscaler/web".to_owned()),
        "{:?}",
        applied.changed
    );
    assert!(
        applied.changed.contains(&"ConfigMap/web-spec".to_owned()),
        "{:?}",
        applied.changed
    );
    assert!(
        !applied.changed.contains(&"Secret/web-token".to_owned()),
        "the token is kept"
    );
    cleanup(&deployer).await;
}

#[tokio::test]
async fn drift_made_by_hand_is_put_back() {
    let deployer = deployer("drift").await;
    let spec = endpoint("web", EndpointKind::WebService, 1, 3);
    deployer.apply(&spec, None).await.unwrap();
    let namespace = deployer.namespace().to_owned();
    let edits: [&[&str]; 3] = [
        &[
            "label",
            "deployment/web",
            "app.kubernetes.io/managed-by=hand",
            "--overwrite",
        ],
        &[
            "patch",
            "hpa/web",
            "--type=merge",
            "-p",
            r#"{"spec":{"maxReplicas":9}}"#,
        ],
        &["scale", "deployment/web", "--replicas=7"],
    ];
    for edit in edits {
        let mut args = edit.to_vec();
        args.extend(["-n", &namespace]);
        let (ok, _, stderr) = kubectl(&args, None);
        assert!(ok, "kubectl {edit:?}: {stderr}");
    }
    let edited = api::<Deployment>(&deployer).get("web").await.unwrap();
    assert_eq!(edited.labels()["app.kubernetes.io/managed-by"], "hand");

    let applied = deployer.apply(&spec, None).await.unwrap();
    assert!(applied.corrected_drift);
    assert_eq!(applied.replicas, 3, "7 brought back within 1..3");
    let deployment = api::<Deployment>(&deployer).get("web").await.unwrap();
    assert_eq!(
        deployment.labels()["app.kubernetes.io/managed-by"],
        "serving"
    );
    assert_eq!(deployment.spec.replicas, Some(3));
    let hpa = api::<HorizontalPodAutoscaler>(&deployer)
        .get("web")
        .await
        .unwrap();
    assert_eq!(hpa.spec.max_replicas, 3);
    // Put back once; the next apply has nothing to do.
    let again = deployer.apply(&spec, None).await.unwrap();
    assert!(
        again.changed.is_empty() && !again.corrected_drift,
        "{again:?}"
    );
    cleanup(&deployer).await;
}

#[tokio::test]
async fn scaling_stays_within_the_bounds() {
    let deployer = deployer("scale").await;
    deployer
        .apply(&endpoint("web", EndpointKind::WebService, 1, 3), None)
        .await
        .unwrap();
    let autoscaler = deployer.autoscaler();
    let bounds = AutoscaleBounds::new(1, 3).unwrap();
    assert_eq!(autoscaler.scale("web", bounds, 2).await.unwrap(), 2);
    assert_eq!(autoscaler.replicas("web").await.unwrap(), 2);
    assert_eq!(autoscaler.scale("web", bounds, 10).await.unwrap(), 3);
    assert_eq!(autoscaler.scale("web", bounds, 0).await.unwrap(), 1);
    // Wider bounds than deployed: the deployed maximum still holds.
    let wide = AutoscaleBounds::new(1, 50).unwrap();
    assert_eq!(autoscaler.scale("web", wide, 50).await.unwrap(), 3);
    assert_eq!(deployer.scale("web", 2).await.unwrap(), 2);
    let status = deployer
        .wait_ready("web", 2, Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(status.ready_replicas, 2);
    assert_eq!(
        api::<Deployment>(&deployer)
            .get("web")
            .await
            .unwrap()
            .spec
            .replicas,
        Some(2)
    );
    // Scaling again to the same count changes nothing (the status may still move).
    let version = api::<Deployment>(&deployer)
        .get("web")
        .await
        .unwrap()
        .metadata
        .generation;
    assert_eq!(autoscaler.scale("web", bounds, 2).await.unwrap(), 2);
    let same = api::<Deployment>(&deployer)
        .get("web")
        .await
        .unwrap()
        .metadata
        .generation;
    assert_eq!(same, version);
    // Bounds that do not validate, and an endpoint never deployed.
    let inverted = AutoscaleBounds {
        min_replicas: 3,
        max_replicas: 1,
    };
    assert!(matches!(
        autoscaler.scale("web", inverted, 2).await,
        Err(Error::InvalidSetting { .. })
    ));
    assert!(matches!(
        autoscaler.scale("missing", bounds, 1).await,
        Err(Error::EndpointNotFound { ref endpoint }) if endpoint == "missing"
    ));
    assert_eq!(autoscaler.replicas("missing").await.unwrap(), 0);
    cleanup(&deployer).await;
}

#[tokio::test]
async fn a_streams_replicas_are_capped_by_its_partitions() {
    let deployer = deployer("cap").await.with_lag_scaling(LagScaling::Hpa);
    let stream = endpoint("stream", kafka_kind(), 1, 8).with_partitions(3);
    deployer.apply(&stream, None).await.unwrap();
    let autoscaler = deployer.autoscaler();
    let bounds = AutoscaleBounds::new(1, 8).unwrap();
    assert_eq!(autoscaler.scale("stream", bounds, 8).await.unwrap(), 3);
    assert_eq!(autoscaler.replicas("stream").await.unwrap(), 3);
    assert_eq!(deployer.scale("stream", 5).await.unwrap(), 3);
    let hpa = api::<HorizontalPodAutoscaler>(&deployer)
        .get("stream")
        .await
        .unwrap();
    assert_eq!(hpa.spec.max_replicas, 3);
    // More partitions later: the cap follows the spec.
    deployer
        .apply(&stream.clone().with_partitions(6), None)
        .await
        .unwrap();
    assert_eq!(autoscaler.scale("stream", bounds, 8).await.unwrap(), 6);
    cleanup(&deployer).await;
}

/// A stream whose spec states no partitions: the deployer reads them from the real broker
/// (`serving::kafka_partition_counter`), and a topic the broker lacks is a clear error that
/// changes nothing.
#[cfg(feature = "kafka")]
#[tokio::test]
async fn a_streams_partitions_are_read_from_its_brokers_when_its_spec_states_none() {
    let brokers = crate::kafka::brokers();
    let input = crate::kafka::unique("k8s-in");
    crate::kafka::create_topics(&brokers, &[(&input, 3)]).await;
    let deployer = deployer("brokers")
        .await
        .with_lag_scaling(LagScaling::Hpa)
        .with_partition_counter(serving::kafka_partition_counter());
    let stream_of = |topic: &str| {
        let section = serde_json::json!({
            "brokers": [brokers.clone()], "input_topics": [topic], "output_topic": "out",
        });
        let kind = EndpointKind::KafkaStream(BackendSection::from_config(&section).unwrap());
        endpoint("stream", kind, 1, 8)
    };
    deployer.apply(&stream_of(&input), None).await.unwrap();
    let hpa = api::<HorizontalPodAutoscaler>(&deployer)
        .get("stream")
        .await
        .unwrap();
    assert_eq!(
        hpa.spec.max_replicas, 3,
        "capped by the topic's 3 partitions"
    );
    assert_eq!(deployer.scale("stream", 8).await.unwrap(), 3);

    let missing = crate::kafka::unique("k8s-missing");
    let error = deployer
        .apply(&stream_of(&missing), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("could not be read from the brokers")
            && error.contains("state `partitions`"),
        "{error}"
    );
    let hpa = api::<HorizontalPodAutoscaler>(&deployer)
        .get("stream")
        .await
        .unwrap();
    assert_eq!(hpa.spec.max_replicas, 3, "nothing changed");
    cleanup(&deployer).await;
}

#[tokio::test]
async fn a_batch_endpoint_goes_from_zero_to_one_and_back() {
    let deployer = deployer("batch").await;
    let batch = endpoint("nightly", batch_kind(), 1, 1);
    let applied = deployer.apply(&batch, None).await.unwrap();
    assert_eq!(applied.replicas, 0, "it sits at zero until a batch arrives");
    deployer
        .wait_ready("nightly", 0, Duration::from_secs(30))
        .await
        .unwrap();
    let autoscaler = deployer.autoscaler();
    let bounds = batch.bounds();
    let start = Instant::now();
    assert_eq!(autoscaler.scale("nightly", bounds, 1).await.unwrap(), 1);
    let running = deployer
        .wait_ready("nightly", 1, Duration::from_secs(90))
        .await
        .unwrap();
    let cold_start = start.elapsed();
    assert_eq!(running.ready_replicas, 1);
    assert_eq!(autoscaler.scale("nightly", bounds, 0).await.unwrap(), 0);
    let idle = deployer
        .wait_ready("nightly", 0, Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(idle.ready_replicas, 0);
    eprintln!("batch cold start on the fake node: {cold_start:?}");
    // A later apply keeps it at zero (and would keep it at one during a run).
    assert_eq!(deployer.apply(&batch, None).await.unwrap().replicas, 0);
    cleanup(&deployer).await;
}

#[tokio::test]
async fn deleting_the_owner_removes_every_object() {
    let deployer = deployer("owner").await;
    let owner_object = api::<ConfigMap>(&deployer)
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owner".into()),
                    ..ObjectMeta::default()
                },
                ..ConfigMap::default()
            },
        )
        .await
        .unwrap();
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner_object.uid().unwrap(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    deployer
        .apply(
            &endpoint("web", EndpointKind::WebService, 1, 2),
            Some(&owner),
        )
        .await
        .unwrap();
    let deployment = api::<Deployment>(&deployer).get("web").await.unwrap();
    assert_eq!(deployment.owner_references()[0].uid, owner.uid);
    api::<ConfigMap>(&deployer)
        .delete("owner", &Default::default())
        .await
        .unwrap();
    wait_for(
        "the garbage collector to remove the objects",
        Duration::from_secs(90),
        || async { versions(&deployer, "web").await.iter().all(Option::is_none) },
    )
    .await;
    cleanup(&deployer).await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let deployer = deployer("bad").await;
    let mut invalid = endpoint("web", EndpointKind::WebService, 1, 2);
    invalid.endpoint.name = "Not A Name".into();
    let error = deployer.apply(&invalid, None).await.unwrap_err();
    assert!(matches!(error, Error::InvalidSpec { .. }), "{error}");
    assert!(error.to_string().contains("lowercase letters"), "{error}");

    let mut no_image = endpoint("web", EndpointKind::WebService, 1, 2);
    no_image.image = String::new();
    let error = deployer
        .apply(&no_image, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("the container image is missing"), "{error}");

    let mut inverted = endpoint("web", EndpointKind::WebService, 1, 2);
    inverted.endpoint.autoscale = AutoscaleBounds {
        min_replicas: 4,
        max_replicas: 2,
    };
    let error = deployer.apply(&inverted, None).await.unwrap_err();
    assert!(
        matches!(error, Error::InvalidSetting { ref key, .. } if key == "autoscale"),
        "{error}"
    );
    assert!(error.to_string().contains("4..2"), "{error}");
    assert_eq!(
        versions(&deployer, "web").await,
        vec![None; 7],
        "nothing was written"
    );

    let spec = endpoint("web", EndpointKind::WebService, 1, 2);
    let nowhere = Deployer::new(deployer.client().clone(), "no-such-namespace");
    let error = nowhere.apply(&spec, None).await.unwrap_err().to_string();
    eprintln!("a namespace that does not exist: {error}");
    assert!(
        error.contains("namespace `no-such-namespace` does not exist"),
        "{error}"
    );

    // A user without RBAC rights.
    let restricted = std::env::var_os("SERVING_TEST_KUBECONFIG_RESTRICTED")
        .map(PathBuf::from)
        .unwrap_or_else(|| kubeconfig().with_file_name("restricted.kubeconfig"));
    let refused = Deployer::from_kubeconfig(&restricted, deployer.namespace())
        .await
        .unwrap();
    let error = refused.apply(&spec, None).await.unwrap_err().to_string();
    eprintln!("a user without rights: {error}");
    assert!(error.contains("the API server refused to"), "{error}");
    assert!(error.contains("forbidden"), "{error}");
    assert!(error.contains(deployer.namespace()), "{error}");
    let error = refused
        .autoscaler()
        .scale("web", AutoscaleBounds::new(1, 2).unwrap(), 1)
        .await;
    assert!(error.unwrap_err().to_string().contains("refused"));
    assert_eq!(
        versions(&deployer, "web").await,
        vec![None; 7],
        "nothing was written"
    );

    // Another field manager's apply owns a label that serving sets: a conflict, and nothing
    // of the endpoint changes.
    deployer.apply(&spec, None).await.unwrap();
    let theirs = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {}\n  labels:\n    app.kubernetes.io/managed-by: gitops\n",
        deployer.namespace()
    );
    let (ok, _, stderr) = kubectl(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=gitops",
            "-f",
            "-",
        ],
        Some(&theirs),
    );
    assert!(ok, "{stderr}");
    let before = versions(&deployer, "web").await;
    let mut changed = spec.clone();
    changed.image = "registry.test/iris:2".into();
    let error = deployer.apply(&changed, None).await.unwrap_err();
    assert!(matches!(error, Error::Conflict { .. }), "{error}");
    let message = error.to_string();
    eprintln!("another field manager: {message}");
    assert!(message.contains("`gitops`"), "{message}");
    assert!(
        message.contains("app.kubernetes.io/managed-by"),
        "{message}"
    );
    assert_eq!(versions(&deployer, "web").await, before, "nothing changed");
    let deployment = api::<Deployment>(&deployer).get("web").await.unwrap();
    assert_eq!(
        deployment.spec.template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some(IMAGE)
    );
    cleanup(&deployer).await;
}

#[tokio::test]
async fn every_manifest_passes_strict_server_side_validation() {
    let deployer = deployer("schema").await;
    let token = PredictionToken::generate().unwrap();
    let mut items = Vec::new();
    for spec in [
        endpoint("web", EndpointKind::WebService, 1, 3),
        endpoint("stream", kafka_kind(), 1, 4).with_partitions(2),
        endpoint("nightly", batch_kind(), 0, 2),
    ] {
        let manifests = Manifests::build(&spec, deployer.namespace(), &token, None).unwrap();
        items.push(serde_json::to_value(&manifests.config_map).unwrap());
        items.push(serde_json::to_value(&manifests.secret).unwrap());
        items.push(serde_json::to_value(&manifests.deployment).unwrap());
        items.extend(
            manifests
                .service
                .iter()
                .map(|o| serde_json::to_value(o).unwrap()),
        );
        items.extend(
            manifests
                .autoscaler
                .iter()
                .map(|o| serde_json::to_value(o).unwrap()),
        );
        items.push(serde_json::to_value(&manifests.disruption_budget).unwrap());
    }
    assert_eq!(items.len(), 16);
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let (ok, stdout, stderr) = kubectl(
        &[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "--server-side",
            "-f",
            "-",
        ],
        Some(&list.to_string()),
    );
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout
            .lines()
            .filter(|line| line.contains("(server dry run)"))
            .count(),
        16,
        "{stdout}"
    );
    cleanup(&deployer).await;
}

#[tokio::test]
async fn a_new_image_rolls_out_without_losing_a_ready_pod() {
    let deployer = deployer("rollout").await;
    let spec = endpoint("web", EndpointKind::WebService, 2, 4);
    deployer.apply(&spec, None).await.unwrap();
    deployer
        .wait_ready("web", 2, Duration::from_secs(90))
        .await
        .unwrap();
    let mut newer = spec.clone();
    newer.image = "registry.test/iris:2".into();
    deployer.apply(&newer, None).await.unwrap();
    // maxUnavailable 0: every poll during the rollout still sees two ready pods.
    let start = Instant::now();
    let mut polls = 0;
    loop {
        let status = deployer.status("web").await.unwrap();
        assert!(status.ready_replicas >= 2, "{status:?} after {polls} polls");
        polls += 1;
        if status.is_ready() && status.replicas == 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "{status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deployment = api::<Deployment>(&deployer).get("web").await.unwrap();
    let status = deployment.status.unwrap();
    assert_eq!(status.updated_replicas, Some(2));
    assert_eq!(
        deployment.spec.template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("registry.test/iris:2")
    );
    cleanup(&deployer).await;
}
