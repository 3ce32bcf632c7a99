//! [`DatasetWriter`]: a streaming, atomic write of one dataset file.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt as _, PutPayload, UploadPart};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use super::{Overwrite, put, storage};
use crate::error::{Error, Result};

/// How a store takes a streamed file: the bytes buffered before the writer switches to a
/// multipart upload (also the size of each part but the last), and the parts that may be
/// uploading at once. Together they bound the memory a writer holds, whatever the file's size:
/// `part_bytes × (in_flight + 1)`, in buffers allocated once and reused part after part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    part_bytes: usize,
    in_flight: usize,
    /// Whether the store's parts are written on one thread of the writer's own (see
    /// [`Window::LOCAL`]) rather than as tasks on the runtime.
    own_thread: bool,
}

impl Window {
    /// S3 and any store it does not know: S3 wants at least 5 MiB per part but the last and
    /// at most 10,000 parts, and 8 MiB parts keep files up to 78 GiB in reach; two parts on
    /// the wire at once keep a connection busy while the next part fills.
    pub(crate) const REMOTE: Window = Window {
        part_bytes: 8 * 1024 * 1024,
        in_flight: 2,
        own_thread: false,
    };

    /// The local filesystem: a part is appended to a hidden staging file, which
    /// finishing renames into place, so any part size works and a part is written as soon as
    /// a megabyte has gathered; a big window would only hold bytes the page cache is about to
    /// take (or, once the disk throttles writers, hold many of them).
    ///
    /// The parts are written in order on one thread the writer starts: object_store's local
    /// store does its file work inline on a thread outside a runtime (inside one, each part
    /// would be a task of the blocking pool, whose threads multiply over a long run, each
    /// with its own allocator arena: memory that grew with the file's length).
    pub(crate) const LOCAL: Window = Window {
        part_bytes: 1024 * 1024,
        // One part written while the next fills: the thread stays busy, and a disk that
        // slows down holds no more buffers, only the run.
        in_flight: 1,
        own_thread: true,
    };

    /// Memory: the store keeps every part until the file completes, so parts are not
    /// waited for.
    pub(crate) const MEMORY: Window = Window {
        part_bytes: 1024 * 1024,
        in_flight: 2,
        own_thread: false,
    };
}

/// Streams one file into a dataset; made by [`Dataset::writer`](super::Dataset::writer).
///
/// Small files are buffered and written with one atomic object write; larger ones (from
/// 8 MiB on S3, 1 MiB on the local filesystem) stream as a multipart upload of equal parts,
/// which the store shows only once [`DatasetWriter::finish`] completes it. Dropped or
/// [aborted](DatasetWriter::abort) before that, it leaves nothing at its path. It holds at
/// most a few parts in memory, in buffers it reuses, so its memory reaches its bound with the
/// first parts and stays there however long the file.
pub struct DatasetWriter {
    store: Arc<dyn ObjectStore>,
    location: Path,
    overwrite: Overwrite,
    window: Window,
    /// The part being filled: a buffer of `window.part_bytes` from `pool`.
    part: Vec<u8>,
    /// The part's place among the buffers the window allows (on the writer's own thread).
    permit: Option<OwnedSemaphorePermit>,
    pool: Arc<Pool>,
    /// Started once the first part is full.
    upload: Option<Upload>,
    written: u64,
}

struct Upload {
    upload: Box<dyn MultipartUpload>,
    /// The parts on their way to the store.
    parts: Parts,
}

/// Where parts upload.
enum Parts {
    /// As tasks on the runtime, at most the window's at once.
    Tasks(JoinSet<object_store::Result<()>>),
    /// In order on the writer's own thread, at most the window's waiting.
    Thread {
        parts: Option<mpsc::Sender<UploadPart>>,
        /// The thread's answer once its channel closes or a part fails.
        ended: oneshot::Receiver<object_store::Result<()>>,
    },
}

impl Parts {
    fn new(window: Window) -> Self {
        if !window.own_thread {
            return Parts::Tasks(JoinSet::new());
        }
        let (parts, mut queue) = mpsc::channel::<UploadPart>(window.in_flight);
        let (end, ended) = oneshot::channel();
        std::thread::Builder::new()
            .name("dataset-writer".to_owned())
            .spawn(move || {
                let mut result = Ok(());
                while let Some(part) = queue.blocking_recv() {
                    result = futures::executor::block_on(part);
                    if result.is_err() {
                        break;
                    }
                }
                let _ = end.send(result);
            })
            .map_or_else(
                // No thread to be had: the parts go to the runtime after all.
                |_| Parts::Tasks(JoinSet::new()),
                |_| Parts::Thread {
                    parts: Some(parts),
                    ended,
                },
            )
    }

