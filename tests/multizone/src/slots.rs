//! Slots: small integers that keep concurrently running test networks apart (address block,
//! namespace prefix). nextest runs every test in its own process, so a slot is owned through a
//! lock file `/tmp/strait-e2e/slot-<n>.lock`, created with `O_EXCL` and holding the owner's pid
//! and process start time. A slot whose owner is dead (crash, SIGKILL, pid reused by another
//! program) is reclaimed by the next allocator. Allocation itself runs under an `flock` on
//! `/tmp/strait-e2e/alloc.lock`, so "owner is dead, take it over" cannot race between two
//! allocators, and a crashed allocator releases that lock with its process.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::sys;

/// Number of slots: one `/24` of `198.18.0.0/15` (or `127.77.<slot>.0/24`) each.
pub const SLOT_COUNT: u16 = 256;

/// Directory of the lock files shared by every test process on the machine.
pub const LOCK_DIR: &str = "/tmp/strait-e2e";

/// An owned slot; dropping it deletes the lock file (after the network using it is gone).
#[derive(Debug)]
pub struct Slot {
    index: u8,
    path: PathBuf,
    owner: Owner,
}

/// What a lock file records: who owns the slot. The start time tells a live owner from an
/// unrelated process that happens to have been given the same pid later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    pid: u32,
    start_time: u64,
}

impl Slot {
    /// Takes the lowest free slot, reclaiming slots of dead owners on the way. Still under
    /// the allocation lock, calls `cleanup(mine, is_stale)` so the caller can remove what
    /// earlier owners left behind (namespaces): `is_stale(k)` is true when slot `k` has no
    /// live owner, so nobody can be using its resources and nobody can start to meanwhile.
    pub fn acquire(cleanup: impl FnOnce(u8, &dyn Fn(u8) -> bool)) -> Slot {
        Self::acquire_in(Path::new(LOCK_DIR), cleanup)
    }

    /// [`Slot::acquire`] with lock files in `dir`.
    pub(crate) fn acquire_in(dir: &Path, cleanup: impl FnOnce(u8, &dyn Fn(u8) -> bool)) -> Slot {
        let mutex = open_shared(dir);
        sys::flock_exclusive(&mutex).unwrap_or_else(|e| panic!("cannot lock {}/alloc.lock: {e}", dir.display()));

        let slot = Self::take_free(dir, Owner::current());
        cleanup(slot.index, &|k| !Owner::read(&lock_path(dir, k)).is_some_and(|o| o.is_alive()));
        drop(mutex); // releases the flock
        slot
    }

    fn take_free(dir: &Path, me: Owner) -> Slot {
        for index in 0..SLOT_COUNT {
            let index = u8::try_from(index).expect("SLOT_COUNT fits in u8");
            let path = lock_path(dir, index);
            if try_create(&path, me) {
                return Slot { index, path, owner: me };
            }
            match Owner::read(&path) {
                Some(owner) if owner.is_alive() => continue,
                stale => {
                    eprintln!(
                        "strait-e2e: reclaiming slot {index} from dead owner {}",
                        stale.map_or_else(|| "(unreadable lock)".to_owned(), |o| o.to_string())
                    );
                    if let Err(e) = fs::remove_file(&path) {
                        // E.g. a lock left by root, seen by an ordinary user.
                        eprintln!("strait-e2e: cannot remove stale {}: {e}", path.display());
                        continue;
                    }
                    if try_create(&path, me) {
                        return Slot { index, path, owner: me };
                    }
                }
            }
        }
        panic!(
            "all {SLOT_COUNT} test network slots in {} are held by live processes; \
             are that many tests running?",
            dir.display()
        )
    }

