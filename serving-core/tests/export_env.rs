//! Exporting server settings to the process environment needs a process with one thread, which
//! the libtest harness never is (it runs each test on a thread of its own). So this test has
//! its own `main` (`harness = false`): it exports at start-up as a real `main` would, then
//! serves predictions that read both the environment and the context.

use std::sync::Arc;

use serving_core::{
    Context, Endpoint, EndpointSpec, Error, Input, ModelEndpoint, PredictRequest, Predictor,
    Result, Value, json,
};

/// Answers with what it sees of one setting: in its context and in the process environment.
#[derive(Debug)]
struct ReadsSettings;

#[async_trait::async_trait]
impl Predictor for ReadsSettings {
    async fn predict(&self, input: Input, ctx: &Context) -> Result<Value> {
        let Input::Json(Value::String(key)) = input else {
            return Err(Error::rejected("send a setting name"));
        };
        let from_env = ctx
            .run_blocking({
                let key = key.clone();
                move || Ok(std::env::var(&key).ok())
            })
            .await?;
        Ok(json!({ "context": ctx.setting(&key), "env": from_env }))
    }
}

fn main() {
    let spec = EndpointSpec::from_yaml(
        "name: settings\nmodel: {name: reader, version: '1'}\nserver:\n  env: {SERVING_GREETING: hello, MODEL_SCALE: '3'}\n  workers: {threads: 2, timeout_secs: 30}\n",
    )
    .expect("the spec parses");
    let mut passed = 0;

    // 1. At start-up, single-threaded: exported.
    spec.server
        .export_env()
        .expect("a single-threaded process exports");
    assert_eq!(std::env::var("SERVING_GREETING").as_deref(), Ok("hello"));
    passed += 1;

    // 2. The predictor sees the settings in its context and its environment, on the
    //    blocking pool's threads too.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let endpoint = Arc::new(
            ModelEndpoint::builder("settings", ReadsSettings)
                .spec(spec.clone())
                .build()
                .expect("the endpoint builds"),
        );
        let answer = endpoint
            .predict(PredictRequest::new(json!("MODEL_SCALE")))
            .await
            .expect("the predictor answers");
        assert_eq!(answer.output, json!({"context": "3", "env": "3"}));
    });
    passed += 1;

    // 3. Once the runtime's threads run, exporting is refused and changes nothing.
    let mut later = spec.server.clone();
    later
        .env
        .insert("SERVING_GREETING".into(), "changed".into());
    let refused = later
        .export_env()
        .expect_err("refused with threads running");
    assert!(refused.to_string().contains("threads"), "{refused}");
    assert_eq!(std::env::var("SERVING_GREETING").as_deref(), Ok("hello"));
    passed += 1;

    // In libtest's words, so that summaries over cargo's output count these checks too.
    println!("test result: ok. {passed} passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
