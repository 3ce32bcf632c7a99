//! [`Datasets`]: named folders of files on an object store, where batch runs read their input
//! and write their output and feedback loops export endpoint data.
//!
//! A dataset is a folder under one root: `{root}/{dataset}/{relative path}`. The root is the
//! local directory `./serving-data/datasets/` by default, or any object store URL in
//! `$SERVING_DATASETS` ([`Datasets::from_env`]):
//!
//! | URL | Store |
//! |---|---|
//! | `file:///srv/data/datasets` or a plain path | the local filesystem |
//! | `s3://bucket/prefix` | S3 or an S3-compatible server, configured by the usual `AWS_*` variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`); needs the `s3` feature |
//! | `memory://` | in memory, for tests |
//!
//! # Guarantees
//! - Names and paths are checked before the store is touched: a dataset name is letters,
//!   digits, `-`, `_` and `.` (not first); a file's path is relative, and one that starts with
//!   `/` or has a `..` part is refused with an error that says so.
//! - Writes are atomic: [`Dataset::put`] is one object write, and a [`DatasetWriter`] buffers,
//!   then streams a multipart upload that the store shows only once
//!   [`DatasetWriter::finish`] completes it (on the local filesystem: a hidden staging file
//!   `<path>#<n>`, renamed into place). A writer dropped or aborted part-way leaves nothing
//!   visible at its path, nor does a process killed part-way.
//! - A writer's memory is bounded whatever the file's size: a few parts, 8 MiB each on S3,
//!   1 MiB on the local filesystem.
//! - An existing file is never replaced unless asked ([`Overwrite::Replace`]): the default
//!   [`Overwrite::Refuse`] answers [`Error::AlreadyExists`].
//! - A file or dataset that does not exist is [`Error::DatasetNotFound`], naming it.
//!
//! The layout under the root other than dataset folders belongs to `serving`: names starting
//! with `.` (such as `.serving/`, where batch runs keep their records) are never datasets.
//!
//! ```
//! use serving_core::datasets::{Datasets, Overwrite};
//! use serving_core::Bytes;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> serving_core::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let datasets = Datasets::local(dir.path())?;
//! let iris = datasets.dataset("iris")?;
//! iris.put("in/rows.csv", Bytes::from("a,b\n1,2\n"), Overwrite::Refuse).await?;
//! assert_eq!(iris.get("in/rows.csv").await?, Bytes::from("a,b\n1,2\n"));
//! assert!(iris.put("in/rows.csv", Bytes::new(), Overwrite::Refuse).await.is_err());
//! assert!(iris.get("../secrets").await.is_err());
//!
//! let mut writer = iris.writer("out/big.csv", Overwrite::Refuse).await?;
//! writer.write(Bytes::from("a,b\n")).await?;
//! writer.write(Bytes::from("3,4\n")).await?;
//! writer.finish().await?;
//! assert_eq!(datasets.list().await?, ["iris"]);
//! # Ok(()) }
//! ```

mod writer;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};

pub use self::writer::DatasetWriter;
use self::writer::Window;
use crate::error::{Error, Result};

/// The environment variable that holds the datasets' root URL ([`Datasets::from_env`]).
pub const DATASETS_ENV: &str = "SERVING_DATASETS";

/// The local root used when `$SERVING_DATASETS` is unset.
pub const DEFAULT_DATASETS_DIR: &str = "./serving-data/datasets";

/// Whether a write may replace a file that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overwrite {
    /// An existing file is kept and the write fails with [`Error::AlreadyExists`] (default).
    #[default]
    Refuse,
    /// An existing file is replaced.
    Replace,
}

/// Every dataset under one root of one object store; cheap to clone.
///
/// See the [module docs](self) for URLs, names and guarantees.
#[derive(Clone)]
pub struct Datasets {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: Arc<str>,
    window: Window,
}

impl fmt::Debug for Datasets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Datasets").field("url", &self.url).finish()
    }
}

impl Datasets {
    /// The root named by `$SERVING_DATASETS`, or `./serving-data/datasets/` on the local
    /// filesystem when it is unset or empty.
    ///
    /// # Errors
    /// As [`Datasets::from_url`].
    pub fn from_env() -> Result<Self> {
        match std::env::var(DATASETS_ENV) {
            Ok(url) if !url.trim().is_empty() => Self::from_url(url.trim()),
            _ => Self::local(DEFAULT_DATASETS_DIR),
        }
    }

