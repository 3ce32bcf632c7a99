//! Canary rollouts, lag-based scaling and batch runs of the Kubernetes backend against the
//! real control plane of tests/k8s.rs (Gateway API CRDs installed by
//! `scripts/components/kube`): a canary's weights on the `HTTPRoute`, raised, promoted and
//! rolled back; a stream's canary within the partition cap; a KEDA `ScaledObject` where KEDA's
//! CRD is installed and an external-metric HPA otherwise; batch 0 → 1 → 0 whatever the run
//! does; bad input; strict server-side validation of every new object.
//!
//! Each test works in a namespace of its own; the one cluster-scoped object, KEDA's CRD, is
//! created idempotently and never deleted (see [`ensure_keda_crd`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serving::k8s::k8s_openapi::api::apps::v1::Deployment;
use serving::k8s::k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use serving::k8s::k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use serving::k8s::kube::ResourceExt;
use serving::k8s::kube::api::{Api, ListParams};
use serving::k8s::{
    CANARY_OF_LABEL, Canary, CanaryManifests, Deployer, ENDPOINT_LABEL, HttpRoute, LAG_METRIC,
    LagScaling, ParentReference, PredictionToken, SPEC_KEY, ScaledObject, TRACK_LABEL,
    scaled_object,
};
use serving::{EndpointKind, EndpointSpec, Error};

use crate::k8s::{
    IMAGE, admin, api, batch_kind, cleanup, deployer, endpoint, kafka_kind, kubectl, wait_for,
};

const CANDIDATE: &str = "registry.test/iris:2";
const READY: Duration = Duration::from_secs(90);

/// KEDA's CRD shape (`scaledobjects.keda.sh`, v1alpha1), not KEDA itself: just enough schema
/// for the API server to accept ScaledObjects and check the fields `serving` sets; everything
/// else is preserved unknown, as no KEDA operator runs here.
const KEDA_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: scaledobjects.keda.sh
spec:
  group: keda.sh
  scope: Namespaced
  names: {kind: ScaledObject, listKind: ScaledObjectList, plural: scaledobjects, singular: scaledobject, shortNames: [so]}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-preserve-unknown-fields: true
            required: [scaleTargetRef, triggers]
            properties:
              scaleTargetRef:
                type: object
                required: [name]
                properties:
                  apiVersion: {type: string}
                  kind: {type: string}
                  name: {type: string}
              minReplicaCount: {type: integer, format: int32}
              maxReplicaCount: {type: integer, format: int32}
              triggers:
                type: array
                items:
                  type: object
                  required: [type, metadata]
                  properties:
                    type: {type: string}
                    metadata:
                      type: object
                      additionalProperties: {type: string}
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
"#;

/// Installs KEDA's CRD once: a server-side apply by its own field manager, so every test (and
/// every run) may call it; it is never deleted, as other tests may be applying ScaledObjects.
/// Waits until discovery serves `scaledobjects`, which is what [`LagScaling::Auto`] asks.
async fn ensure_keda_crd() {
    let (ok, _, stderr) = kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager=serving-test-keda-crd",
            "-f",
            "-",
        ],
        Some(KEDA_CRD),
    );
    assert!(ok, "KEDA's CRD applies: {stderr}");
    let client = admin().await;
    wait_for("discovery to serve scaledobjects", READY, || {
        let client = client.clone();
        async move {
            client
                .list_api_group_resources("keda.sh/v1alpha1")
                .await
                .is_ok_and(|list| list.resources.iter().any(|r| r.name == "scaledobjects"))
        }
    })
    .await;
}

async fn route(deployer: &Deployer, name: &str) -> Option<HttpRoute> {
    api::<HttpRoute>(deployer).get_opt(name).await.unwrap()
}

/// Whether the object `name` of kind `K` exists in the deployer's namespace.
pub(crate) async fn exists<K>(deployer: &Deployer, name: &str) -> bool
where
    K: serving::k8s::kube::Resource<Scope = serving::k8s::k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    api::<K>(deployer).get_opt(name).await.unwrap().is_some()
}

