//! Threads that do background work (writing access logs) beside a data path.
//!
//! A background thread that renders and writes a batch of lines for 50 µs delays any request
//! whose thread the kernel puts on the same core meanwhile: with four sidecars on two cores
//! that is about one request in a hundred, so it shows in the p99. Scheduled as `SCHED_IDLE`,
//! the thread runs on time nobody else wants and a waking data-path thread takes its core at
//! once. On a node whose cores are all busy it still gets a small share (weight 3 against a
//! normal thread's 1024), so its work waits rather than stops.
//!
//! `unsafe`: `sched_setscheduler` on the calling thread with a parameter that lives for the call.
#![allow(unsafe_code)]

use std::io;

/// Makes the calling thread (only it) run when its core has nothing else to run.
pub fn run_when_idle() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a plain struct that outlives the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> libc::c_int {
        // SAFETY: no arguments but the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn only_the_calling_thread_runs_when_idle() {
        let before = policy();
        let inside = std::thread::spawn(|| {
            run_when_idle().expect("SCHED_IDLE needs no privilege");
            policy()
        })
        .join()
        .expect("thread");
        assert_eq!(inside, libc::SCHED_IDLE);
        assert_eq!(policy(), before, "the calling thread's siblings keep their policy");
        assert_ne!(before, libc::SCHED_IDLE);
    }
}
