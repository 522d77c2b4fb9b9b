//! A request body that the sidecar's own HTTP/1.1 server reads from its connection while the
//! request is being served, handed over to whoever sends it on one frame at a time.
//!
//! In: the body's framing (`content-length` or `transfer-encoding: chunked`), and the
//! connection's read buffer and stream, lent by the server each time it polls the [`Feeder`].
//! Out: [`RequestBody`], the request's body, and the [`Feeder`] the server keeps. The two
//! share one slot: the feeder decodes the next frame only once the body has taken the last,
//! so a slow upstream holds back the client (TCP's flow control, no buffering here), and the
//! bytes after the body's end stay in the server's buffer for the next request.
//!
//! The feeder is polled in the server's task, the body wherever the request goes (the same
//! task for an HTTP/1.1 upstream, the HTTP/2 connection's task otherwise): each wakes the
//! other when the slot changes hands.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::AsyncRead;

use super::body::BoxError;
use super::h1::{next_step, Framing, H1Error, Step, READ_SIZE};

/// What a read of a large body asks for at most: fewer reads and larger frames, while a
/// connection's buffer stays small (given back after the request if it grew past
/// [`super::h1::KEPT_BUFFER`]).
const BODY_READ_SIZE: usize = 64 * 1024;

/// Why a request body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The client closed the connection before the body's end.
    #[error("the client closed the connection before the end of the request body")]
    Cut,
    /// Reading the connection failed.
    #[error("reading the request body: {0}")]
    Read(std::io::Error),
    /// The chunked framing is broken.
    #[error("malformed request body: {0}")]
    Malformed(&'static str),
}

/// What the server and the body share.
#[derive(Default)]
struct Slot {
    /// Data decoded and not yet taken.
    data: Option<Bytes>,
    /// The trailers of a chunked body, once it has ended.
    trailers: Option<HeaderMap>,
    /// Nothing more comes after what is in the slot.
    ended: bool,
    /// The body failed (given to the body once).
    failed: Option<RequestBodyError>,
    /// Bytes of a `content-length` body not yet taken (for its size hint).
    rest: Option<u64>,
    /// The body was dropped: nothing more is wanted.
    dropped: bool,
    body: Option<Waker>,
    server: Option<Waker>,
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

fn park(place: &mut Option<Waker>, cx: &Context<'_>) {
    match place {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *place = Some(cx.waker().clone()),
    }
}

/// A request's body and the feeder the server keeps for it.
pub(super) fn pair(framing: Framing) -> (RequestBody, Feeder) {
    let rest = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let slot = Arc::new(Mutex::new(Slot { rest, ..Slot::default() }));
    (RequestBody { slot: slot.clone() }, Feeder { slot, framing, done: false, whole: false, drained: 0 })
}

/// The body of a request the own HTTP/1.1 server reads.
pub struct RequestBody {
    slot: Arc<Mutex<Slot>>,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody").finish_non_exhaustive()
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut slot = lock(&self.slot);
        let frame = if let Some(data) = slot.data.take() {
            if let Some(rest) = &mut slot.rest {
                *rest -= data.len() as u64;
            }
            Some(Ok(Frame::data(data)))
        } else if let Some(trailers) = slot.trailers.take() {
            Some(Ok(Frame::trailers(trailers)))
        } else if let Some(error) = slot.failed.take() {
            slot.ended = true;
            Some(Err(error.into()))
        } else if slot.ended {
            None
        } else {
            park(&mut slot.body, cx);
            return Poll::Pending;
        };
        // The slot is free: the server may read on.
        if let Some(server) = slot.server.take() {
            server.wake();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        let slot = lock(&self.slot);
        slot.ended && slot.data.is_none() && slot.trailers.is_none() && slot.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match lock(&self.slot).rest {
            Some(rest) => SizeHint::with_exact(rest),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let mut slot = lock(&self.slot);
        slot.dropped = true;
        if let Some(server) = slot.server.take() {
            server.wake();
        }
    }
}

/// Most bytes of a request body read and dropped once its request no longer wants it (an
/// answer that came before the whole body, such as a 413 or a 403), so that the connection
/// can carry the next request; past it, the connection is closed.
const DRAIN_LIMIT: u64 = 256 * 1024;

/// The server's end: reads the body from the connection into the slot.
pub(super) struct Feeder {
    slot: Arc<Mutex<Slot>>,
    framing: Framing,
    /// Nothing more is read for the body: it came whole, failed, or is not wanted past
    /// [`DRAIN_LIMIT`].
    done: bool,
    /// The whole body was read from the connection: the next request's bytes follow.
    whole: bool,
    /// Bytes read and dropped since the body was dropped.
    drained: u64,
}

impl Feeder {
    /// Whether the whole body was read from the connection, so that it may carry another
    /// request.
    pub(super) fn whole(&self) -> bool {
        self.whole
    }

