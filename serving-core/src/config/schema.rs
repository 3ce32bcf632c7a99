//! JSON Schemas of the spec's types whose serde form is written by hand (feature `schema`),
//! for generated schemas such as the `ServingEndpoint` custom resource's.
//!
//! Each is a schema that Kubernetes accepts as structural: where the form is a tagged union
//! or an opaque section that a backend reads, the schema names what it can (the tag) and keeps
//! the rest with `x-kubernetes-preserve-unknown-fields`; the values are checked when the spec
//! is read (their `Deserialize` and `validate`), with the same messages as everywhere else.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use crate::{CanaryMetric, EndpointKind, FeedbackSchedule, TriggerSpec};

impl JsonSchema for EndpointKind {
    fn schema_name() -> Cow<'static, str> {
        "EndpointKind".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // The backend's section sits beside the tag and is the backend's to check (its config
        // type refuses unknown keys), so only the tag is typed here.
        json_schema!({
            "description": "What kind of endpoint it is: `type` is `web_service`, `kafka_stream` or `batch`; a Kafka stream's or batch endpoint's settings sit beside it (checked by its backend).",
            "type": "object",
            "properties": {
                "type": {
                    "type": "string",
                    "enum": ["web_service", "kafka_stream", "batch"]
                }
            },
            "required": ["type"],
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

impl JsonSchema for FeedbackSchedule {
    fn schema_name() -> Cow<'static, str> {
        "FeedbackSchedule".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // A word or an object: no single structural type covers both.
        json_schema!({
            "description": "When to export: `now`, `{every_secs: N}` or `{cron: \"0 * * * *\"}`.",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

impl JsonSchema for CanaryMetric {
    fn schema_name() -> Cow<'static, str> {
        "CanaryMetric".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "What a canary rule measures: `error_rate`, `p95_latency_ms`, `mean_latency_ms` or `custom:<key>`.",
            "type": "string",
            "pattern": "^(error_rate|p95_latency_ms|mean_latency_ms|custom:.+)$"
        })
    }
}

impl JsonSchema for TriggerSpec {
    fn schema_name() -> Cow<'static, str> {
        "TriggerSpec".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // The rule's fields and `action` (a tagged union) side by side.
        json_schema!({
            "description": "A trigger: `title`, `metric`, `comparison`, `threshold`, `every_secs` (and `severity`, `min_events`, `model_version`, `cooldown_secs`) with an `action` (`{type: webhook, url, secret}` or `{type: email, to}`).",
            "type": "object",
            "required": ["title", "metric", "comparison", "threshold", "every_secs", "action"],
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

#[cfg(test)]
mod tests {
    use schemars::schema_for;

    use crate::EndpointSpec;

    #[test]
    fn the_spec_has_a_schema_with_its_fields_and_docs() {
        let schema = schema_for!(EndpointSpec).to_value();
        let properties = &schema["properties"];
        for field in [
            "name",
            "kind",
            "model",
            "auth",
            "server",
            "autoscale",
            "triggers",
        ] {
            assert!(properties.get(field).is_some(), "{field}: {schema}");
        }
        assert_eq!(schema["additionalProperties"], false, "deny_unknown_fields");
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(required, ["name", "model"]);
        assert!(
            properties["name"]["description"]
                .as_str()
                .unwrap()
                .contains("lowercase letters"),
            "{schema}"
        );
    }
}
