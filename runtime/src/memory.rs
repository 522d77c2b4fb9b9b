//! The C allocator's settings for long-running processes with many connections.
//!
//! glibc's malloc gives threads up to eight arenas per core, and memory freed in one arena is
//! reused only by the threads that allocate from it: a control plane whose worker and blocking
//! threads take turns with thousands of long-lived connections keeps the high-water mark of
//! every arena (measured on `strait-zone` with 1,000 sidecars: about 40 KB more resident memory
//! per sidecar than with one arena per core). This caps the arenas at one per core.
//!
//! The only `unsafe` of the crate: `mallopt` is a C function; calling it with a documented
//! parameter and a positive value has no memory-safety precondition.
#![allow(unsafe_code)]

/// Caps glibc's malloc arenas at one per available core (at least 2). Call it first thing in
/// `main`, before threads start; elsewhere than glibc it does nothing. Returns the cap set.
pub fn one_arena_per_core() -> Option<usize> {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get).max(2);
    set_arena_max(cores).then_some(cores)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(arenas: usize) -> bool {
    let value = libc::c_int::try_from(arenas).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt takes a parameter number and an int; M_ARENA_MAX with a positive value
    // only changes how many arenas later allocations may create.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, value) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: usize) -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn the_cap_is_accepted() {
        let set = super::one_arena_per_core().expect("glibc accepts M_ARENA_MAX");
        assert!(set >= 2);
    }
}
