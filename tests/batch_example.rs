//! The batch example (`examples/batch_predict.rs`), its logic run as `main` runs it: an iris
//! CSV through the row-wise classifier in both output formats, numbers through the vectorised
//! `sum`, on the local store and on the S3-compatible server, and every bad argument and bad
//! input with its one-line error.

use std::time::Duration;

use serde_json::Value;
use serving::Bytes;
use serving::OutputFormat;
use serving::datasets::{Datasets, Overwrite};

/// The example's logic. It holds its own copy of the iris model's module, as `support` does.
#[path = "../examples/batch_predict.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod example;

use example::{Args, Failure, ModelChoice, Progress};

const HEADER: &str = "sepal_length,sepal_width,petal_length,petal_width";

/// Rows 0, 1, 50, 51, 100 and 101 of the iris dataset (two of each species), with their
/// labels.
fn iris_rows() -> Vec<([f64; 4], &'static str)> {
    let dataset = smartcore::dataset::iris::load_dataset();
    [0, 1, 50, 51, 100, 101]
        .into_iter()
        .map(|i| {
            let row = &dataset.data[i * 4..i * 4 + 4];
            let label = species_of(dataset.target[i]);
            (std::array::from_fn(|c| f64::from(row[c])), label)
        })
        .collect()
}

fn species_of(class: u32) -> &'static str {
    ["setosa", "versicolor", "virginica"][class as usize]
}

fn iris_csv(rows: &[([f64; 4], &str)]) -> String {
    let mut csv = format!("{HEADER}\n");
    for (row, _) in rows {
        let cells: Vec<String> = row.iter().map(|v| format!("{v}")).collect();
        csv.push_str(&cells.join(","));
        csv.push('\n');
    }
    csv
}

fn args(input: &str, output: &str, dataset: &str) -> Args {
    Args::parse(
        ["--input", input, "--output", output, "--dataset", dataset]
            .into_iter()
            .map(String::from),
    )
    .unwrap()
}

/// Runs the example; answers its result and the JSON lines it printed.
async fn run(args: &Args, datasets: &Datasets) -> (Result<Value, Failure>, Vec<Value>) {
    let mut out = Vec::new();
    let result = example::run(
        args,
        datasets.clone(),
        Progress::Lines(Duration::from_millis(1)),
        &mut out,
        std::future::pending(),
    )
    .await;
    let lines = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect();
    (result, lines)
}