async fn canary_objects_exist(deployer: &Deployer, name: &str) -> [bool; 3] {
    let own = format!("{name}-canary");
    [
        exists::<Deployment>(deployer, &own).await,
        exists::<Service>(deployer, &own).await,
        exists::<ConfigMap>(deployer, &format!("{own}-spec")).await,
    ]
}

fn image(deployment: &Deployment) -> String {
    deployment.spec.template.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap()
}

/// The replicas asked for of the Deployment `name`.
async fn replicas(deployer: &Deployer, name: &str) -> i32 {
    api::<Deployment>(deployer)
        .get(name)
        .await
        .unwrap()
        .spec
        .replicas
        .unwrap()
}

/// Polls the stable's ready replicas until `stop`, keeping the fewest seen.
fn watch_ready(deployer: &Deployer, name: &str, stop: Arc<AtomicBool>) -> Arc<AtomicU32> {
    let fewest = Arc::new(AtomicU32::new(u32::MAX));
    let (deployer, name, seen) = (deployer.clone(), name.to_owned(), fewest.clone());
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            if let Ok(status) = deployer.status(&name).await {
                seen.fetch_min(status.ready_replicas, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    fewest
}

#[tokio::test]
async fn a_canary_takes_its_weight_on_the_route_and_is_promoted() {
    let deployer = deployer("canary").await;
    let stable = endpoint("web", EndpointKind::WebService, 2, 4);
    deployer.apply(&stable, None).await.unwrap();
    deployer.wait_ready("web", 2, READY).await.unwrap();

    let canary = Canary::new(10)
        .with_image(CANDIDATE)
        .with_model_version("2");
    let started = deployer.canary(&stable, &canary, None).await.unwrap();
    assert_eq!(
        (started.weight, started.replicas, started.image.as_str()),
        (10, 1, CANDIDATE),
        "10% of 2 replicas, rounded up"
    );
    assert_eq!(started.model_version, "2");
    let split = route(&deployer, "web").await.expect("an HTTPRoute");
    assert_eq!(
        (split.weight_of("web"), split.weight_of("web-canary")),
        (90, 10)
    );
    assert_eq!(
        split.spec.parent_refs,
        [ParentReference::service("web", 80)],
        "attached to the stable Service (GAMMA) without a Gateway"
    );
    // The canary's own objects: its spec under the endpoint's name, its own selector.
    let config_map = api::<ConfigMap>(&deployer)
        .get("web-canary-spec")
        .await
        .unwrap();
    let spec = EndpointSpec::from_yaml(&config_map.data.unwrap()[SPEC_KEY]).unwrap();
    assert_eq!(
        (spec.name.as_str(), spec.model.version.as_str()),
        ("web", "2")
    );
    let deployment = api::<Deployment>(&deployer)
        .get("web-canary")
        .await
        .unwrap();
    assert_eq!(deployment.labels()[TRACK_LABEL], "canary");
    assert_eq!(deployment.labels()[CANARY_OF_LABEL], "web");
    assert_eq!(image(&deployment), CANDIDATE);
    let service = api::<Service>(&deployer).get("web-canary").await.unwrap();
    assert_eq!(
        service.spec.unwrap().selector.unwrap()[ENDPOINT_LABEL],
        "web-canary"
    );
    deployer.wait_ready("web-canary", 1, READY).await.unwrap();
    // The stable Service selects the stable pods only, all of the stable image.
    let pods = Api::<Pod>::namespaced(deployer.client().clone(), deployer.namespace())
        .list(&ListParams::default().labels(&format!("{ENDPOINT_LABEL}=web")))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 2, "{:?}", pods.items.len());
    for pod in &pods.items {
        assert_eq!(pod.labels()[TRACK_LABEL], "stable");
        assert_eq!(
            pod.spec.as_ref().unwrap().containers[0].image.as_deref(),
            Some(IMAGE)
        );
    }
    let status = deployer.status("web").await.unwrap();
    let shown = status.canary.expect("the status shows the canary");
    assert_eq!((shown.weight, shown.ready_replicas), (10, 1));
    assert_eq!(status.image.as_deref(), Some(IMAGE));
    assert_eq!(status.model.as_deref(), Some("iris-tree@1"));

    // Raising the share: the route and the canary's replicas follow.
    let raised = deployer.set_canary_weight("web", 60).await.unwrap();
    assert_eq!(
        (raised.weight, raised.replicas),
        (60, 2),
        "60% of 2, rounded up"
    );
    let split = route(&deployer, "web").await.unwrap();
    assert_eq!(
        (split.weight_of("web"), split.weight_of("web-canary")),
        (40, 60)
    );
    assert_eq!(replicas(&deployer, "web-canary").await, 2);
    deployer.wait_ready("web-canary", 2, READY).await.unwrap();

    // Promotion: the stable rolls to the candidate without losing a ready pod.
    let stop = Arc::new(AtomicBool::new(false));
    let fewest = watch_ready(&deployer, "web", stop.clone());
    let start = Instant::now();
    let promoted = deployer.promote("web").await.unwrap();
    let took = start.elapsed();
    stop.store(true, Ordering::SeqCst);
    eprintln!(
        "promotion on the fake node: {took:?}, fewest stable pods ready meanwhile: {}",
        fewest.load(Ordering::SeqCst)
    );
    assert!(fewest.load(Ordering::SeqCst) >= 2, "maxUnavailable 0");
    assert_eq!(promoted.image.as_deref(), Some(CANDIDATE));
    assert_eq!(promoted.model.as_deref(), Some("iris-tree@2"));
    assert_eq!(promoted.canary, None);
    assert_eq!((promoted.replicas, promoted.ready_replicas), (2, 2));
    let stable_now = api::<Deployment>(&deployer).get("web").await.unwrap();
    assert_eq!(image(&stable_now), CANDIDATE);
    let stable_spec = api::<ConfigMap>(&deployer).get("web-spec").await.unwrap();
    let spec = EndpointSpec::from_yaml(&stable_spec.data.unwrap()[SPEC_KEY]).unwrap();
    assert_eq!(spec.model.version, "2");
    assert_eq!(canary_objects_exist(&deployer, "web").await, [false; 3]);
    let settled = route(&deployer, "web").await.unwrap();
    assert_eq!(
        (settled.weight_of("web"), settled.weight_of("web-canary")),
        (100, 0)
    );
    assert_eq!(
        settled.spec.rules[0].backend_refs.len(),
        1,
        "no dangling backend"
    );

    // Deleting the endpoint takes the route with it.
    let deleted = deployer.delete("web").await.unwrap();
    assert!(deleted.contains(&"HTTPRoute/web".to_owned()), "{deleted:?}");
    assert!(route(&deployer, "web").await.is_none());
    cleanup(&deployer).await;
}

#[tokio::test]
async fn a_rollback_leaves_the_stable_untouched_and_serving_everything() {
    let deployer = deployer("rollback").await;
    let stable = endpoint("web", EndpointKind::WebService, 1, 3);
    deployer.apply(&stable, None).await.unwrap();
    deployer.wait_ready("web", 1, READY).await.unwrap();
    let before = api::<Deployment>(&deployer).get("web").await.unwrap();

    let canary = Canary::new(30).with_model_version("2");
    deployer.canary(&stable, &canary, None).await.unwrap();
    deployer.wait_ready("web-canary", 1, READY).await.unwrap();
    assert_eq!(canary_objects_exist(&deployer, "web").await, [true; 3]);
    // The same canary again (a reconcile) writes nothing.
    let versions = |deployer: Deployer| async move {
        let deployment = api::<Deployment>(&deployer)
            .get("web-canary")
            .await
            .unwrap();
        let config_map = api::<ConfigMap>(&deployer)
            .get("web-canary-spec")
            .await
            .unwrap();
        let route = route(&deployer, "web").await.unwrap();
        (
            deployment.metadata.generation,
            config_map.resource_version(),
            route.resource_version(),
        )
    };
    let first = versions(deployer.clone()).await;
    deployer.canary(&stable, &canary, None).await.unwrap();
    assert_eq!(versions(deployer.clone()).await, first, "nothing changed");

    let status = deployer.rollback("web").await.unwrap();
    assert_eq!(status.canary, None);
    assert_eq!(canary_objects_exist(&deployer, "web").await, [false; 3]);
    let after = api::<Deployment>(&deployer).get("web").await.unwrap();
    assert_eq!(
        after.metadata.generation, before.metadata.generation,
        "not touched"
    );
    assert_eq!(image(&after), IMAGE);
    assert_eq!(status.model.as_deref(), Some("iris-tree@1"));
    assert_eq!(status.ready_replicas, 1);
    let settled = route(&deployer, "web").await.unwrap();
    assert_eq!(settled.weight_of("web"), 100);
    assert_eq!(settled.spec.rules[0].backend_refs.len(), 1);

    let again = deployer.rollback("web").await.unwrap_err();
    assert!(matches!(again, Error::Conflict { .. }), "{again}");
    assert!(again.to_string().contains("no canary runs"), "{again}");
    cleanup(&deployer).await;
}

#[tokio::test]
async fn a_streams_canary_takes_partitions_within_the_cap() {
    let deployer = deployer("streamcanary")
        .await
        .with_lag_scaling(LagScaling::Hpa);
    let stable = endpoint("stream", kafka_kind(), 1, 8).with_partitions(4);
    deployer.apply(&stable, None).await.unwrap();
    assert_eq!(deployer.scale("stream", 4).await.unwrap(), 4);
    let hpa_max = |deployer: Deployer| async move {
        api::<HorizontalPodAutoscaler>(&deployer)
            .get("stream")
            .await
            .unwrap()
            .spec
            .max_replicas
    };

    let quarter = deployer
        .canary(&stable, &Canary::new(25).with_model_version("2"), None)
        .await
        .unwrap();
    assert_eq!(quarter.replicas, 1, "a quarter of 4 consumers");
    assert_eq!(replicas(&deployer, "stream").await, 3);
    assert_eq!(
        hpa_max(deployer.clone()).await,
        3,
        "the cap minus the canary's"
    );
    assert!(
        route(&deployer, "stream").await.is_none(),
        "no HTTPRoute for a stream"
    );
    assert!(!exists::<Service>(&deployer, "stream-canary").await);
    let config_map = api::<ConfigMap>(&deployer)
        .get("stream-canary-spec")
        .await
        .unwrap();
    let spec = EndpointSpec::from_yaml(&config_map.data.unwrap()[SPEC_KEY]).unwrap();
    assert_eq!(
        spec.name, "stream",
        "the same name, so the same consumer group"
    );
    assert_eq!(spec.kind, stable.endpoint.kind);
    // The stable cannot be scaled past the cap minus the canary's consumers.
    assert_eq!(deployer.scale("stream", 8).await.unwrap(), 3);

    let half = deployer.set_canary_weight("stream", 50).await.unwrap();
    assert_eq!(half.replicas, 2);
    assert_eq!(replicas(&deployer, "stream").await, 2);
    assert_eq!(hpa_max(deployer.clone()).await, 2);
    // A reconcile of the stable keeps the canary's share out of its cap.
    let reconciled = deployer.apply(&stable, None).await.unwrap();
    assert_eq!(reconciled.replicas, 2);
    assert_eq!(hpa_max(deployer.clone()).await, 2);
    assert!(
        replicas(&deployer, "stream").await + replicas(&deployer, "stream-canary").await <= 4,
        "within the 4 partitions"
    );
    let status = deployer.status("stream").await.unwrap();
    let shown = status.canary.unwrap();
    assert_eq!((shown.weight, shown.model_version.as_str()), (50, "2"));

    // Rolled back: the stable gets the cap and every consumer back.
    deployer.rollback("stream").await.unwrap();
    assert!(!exists::<Deployment>(&deployer, "stream-canary").await);
    assert_eq!(replicas(&deployer, "stream").await, 4);
    assert_eq!(hpa_max(deployer.clone()).await, 4);

    // And promoted: the stable runs the candidate's model version with the whole cap.
    deployer
        .canary(&stable, &Canary::new(50).with_model_version("2"), None)
        .await
        .unwrap();
    assert_eq!(replicas(&deployer, "stream").await, 2);
    let promoted = deployer.promote("stream").await.unwrap();
    assert_eq!(promoted.model.as_deref(), Some("iris-tree@2"));
    assert_eq!(promoted.canary, None);
    assert!(!exists::<Deployment>(&deployer, "stream-canary").await);
    assert_eq!(replicas(&deployer, "stream").await, 4);
    assert_eq!(hpa_max(deployer.clone()).await, 4);
    cleanup(&deployer).await;
}

#[tokio::test]
async fn a_stream_scales_on_lag_through_keda_where_installed_else_an_external_metric_hpa() {
    ensure_keda_crd().await;
    let deployer = deployer("keda").await;
    let stream = endpoint("stream", kafka_kind(), 1, 8).with_partitions(2);
    let applied = deployer.apply(&stream, None).await.unwrap();
    assert!(
        applied.changed.contains(&"ScaledObject/stream".to_owned()),
        "{:?}",
        applied.changed
    );
    let object = api::<ScaledObject>(&deployer).get("stream").await.unwrap();
    assert_eq!(object.spec.scale_target_ref.name, "stream");
    assert_eq!(
        (object.spec.min_replica_count, object.spec.max_replica_count),
        (Some(1), Some(2)),
        "capped by the 2 partitions"
    );
    let trigger = &object.spec.triggers[0];
    assert_eq!(trigger.type_, "kafka");
    assert_eq!(trigger.metadata["bootstrapServers"], "127.0.0.1:9092");
    assert_eq!(trigger.metadata["consumerGroup"], "serving-stream");
    assert_eq!(trigger.metadata["topic"], "in");
    assert_eq!(trigger.metadata["lagThreshold"], "1000");
    assert!(
        !exists::<HorizontalPodAutoscaler>(&deployer, "stream").await,
        "KEDA makes its own HPA"
    );
    let again = deployer.apply(&stream, None).await.unwrap();
    assert!(again.changed.is_empty(), "{:?}", again.changed);

    // Without KEDA: an HPA on the lag the stream exports; the ScaledObject goes.
    let hpa_deployer = deployer.clone().with_lag_scaling(LagScaling::Hpa);
    let applied = hpa_deployer.apply(&stream, None).await.unwrap();
    assert!(
        applied.changed.contains(&"ScaledObject/stream".to_owned()),
        "removed: {:?}",
        applied.changed
    );
    assert!(!exists::<ScaledObject>(&deployer, "stream").await);
    let hpa = api::<HorizontalPodAutoscaler>(&deployer)
        .get("stream")
        .await
        .unwrap();
    assert_eq!((hpa.spec.min_replicas, hpa.spec.max_replicas), (Some(1), 2));
    let metric = &hpa.spec.metrics.unwrap()[0];
    assert_eq!(metric.type_, "External");
    let external = metric.external.as_ref().unwrap();
    assert_eq!(external.metric.name, LAG_METRIC);
    assert_eq!(
        external
            .metric
            .selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["endpoint"],
        "stream"
    );
    assert_eq!(external.target.type_, "AverageValue");
    let threshold = &external.target.average_value.as_ref().unwrap().0;
    assert!(["1k", "1000"].contains(&threshold.as_str()), "{threshold}");
    // Back to KEDA (detected): the HPA goes again.
    deployer.apply(&stream, None).await.unwrap();
    assert!(!exists::<HorizontalPodAutoscaler>(&deployer, "stream").await);
    assert!(exists::<ScaledObject>(&deployer, "stream").await);
    // A canary's consumers come out of the ScaledObject's maximum, and go back after.
    let max = |deployer: Deployer| async move {
        api::<ScaledObject>(&deployer)
            .get("stream")
            .await
            .unwrap()
            .spec
            .max_replica_count
    };
    let canary = deployer
        .canary(&stream, &Canary::new(50).with_model_version("2"), None)
        .await
        .unwrap();
    assert_eq!(canary.replicas, 1);
    assert_eq!(
        max(deployer.clone()).await,
        Some(1),
        "2 partitions, 1 for the canary"
    );
    deployer.rollback("stream").await.unwrap();
    assert_eq!(max(deployer.clone()).await, Some(2));
    let deleted = deployer.delete("stream").await.unwrap();
    assert!(
        deleted.contains(&"ScaledObject/stream".to_owned()),
        "{deleted:?}"
    );
    cleanup(&deployer).await;
}

#[tokio::test]
async fn a_batch_run_scales_from_zero_and_back_whatever_the_run_does() {
    let deployer = deployer("batchrun").await;
    let batch = endpoint("nightly", batch_kind(), 1, 1);
    deployer.apply(&batch, None).await.unwrap();
    deployer.wait_ready("nightly", 0, READY).await.unwrap();

    // Succeeds: while it runs, the pod is there.
    let pods = Api::<Pod>::namespaced(deployer.client().clone(), deployer.namespace());
    let done = deployer
        .run_batch("nightly", move |status| async move {
            let running = pods
                .list(&ListParams::default().labels(&format!("{ENDPOINT_LABEL}=nightly")))
                .await
                .map_err(|e| Error::InvalidRequest {
                    reason: e.to_string(),
                })?;
            Ok((status.ready_replicas, running.items.len()))
        })
        .await
        .unwrap();
    eprintln!(
        "batch cold start on the fake node (run_batch): {:?}",
        done.cold_start
    );
    assert_eq!(done.output, (1, 1), "one ready pod during the run");
    assert!(done.cold_start > Duration::ZERO);
    assert_eq!(deployer.status("nightly").await.unwrap().replicas, 0);
    deployer.wait_ready("nightly", 0, READY).await.unwrap();

    // Fails: the run's error, and back at zero.
    let failed = deployer
        .run_batch("nightly", |_| async {
            Err::<(), _>(Error::InvalidRequest {
                reason: "the input file is not CSV".into(),
            })
        })
        .await
        .unwrap_err();
    assert!(failed.to_string().contains("not CSV"), "{failed}");
    assert_eq!(deployer.status("nightly").await.unwrap().replicas, 0);

    // Panics: an error saying so, and back at zero.
    let panicked = deployer
        .run_batch("nightly", |_| async {
            if std::hint::black_box(true) {
                panic!("the model fell over");
            }
            Ok(())
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        panicked.contains("the batch run panicked: the model fell over"),
        "{panicked}"
    );
    assert_eq!(deployer.status("nightly").await.unwrap().replicas, 0);
    deployer.wait_ready("nightly", 0, READY).await.unwrap();

    // Not a batch endpoint, or none at all: nothing scaled.
    deployer
        .apply(&endpoint("web", EndpointKind::WebService, 1, 2), None)
        .await
        .unwrap();
    let error = deployer
        .run_batch("web", |_| async { Ok(()) })
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidRequest { .. }), "{error}");
    assert!(
        error.to_string().contains("is a web-service endpoint"),
        "{error}"
    );
    assert_eq!(replicas(&deployer, "web").await, 1);
    let error = deployer
        .run_batch("missing", |_| async { Ok(()) })
        .await
        .unwrap_err();
    assert!(matches!(error, Error::EndpointNotFound { .. }), "{error}");
    cleanup(&deployer).await;
}

