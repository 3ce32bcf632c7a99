//! The suite every [`Datasets`] root passes, whatever its store (local, S3, memory).

use bytes::Bytes;
use futures::StreamExt as _;

use crate::Error;
use crate::datasets::{Datasets, Overwrite, check_relative_path};

/// `datasets` (a root that holds no dataset named `suite-*` yet) keeps the
/// [module's guarantees](crate::datasets#guarantees): checked names and paths, atomic and
/// streaming writes that never replace unless asked, clear not-found errors, listings.
pub async fn datasets(datasets: &Datasets) {
    names_and_paths(datasets).await;
    put_get_and_overwrite(datasets).await;
    streaming(datasets).await;
    listings(datasets).await;
}

async fn names_and_paths(datasets: &Datasets) {
    for bad in ["", ".serving", "a/b", "../up", "a b"] {
        let error = datasets.dataset(bad).unwrap_err().to_string();
        assert!(error.contains("invalid dataset name"), "{bad:?}: {error}");
    }
    let dataset = datasets.dataset("suite-paths").expect("a valid name");
    for (bad, why) in [
        ("/etc/passwd", "starts with `/`"),
        ("../other/file.csv", "contains `..`"),
        ("out/../../x", "contains `..`"),
        ("a//b", "empty"),
        ("", "expected a relative path"),
    ] {
        let error = dataset.location(bad).unwrap_err();
        assert!(matches!(error, Error::InvalidRequest { .. }), "{bad:?}");
        assert!(error.to_string().contains(why), "{bad:?}: {error}");
        let put = dataset
            .put(bad, Bytes::from_static(b"x"), Overwrite::Replace)
            .await;
        assert!(put.is_err(), "a write to {bad:?} is refused");
    }
    assert!(check_relative_path("out/2026/predictions.csv").is_ok());
    let missing = datasets.existing("suite-nothing-here").await.unwrap_err();
    assert!(
        matches!(&missing, Error::DatasetNotFound { file: None, .. }),
        "{missing:?}"
    );
    assert_eq!(missing.to_string(), "no dataset named `suite-nothing-here`");
    let file = dataset.get("no/such.csv").await.unwrap_err();
    assert_eq!(
        file.to_string(),
        "dataset `suite-paths` has no file `no/such.csv`"
    );
    assert!(dataset.read("no/such.csv").await.is_err());
    assert_eq!(dataset.head("no/such.csv").await.unwrap(), None);
    assert!(!dataset.exists().await.unwrap());
}

async fn put_get_and_overwrite(datasets: &Datasets) {
    let dataset = datasets.dataset("suite-put").unwrap();
    dataset
        .put("in/a.csv", Bytes::from_static(b"x\n1\n"), Overwrite::Refuse)
        .await
        .expect("a new file is written");
    assert!(dataset.exists().await.unwrap());
    assert_eq!(
        datasets.existing("suite-put").await.unwrap().name(),
        "suite-put"
    );
    assert_eq!(dataset.get("in/a.csv").await.unwrap(), "x\n1\n");
    let refused = dataset
        .put("in/a.csv", Bytes::from_static(b"other"), Overwrite::Refuse)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Error::AlreadyExists { .. }),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("already exists"), "{refused}");
    assert_eq!(
        dataset.get("in/a.csv").await.unwrap(),
        "x\n1\n",
        "a refused write keeps the file"
    );
    dataset
        .put(
            "in/a.csv",
            Bytes::from_static(b"x\n2\n"),
            Overwrite::Replace,
        )
        .await
        .unwrap();
    assert_eq!(dataset.get("in/a.csv").await.unwrap(), "x\n2\n");
    let head = dataset.head("in/a.csv").await.unwrap().expect("it exists");
    assert_eq!((head.path.as_str(), head.size), ("in/a.csv", 4));
    dataset.delete("in/a.csv").await.unwrap();
    dataset
        .delete("in/a.csv")
        .await
        .expect("deleting twice is fine");
    assert_eq!(dataset.head("in/a.csv").await.unwrap(), None);
    dataset
        .put("kept.csv", Bytes::from_static(b"k\n"), Overwrite::Refuse)
        .await
        .unwrap();

    let system = datasets.system_path("batch-runs/e/1.json").unwrap();
    assert!(
        system.as_ref().contains(".serving/batch-runs/e/1.json"),
        "{system}"
    );
    assert!(datasets.system_path("../x").is_err());
}

/// Large enough for a multipart upload of several parts.
const BIG_ROWS: usize = 600_000;

