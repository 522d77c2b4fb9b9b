//! Bidirectional copy between two streams: the inner loop of every proxied TCP connection.
//!
//! In: two `AsyncRead + AsyncWrite` streams (a TLS stream and a TCP socket, two TCP sockets...)
//! and [`CopyOptions`]. Out: the bytes moved each way ([`Copied`]), also when the copy ends in
//! an error ([`CopyError::copied`]) so metrics count them. A direction holds a buffer only
//! while bytes move: taken when bytes come, given back as soon as the reader has nothing
//! more and everything read was written, so an idle connection holds none (thousands of open
//! connections through a gateway cost their sockets and tasks, not 32 KiB each). Its size
//! follows the traffic: from 4 KiB, doubled when a read fills it (up to
//! [`CopyOptions::buffer_size`]), halved when reads use little of it. When one side ends its stream
//! (EOF), the other side's write half is shut down (TCP FIN, or TLS close_notify then FIN)
//! and the opposite direction carries on until it ends too: half-closed connections keep
//! working. An idle timeout (an hour by default) ends a copy in which no byte moved either way
//! for that long.

use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Default buffer size per direction: one TLS record.
pub const DEFAULT_BUFFER_SIZE: usize = 16 * 1024;

/// The size of a direction's first buffer (and the smallest it shrinks to): a request or a
/// small answer in one read.
const FIRST_BUFFER_SIZE: usize = 4 * 1024;

/// Default idle timeout: a connection in which no byte moved either way for an hour ends, so
/// abandoned connections do not hold descriptors and tasks forever.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// How a copy runs.
#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Most bytes buffered per direction (while bytes move; an idle direction holds none).
    pub buffer_size: usize,
    /// End the copy when no byte has moved in either direction for this long.
    pub idle_timeout: Option<Duration>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions { buffer_size: DEFAULT_BUFFER_SIZE, idle_timeout: Some(DEFAULT_IDLE_TIMEOUT) }
    }
}

/// Bytes written each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Bytes read from `a` and written to `b`.
    pub a_to_b: u64,
    /// Bytes read from `b` and written to `a`.
    pub b_to_a: u64,
}

/// Which way bytes were flowing when an error happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From `a` to `b`.
    AToB,
    /// From `b` to `a`.
    BToA,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::AToB => "a to b",
            Direction::BToA => "b to a",
        })
    }
}

/// Why a copy ended early; both variants carry the bytes moved until then.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Reading, writing or shutting down failed.
    #[error("copy {direction}: {source}")]
    Io {
        /// The direction that failed.
        direction: Direction,
        /// The I/O error.
        source: io::Error,
        /// Bytes moved before the error.
        copied: Copied,
    },
    /// No byte moved for the idle timeout.
    #[error("idle for {timeout:?}")]
    Idle {
        /// The configured timeout.
        timeout: Duration,
        /// Bytes moved before the timeout.
        copied: Copied,
    },
}

impl CopyError {
    /// Bytes moved before the copy ended.
    pub fn copied(&self) -> Copied {
        match self {
            CopyError::Io { copied, .. } | CopyError::Idle { copied, .. } => *copied,
        }
    }
}

/// Copies `a` to `b` and `b` to `a` until both directions have ended, propagating half-close.
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B, options: &CopyOptions) -> Result<Copied, CopyError>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Transfer::new(options.buffer_size);
    let mut b_to_a = Transfer::new(options.buffer_size);
    let mut idle = options.idle_timeout.map(IdleTimer::new);
    poll_fn(|cx| {
        let before = a_to_b.progress() + b_to_a.progress();
        let ab_done = match a_to_b.poll(cx, Pin::new(&mut *a), Pin::new(&mut *b)) {
            Poll::Ready(Err(source)) => {
                return Poll::Ready(Err(CopyError::Io { direction: Direction::AToB, source, copied: copied(&a_to_b, &b_to_a) }))
            }
            poll => poll.is_ready(),
        };
        let ba_done = match b_to_a.poll(cx, Pin::new(&mut *b), Pin::new(&mut *a)) {
            Poll::Ready(Err(source)) => {
                return Poll::Ready(Err(CopyError::Io { direction: Direction::BToA, source, copied: copied(&a_to_b, &b_to_a) }))
            }
            poll => poll.is_ready(),
        };
        if ab_done && ba_done {
            return Poll::Ready(Ok(copied(&a_to_b, &b_to_a)));
        }
        if let Some(idle) = idle.as_mut() {
            if a_to_b.progress() + b_to_a.progress() != before {
                idle.touch();
            }
            if idle.poll_expired(cx).is_ready() {
                return Poll::Ready(Err(CopyError::Idle { timeout: idle.timeout, copied: copied(&a_to_b, &b_to_a) }));
            }
        }
        Poll::Pending
    })
    .await
}

fn copied(a_to_b: &Transfer, b_to_a: &Transfer) -> Copied {
    Copied { a_to_b: a_to_b.written, b_to_a: b_to_a.written }
}