#[tokio::test]
async fn bad_canary_input_gets_a_clear_error_and_changes_nothing() {
    let deployer = deployer("badcanary").await;
    let stable = endpoint("web", EndpointKind::WebService, 1, 2);

    let error = deployer
        .canary(&stable, &Canary::new(10).with_image(CANDIDATE), None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::EndpointNotFound { ref endpoint } if endpoint == "web"),
        "{error}"
    );
    deployer.apply(&stable, None).await.unwrap();

    let error = deployer
        .canary(&stable, &Canary::new(101).with_image(CANDIDATE), None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::InvalidSetting { ref key, .. } if key == "canary.weight"),
        "{error}"
    );
    eprintln!("a weight above 100: {error}");
    let error = deployer
        .canary(&stable, &Canary::new(10), None)
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("neither an image nor a model version"),
        "{error}"
    );
    let error = deployer
        .canary(&stable, &Canary::new(10).with_image("bad image"), None)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("contains whitespace"), "{error}");
    for verb in ["promote", "roll back", "change the weight of"] {
        let error = match verb {
            "promote" => deployer.promote("web").await.unwrap_err(),
            "roll back" => deployer.rollback("web").await.unwrap_err(),
            _ => deployer.set_canary_weight("web", 20).await.unwrap_err(),
        };
        assert!(matches!(error, Error::Conflict { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains(&format!("cannot {verb} the canary")),
            "{message}"
        );
        assert!(message.contains("no canary runs"), "{message}");
    }
    let error = deployer.set_canary_weight("web", 150).await.unwrap_err();
    assert!(matches!(error, Error::InvalidSetting { .. }), "{error}");
    assert_eq!(canary_objects_exist(&deployer, "web").await, [false; 3]);
    assert!(
        route(&deployer, "web").await.is_none(),
        "nothing was written"
    );

    // A stream of one partition has nothing to share.
    let narrow = endpoint("stream", kafka_kind(), 1, 4).with_partitions(1);
    deployer
        .clone()
        .with_lag_scaling(LagScaling::Hpa)
        .apply(&narrow, None)
        .await
        .unwrap();
    let error = deployer
        .canary(&narrow, &Canary::new(50).with_model_version("2"), None)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("at least 2 partitions"),
        "{error}"
    );
    assert!(!exists::<Deployment>(&deployer, "stream-canary").await);
    assert_eq!(replicas(&deployer, "stream").await, 1);
    cleanup(&deployer).await;
}