    /// The root at an object store URL: `file:///abs/dir` (or a plain path), `s3://bucket/prefix`
    /// (with the `s3` feature; credentials, region and endpoint from the `AWS_*` variables) or
    /// `memory://`.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] (key `SERVING_DATASETS`) for an unknown scheme or a URL the
    /// store refuses; [`Error::Storage`] when a local directory cannot be created.
    pub fn from_url(url: &str) -> Result<Self> {
        Self::from_url_opts(url, std::iter::empty::<(&str, &str)>())
    }

    /// As [`Datasets::from_url`], with store options over the environment's: for `s3://`,
    /// object_store's `AmazonS3ConfigKey` names (`aws_endpoint`, `aws_allow_http`,
    /// `aws_access_key_id`, `aws_region`, …); other schemes take none.
    ///
    /// # Errors
    /// As [`Datasets::from_url`]; an unknown option key is [`Error::InvalidSetting`].
    pub fn from_url_opts<'a>(
        url: &str,
        options: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self> {
        let options: Vec<(&str, &str)> = options.into_iter().collect();
        let invalid = |reason: String| Error::InvalidSetting {
            key: DATASETS_ENV.to_owned(),
            value: url.to_owned(),
            reason,
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid(
                    "a file URL needs an absolute path: file:///dir".into(),
                ));
            }
            return Self::local(path);
        }
        if let Some(rest) = url.strip_prefix("memory://") {
            let root = parse_prefix(rest).map_err(invalid)?;
            let datasets = Self::with_store(Arc::new(InMemory::new()), root, url);
            return Ok(datasets.window(Window::MEMORY));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            if rest.split('/').next().is_none_or(str::is_empty) {
                return Err(invalid("expected s3://bucket/prefix".into()));
            }
            return s3(url, rest, &options).map_err(invalid);
        }
        if let Some((key, _)) = options.first() {
            return Err(invalid(format!(
                "option `{key}` applies to s3:// URLs only"
            )));
        }
        if url.contains("://") {
            return Err(invalid(
                "expected a `file://`, `s3://` or `memory://` URL, or a local path".into(),
            ));
        }
        Self::local(url)
    }

    /// The root in a local directory, created if missing.
    ///
    /// # Errors
    /// [`Error::Storage`] when the directory cannot be created.
    pub fn local(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let storage = |source: std::io::Error| Error::Storage {
            location: dir.display().to_string(),
            source: Box::new(source),
        };
        std::fs::create_dir_all(&dir).map_err(storage)?;
        let dir = std::fs::canonicalize(&dir).map_err(storage)?;
        let store = LocalFileSystem::new_with_prefix(&dir).map_err(|source| Error::Storage {
            location: dir.display().to_string(),
            source: Box::new(source),
        })?;
        let url = format!("file://{}", dir.display());
        Ok(Self::with_store(Arc::new(store), Path::default(), &url).window(Window::LOCAL))
    }

    /// The root `prefix` of any object store (GCS, Azure, a wrapped store); `url` is how it is
    /// shown.
    pub fn with_store(store: Arc<dyn ObjectStore>, prefix: Path, url: &str) -> Self {
        Datasets {
            store,
            root: prefix,
            url: Arc::from(url),
            window: Window::REMOTE,
        }
    }

    /// The same root, streaming files through `window`.
    fn window(self, window: Window) -> Self {
        Datasets { window, ..self }
    }

    /// The URL the root was opened from, for display.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object store the datasets live in.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The key of the root in [`Datasets::store`].
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The key of `relative` under the root's private area `.serving/` (where batch runs keep
    /// their records), which no dataset name can reach.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a path that is not relative ([`check_relative_path`]).
    pub fn system_path(&self, relative: &str) -> Result<Path> {
        check_relative_path(relative)?;
        Ok(join(&join(&self.root, ".serving"), relative))
    }

    /// The dataset called `name`, which need not exist yet (writing a file creates it).
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a name that is not a dataset name ([`check_dataset_name`]).
    pub fn dataset(&self, name: &str) -> Result<Dataset> {
        check_dataset_name(name)?;
        Ok(Dataset {
            store: Arc::clone(&self.store),
            prefix: join(&self.root, name),
            name: Arc::from(name),
            window: self.window,
        })
    }

    /// The dataset called `name`, which must hold at least one file.
    ///
    /// # Errors
    /// [`Error::DatasetNotFound`] when it holds none; as [`Datasets::dataset`].
    pub async fn existing(&self, name: &str) -> Result<Dataset> {
        let dataset = self.dataset(name)?;
        if !dataset.exists().await? {
            return Err(Error::DatasetNotFound {
                dataset: name.to_owned(),
                file: None,
            });
        }
        Ok(dataset)
    }

    /// The names of the datasets that hold files, sorted.
    ///
    /// # Errors
    /// [`Error::Storage`] when the store cannot be listed.
    pub async fn list(&self) -> Result<Vec<String>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.root))
            .await
            .map_err(storage(&self.root))?;
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|prefix| prefix.filename().map(str::to_owned))
            .filter(|name| check_dataset_name(name).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }
}