/// One direction: read into the buffer, write it out, shut the writer down after EOF.
struct Transfer {
    /// Empty while nothing is buffered and no read is being tried.
    buf: Box<[u8]>,
    /// The size of the next buffer taken.
    size: usize,
    /// The largest buffer.
    max: usize,
    pos: usize,
    cap: usize,
    read: u64,
    written: u64,
    read_done: bool,
    need_flush: bool,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Copying,
    ShuttingDown,
    Done,
}

impl Transfer {
    fn new(size: usize) -> Self {
        Transfer {
            buf: Box::default(),
            size: FIRST_BUFFER_SIZE.min(size.max(1)),
            max: size.max(1),
            pos: 0,
            cap: 0,
            read: 0,
            written: 0,
            read_done: false,
            need_flush: false,
            state: State::Copying,
        }
    }

    /// Bytes read plus bytes written: changes whenever anything moved.
    fn progress(&self) -> u64 {
        self.read + self.written
    }

    /// Ready(Ok) once the reader hit EOF, everything was written and the writer is shut down.
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, mut reader: Pin<&mut R>, mut writer: Pin<&mut W>) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            match self.state {
                State::Copying => {
                    ready!(self.poll_copy(cx, reader.as_mut(), writer.as_mut()))?;
                    self.state = State::ShuttingDown;
                }
                State::ShuttingDown => {
                    ready!(writer.as_mut().poll_shutdown(cx))?;
                    self.state = State::Done;
                }
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }

    /// Copies until EOF, flushing whenever the reader has nothing more for now.
    fn poll_copy<R, W>(&mut self, cx: &mut Context<'_>, mut reader: Pin<&mut R>, mut writer: Pin<&mut W>) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if (self.buf.is_empty() || self.cap < self.buf.len()) && !self.read_done {
                match self.poll_fill(cx, reader.as_mut()) {
                    Poll::Ready(result) => result?,
                    // With data in the buffer, write it now rather than wait for more.
                    Poll::Pending if self.pos == self.cap => {
                        // Nothing buffered: the buffer goes back until bytes come.
                        self.buf = Box::default();
                        (self.pos, self.cap) = (0, 0);
                        if self.need_flush {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Pending => {}
                }
            }
            while self.pos < self.cap {
                let n = ready!(writer.as_mut().poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.written += n as u64;
                self.need_flush = true;
            }
            self.pos = 0;
            self.cap = 0;
            // Written out: the next read takes a buffer of the size the traffic asks for.
            if self.buf.len() != self.size {
                self.buf = Box::default();
            }
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                return Poll::Ready(Ok(()));
            }
        }
    }

    fn poll_fill<R: AsyncRead + ?Sized>(&mut self, cx: &mut Context<'_>, reader: Pin<&mut R>) -> Poll<io::Result<()>> {
        if self.buf.is_empty() {
            return self.poll_first(cx, reader);
        }
        let mut buf = ReadBuf::new(&mut self.buf);
        buf.set_filled(self.cap);
        ready!(reader.poll_read(cx, &mut buf))?;
        let filled = buf.filled().len();
        let got = filled - self.cap;
        let room = self.buf.len() - self.cap;
        self.took(got, room);
        self.cap = filled;
        Poll::Ready(Ok(()))
    }

    /// The first read after the buffer went back: into the stack, so that polling a reader
    /// with nothing for us (each time the other direction wakes the copy) allocates nothing;
    /// a buffer is taken only for bytes that came.
    fn poll_first<R: AsyncRead + ?Sized>(&mut self, cx: &mut Context<'_>, reader: Pin<&mut R>) -> Poll<io::Result<()>> {
        let mut first = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_BUFFER_SIZE];
        let room = self.size.min(FIRST_BUFFER_SIZE);
        let mut buf = ReadBuf::uninit(&mut first[..room]);
        ready!(reader.poll_read(cx, &mut buf))?;
        let got = buf.filled().len();
        self.took(got, room);
        if got > 0 {
            let mut taken = vec![0; self.size].into_boxed_slice();
            taken[..got].copy_from_slice(buf.filled());
            (self.buf, self.pos, self.cap) = (taken, 0, got);
        }
        Poll::Ready(Ok(()))
    }

    /// Counts a read of `got` bytes into `room` (0: end of stream) and sizes the next buffer:
    /// a read that filled its room means more is coming than it holds; one that used an
    /// eighth of it, that the traffic is small.
    fn took(&mut self, got: usize, room: usize) {
        self.read_done = got == 0;
        self.read += got as u64;
        if got == room {
            self.size = (self.size * 2).min(self.max);
        } else if got > 0 && got * 8 < room {
            self.size = (self.size / 2).max(FIRST_BUFFER_SIZE.min(self.max));
        }
    }
}

/// Fires after `timeout` without activity. Activity only records a time stamp; the timer is
/// re-armed when it fires early, so busy connections do not reset a timer on every read.
struct IdleTimer {
    timeout: Duration,
    last_activity: Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl IdleTimer {
    fn new(timeout: Duration) -> Self {
        let now = Instant::now();
        IdleTimer { timeout, last_activity: now, sleep: Box::pin(tokio::time::sleep_until(now + timeout)) }
    }

    fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let deadline = self.last_activity + self.timeout;
            if deadline <= Instant::now() {
                return Poll::Ready(());
            }
            self.sleep.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
