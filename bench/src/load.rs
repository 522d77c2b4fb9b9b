//! Load generators: an open-loop constant rate with latency measured from each request's
//! scheduled time (as wrk2 does, so that a stall is not hidden by the requests it delayed),
//! and a closed loop for saturation throughput.
//!
//! In: a target address and path served over HTTP/1.1 keep-alive, and what each request is: a
//! GET, or a POST of a body of the size [`post_bodies`] set. Out: latencies, errors and
//! throughput. The schedule is kept by a thread of its own with `std::thread::sleep` (about
//! 60 µs precise) rather than the async timer, whose millisecond ticks would add up to a
//! millisecond to every sample.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

/// What a run saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Latency of each successful request.
    pub latencies: Vec<Duration>,
    /// Requests that failed (connection error or a status other than 200).
    pub errors: u64,
    /// How long the run took.
    pub elapsed: Duration,
}

impl Outcome {
    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Adds `other`'s samples to these.
    pub fn merge(&mut self, other: Outcome) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.elapsed += other.elapsed;
    }
}

async fn connect(target: SocketAddr) -> std::io::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(sender)
}

/// The body every request of this process posts (none: requests are GETs).
static POSTED: OnceLock<Bytes> = OnceLock::new();

/// Makes every request of this process a POST of `size` bytes (`content-length`) rather than
/// a GET; a size of 0 keeps GETs. Set once, before the first request.
pub fn post_bodies(size: usize) {
    if size > 0 {
        let _ = POSTED.set(Bytes::from(vec![b'x'; size]));
    }
}

/// One request of `path` on `sender` (a GET, or a POST, see [`post_bodies`]), the response
/// body read to its end; `true` on a 200.
async fn get(sender: &mut SendRequest<Full<Bytes>>, host: &str, path: &str) -> bool {
    if sender.ready().await.is_err() {
        return false;
    }
    let request = match POSTED.get() {
        Some(body) => http::Request::post(path).header("host", host).body(Full::new(body.clone())),
        None => http::Request::get(path).header("host", host).body(Full::new(Bytes::new())),
    };
    let Ok(request) = request else { return false };
    match sender.send_request(request).await {
        Ok(response) => response.status() == 200 && response.into_body().collect().await.is_ok(),
        Err(_) => false,
    }
}

/// One GET of `path` on a new connection to `target`; `true` on a 200.
pub async fn probe(target: SocketAddr, path: &str) -> bool {
    match connect(target).await {
        Ok(mut sender) => get(&mut sender, &target.to_string(), path).await,
        Err(_) => false,
    }
}

/// `rate` requests per second for `duration` over `connections` keep-alive connections.
pub async fn constant_rate(target: SocketAddr, path: &str, rate: u32, duration: Duration, connections: usize) -> std::io::Result<Outcome> {
    let (idle_tx, mut idle_rx) = mpsc::channel(connections);
    for _ in 0..connections {
        idle_tx.send(connect(target).await?).await.map_err(std::io::Error::other)?;
    }
    let total = (u64::from(rate) * duration.as_millis() as u64 / 1000).max(1);
    let interval = Duration::from_secs(1) / rate.max(1);
    // The pacer thread sends each request's scheduled time when it comes.
    let (due_tx, mut due_rx) = mpsc::unbounded_channel::<Instant>();
    let start = Instant::now() + Duration::from_millis(20);
    let pacer = std::thread::spawn(move || {
        for i in 0..total {
            let at = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if due_tx.send(at).is_err() {
                return;
            }
        }
    });
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Option<Duration>>();
    let (host, path): (Arc<str>, Arc<str>) = (target.to_string().into(), path.into());
    let mut dispatched = 0u64;
    while let Some(at) = due_rx.recv().await {
        // Waiting for a free connection counts in the latency: it is measured from `at`.
        let Some(mut sender) = idle_rx.recv().await else { break };
        let (idle_tx, done_tx, host, path) = (idle_tx.clone(), done_tx.clone(), host.clone(), path.clone());
        dispatched += 1;
        tokio::spawn(async move {
            let ok = get(&mut sender, &host, &path).await;
            let _ = done_tx.send(ok.then(|| at.elapsed()));
            if sender.is_closed() {
                match connect(target).await {
                    Ok(fresh) => sender = fresh,
                    Err(_) => return,
                }
            }
            let _ = idle_tx.send(sender).await;
        });
    }
    let _ = pacer.join();
    let mut outcome = Outcome { latencies: Vec::with_capacity(dispatched as usize), ..Outcome::default() };
    for _ in 0..dispatched {
        match tokio::time::timeout(Duration::from_secs(10), done_rx.recv()).await {
            Ok(Some(Some(latency))) => outcome.latencies.push(latency),
            _ => outcome.errors += 1,
        }
    }
    outcome.elapsed = start.elapsed();
    Ok(outcome)
}

/// As many requests as `connections` connections can carry, each waiting for its response
/// before the next, for `duration`.
pub async fn closed_loop(target: SocketAddr, path: &str, duration: Duration, connections: usize) -> std::io::Result<Outcome> {
    let end = Instant::now() + duration;
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..connections {
        let mut sender = connect(target).await?;
        let (host, path) = (target.to_string(), path.to_string());
        workers.push(tokio::spawn(async move {
            let mut outcome = Outcome::default();
            while Instant::now() < end {
                let sent = Instant::now();
                if get(&mut sender, &host, &path).await {
                    outcome.latencies.push(sent.elapsed());
                } else {
                    outcome.errors += 1;
                    match connect(target).await {
                        Ok(fresh) => sender = fresh,
                        Err(_) => break,
                    }
                }
            }
            outcome
        }));
    }
    let mut total = Outcome::default();
    for w in workers {
        if let Ok(o) = w.await {
            total.latencies.extend(o.latencies);
            total.errors += o.errors;
        }
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// Client connections held open, each having sent one request (see [`hold_open`]).
pub struct Held {
    /// Connections whose request was answered with a 200.
    pub answered: usize,
    _senders: Vec<SendRequest<Full<Bytes>>>,
}

/// Opens `n` keep-alive connections to `target`, sends one GET of `path` on each (all at
/// once), and keeps them open until the result is dropped.
pub async fn hold_open(target: SocketAddr, path: &str, n: usize) -> std::io::Result<Held> {
    let mut senders = Vec::with_capacity(n);
    for _ in 0..n {
        senders.push(connect(target).await?);
    }
    let host = target.to_string();
    let answers = futures::future::join_all(senders.iter_mut().map(|s| get(s, &host, path))).await;
    Ok(Held { answered: answers.into_iter().filter(|ok| *ok).count(), _senders: senders })
}
