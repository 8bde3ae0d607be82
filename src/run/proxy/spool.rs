//! Request bodies read whole before a worker is leased, so that a slow upload does not
//! hold a worker that serves one request at a time (Unicorn, gunicorn's sync workers;
//! Heroku itself says Unicorn is unprotected against slow clients). The first
//! [`MEMORY_LIMIT`] bytes stay in memory; the rest go to an unlinked temporary file.

use std::collections::VecDeque;
use std::io::{self, SeekFrom};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncSeekExt as _, AsyncWriteExt as _, ReadBuf};

use crate::run::proxy::conn::RequestBody;

/// Bytes of one body kept in memory before the rest spills to disk.
pub(crate) const MEMORY_LIMIT: usize = 256 * 1024;

/// Size of the reads that stream a spilled body to the worker.
const READ_CHUNK: usize = 64 * 1024;

/// Why a body could not be read whole.
#[derive(Debug)]
pub(crate) enum SpoolError {
    /// Larger than `MOLT_MAX_BODY`.
    TooLarge,
    /// The client broke off or sent a malformed body.
    Client(Box<dyn std::error::Error + Send + Sync>),
    /// The temporary file could not be written (a full disk, most often).
    CannotSpool { path: PathBuf, source: io::Error },
}

/// A request body held by molt.
#[derive(Debug)]
pub(crate) struct Spooled {
    memory: VecDeque<Bytes>,
    file: Option<tokio::fs::File>,
    len: u64,
    left: u64,
}

impl Spooled {
    /// A body of no bytes, for tests that send requests to a worker themselves.
    #[cfg(test)]
    pub(crate) fn empty() -> Self {
        Spooled {
            memory: VecDeque::new(),
            file: None,
            len: 0,
            left: 0,
        }
    }

    /// A body held in memory, for tests that send requests to a worker themselves.
    #[cfg(test)]
    pub(crate) fn in_memory(data: Bytes) -> Self {
        Spooled {
            len: data.len() as u64,
            memory: VecDeque::from([data]),
            file: None,
            left: 0,
        }
    }

    /// Reads `body` whole, refusing more than `max` bytes.
    pub(crate) async fn read(mut body: RequestBody, max: u64) -> Result<Self, SpoolError> {
        let mut spooled = Spooled {
            memory: VecDeque::new(),
            file: None,
            len: 0,
            left: 0,
        };
        let mut path = PathBuf::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(SpoolError::Client)?;
            // Trailers are dropped: workers behind a proxy do not see them anyway.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            spooled.len += data.len() as u64;
            if spooled.len > max {
                return Err(SpoolError::TooLarge);
            }
            if spooled.file.is_none() && spooled.len <= MEMORY_LIMIT as u64 {
                spooled.memory.push_back(data);
                continue;
            }
            if spooled.file.is_none() {
                let (file, at) = temporary_file("body")
                    .map_err(|(path, source)| SpoolError::CannotSpool { path, source })?;
                spooled.file = Some(tokio::fs::File::from_std(file));
                path = at;
            }
            let file = spooled.file.as_mut().expect("opened above");
            file.write_all(&data)
                .await
                .map_err(|source| SpoolError::CannotSpool {
                    path: path.clone(),
                    source,
                })?;
        }
        if let Some(file) = spooled.file.as_mut() {
            let rewind = async {
                file.flush().await?;
                file.seek(SeekFrom::Start(0)).await
            };
            rewind
                .await
                .map_err(|source| SpoolError::CannotSpool { path, source })?;
        }
        let in_memory: u64 = spooled.memory.iter().map(|b| b.len() as u64).sum();
        spooled.left = spooled.len - in_memory;
        Ok(spooled)
    }
}

/// An anonymous file in the temporary directory (`TMPDIR`), named `molt-<label>-..`:
/// unlinked at once, so nothing is left behind however molt ends. Request bodies and
/// responses ahead of a slow client spill here.
pub(crate) fn temporary_file(
    label: &str,
) -> Result<(std::fs::File, PathBuf), (PathBuf, io::Error)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "molt-{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|err| (path.clone(), err))?;
    let _ = std::fs::remove_file(&path);
    Ok((file, path))
}

impl Body for Spooled {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(chunk) = self.memory.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let left = self.left;
        let Some(file) = self.file.as_mut() else {
            return Poll::Ready(None);
        };
        if left == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(left).map_or(READ_CHUNK, |l| l.min(READ_CHUNK));
        let mut buf = BytesMut::zeroed(want);
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(file).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(err)) => Poll::Ready(Some(Err(err))),
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())));
                }
                buf.truncate(n);
                self.left -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(buf.freeze()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.memory.is_empty() && self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        let in_memory: u64 = self.memory.iter().map(|b| b.len() as u64).sum();
        SizeHint::with_exact(in_memory + self.left)
    }
}