    /// Hands a part over, once the window has room for it.
    async fn send(&mut self, part: UploadPart, in_flight: usize, location: &Path) -> Result<()> {
        match self {
            Parts::Tasks(tasks) => {
                while tasks.len() >= in_flight {
                    joined(tasks.join_next().await, location)?;
                }
                tasks.spawn(part);
                Ok(())
            }
            Parts::Thread { parts, .. } => {
                let sent = match parts {
                    Some(parts) => parts.send(part).await.is_ok(),
                    None => false,
                };
                if sent {
                    Ok(())
                } else {
                    // The thread stopped at a failed part: its error is the answer.
                    self.landed(location).await
                }
            }
        }
    }

    /// Waits for every part handed over; the first failure is the answer.
    async fn landed(&mut self, location: &Path) -> Result<()> {
        match self {
            Parts::Tasks(tasks) => {
                let mut result = Ok(());
                while let Some(part) = tasks.join_next().await {
                    result = result.and(joined(Some(part), location));
                }
                result
            }
            Parts::Thread { parts, ended } => {
                parts.take();
                match ended.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(storage(location)(error)),
                    Err(closed) => Err(Error::Storage {
                        location: location.to_string(),
                        source: Box::new(closed),
                    }),
                }
            }
        }
    }
}

/// Part buffers whose parts have reached the store, for the next parts.
#[derive(Debug)]
struct Pool {
    free: Mutex<Vec<Vec<u8>>>,
    capacity: usize,
    /// Buffers kept for reuse at most.
    keep: usize,
    /// On the writer's own thread, the buffers out at once (the part filling and those on
    /// their way), each a permit: a part waits for a buffer rather than allocate one. Parts
    /// on the runtime are bounded by the tasks waited for instead, which also serves stores
    /// that keep parts until the end.
    permits: Option<Arc<Semaphore>>,
    /// Buffers allocated so far.
    made: std::sync::atomic::AtomicUsize,
}

impl Pool {
    fn new(window: Window) -> Self {
        Pool {
            free: Mutex::default(),
            capacity: window.part_bytes,
            keep: window.in_flight + 1,
            permits: window
                .own_thread
                .then(|| Arc::new(Semaphore::new(window.in_flight + 1))),
            made: Default::default(),
        }
    }

    /// A free buffer, once the window allows one more.
    async fn take(&self) -> (Vec<u8>, Option<OwnedSemaphorePermit>) {
        let permit = match &self.permits {
            // The semaphore is never closed.
            Some(permits) => Arc::clone(permits).acquire_owned().await.ok(),
            None => None,
        };
        (self.buffer(), permit)
    }

    /// The first buffer, which the window always allows.
    fn first(&self) -> (Vec<u8>, Option<OwnedSemaphorePermit>) {
        let permit = self
            .permits
            .as_ref()
            .and_then(|permits| Arc::clone(permits).try_acquire_owned().ok());
        (self.buffer(), permit)
    }

    fn buffer(&self) -> Vec<u8> {
        let reused = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        reused.unwrap_or_else(|| {
            self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Vec::with_capacity(self.capacity)
        })
    }
}

