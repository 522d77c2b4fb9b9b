//! `strait-wan-delay`: holds every packet of an NFQUEUE queue for a fixed delay, then accepts
//! it, in order. The end-to-end harness runs it in the WAN namespace, behind an iptables
//! `-j NFQUEUE --queue-bypass` rule on FORWARD, to emulate WAN latency where the kernel has no
//! `netem` qdisc. Packets are released within a millisecond of their due time.
//!
//! It takes segmentation-offloaded packets whole (`NFQA_CFG_F_GSO`): a TCP sender's 64 KB
//! segment and a QUIC sender's batch of UDP datagrams (UDP GSO) are each one packet to hold,
//! as they are one to the kernel until the wire, so neither protocol pays more per byte here
//! and the delayer is not the bottleneck of a fast flow. When the kernel could not queue a
//! packet to it (its socket full), it counts an overrun instead of stopping; every 10 s of
//! traffic it logs what it moved. While it holds packets it naps at most 100 µs between
//! looks at the queue, so a packet's delay is within about 0.1 ms of the one asked.
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
    let mut stats = Stats::default();
    let mut reported = Instant::now();
    loop {
        if reported.elapsed() >= REPORT_EVERY && stats.packets > 0 {
            println!(
                "moved {} packets ({} MB) in {:?}; at most {} held at once; {} overruns",
                stats.packets,
                stats.bytes >> 20,
                reported.elapsed(),
                stats.most_held,
                stats.overruns
            );
            let _ = std::io::stdout().flush();
            stats = Stats::default();
            reported = Instant::now();
        }
        // Nothing held: wait for the next packet. Otherwise take what has arrived.
        queue.set_nonblocking(!held.is_empty());
        loop {
            match queue.recv() {
                Ok(mut msg) => {
                    msg.set_verdict(nfq::Verdict::Accept);
                    stats.packets += 1;
                    stats.bytes += msg.get_original_len() as u64;
                    held.push_back((Instant::now() + delay, msg));
                    stats.most_held = stats.most_held.max(held.len());
                    queue.set_nonblocking(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // The kernel dropped messages for this socket: those packets went on without
                // their delay (fail-open) or were lost; TCP and QUIC recover either way.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => stats.overruns += 1,
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
        // A packet that arrives while this sleeps is stamped when it wakes: the nap bounds
        // how late a delay can be (a millisecond made round trips up to 2 ms longer).
        if let Some((due, _)) = held.front() {
            std::thread::sleep(due.saturating_duration_since(Instant::now()).min(NAP));
        }
    }
}

/// The longest the delayer sleeps while it holds packets, so the longest a new packet waits
/// to be stamped.
const NAP: Duration = Duration::from_micros(100);

/// How often the delayer logs what it moved.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// What the delayer moved since its last report.
#[derive(Default)]
struct Stats {
    packets: u64,
    bytes: u64,
    most_held: usize,
    overruns: u64,
}

fn open(queue_num: u16) -> std::io::Result<nfq::Queue> {
    let mut queue = nfq::Queue::open()?;
    queue.set_recv_enobufs(true)?;
    queue.bind(queue_num)?;
    queue.set_copy_range(queue_num, 0)?;
    queue.set_recv_gso(queue_num, true)?;
    queue.set_queue_max_len(queue_num, 65_536)?;
    queue.set_fail_open(queue_num, true)?;
    Ok(queue)
}