#[tokio::test]
async fn every_rollout_manifest_passes_strict_server_side_validation() {
    ensure_keda_crd().await;
    let deployer = deployer("rolloutschema").await;
    let token = PredictionToken::generate().unwrap();
    let web = endpoint("web", EndpointKind::WebService, 1, 3);
    let stream = endpoint("stream", kafka_kind(), 1, 4).with_partitions(2);
    let batch = endpoint("nightly", batch_kind(), 0, 2);
    let canary = Canary::new(20)
        .with_image(CANDIDATE)
        .with_model_version("2");
    let namespace = deployer.namespace();
    let mut items = Vec::new();
    for spec in [&web, &stream, &batch] {
        let objects = CanaryManifests::build(spec, &canary, namespace, &token, None, 1).unwrap();
        items.push(serde_json::to_value(&objects.deployment).unwrap());
        items.push(serde_json::to_value(&objects.config_map).unwrap());
        items.extend(
            objects
                .service
                .iter()
                .map(|o| serde_json::to_value(o).unwrap()),
        );
    }
    for (spec, parent) in [
        (&web, ParentReference::service("web", 80)),
        (
            &batch,
            ParentReference::gateway("public", Some("ingress".into())),
        ),
    ] {
        for weight in [Some(20), None] {
            let route = HttpRoute::for_endpoint(spec, namespace, None, parent.clone(), weight);
            let mut value = serde_json::to_value(&route).unwrap();
            // Each its own name in the one list.
            value["metadata"]["name"] =
                format!("{}-{}", spec.name(), weight.map_or(100, u32::from)).into();
            items.push(value);
        }
    }
    items.push(
        serde_json::to_value(scaled_object(&stream, namespace, None).unwrap().unwrap()).unwrap(),
    );
    assert_eq!(items.len(), 13);
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
        13,
        "{stdout}"
    );
    cleanup(&deployer).await;
}

