use super::*;

#[tokio::test]
async fn the_suite_on_the_local_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let datasets = Datasets::local(dir.path().join("datasets")).unwrap();
    crate::conformance::datasets::datasets(&datasets).await;
    // Files live where a user would look for them.
    assert!(dir.path().join("datasets/suite-list/a/1.csv").is_file());
    assert!(dir.path().join("datasets/.serving/hidden.json").is_file());
}

#[tokio::test]
async fn the_suite_in_memory() {
    let datasets = Datasets::from_url("memory://root").unwrap();
    crate::conformance::datasets::datasets(&datasets).await;
}

#[test]
fn urls() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let datasets = Datasets::from_url(&url).unwrap();
    assert!(datasets.url().starts_with("file:///"), "{}", datasets.url());
    let plain = Datasets::from_url(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(plain.url(), datasets.url());
    for (bad, why) in [
        ("file://relative/dir", "absolute path"),
        ("ftp://host/x", "expected a `file://`"),
        ("s3://", "bucket"),
    ] {
        let error = Datasets::from_url(bad).unwrap_err().to_string();
        assert!(error.contains("SERVING_DATASETS"), "{error}");
        assert!(error.contains(why), "{bad}: {error}");
    }
}
