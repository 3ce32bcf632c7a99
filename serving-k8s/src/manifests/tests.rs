use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serving_core::{AutoscaleBounds, BackendSection, EndpointKind, EndpointSpec, ModelRef};

use super::*;
use crate::config::PodResources;

fn endpoint(kind: EndpointKind) -> ServingEndpointSpec {
    let mut spec = EndpointSpec::new("iris", ModelRef::new("iris-tree", "1"));
    spec.kind = kind;
    spec.autoscale = AutoscaleBounds::new(2, 5).unwrap();
    ServingEndpointSpec::new(spec, "registry.test/iris:1")
}

fn build(endpoint: &ServingEndpointSpec) -> Manifests {
    Manifests::build(endpoint, "ml", &PredictionToken::new("s3cret-token"), None).unwrap()
}

fn container(manifests: &Manifests) -> &Container {
    &manifests
        .deployment
        .spec
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

#[test]
fn the_web_service_has_every_object_and_probes() {
    let manifests = build(&endpoint(EndpointKind::WebService));
    assert_eq!(
        manifests.object_names(),
        [
            "ConfigMap/iris-spec",
            "Secret/iris-token",
            "Deployment/iris",
            "Service/iris",
            "HorizontalPodAutoscaler/iris",
            "PodDisruptionBudget/iris",
        ]
    );
    let deployment = &manifests.deployment.spec;
    assert_eq!(deployment.replicas, None, "replicas are the autoscaler's");
    assert_eq!(manifests.initial_replicas, 2);
    let rolling = deployment
        .strategy
        .as_ref()
        .unwrap()
        .rolling_update
        .as_ref()
        .unwrap();
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    let container = container(&manifests);
    let path = |probe: &Option<Probe>| {
        probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .clone()
            .unwrap()
    };
    assert_eq!(path(&container.readiness_probe), "/readyz");
    assert_eq!(path(&container.liveness_probe), "/healthz");
    assert_eq!(container.image.as_deref(), Some("registry.test/iris:1"));
    let pod = deployment.template.spec.as_ref().unwrap();
    assert_eq!(pod.termination_grace_period_seconds, Some(45));
    let env = container.env.as_ref().unwrap();
    let value = |name: &str| env.iter().find(|var| var.name == name).cloned().unwrap();
    assert_eq!(value("SERVING_DRAIN_TIMEOUT").value.as_deref(), Some("30"));
    assert_eq!(value("SERVING_SPEC").value.as_deref(), Some(SPEC_PATH));
    assert_eq!(value("SERVING_ADDR").value.as_deref(), Some("0.0.0.0:8080"));
    let token = value(DEFAULT_TOKEN_ENV)
        .value_from
        .unwrap()
        .secret_key_ref
        .unwrap();
    assert_eq!(
        (token.name.as_str(), token.key.as_str()),
        ("iris-token", TOKEN_KEY)
    );
    let mount = &container.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(format!("{}/{SPEC_KEY}", mount.mount_path), SPEC_PATH);
    let annotations = deployment
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "8080");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    assert_eq!(container.resources, None);

    let hpa = &manifests.autoscaler.as_ref().unwrap().spec;
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 5));
    assert_eq!(hpa.scale_target_ref.kind, "Deployment");
    assert_eq!(hpa.scale_target_ref.name, "iris");
    let service = manifests.service.as_ref().unwrap().spec.as_ref().unwrap();
    assert_eq!(service.selector.as_ref().unwrap()[ENDPOINT_LABEL], "iris");
    let pdb = manifests.disruption_budget.spec.as_ref().unwrap();
    assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
}

#[test]
fn the_spec_is_in_the_config_map_and_the_token_only_in_the_secret() {
    let endpoint = endpoint(EndpointKind::WebService);
    let manifests = build(&endpoint);
    let yaml = &manifests.config_map.data.as_ref().unwrap()[SPEC_KEY];
    assert_eq!(EndpointSpec::from_yaml(yaml).unwrap(), endpoint.endpoint);
    assert_eq!(
        PredictionToken::from_secret(&manifests.secret),
        Some(PredictionToken::new("s3cret-token"))
    );
    let config_map = serde_json::to_string(&manifests.config_map).unwrap();
    assert!(!config_map.contains("s3cret"), "{config_map}");
    let deployment = serde_json::to_string(&manifests.deployment).unwrap();
    assert!(!deployment.contains("s3cret"), "{deployment}");
    let debug = format!("{manifests:?} {:?}", PredictionToken::new("s3cret-token"));
    assert!(!debug.contains("s3cret"), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
}

#[test]
fn generated_tokens_are_random_and_long() {
    let a = PredictionToken::generate().unwrap();
    let b = PredictionToken::generate().unwrap();
    assert_ne!(a, b);
    assert_eq!(a.expose().len(), 43, "32 bytes in unpadded Base64");
}

#[test]
fn a_stream_has_no_service_and_its_maximum_is_the_partitions() {
    let stream = endpoint(EndpointKind::KafkaStream(BackendSection::new())).with_partitions(3);
    let manifests = build(&stream);
    assert!(manifests.service.is_none());
    let hpa = &manifests.autoscaler.as_ref().unwrap().spec;
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 3));
    let metric = &hpa.metrics.as_ref().unwrap()[0];
    assert_eq!(metric.type_, "External", "on its lag, not its CPU");
    assert_eq!(
        metric.external.as_ref().unwrap().metric.name,
        crate::LAG_METRIC
    );
    let annotations = manifests.deployment.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations[BOUNDS_ANNOTATION], "2..3");
    assert_eq!(
        manifests.deployment.metadata.labels.as_ref().unwrap()["app.kubernetes.io/component"],
        "kafka-stream"
    );
}

