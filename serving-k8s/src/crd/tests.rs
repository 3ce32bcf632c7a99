use kube::CustomResourceExt;
use serde_json::{Value, json};
use serving_core::{AutoscaleBounds, ModelRef};

use super::*;

fn schema() -> Value {
    let crd = serde_json::to_value(ServingEndpoint::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// The structural-schema rules Kubernetes checks, at every node: a type (or a declared
/// escape), no `$ref`, no `additionalProperties` beside `properties`, and no types or
/// properties inside `anyOf`/`oneOf`/`allOf`/`not`.
fn assert_structural(node: &Value, path: &str, in_junction: bool) {
    let object = node.as_object().unwrap_or_else(|| panic!("{path}: {node}"));
    assert!(!object.contains_key("$ref"), "{path}: $ref");
    let escaped = object.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true))
        || object.get("x-kubernetes-int-or-string") == Some(&json!(true));
    if in_junction {
        for forbidden in [
            "type",
            "properties",
            "additionalProperties",
            "items",
            "default",
        ] {
            assert!(
                !object.contains_key(forbidden),
                "{path}: `{forbidden}` in a junction"
            );
        }
    } else {
        assert!(
            escaped || object.get("type").is_some_and(|t| t.is_string()),
            "{path}: no single type: {node}"
        );
    }
    assert!(
        !(object.contains_key("properties") && object.contains_key("additionalProperties")),
        "{path}: properties beside additionalProperties"
    );
    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            assert_structural(child, &format!("{path}.{name}"), false);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = object.get(key).filter(|c| c.is_object()) {
            assert_structural(child, &format!("{path}[{key}]"), false);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        for (i, child) in object
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            assert_structural(child, &format!("{path}.{key}[{i}]"), true);
        }
    }
}

fn find_defaults(node: &Value, path: &str, found: &mut Vec<String>) {
    match node {
        Value::Object(object) => {
            if object.contains_key("default") {
                found.push(path.to_owned());
            }
            for (key, child) in object {
                find_defaults(child, &format!("{path}/{key}"), found);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                find_defaults(child, &format!("{path}/{i}"), found);
            }
        }
        _ => {}
    }
}

#[test]
fn the_crd_names_group_version_scope_and_subresources() {
    let crd = ServingEndpoint::crd();
    assert_eq!(crd.name_any(), "servingendpoints.serving.dev");
    assert_eq!(crd.spec.group, GROUP);
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "ServingEndpoint");
    assert_eq!(crd.spec.names.short_names, Some(vec!["sep".to_owned()]));
    let version = &crd.spec.versions[0];
    assert_eq!(
        (version.name.as_str(), version.served, version.storage),
        (VERSION, true, true)
    );
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        ["Ready", "Replicas", "Desired", "Model", "URL", "Age"]
    );
}

#[test]
fn the_schema_is_structural() {
    assert_structural(&schema(), "", false);
}