fn records(csv: &[u8]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_reader(csv);
    let header = reader.headers().unwrap().iter().map(String::from).collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

async fn flowers(dir: &std::path::Path, csv: &str) -> Datasets {
    let datasets = Datasets::local(dir).unwrap();
    datasets
        .dataset("flowers")
        .unwrap()
        .put(
            "in/iris.csv",
            Bytes::from(csv.to_owned()),
            Overwrite::Refuse,
        )
        .await
        .unwrap();
    datasets
}

/// The example on `datasets`: the iris rows in, one output row per input row with the species
/// the classifier gives (the right label for these rows), and the summary line.
async fn iris_end_to_end(datasets: &Datasets) {
    let rows = iris_rows();
    datasets
        .dataset("flowers")
        .unwrap()
        .put(
            "in/iris.csv",
            Bytes::from(iris_csv(&rows)),
            Overwrite::Replace,
        )
        .await
        .unwrap();
    let (result, lines) = run(
        &args("in/iris.csv", "out/predictions.csv", "flowers"),
        datasets,
    )
    .await;
    let summary = result.unwrap_or_else(|e| panic!("the run failed: {e}"));
    assert_eq!(lines.last(), Some(&summary), "the last line is the summary");
    assert_eq!(summary["status"], "succeeded");
    assert_eq!(summary["rows"], rows.len());
    assert_eq!(summary["failed_rows"], 0);
    assert!(summary["seconds"].as_f64().unwrap() > 0.0, "{summary}");
    assert!(summary["id"].as_str().is_some_and(|id| !id.is_empty()));
    let expected_output = format!(
        "{}/flowers/out/predictions.csv",
        datasets.url().trim_end_matches('/')
    );
    assert_eq!(summary["output"], expected_output);

    let output = datasets
        .dataset("flowers")
        .unwrap()
        .get("out/predictions.csv")
        .await
        .unwrap();
    let (header, written) = records(&output);
    assert_eq!(
        header,
        [
            "sepal_length",
            "sepal_width",
            "petal_length",
            "petal_width",
            "prediction",
            "error"
        ]
    );
    assert_eq!(written.len(), rows.len(), "one output row per input row");
    for ((input, label), row) in rows.iter().zip(&written) {
        let cells: Vec<f64> = row[..4].iter().map(|c| c.parse().unwrap()).collect();
        assert_eq!(cells, input, "the input's cells, in order");
        assert_eq!(&row[4], label, "the species of {input:?}");
        assert_eq!(row[5], "", "no error");
    }

    // The run is recorded: the same service lists it.
    let service = example::service(datasets.clone()).unwrap();
    let listed = serving::BatchRuns::get(&service, "iris", summary["id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(listed.rows_predicted, rows.len() as u64);
    assert_eq!(listed.model, "iris-knn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_classifies_an_iris_csv_into_a_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let datasets = flowers(dir.path(), &iris_csv(&iris_rows())).await;
    iris_end_to_end(&datasets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_runs_on_the_s3_compatible_server() {
    let datasets = crate::datasets::s3_datasets("batch-example").await;
    assert!(datasets.url().starts_with("s3://"));
    iris_end_to_end(&datasets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_writes_the_original_format_from_a_local_file() {
    let dir = tempfile::tempdir().unwrap();
    let rows = iris_rows();
    let datasets = flowers(dir.path(), &iris_csv(&rows)).await;
    let local = dir.path().join("local-iris.csv");
    std::fs::write(&local, iris_csv(&rows)).unwrap();
    let mut args = args(local.to_str().unwrap(), "original.csv", "flowers");
    args.format = OutputFormat::Original;
    let (result, _) = run(&args, &datasets).await;
    let summary = result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary["rows"], rows.len());
    let output = std::fs::read(dir.path().join("flowers/original.csv")).unwrap();
    let (header, written) = records(&output);
    assert_eq!(header, ["input", "prediction"]);
    for ((input, label), row) in rows.iter().zip(&written) {
        let cells: Vec<f64> = serde_json::from_str(&row[0]).unwrap();
        assert_eq!(&cells, input);
        assert_eq!(&row[1], label);
    }
    assert_eq!(written.len(), rows.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sum_model_adds_each_rows_columns_and_counts_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let csv = "a,b,c\n1.5,2,3\n0.5,4,0.25\nx,1,1\n-1,1,10.5\n";
    let datasets = flowers(dir.path(), csv).await;
    let mut args = args("in/iris.csv", "sums.csv", "flowers");
    args.model = ModelChoice::Sum;
    let (result, lines) = run(&args, &datasets).await;
    let summary = result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (summary["rows"].as_u64(), summary["failed_rows"].as_u64()),
        (Some(4), Some(1))
    );
    assert!(!lines.is_empty());
    let (header, written) = records(&std::fs::read(dir.path().join("flowers/sums.csv")).unwrap());
    assert_eq!(header, ["a", "b", "c", "prediction", "error"]);
    let sums: Vec<Option<f64>> = written.iter().map(|r| r[3].parse().ok()).collect();
    assert_eq!(sums, [Some(6.5), Some(4.75), None, Some(10.5)]);
    assert!(
        !written[2][4].is_empty(),
        "the bad row carries its error: {:?}",
        written[2]
    );
    assert!(
        written
            .iter()
            .enumerate()
            .all(|(i, r)| i == 2 || r[4].is_empty())
    );
}

#[test]
fn bad_arguments_are_named() {
    let parse = |args: &[&str]| Args::parse(args.iter().map(|a| a.to_string()));
    let usage = |args: &[&str]| match parse(args) {
        Err(Failure::Usage(message)) => message,
        other => panic!("{args:?}: expected a usage error, got {other:?}"),
    };
    assert!(usage(&["--output", "o.csv", "--dataset", "d"]).contains("--input"));
    assert!(usage(&["--input", "i.csv", "--output", "o.csv"]).contains("--dataset"));
    assert!(usage(&["--input", "i.csv", "--output"]).contains("`--output` needs a value"));
    assert!(
        usage(&[
            "--input",
            "i",
            "--output",
            "o",
            "--dataset",
            "d",
            "--model",
            "tree"
        ])
        .contains("expected iris or sum")
    );
    assert!(
        usage(&[
            "--input",
            "i",
            "--output",
            "o",
            "--dataset",
            "d",
            "--format",
            "xml"
        ])
        .contains("expected full or original")
    );
    assert!(usage(&["--input", "i", "--colour", "red"]).contains("unknown argument `--colour`"));
    assert!(matches!(parse(&["--help"]), Err(Failure::Help)));
    let parsed = parse(&[
        "--input=i.csv",
        "--output",
        "o.csv",
        "--dataset",
        "d",
        "--model",
        "sum",
        "--format",
        "original",
        "--overwrite",
    ])
    .unwrap();
    assert_eq!(
        (
            parsed.input.as_str(),
            parsed.model,
            parsed.format,
            parsed.overwrite
        ),
        ("i.csv", ModelChoice::Sum, OutputFormat::Original, true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_ends_with_one_clear_line_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let datasets = flowers(dir.path(), &iris_csv(&iris_rows())).await;
    let flowers = datasets.dataset("flowers").unwrap();
    flowers
        .put("empty.csv", Bytes::new(), Overwrite::Refuse)
        .await
        .unwrap();
    flowers
        .put(
            "header.csv",
            Bytes::from(format!("{HEADER}\n")),
            Overwrite::Refuse,
        )
        .await
        .unwrap();
    let cases: [(Args, &[&str]); 6] = [
        (
            args("in/missing.csv", "o.csv", "flowers"),
            &["in/missing.csv", "does not exist"],
        ),
        (
            args("in/iris.csv", "o.csv", "no-such-dataset"),
            &["no-such-dataset"],
        ),
        (args("in/iris.csv", "../escape.csv", "flowers"), &[".."]),
        (args("in/iris.csv", "/abs.csv", "flowers"), &["/abs.csv"]),
        (args("empty.csv", "o.csv", "flowers"), &["empty"]),
        (args("header.csv", "o.csv", "flowers"), &[]),
    ];
    for (args, words) in cases {
        let (result, _) = run(&args, &datasets).await;
        let message = match result {
            Err(Failure::Run(message)) => message,
            other => panic!("{args:?}: expected a run error, got {other:?}"),
        };
        assert!(!message.contains('\n'), "one line: {message}");
        for word in words {
            assert!(message.contains(word), "{args:?}: `{message}` names {word}");
        }
        assert!(
            flowers.head("o.csv").await.unwrap().is_none(),
            "{args:?} left an output"
        );
    }

    // An existing output is kept unless --overwrite.
    let first = args("in/iris.csv", "kept.csv", "flowers");
    run(&first, &datasets).await.0.unwrap();
    let (again, _) = run(&first, &datasets).await;
    assert!(
        matches!(&again, Err(Failure::Run(m)) if m.contains("kept.csv")),
        "{again:?}"
    );
    let mut replace = first.clone();
    replace.overwrite = true;
    run(&replace, &datasets).await.0.unwrap();
}

/// The web-service example. It holds its own copy of the iris model's module, as `support`
/// does.
#[path = "../examples/batch_service.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod service_example;

/// The README's requests, as written, against `examples/batch_service.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_example_answers_the_readme_requests() {
    let dir = tempfile::tempdir().unwrap();
    let datasets = Datasets::local(dir.path()).unwrap();
    service_example::iris_dataset(&datasets).await.unwrap();
    let service =
        service_example::web_service(datasets, serving::http::WebServiceConfig::default()).unwrap();
    let token = service.token("flowers").unwrap().expose().to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/api/v1/endpoints/flowers/batches",
        listener.local_addr().unwrap()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(service.serve_on(listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let submit = |output: &str| {
        client
            .post(&url)
            .header("Cnvrg-Api-Key", &token)
            .header("Content-Type", "application/json")
            .body(format!(
                r#"{{"input_file": "in/iris.csv", "output_file": "{output}", "dataset": "iris"}}"#
            ))
            .send()
    };
    let get = |path: String| client.get(path).header("Cnvrg-Api-Key", &token).send();
    let mut ids = Vec::new();
    for output in ["out/predictions.csv", "out/again.csv"] {
        let response = submit(output).await.unwrap();
        assert_eq!(response.status(), 202);
        let id = response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let run = loop {
            let run: Value = get(format!("{url}/{id}"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if run["status"] != "queued" && run["status"] != "running" {
                break run;
            }
            assert!(std::time::Instant::now() < deadline, "{run}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["rows_predicted"], 150);
        assert_eq!(run["progress"], 1.0);
        ids.push(id);
    }
    let listed: Value = get(url.clone()).await.unwrap().json().await.unwrap();
    let listed: Vec<&str> = listed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[1].as_str(), ids[0].as_str()], "newest first");
    let compared: Value = get(format!("{url}/compare?ids={},{}", ids[0], ids[1]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(compared["differences"][0]["rows"], 150);
    assert_eq!(compared["differences"][0]["differing"], 0, "the same model");
    let cancelled: Value = client
        .delete(format!("{url}/{}", ids[0]))
        .header("Cnvrg-Api-Key", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        cancelled["status"], "succeeded",
        "a finished run is left as it is"
    );
    let refused = client.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 401, "the token is required");
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}