/// [`submit_batch`](serving::k8s::submit_batch), the runner of real use, against a real batch
/// endpoint's REST API while the cluster runs its pod: the API is served here by a local web
/// service (tests/batch.rs), as no pod answers HTTP on the fake node.
#[cfg(feature = "batch")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_goes_over_rest_while_its_pod_is_up() {
    use serving::k8s::submit_batch;
    use serving::{BatchRequest, BatchStatus};

    let rest = crate::batch::Rest::start().await;
    let deployer = deployer("batchrest").await;
    deployer
        .apply(&endpoint("sums", batch_kind(), 1, 1), None)
        .await
        .unwrap();
    assert_eq!(
        deployer.service_url("sums"),
        format!("http://sums.{}.svc", deployer.namespace())
    );
    assert_eq!(deployer.token("sums").await.unwrap().expose().len(), 43);
    let run = |request: BatchRequest, token: String| {
        let url = rest.server.url("");
        move |status: serving::k8s::EndpointStatus| async move {
            assert_eq!(status.ready_replicas, 1, "the pod is up for the run");
            let client = reqwest::Client::new();
            let token = PredictionToken::new(token);
            submit_batch(
                &client,
                &url,
                "sums",
                &token,
                &request,
                Duration::from_millis(20),
            )
            .await
        }
    };

    let done = deployer
        .run_batch(
            "sums",
            run(
                BatchRequest::new("in.csv", "k8s.csv", "data"),
                rest.token.clone(),
            ),
        )
        .await
        .unwrap();
    eprintln!(
        "batch over REST on the fake node: cold start {:?}, {} rows",
        done.cold_start, done.output.rows_predicted
    );
    assert_eq!(done.output.status, BatchStatus::Succeeded);
    assert_eq!(done.output.rows_predicted, 10);
    assert_eq!(deployer.status("sums").await.unwrap().replicas, 0);

    // A run that fails on the endpoint, and one it refuses: errors that say so, back at zero.
    let failed = deployer
        .run_batch(
            "sums",
            run(
                BatchRequest::new("missing.csv", "k8s-2.csv", "data"),
                rest.token.clone(),
            ),
        )
        .await
        .unwrap_err()
        .to_string();
    eprintln!("a failed run over REST: {failed}");
    assert!(failed.contains("ended failed"), "{failed}");
    assert!(failed.contains("missing.csv"), "{failed}");
    assert_eq!(deployer.status("sums").await.unwrap().replicas, 0);
    let refused = deployer
        .run_batch(
            "sums",
            run(
                BatchRequest::new("in.csv", "k8s-3.csv", "data"),
                "wrong".into(),
            ),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("401"), "{refused}");
    assert_eq!(deployer.status("sums").await.unwrap().replicas, 0);
    deployer.wait_ready("sums", 0, READY).await.unwrap();
    cleanup(&deployer).await;
}

