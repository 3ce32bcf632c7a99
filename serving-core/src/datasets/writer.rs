//! [`DatasetWriter`]: a streaming, atomic write of one dataset file.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayloadMut, WriteMultipart};

use super::{Overwrite, put, storage};
use crate::error::{Error, Result};

/// How a store takes a streamed file: the bytes buffered before the writer switches to a
/// multipart upload (also the size of each part but the last), and the parts that may be
/// uploading at once. Together they bound the memory a writer holds, whatever the file's size:
/// at most about `part_bytes × (in_flight + 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    part_bytes: usize,
    in_flight: usize,
}

impl Window {
    /// S3 and any store it does not know: S3 wants at least 5 MiB per part but the last and
    /// at most 10,000 parts, and 8 MiB parts keep files up to 78 GiB in reach; two parts on
    /// the wire at once keep a connection busy while the next part fills.
    pub(crate) const REMOTE: Window = Window {
        part_bytes: 8 * 1024 * 1024,
        in_flight: 2,
    };

    /// The local filesystem (and memory): a part is appended to a hidden staging file, which
    /// finishing renames into place, so any part size works and a part is written as soon as
    /// a megabyte has gathered; a big window would only hold bytes the page cache is about to
    /// take (or, once the disk throttles writers, hold many of them).
    pub(crate) const LOCAL: Window = Window {
        part_bytes: 1024 * 1024,
        in_flight: 2,
    };

    /// The bytes buffered before a multipart upload starts, the size of its parts.
    #[cfg(test)]
    pub(crate) fn part_bytes(self) -> usize {
        self.part_bytes
    }
}

/// Streams one file into a dataset; made by [`Dataset::writer`](super::Dataset::writer).
///
/// Small files are buffered and written with one atomic object write; larger ones (from
/// 8 MiB on S3, 1 MiB on the local filesystem) stream as a multipart upload (holding at most a
/// few parts in memory), which the store shows only once [`DatasetWriter::finish`] completes
/// it. Dropped or [aborted](DatasetWriter::abort) before that, it leaves nothing at its path.
pub struct DatasetWriter {
    store: Arc<dyn ObjectStore>,
    location: Path,
    overwrite: Overwrite,
    window: Window,
    state: State,
    written: u64,
}

enum State {
    Buffer(PutPayloadMut),
    Upload(WriteMultipart),
}

impl fmt::Debug for DatasetWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatasetWriter")
            .field("location", &self.location.as_ref())
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl DatasetWriter {
    pub(super) fn new(
        store: Arc<dyn ObjectStore>,
        location: Path,
        overwrite: Overwrite,
        window: Window,
    ) -> Self {
        DatasetWriter {
            store,
            location,
            overwrite,
            window,
            state: State::Buffer(PutPayloadMut::new()),
            written: 0,
        }
    }

    /// The store key it writes.
    pub fn location(&self) -> &Path {
        &self.location
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `bytes`; waits while too many parts are uploading.
    ///
    /// # Errors
    /// [`Error::Storage`] when the store refuses a part.
    pub async fn write(&mut self, bytes: Bytes) -> Result<()> {
        self.written += bytes.len() as u64;
        match &mut self.state {
            State::Buffer(buffer) => {
                buffer.push(bytes);
                if buffer.content_length() >= self.window.part_bytes {
                    let upload = self
                        .store
                        .put_multipart(&self.location)
                        .await
                        .map_err(storage(&self.location))?;
                    let mut upload =
                        WriteMultipart::new_with_chunk_size(upload, self.window.part_bytes);
                    for chunk in std::mem::take(buffer).freeze() {
                        upload.put(chunk);
                    }
                    self.state = State::Upload(upload);
                }
            }
            State::Upload(upload) => {
                upload
                    .wait_for_capacity(self.window.in_flight)
                    .await
                    .map_err(storage(&self.location))?;
                upload.put(bytes);
            }
        }
        Ok(())
    }

    /// Completes the file: from now on it is visible, whole.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when a file appeared at the path meanwhile and the writer
    /// refuses to overwrite (the upload is then aborted); [`Error::Storage`] when the store
    /// fails.
    pub async fn finish(self) -> Result<()> {
        match self.state {
            State::Buffer(buffer) => {
                put(&self.store, &self.location, buffer.freeze(), self.overwrite).await
            }
            State::Upload(upload) => {
                if self.overwrite == Overwrite::Refuse {
                    match self.store.head(&self.location).await {
                        Ok(_) => {
                            let _ = upload.abort().await;
                            return Err(Error::AlreadyExists {
                                location: self.location.to_string(),
                            });
                        }
                        Err(object_store::Error::NotFound { .. }) => {}
                        Err(error) => return Err(storage(&self.location)(error)),
                    }
                }
                upload
                    .finish()
                    .await
                    .map(|_| ())
                    .map_err(storage(&self.location))
            }
        }
    }

    /// Gives up: nothing is written at the path, and parts already uploaded are discarded.
    ///
    /// # Errors
    /// [`Error::Storage`] when the store cannot discard the parts.
    pub async fn abort(self) -> Result<()> {
        match self.state {
            State::Buffer(_) => Ok(()),
            State::Upload(upload) => upload.abort().await.map_err(storage(&self.location)),
        }
    }
}
