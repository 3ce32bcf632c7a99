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

/// On the local filesystem a streamed file is written to a staging file beside it, which no
/// listing shows and finishing renames; a process that dies part-way (here: a writer whose
/// destructors never run) leaves only that hidden file, and the rerun completes the file.
#[tokio::test]
async fn a_local_file_streams_through_a_hidden_staging_file_a_crash_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let datasets = Datasets::local(dir.path()).unwrap();
    let dataset = datasets.dataset("out").unwrap();
    dataset
        .put("keep.csv", Bytes::from_static(b"k\n"), Overwrite::Refuse)
        .await
        .unwrap();
    let folder = dir.path().join("out");
    let on_disk = || {
        let mut names: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    let listed = || async {
        let files = dataset.list().await.unwrap();
        files.into_iter().map(|f| f.path).collect::<Vec<_>>()
    };
    let row = Bytes::from(vec![b'r'; 300_000]);

    let mut crashed = dataset.writer("rows.csv", Overwrite::Refuse).await.unwrap();
    for _ in 0..10 {
        crashed.write(&row).await.unwrap();
    }
    assert_eq!(
        on_disk(),
        ["keep.csv", "rows.csv#1"],
        "parts go to a staging file"
    );
    std::mem::forget(crashed);
    assert_eq!(
        listed().await,
        ["keep.csv"],
        "nothing of the crashed write is listed"
    );
    assert_eq!(dataset.head("rows.csv").await.unwrap(), None);

    let mut rerun = dataset.writer("rows.csv", Overwrite::Refuse).await.unwrap();
    for _ in 0..10 {
        rerun.write(&row).await.unwrap();
    }
    rerun.write(b"end\n").await.unwrap();
    assert_eq!(
        listed().await,
        ["keep.csv"],
        "nor anything of the rerun before it finishes"
    );
    rerun.finish().await.unwrap();
    assert_eq!(listed().await, ["keep.csv", "rows.csv"]);
    let file = dataset.get("rows.csv").await.unwrap();
    assert_eq!(file.len(), 10 * row.len() + 4);
    assert!(file.ends_with(b"r\nend\n") || file.ends_with(b"rend\n"));
    // The rerun's staging file was renamed into place; only the crashed one is left, hidden.
    assert_eq!(on_disk(), ["keep.csv", "rows.csv", "rows.csv#1"]);
}

/// A store part fails: the writer says so and leaves nothing (the local store's parts run on
/// the writer's thread, whose failure must reach the caller).
#[tokio::test]
async fn a_failed_local_part_is_an_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let datasets = Datasets::local(dir.path()).unwrap();
    let dataset = datasets.dataset("gone").unwrap();
    let mut writer = dataset.writer("rows.csv", Overwrite::Refuse).await.unwrap();
    writer.write(vec![b'x'; 3 * 1024 * 1024]).await.unwrap();
    // The folder vanishes under the writer: the staging file goes with it, so completing fails.
    std::fs::remove_dir_all(dir.path().join("gone")).unwrap();
    let mut failed = Ok(());
    for _ in 0..8 {
        failed = writer.write(vec![b'y'; 1024 * 1024]).await;
        if failed.is_err() {
            break;
        }
    }
    let finished = match failed {
        Err(error) => Err(error),
        Ok(()) => writer.finish().await,
    };
    let error = finished.unwrap_err();
    assert!(matches!(error, Error::Storage { .. }), "{error:?}");
    assert_eq!(dataset.head("rows.csv").await.unwrap(), None);
}