#[tokio::test]
async fn a_batch_endpoints_canary_splits_on_a_gateways_route() {
    let gateway = ParentReference::gateway("public", Some("ingress".into()));
    let deployer = deployer("batchcanary").await.with_gateway(gateway.clone());
    let batch = endpoint("nightly", batch_kind(), 1, 2);
    deployer.apply(&batch, None).await.unwrap();
    let started = deployer
        .canary(&batch, &Canary::new(20).with_image(CANDIDATE), None)
        .await
        .unwrap();
    assert_eq!(
        started.replicas, 1,
        "at least one, though the stable sits at zero"
    );
    let split = route(&deployer, "nightly").await.unwrap();
    assert_eq!(split.spec.parent_refs, [gateway]);
    assert_eq!(
        (
            split.weight_of("nightly"),
            split.weight_of("nightly-canary")
        ),
        (80, 20)
    );
    assert!(exists::<Service>(&deployer, "nightly-canary").await);
    let status = deployer.rollback("nightly").await.unwrap();
    assert_eq!(
        (status.replicas, status.canary),
        (0, None),
        "the stable still at zero"
    );
    assert_eq!(
        route(&deployer, "nightly")
            .await
            .unwrap()
            .weight_of("nightly"),
        100
    );
    assert_eq!(canary_objects_exist(&deployer, "nightly").await, [false; 3]);
    cleanup(&deployer).await;
}