    /// Whether the connection may still carry another request: the body came whole, or is
    /// still being read.
    pub(super) fn may_keep(&self) -> bool {
        self.whole || !self.done
    }

    /// Reads and decodes the body into the slot while the slot has room, or reads and drops
    /// it once the body is dropped. Ready once nothing more is to be read for it (ended,
    /// failed, or dropped past [`DRAIN_LIMIT`]).
    pub(super) fn poll<S: AsyncRead + Unpin>(&mut self, io: &mut S, read: &mut BytesMut, cx: &mut Context<'_>) -> Poll<()> {
        let Feeder { slot, framing, done, whole, drained } = self;
        // The socket had nothing more (and will wake this task when it has).
        let mut dry = false;
        let mut need = false;
        while !*done {
            let dropped = {
                let mut slot = lock(slot);
                if slot.dropped {
                    slot.data = None;
                } else if slot.data.is_some() {
                    park(&mut slot.server, cx);
                    return Poll::Pending;
                }
                slot.dropped
            };
            // The slot is free: what the socket has joins what was read first (up to a
            // bound), so that a frame carries all of it.
            let want = match *framing {
                Framing::Length(rest) => usize::try_from(rest).unwrap_or(usize::MAX).clamp(READ_SIZE, BODY_READ_SIZE),
                _ => BODY_READ_SIZE,
            };
            let short = match *framing {
                Framing::Length(rest) => (read.len() as u64) < rest.min(want as u64),
                _ => read.is_empty(),
            };
            if !dry && (need || short) {
                if read.capacity() - read.len() < want / 4 {
                    read.reserve(want);
                }
                match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, read) {
                    Poll::Ready(Ok(0)) => {
                        fail(&mut lock(slot), RequestBodyError::Cut, done);
                        break;
                    }
                    Poll::Ready(Ok(_)) => {
                        need = false;
                        continue;
                    }
                    Poll::Ready(Err(e)) => {
                        fail(&mut lock(slot), RequestBodyError::Read(e), done);
                        break;
                    }
                    Poll::Pending => dry = true,
                }
            }
            let mut slot = lock(slot);
            if dropped {
                match step(framing, read) {
                    Ok(Step::Data(data)) => {
                        *drained += data.len() as u64;
                        if *framing == Framing::Length(0) {
                            (*done, *whole) = (true, true);
                        } else if *drained > DRAIN_LIMIT {
                            tracing::debug!(
                                "the request body, no longer wanted, is longer than {DRAIN_LIMIT} bytes: the connection is closed"
                            );
                            *done = true;
                        }
                        continue;
                    }
                    Ok(Step::End(_)) => {
                        (*done, *whole) = (true, true);
                        continue;
                    }
                    Ok(Step::Read) => {}
                    Err(error) => {
                        fail(&mut slot, error, done);
                        break;
                    }
                }
            } else if decode(&mut slot, framing, read, done, whole) {
                continue;
            }
            // Nothing could be decoded: more must be read.
            if dry {
                return Poll::Pending;
            }
            need = true;
        }
        Poll::Ready(())
    }
}

fn fail(slot: &mut Slot, error: RequestBodyError, done: &mut bool) {
    tracing::debug!("{error}");
    slot.failed = Some(error);
    *done = true;
    if let Some(body) = slot.body.take() {
        body.wake();
    }
}

/// Decodes the next frame of `read` into the empty `slot`; whether anything changed for the
/// body (data, its end, or its failure), which is then woken.
fn decode(slot: &mut Slot, framing: &mut Framing, read: &mut BytesMut, done: &mut bool, whole: &mut bool) -> bool {
    let (ended, failed) = match step(framing, read) {
        Ok(Step::Data(data)) => {
            slot.data = Some(data);
            (*framing == Framing::Length(0), None)
        }
        Ok(Step::End(trailers)) => {
            slot.trailers = trailers;
            (true, None)
        }
        Ok(Step::Read) => return false,
        Err(error) => (false, Some(error)),
    };
    if ended {
        slot.ended = true;
        (*done, *whole) = (true, true);
    }
    if let Some(error) = failed {
        tracing::debug!("{error}");
        slot.failed = Some(error);
        *done = true;
    }
    if let Some(body) = slot.body.take() {
        body.wake();
    }
    true
}

/// The next step of the body in `read` (only a malformed chunked framing fails).
fn step(framing: &mut Framing, read: &mut BytesMut) -> Result<Step, RequestBodyError> {
    next_step(framing, read).map_err(|e| match e {
        H1Error::Malformed(why) => RequestBodyError::Malformed(why),
        _ => RequestBodyError::Malformed("bad chunked framing"),
    })
}
