//! The dataset suite (`serving_core::conformance::datasets`) on the local filesystem and on a
//! real S3-compatible server (moto, at `$SERVING_TEST_S3`, started by `scripts/components/s3`),
//! through object_store's S3 client.

use serving::Bytes;
use serving::datasets::Datasets;
use serving::datasets::Overwrite;

/// The S3-compatible server's endpoint; the tests fail without it.
pub fn s3_endpoint() -> String {
    std::env::var("SERVING_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:39500".into())
}

/// A fresh bucket on the S3 server and a dataset root in it, configured without touching the
/// process environment.
pub async fn s3_datasets(prefix: &str) -> Datasets {
    let endpoint = s3_endpoint();
    let bucket = format!("serving-{}", uuid_like());
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap_or_else(|error| {
            panic!(
                "no S3 server at {endpoint} ({error}): run `scripts/components/s3 start` (scripts/test-setup does)"
            )
        });
    assert!(
        created.status().is_success(),
        "create bucket: {}",
        created.status()
    );
    Datasets::from_url_opts(
        &format!("s3://{bucket}/{prefix}"),
        [
            ("aws_endpoint", endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", "testing"),
            ("aws_secret_access_key", "testing"),
            ("aws_region", "us-east-1"),
        ],
    )
    .expect("an s3:// root")
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{nanos:x}-{:x}", std::process::id())
}

#[tokio::test]
async fn the_dataset_suite_on_the_local_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let datasets = Datasets::from_url(&format!("file://{}", dir.path().display())).unwrap();
    serving::conformance::datasets::datasets(&datasets).await;
}

#[tokio::test]
async fn the_dataset_suite_on_an_s3_server() {
    let datasets = s3_datasets("team/datasets").await;
    assert!(
        datasets.url().starts_with("s3://serving-"),
        "{}",
        datasets.url()
    );
    serving::conformance::datasets::datasets(&datasets).await;
}

#[tokio::test]
async fn s3_files_sit_under_the_prefix_and_bad_options_are_named() {
    let datasets = s3_datasets("root").await;
    let dataset = datasets.dataset("iris").unwrap();
    dataset
        .put("in.csv", Bytes::from_static(b"a\n1\n"), Overwrite::Refuse)
        .await
        .unwrap();
    let listed: Vec<_> = dataset
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert_eq!(listed, ["in.csv"]);
    assert_eq!(
        dataset.location("in.csv").unwrap().as_ref(),
        "root/iris/in.csv"
    );
    let error = Datasets::from_url_opts("s3://b/p", [("aws_no_such_key", "1")])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("unknown S3 option `aws_no_such_key`"),
        "{error}"
    );
}
