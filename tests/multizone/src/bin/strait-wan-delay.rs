//! `strait-wan-delay`: holds every packet of an NFQUEUE queue for a fixed delay, then accepts
//! it, in order. The end-to-end harness runs it in the WAN namespace, behind an iptables
//! `-j NFQUEUE --queue-bypass` rule on FORWARD, to emulate WAN latency where the kernel has no
//! `netem` qdisc. Packets are released within a millisecond of their due time.
//!
//! Usage: `strait-wan-delay <queue-number> <delay-ms>`. It prints `ready` once bound, and runs
//! until killed (the rule's `--queue-bypass` lets packets through if it is gone).

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(queue_num), Some(delay_ms)) =
        (args.get(1).and_then(|a| a.parse::<u16>().ok()), args.get(2).and_then(|a| a.parse::<u64>().ok()))
    else {
        eprintln!("usage: strait-wan-delay <queue-number> <delay-ms>");
        std::process::exit(64);
    };
    let delay = Duration::from_millis(delay_ms);
    let mut queue = match open(queue_num) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("strait-wan-delay: binding NFQUEUE {queue_num}: {e}");
            std::process::exit(1);
        }
    };
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    loop {
        // Nothing held: wait for the next packet. Otherwise take what has arrived.
        queue.set_nonblocking(!held.is_empty());
        loop {
            match queue.recv() {
                Ok(mut msg) => {
                    msg.set_verdict(nfq::Verdict::Accept);
                    held.push_back((Instant::now() + delay, msg));
                    queue.set_nonblocking(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    eprintln!("strait-wan-delay: receiving: {e}");
                    std::process::exit(1);
                }
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, msg)) = held.pop_front() {
                if let Err(e) = queue.verdict(msg) {
                    eprintln!("strait-wan-delay: accepting a packet: {e}");
                }
            }
        }
        if let Some((due, _)) = held.front() {
            std::thread::sleep(due.saturating_duration_since(Instant::now()).min(Duration::from_millis(1)));
        }
    }
}

fn open(queue_num: u16) -> std::io::Result<nfq::Queue> {
    let mut queue = nfq::Queue::open()?;
    queue.bind(queue_num)?;
    queue.set_copy_range(queue_num, 0)?;
    queue.set_queue_max_len(queue_num, 65_536)?;
    queue.set_fail_open(queue_num, true)?;
    Ok(queue)
}