async fn streaming(datasets: &Datasets) {
    let dataset = datasets.dataset("suite-stream").unwrap();
    // A small file through the writer is one write.
    let mut small = dataset
        .writer("small.csv", Overwrite::Refuse)
        .await
        .unwrap();
    small.write(Bytes::from_static(b"a\n")).await.unwrap();
    small.write(Bytes::from_static(b"1\n")).await.unwrap();
    assert_eq!(
        dataset.head("small.csv").await.unwrap(),
        None,
        "not before finish"
    );
    small.finish().await.unwrap();
    assert_eq!(dataset.get("small.csv").await.unwrap(), "a\n1\n");
    let exists = dataset
        .writer("small.csv", Overwrite::Refuse)
        .await
        .unwrap_err();
    assert!(matches!(exists, Error::AlreadyExists { .. }), "{exists:?}");

    // A large one streams as a multipart upload, invisible until it completes.
    let mut expected = Vec::new();
    let mut writer = dataset
        .writer("big/rows.csv", Overwrite::Refuse)
        .await
        .unwrap();
    for chunk in 0..BIG_ROWS / 10_000 {
        let text: String = (chunk * 10_000..(chunk + 1) * 10_000)
            .map(|row| format!("{row},{}.5,text-{row}\n", row * 3))
            .collect();
        expected.extend_from_slice(text.as_bytes());
        writer.write(Bytes::from(text)).await.unwrap();
    }
    assert!(writer.written() > 16 * 1024 * 1024, "{}", writer.written());
    assert_eq!(
        dataset.head("big/rows.csv").await.unwrap(),
        None,
        "nothing partial is visible"
    );
    assert!(
        dataset
            .list()
            .await
            .unwrap()
            .iter()
            .all(|f| f.path != "big/rows.csv"),
        "nor listed"
    );
    writer.finish().await.unwrap();
    let mut read = Vec::new();
    let mut chunks = 0;
    let mut stream = dataset.read("big/rows.csv").await.unwrap();
    while let Some(chunk) = stream.next().await {
        read.extend_from_slice(&chunk.unwrap());
        chunks += 1;
    }
    assert_eq!(read.len(), expected.len());
    assert!(read == expected, "the streamed file reads back whole");
    assert!(chunks >= 1);

    // An aborted or dropped writer leaves nothing; the path is free for a rerun.
    for abort in [true, false] {
        let mut writer = dataset
            .writer("big/gone.csv", Overwrite::Refuse)
            .await
            .unwrap();
        writer
            .write(Bytes::from(vec![b'x'; 9 * 1024 * 1024]))
            .await
            .unwrap();
        writer.write(Bytes::from(vec![b'y'; 1024])).await.unwrap();
        if abort {
            writer.abort().await.unwrap();
        } else {
            drop(writer);
        }
        assert_eq!(dataset.head("big/gone.csv").await.unwrap(), None);
    }
    let mut rerun = dataset
        .writer("big/gone.csv", Overwrite::Refuse)
        .await
        .unwrap();
    rerun.write(Bytes::from_static(b"done\n")).await.unwrap();
    rerun.finish().await.unwrap();
    assert_eq!(dataset.get("big/gone.csv").await.unwrap(), "done\n");

    // A file that appears while a large write runs is not replaced.
    let mut late = dataset
        .writer("big/raced.csv", Overwrite::Refuse)
        .await
        .unwrap();
    late.write(Bytes::from(vec![b'z'; 9 * 1024 * 1024]))
        .await
        .unwrap();
    dataset
        .put(
            "big/raced.csv",
            Bytes::from_static(b"first"),
            Overwrite::Refuse,
        )
        .await
        .unwrap();
    let raced = late.finish().await.unwrap_err();
    assert!(matches!(raced, Error::AlreadyExists { .. }), "{raced:?}");
    assert_eq!(dataset.get("big/raced.csv").await.unwrap(), "first");

    let mut replace = dataset
        .writer("big/raced.csv", Overwrite::Replace)
        .await
        .unwrap();
    replace
        .write(Bytes::from(vec![b'r'; 9 * 1024 * 1024]))
        .await
        .unwrap();
    replace.finish().await.unwrap();
    assert_eq!(
        dataset.head("big/raced.csv").await.unwrap().unwrap().size,
        9 * 1024 * 1024
    );
}

async fn listings(datasets: &Datasets) {
    let dataset = datasets.dataset("suite-list").unwrap();
    for path in ["b.csv", "a/2.csv", "a/1.csv"] {
        dataset
            .put(path, Bytes::from(path.to_owned()), Overwrite::Refuse)
            .await
            .unwrap();
    }
    let files: Vec<String> = dataset
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert_eq!(files, ["a/1.csv", "a/2.csv", "b.csv"]);
    let system = datasets.system_path("hidden.json").unwrap();
    crate::datasets::put(
        datasets.store(),
        &system,
        Bytes::from_static(b"{}").into(),
        Overwrite::Replace,
    )
    .await
    .unwrap();
    let names = datasets.list().await.unwrap();
    for name in ["suite-list", "suite-put", "suite-stream"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "the private area is no dataset: {names:?}"
    );
    assert!(!names.iter().any(|n| n == "suite-paths"), "{names:?}");
}
