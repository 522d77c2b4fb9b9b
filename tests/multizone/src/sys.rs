//! The few raw syscalls the harness needs and std does not offer: signalling a process group,
//! `flock` for the slot allocator's mutex, and `setns` to open sockets inside a host's network
//! namespace. Each wrapper is safe to call: it only passes plain integers and a borrowed fd.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Signal to send with [`signal_group`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Term,
    Kill,
    Stop,
    Cont,
}

/// Sends `sig` to every process of the process group `pgid`; `Ok(false)` if none exists.
pub(crate) fn signal_group(pgid: u32, sig: Signal) -> io::Result<bool> {
    send(-checked_pid(pgid)?, sig)
}

/// Sends `sig` to the single process `pid`; `Ok(false)` if it does not exist.
pub(crate) fn signal_pid(pid: u32, sig: Signal) -> io::Result<bool> {
    send(checked_pid(pid)?, sig)
}

fn checked_pid(pid: u32) -> io::Result<libc::pid_t> {
    match libc::pid_t::try_from(pid) {
        // kill(0/-1/1, ..) would hit far more than one test's processes.
        Ok(p) if p > 1 => Ok(p),
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("refusing to signal pid {pid}"))),
    }
}

fn send(target: libc::pid_t, sig: Signal) -> io::Result<bool> {
    let raw = match sig {
        Signal::Term => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
        Signal::Stop => libc::SIGSTOP,
        Signal::Cont => libc::SIGCONT,
    };
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    let rc = unsafe { libc::kill(target, raw) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Blocks until this open file description holds an exclusive `flock` (released on close or
/// when the process dies, which is what makes it a crash-safe mutex between test processes).
pub(crate) fn flock_exclusive(file: &File) -> io::Result<()> {
    loop {
        // SAFETY: flock(2) on a file descriptor that `file` keeps open for the whole call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Moves the calling thread (only it) into the network namespace `ns_file` refers to
/// (`/run/netns/<name>`). Threads it spawns afterwards inherit that namespace.
pub(crate) fn enter_netns(ns_file: &File) -> io::Result<()> {
    // SAFETY: setns(2) on a file descriptor that `ns_file` keeps open for the whole call.
    let rc = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