#[test]
fn a_batch_endpoint_starts_at_zero_without_an_hpa() {
    let manifests = build(&endpoint(EndpointKind::Batch(BackendSection::new())));
    assert!(manifests.autoscaler.is_none());
    assert!(manifests.service.is_some());
    assert_eq!(manifests.initial_replicas, 0);
    let annotations = manifests.deployment.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations[BOUNDS_ANNOTATION], "0..5");
}

#[test]
fn every_object_has_the_labels_and_the_owner() {
    let endpoint = endpoint(EndpointKind::WebService);
    let owner = OwnerReference {
        api_version: "serving.dev/v1alpha1".into(),
        kind: "ServingEndpoint".into(),
        name: "iris".into(),
        uid: "1234".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let manifests =
        Manifests::build(&endpoint, "ml", &PredictionToken::new("t"), Some(&owner)).unwrap();
    let metas = [
        &manifests.deployment.metadata,
        &manifests.service.as_ref().unwrap().metadata,
        &manifests.autoscaler.as_ref().unwrap().metadata,
        &manifests.config_map.metadata,
        &manifests.secret.metadata,
        &manifests.disruption_budget.metadata,
    ];
    let expected = labels(&endpoint);
    assert_eq!(expected[ENDPOINT_LABEL], "iris");
    assert_eq!(expected["app.kubernetes.io/managed-by"], "serving");
    assert_eq!(expected["app.kubernetes.io/version"], "1");
    for meta in metas {
        assert_eq!(meta.labels.as_ref(), Some(&expected), "{:?}", meta.name);
        assert_eq!(meta.namespace.as_deref(), Some("ml"));
        assert_eq!(meta.owner_references.as_deref(), Some(&[owner.clone()][..]));
    }
    let template = manifests
        .deployment
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap();
    assert_eq!(template.labels.as_ref(), Some(&expected));
    let without = build(&endpoint);
    assert_eq!(without.deployment.metadata.owner_references, None);
}

#[test]
fn resources_come_from_the_spec() {
    let resources = PodResources {
        requests: [("cpu".to_owned(), "250m".to_owned())].into(),
        limits: [("memory".to_owned(), "512Mi".to_owned())].into(),
    };
    let manifests = build(&endpoint(EndpointKind::WebService).with_resources(resources));
    let resources = container(&manifests).resources.clone().unwrap();
    assert_eq!(resources.requests.unwrap()["cpu"], Quantity("250m".into()));
    assert_eq!(
        resources.limits.unwrap()["memory"],
        Quantity("512Mi".into())
    );
}

#[test]
fn the_pod_template_changes_only_with_the_spec() {
    let endpoint = endpoint(EndpointKind::WebService);
    let digest_of = |endpoint: &ServingEndpointSpec| {
        build(endpoint)
            .deployment
            .spec
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[SPEC_DIGEST_ANNOTATION]
            .clone()
    };
    assert_eq!(digest_of(&endpoint), digest_of(&endpoint.clone()));
    let mut changed = endpoint.clone();
    changed.endpoint.model.version = "2".into();
    assert_ne!(digest_of(&endpoint), digest_of(&changed));
}

#[test]
fn odd_model_versions_stay_out_of_labels() {
    let mut endpoint = endpoint(EndpointKind::WebService);
    endpoint.endpoint.model.version = "2024/01 final".into();
    let manifests = build(&endpoint);
    let labels = manifests.deployment.metadata.labels.unwrap();
    assert!(!labels.contains_key("app.kubernetes.io/version"));
    assert_eq!(
        manifests.deployment.metadata.annotations.unwrap()["serving.dev/model"],
        "iris-tree@2024/01 final"
    );
}

#[test]
fn bad_specs_build_nothing() {
    let mut endpoint = endpoint(EndpointKind::WebService);
    endpoint.image.clear();
    let error = Manifests::build(&endpoint, "ml", &PredictionToken::new("t"), None).unwrap_err();
    assert!(error.to_string().contains("image is missing"), "{error}");
}