/// A part's bytes on their way to the store; dropped once the store has them, it hands its
/// buffer back to the writer's pool.
struct Pooled {
    bytes: Vec<u8>,
    pool: Arc<Pool>,
    /// Released once the buffer is back (fields drop after `drop`).
    _permit: Option<OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.clear();
        let mut free = self
            .pool
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A store that keeps parts until the end (memory) must not grow the pool.
        if free.len() < self.pool.keep {
            free.push(bytes);
        }
    }
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
        let pool = Arc::new(Pool::new(window));
        let (part, permit) = pool.first();
        DatasetWriter {
            store,
            location,
            overwrite,
            window,
            part,
            permit,
            pool,
            upload: None,
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

    /// Appends `bytes` (copied into the part being filled); waits while too many parts are
    /// uploading.
    ///
    /// # Errors
    /// [`Error::Storage`] when the store refuses a part.
    pub async fn write(&mut self, bytes: impl AsRef<[u8]>) -> Result<()> {
        let mut bytes = bytes.as_ref();
        self.written += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = self.window.part_bytes - self.part.len();
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.part.extend_from_slice(now);
            bytes = later;
            if self.part.len() == self.window.part_bytes {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    /// Sends the part filled so far, once fewer than the window's parts are uploading.
    async fn send_part(&mut self) -> Result<()> {
        let upload = match &mut self.upload {
            Some(upload) => upload,
            None => {
                let upload = self
                    .store
                    .put_multipart(&self.location)
                    .await
                    .map_err(storage(&self.location))?;
                self.upload.insert(Upload {
                    upload,
                    parts: Parts::new(self.window),
                })
            }
        };
        let full = std::mem::take(&mut self.part);
        let pooled = Pooled {
            bytes: full,
            pool: Arc::clone(&self.pool),
            _permit: self.permit.take(),
        };
        let part = upload
            .upload
            .put_part(PutPayload::from(Bytes::from_owner(pooled)));
        upload
            .parts
            .send(part, self.window.in_flight, &self.location)
            .await?;
        // Taken after the wait: a part that landed meanwhile gave its buffer back.
        (self.part, self.permit) = self.pool.take().await;
        Ok(())
    }

    /// Completes the file: from now on it is visible, whole.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when a file appeared at the path meanwhile and the writer
    /// refuses to overwrite (the upload is then aborted); [`Error::Storage`] when the store
    /// fails (the upload is then aborted too).
    pub async fn finish(mut self) -> Result<()> {
        if self.upload.is_none() {
            let bytes = Bytes::from(std::mem::take(&mut self.part));
            return put(&self.store, &self.location, bytes.into(), self.overwrite).await;
        }
        let sent = if self.part.is_empty() {
            Ok(())
        } else {
            self.send_part().await
        };
        let Some(mut upload) = self.upload.take() else {
            unreachable!("the upload started above");
        };
        let landed = upload.parts.landed(&self.location).await;
        let checked = match sent.and(landed) {
            Ok(()) if self.overwrite == Overwrite::Refuse => {
                match self.store.head(&self.location).await {
                    Ok(_) => Err(Error::AlreadyExists {
                        location: self.location.to_string(),
                    }),
                    Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(error) => Err(storage(&self.location)(error)),
                }
            }
            other => other,
        };
        if let Err(error) = checked {
            let _ = upload.upload.abort().await;
            return Err(error);
        }
        upload
            .upload
            .complete()
            .await
            .map(drop)
            .map_err(storage(&self.location))
    }

    /// Gives up: nothing is written at the path, and parts already uploaded are discarded.
    ///
    /// # Errors
    /// [`Error::Storage`] when the store cannot discard the parts.
    pub async fn abort(mut self) -> Result<()> {
        let Some(mut upload) = self.upload.take() else {
            return Ok(());
        };
        // The parts finish or fail first: a part landing after the abort could outlive it.
        let _ = upload.parts.landed(&self.location).await;
        upload.upload.abort().await.map_err(storage(&self.location))
    }
}

/// A part's upload as it ended: its error, or a panic or cancellation of its task.
fn joined(
    part: Option<std::result::Result<object_store::Result<()>, tokio::task::JoinError>>,
    location: &Path,
) -> Result<()> {
    match part {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(error))) => Err(storage(location)(error)),
        Some(Err(join)) => Err(Error::Storage {
            location: location.to_string(),
            source: Box::new(join),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::Datasets;

    /// However long the file, a local writer allocates its part buffers once: the part on
    /// its thread and the one filling.
    #[tokio::test]
    async fn a_long_local_file_reuses_a_few_part_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let datasets = Datasets::local(dir.path()).unwrap();
        let dataset = datasets.dataset("long").unwrap();
        let mut writer = dataset.writer("out.csv", Overwrite::Refuse).await.unwrap();
        assert_eq!(writer.window, Window::LOCAL);
        let chunk: Vec<u8> = (0..700_000_u32).map(|i| b'a' + (i % 26) as u8).collect();
        let chunks = 100;
        for _ in 0..chunks {
            writer.write(&chunk).await.unwrap();
        }
        let made = writer.pool.made.load(std::sync::atomic::Ordering::Relaxed);
        let parts = chunks * chunk.len() / Window::LOCAL.part_bytes;
        assert!(parts > 60, "{parts} parts");
        assert!(
            made <= Window::LOCAL.in_flight + 1,
            "{made} buffers for {parts} parts"
        );
        writer.finish().await.unwrap();
        let written = std::fs::read(dir.path().join("long/out.csv")).unwrap();
        assert_eq!(written.len(), chunks * chunk.len());
        assert!(written.chunks(chunk.len()).all(|part| part == chunk));
    }
}