#[test]
fn the_schema_types_the_spec_and_the_status() {
    let schema = schema();
    let spec = &schema["properties"]["spec"];
    let required = |node: &Value| -> Vec<String> {
        let mut names: Vec<String> = node["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    };
    assert_eq!(required(spec), ["endpoint", "image"]);
    let endpoint = &spec["properties"]["endpoint"];
    assert_eq!(endpoint["type"], "object");
    assert_eq!(required(endpoint), ["model", "name"]);
    assert_eq!(endpoint["properties"]["name"]["type"], "string");
    // The kind: the tag is typed, the backend's section is kept for the backend to check.
    let kind = &endpoint["properties"]["kind"];
    assert_eq!(
        kind["properties"]["type"]["enum"],
        json!(["web_service", "kafka_stream", "batch"])
    );
    assert_eq!(kind["x-kubernetes-preserve-unknown-fields"], true);
    let autoscale = &endpoint["properties"]["autoscale"]["properties"];
    assert_eq!(autoscale["max_replicas"]["type"], "integer");
    assert_eq!(autoscale["max_replicas"]["minimum"], 1.0);
    assert_eq!(
        endpoint["properties"]["server"]["properties"]["env"]["additionalProperties"]["type"],
        "string"
    );
    assert_eq!(
        endpoint["properties"]["files"]["enum"],
        json!(["off", "bytes", "temp_file"])
    );
    assert_eq!(spec["properties"]["port"]["maximum"], 65535.0);
    assert_eq!(spec["properties"]["image"]["minLength"], 1);
    let canary = &spec["properties"]["canary"];
    assert_eq!(required(canary), ["weight"]);
    assert_eq!(canary["properties"]["weight"]["type"], "integer");
    assert_eq!(canary["properties"]["model_version"]["type"], "string");

    let status = &schema["properties"]["status"]["properties"];
    for field in [
        "observedGeneration",
        "replicas",
        "readyReplicas",
        "url",
        "stable",
        "canary",
    ] {
        assert!(status.get(field).is_some(), "status.{field}");
    }
    let condition = &status["conditions"]["items"];
    assert_eq!(
        required(condition),
        ["lastTransitionTime", "message", "reason", "status", "type"]
    );
    assert_eq!(status["stable"]["properties"]["weight"]["type"], "integer");
}

#[test]
fn the_endpoint_carries_no_defaults_for_the_api_server_to_freeze() {
    let mut found = Vec::new();
    find_defaults(
        &schema()["properties"]["spec"]["properties"]["endpoint"],
        "",
        &mut found,
    );
    assert!(found.is_empty(), "defaults at {found:?}");
}

fn sample() -> ServingEndpointSpec {
    let mut endpoint = EndpointSpec::new("iris", ModelRef::new("iris-knn", "1"));
    endpoint.autoscale = AutoscaleBounds::new(1, 3).unwrap();
    ServingEndpointSpec::new(endpoint, "registry.test/iris:1")
}

#[test]
fn a_resource_reads_back_into_the_spec_it_was_made_from() {
    let spec = sample();
    let resource = ServingEndpoint::for_endpoint(&spec);
    assert_eq!(resource.name_any(), "iris");
    assert_eq!(resource.spec.endpoint_spec("iris").unwrap(), spec);
    // As kubectl would send it: YAML, defaults left out.
    let yaml = "apiVersion: serving.dev/v1alpha1\nkind: ServingEndpoint\nmetadata: {name: iris}\nspec:\n  image: registry.test/iris:1\n  endpoint:\n    name: iris\n    model: {name: iris-knn, version: '1'}\n    autoscale: {min_replicas: 1, max_replicas: 3}\n";
    let written: ServingEndpoint = serde_norway::from_str(yaml).unwrap();
    assert_eq!(written.spec.endpoint_spec("iris").unwrap(), spec);
}

#[test]
fn a_bad_resource_spec_says_what_is_wrong() {
    let spec = ServingEndpointResourceSpec::new(&sample());
    let error = spec.endpoint_spec("other").unwrap_err().to_string();
    assert!(
        error.contains("spec.endpoint.name `iris` must be the resource's name `other`"),
        "{error}"
    );

    let mut typo = spec.clone();
    typo.endpoint["autoscale"] = json!({"min_replicas": 1, "max_replicas": 3, "maximum": 4});
    let error = typo.endpoint_spec("iris").unwrap_err().to_string();
    assert!(
        error.contains("spec.endpoint: unknown field `maximum`"),
        "{error}"
    );

    let mut inverted = spec.clone();
    inverted.endpoint["autoscale"] = json!({"min_replicas": 5, "max_replicas": 2});
    assert!(matches!(
        inverted.endpoint_spec("iris"),
        Err(Error::InvalidSetting { ref key, .. }) if key == "autoscale"
    ));

    let heavy = spec.clone().with_canary(Canary {
        image: None,
        model_version: Some("2".into()),
        weight: 150,
    });
    let error = heavy.endpoint_spec("iris").unwrap_err().to_string();
    assert!(
        error.contains("spec.canary.weight 150 is a percentage"),
        "{error}"
    );
    let empty = spec.with_canary(Canary {
        image: None,
        model_version: None,
        weight: 10,
    });
    let error = empty.endpoint_spec("iris").unwrap_err().to_string();
    assert!(
        error.contains("names neither an image nor a model_version"),
        "{error}"
    );
}

#[test]
#[ignore = "prints the CRD: cargo test -p serving-k8s print_the_crd -- --ignored --nocapture"]
fn print_the_crd() {
    println!(
        "{}",
        serde_norway::to_string(&ServingEndpoint::crd()).unwrap()
    );
}