    /// This slot's number.
    pub fn index(&self) -> u8 {
        self.index
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Only delete the lock if it is still ours (a human may have cleaned up by hand and
        // another test may own the slot now).
        if Owner::read(&self.path) == Some(self.owner) {
            if let Err(e) = fs::remove_file(&self.path) {
                eprintln!("strait-e2e: cannot release {}: {e}", self.path.display());
            }
        }
    }
}

/// Creates the lock directory and opens its allocation mutex file. Both are made usable by
/// every user (sticky, world-writable directory like /tmp), so that a root run and an
/// unprivileged loopback run on the same machine can share slots.
fn open_shared(dir: &Path) -> File {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create slot directory {}: {e}", dir.display()));
    // Fails harmlessly when another user created it: then its mode is theirs to set.
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o1777));
    let path = dir.join("alloc.lock");
    let rw = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path);
    match rw {
        Ok(file) => {
            let _ = file.set_permissions(fs::Permissions::from_mode(0o666));
            file
        }
        // flock needs no write access: someone else's file is fine read-only.
        Err(_) => File::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display())),
    }
}

fn lock_path(dir: &Path, index: u8) -> PathBuf {
    dir.join(format!("slot-{index}.lock"))
}

/// Creates the lock file with `O_EXCL`; false if it already exists.
fn try_create(path: &Path, owner: Owner) -> bool {
    match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(mut file) => {
            write_owner(&mut file, owner).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            true
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
        Err(e) => panic!("cannot create {}: {e}", path.display()),
    }
}

fn write_owner(file: &mut File, owner: Owner) -> std::io::Result<()> {
    writeln!(file, "pid {}\nstart {}", owner.pid, owner.start_time)?;
    file.sync_all()
}

impl Owner {
    fn current() -> Owner {
        let pid = std::process::id();
        let start_time = start_time(pid).expect("/proc/self/stat is readable");
        Owner { pid, start_time }
    }

    fn read(path: &Path) -> Option<Owner> {
        let text = fs::read_to_string(path).ok()?;
        let mut pid = None;
        let mut start_time = None;
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("pid", v)) => pid = v.trim().parse().ok(),
                Some(("start", v)) => start_time = v.trim().parse().ok(),
                _ => {}
            }
        }
        Some(Owner { pid: pid?, start_time: start_time? })
    }

    fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {}", self.pid)
    }
}

/// Start time (field 22 of `/proc/<pid>/stat`) of a live, non-zombie process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` (field 2) may hold spaces and parentheses; fields after the last ')' are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?; // field 3
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok() // field 22
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = Owner::current();
        assert!(me.is_alive());
        let reused = Owner { start_time: me.start_time + 1, ..me };
        assert!(!reused.is_alive());
    }

    #[test]
    fn owner_round_trips_through_a_lock_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("slot.lock");
        assert!(try_create(&path, Owner::current()));
        assert!(!try_create(&path, Owner::current()));
        assert_eq!(Owner::read(&path), Some(Owner::current()));
    }

    #[test]
    fn slots_of_dead_owners_are_reclaimed_and_live_ones_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut dead = std::process::Command::new("true").spawn().expect("spawn true");
        let dead_pid = dead.id();
        dead.wait().expect("wait true");
        let dead = Owner { pid: dead_pid, start_time: 1 };
        let path0 = lock_path(dir.path(), 0);
        let mut f = File::create(&path0).expect("create lock 0");
        write_owner(&mut f, dead).expect("write lock 0");

        let mut seen = None;
        let a = Slot::acquire_in(dir.path(), |mine, is_stale| {
            seen = Some((mine, is_stale(0), is_stale(1), is_stale(7)));
        });
        assert_eq!(a.index(), 0, "dead owner's slot is reclaimed");
        // Slot 0 is ours now (live), 1 and 7 have no owner.
        assert_eq!(seen, Some((0, false, true, true)));
        assert_eq!(Owner::read(&path0), Some(Owner::current()));

        let b = Slot::acquire_in(dir.path(), |_, _| {});
        assert_eq!(b.index(), 1, "a live owner's slot is skipped");
        drop(a);
        assert!(!path0.exists(), "drop releases the slot");
        drop(b);
        assert!(!lock_path(dir.path(), 1).exists());
    }
}