#[cfg(feature = "s3")]
fn s3(url: &str, rest: &str, options: &[(&str, &str)]) -> Result<Datasets, String> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    for (key, value) in options {
        let key: AmazonS3ConfigKey = key
            .parse()
            .map_err(|_| format!("unknown S3 option `{key}`"))?;
        builder = builder.with_config(key, *value);
    }
    let store = builder.build().map_err(|error| error.to_string())?;
    Ok(Datasets::with_store(
        Arc::new(store),
        parse_prefix(prefix)?,
        url,
    ))
}

#[cfg(not(feature = "s3"))]
fn s3(_url: &str, _rest: &str, _options: &[(&str, &str)]) -> Result<Datasets, String> {
    Err("S3 support is not built in: enable the `s3` feature of serving-core (the `batch` feature of serving)".into())
}

fn parse_prefix(prefix: &str) -> Result<Path, String> {
    let prefix = prefix.trim_matches('/');
    Path::parse(prefix).map_err(|error| format!("invalid key prefix `{prefix}`: {error}"))
}

fn join(base: &Path, relative: &str) -> Path {
    relative
        .split('/')
        .fold(base.clone(), |path, part| path.clone().join(part))
}

pub(crate) fn storage(location: &Path) -> impl FnOnce(object_store::Error) -> Error + use<> {
    let location = location.to_string();
    move |error| Error::Storage {
        location,
        source: Box::new(error),
    }
}

/// Checks a dataset's name: 1 to 128 ASCII letters, digits, `-`, `_` or `.`, not starting with
/// `.` (those names belong to `serving`).
///
/// # Errors
/// [`Error::InvalidRequest`] saying what is wrong.
pub fn check_dataset_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(Error::invalid_request(format!(
            "invalid dataset name `{name}`: expected 1 to 128 letters, digits, `-`, `_` or `.`, not starting with `.`"
        )))
    }
}

/// Checks a file's path inside a dataset: relative, never leaving the dataset.
///
/// # Errors
/// [`Error::InvalidRequest`] for an empty path, one that starts with `/`, one with a `..`,
/// `.` or empty part, or one with a character the store cannot hold.
pub fn check_relative_path(path: &str) -> Result<()> {
    let refuse = |why: &str| {
        Err(Error::invalid_request(format!(
            "invalid path `{path}`: {why}"
        )))
    };
    if path.is_empty() {
        return refuse("expected a relative path such as `out/predictions.csv`");
    }
    if path.starts_with('/') {
        return refuse("it starts with `/`; paths are relative to the dataset");
    }
    if path.split(['/', '\\']).any(|part| part == "..") {
        return refuse("it contains `..`; paths must stay inside the dataset");
    }
    if path.split('/').any(|part| part.is_empty() || part == ".") {
        return refuse("it has an empty or `.` part");
    }
    if let Err(error) = Path::parse(path) {
        return refuse(&error.to_string());
    }
    Ok(())
}

/// One file of a dataset, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatasetFile {
    /// Its path relative to the dataset.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub modified: SystemTime,
}

/// One dataset: a folder of files; cheap to clone.
#[derive(Clone)]
pub struct Dataset {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    name: Arc<str>,
    window: Window,
}

impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("name", &self.name)
            .field("prefix", &self.prefix.as_ref())
            .finish()
    }
}

impl Dataset {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The object store it lives in.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The store key of the file at `relative`.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a path that is not relative ([`check_relative_path`]).
    pub fn location(&self, relative: &str) -> Result<Path> {
        check_relative_path(relative)?;
        Ok(join(&self.prefix, relative))
    }

