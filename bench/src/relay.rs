//! The floor of any pair of user-space proxies: a relay that copies bytes between two TCP
//! connections and does nothing else (no TLS, no HTTP, no event loop: one blocking thread per
//! direction, so each arrival wakes exactly one thread, which reads and writes once).
//!
//! A benchmark runs two of them in a chain, as processes of their own, beside the proxy pairs
//! it measures: what the pair adds is what the machine's wake-ups and loopback hops cost,
//! which no proxy pair on the same path can add less than.
//!
//! In: `relay <listen> <target>` (the benchmark starts its own binary so). Out: never returns
//! while it can accept.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};

/// The argument that makes a benchmark binary a relay.
pub const ARG: &str = "relay";

/// `Some((listen, target))` if this process was started as a relay.
pub fn from_args() -> Option<(SocketAddr, SocketAddr)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [first, listen, target] if first == ARG => Some((listen.parse().ok()?, target.parse().ok()?)),
        _ => None,
    }
}

/// Accepts on `listen` and relays each connection to `target` until either side closes.
pub fn serve(listen: SocketAddr, target: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    for accepted in listener.incoming() {
        let Ok(client) = accepted else { continue };
        let Ok(upstream) = TcpStream::connect(target) else { continue };
        for s in [&client, &upstream] {
            s.set_nodelay(true)?;
        }
        let (client2, upstream2) = (client.try_clone()?, upstream.try_clone()?);
        std::thread::spawn(move || copy(client, upstream));
        std::thread::spawn(move || copy(upstream2, client2));
    }
    Ok(())
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