    /// Whether it holds at least one file.
    ///
    /// # Errors
    /// [`Error::Storage`] when the store cannot be listed.
    pub async fn exists(&self) -> Result<bool> {
        let mut files = self.store.list(Some(&self.prefix));
        match files.next().await {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(error)) => Err(storage(&self.prefix)(error)),
        }
    }

    /// The file at `relative`, if it exists.
    ///
    /// # Errors
    /// As [`Dataset::location`]; [`Error::Storage`] when the store fails.
    pub async fn head(&self, relative: &str) -> Result<Option<DatasetFile>> {
        let location = self.location(relative)?;
        match self.store.head(&location).await {
            Ok(meta) => Ok(Some(DatasetFile {
                path: relative.to_owned(),
                size: meta.size,
                modified: meta.last_modified.into(),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(storage(&location)(error)),
        }
    }

    /// Writes `bytes` to `relative` in one atomic object write.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when the file exists and `overwrite` is [`Overwrite::Refuse`];
    /// as [`Dataset::location`]; [`Error::Storage`] when the store fails.
    pub async fn put(&self, relative: &str, bytes: Bytes, overwrite: Overwrite) -> Result<()> {
        let location = self.location(relative)?;
        put(&self.store, &location, PutPayload::from(bytes), overwrite).await
    }

    /// The whole file at `relative`.
    ///
    /// # Errors
    /// [`Error::DatasetNotFound`] naming the file when it does not exist; as
    /// [`Dataset::location`]; [`Error::Storage`] when the store fails.
    pub async fn get(&self, relative: &str) -> Result<Bytes> {
        let location = self.location(relative)?;
        let result = self
            .store
            .get(&location)
            .await
            .map_err(|error| self.read_error(relative, &location, error))?;
        result
            .bytes()
            .await
            .map_err(|error| self.read_error(relative, &location, error))
    }

    /// The file at `relative` as a stream of chunks, for files larger than memory.
    ///
    /// # Errors
    /// As [`Dataset::get`]; a chunk that fails to arrive is an [`Error::Storage`] in the
    /// stream.
    pub async fn read(&self, relative: &str) -> Result<BoxStream<'static, Result<Bytes>>> {
        let location = self.location(relative)?;
        let result = self
            .store
            .get(&location)
            .await
            .map_err(|error| self.read_error(relative, &location, error))?;
        let shown = location.to_string();
        Ok(result
            .into_stream()
            .map_err(move |error| Error::Storage {
                location: shown.clone(),
                source: Box::new(error),
            })
            .boxed())
    }

    /// A streaming writer to `relative`: nothing is visible there until
    /// [`DatasetWriter::finish`].
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when the file exists and `overwrite` is [`Overwrite::Refuse`]
    /// (checked again when it finishes); as [`Dataset::location`].
    pub async fn writer(&self, relative: &str, overwrite: Overwrite) -> Result<DatasetWriter> {
        let location = self.location(relative)?;
        if overwrite == Overwrite::Refuse && self.head(relative).await?.is_some() {
            return Err(Error::AlreadyExists {
                location: location.to_string(),
            });
        }
        Ok(DatasetWriter::new(
            Arc::clone(&self.store),
            location,
            overwrite,
            self.window,
        ))
    }

    /// Every file in it, sorted by path.
    ///
    /// # Errors
    /// [`Error::Storage`] when the store cannot be listed.
    pub async fn list(&self) -> Result<Vec<DatasetFile>> {
        let mut listing = self.store.list(Some(&self.prefix));
        let mut files = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(storage(&self.prefix))?;
            let Some(parts) = meta.location.prefix_match(&self.prefix) else {
                continue;
            };
            let path: Vec<String> = parts.map(|part| part.as_ref().to_owned()).collect();
            if !path.is_empty() {
                files.push(DatasetFile {
                    path: path.join("/"),
                    size: meta.size,
                    modified: meta.last_modified.into(),
                });
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    /// Deletes the file at `relative`; deleting a missing file is not an error.
    ///
    /// # Errors
    /// As [`Dataset::location`]; [`Error::Storage`] when the store fails.
    pub async fn delete(&self, relative: &str) -> Result<()> {
        let location = self.location(relative)?;
        match self.store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(storage(&location)(error)),
        }
    }

    fn read_error(&self, relative: &str, location: &Path, error: object_store::Error) -> Error {
        match error {
            object_store::Error::NotFound { .. } => Error::DatasetNotFound {
                dataset: self.name.to_string(),
                file: Some(relative.to_owned()),
            },
            other => storage(location)(other),
        }
    }
}

/// One atomic write of `bytes` at `location`, refusing to replace unless asked.
pub(crate) async fn put(
    store: &Arc<dyn ObjectStore>,
    location: &Path,
    payload: PutPayload,
    overwrite: Overwrite,
) -> Result<()> {
    let mode = match overwrite {
        Overwrite::Refuse => PutMode::Create,
        Overwrite::Replace => PutMode::Overwrite,
    };
    let options = PutOptions {
        mode,
        ..PutOptions::default()
    };
    match store.put_opts(location, payload, options).await {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => Err(Error::AlreadyExists {
            location: location.to_string(),
        }),
        Err(error) => Err(storage(location)(error)),
    }
}

#[cfg(test)]
mod tests;
