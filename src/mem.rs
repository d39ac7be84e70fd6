//! Process memory housekeeping.

pub mod recycle;

/// Returns the heap's free pages to the OS (glibc `malloc_trim`): loading an ONNX model
/// and fitting a DFKDE allocate hundreds of MB transiently, and glibc keeps freed memory
/// in the process (resident) otherwise. Cheap (a few ms); call after such phases, never per
/// frame. A no-op on other C libraries. Also unmaps the large-block cache of
/// [`recycle::RECYCLE`] (when the binary installs it as the global allocator).
pub fn release_free_heap() {
    recycle::release_cache();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks glibc's own allocator state under its arena
        // locks; it has no preconditions on the caller and does not invalidate any live
        // allocation.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(released = released != 0, "malloc_trim");
    }
}

/// Caps glibc's malloc arenas at `n` (what `MALLOC_ARENA_MAX` does, which the unit also
/// sets): by default glibc gives each busy thread its own arena, and every inference worker,
/// capture thread and tokio thread then keeps its own free fragments resident. Call first
/// thing in `main`, before threads start. A no-op on other C libraries.
pub fn limit_arenas(n: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets a glibc tunable; M_ARENA_MAX with a positive value is
        // valid at any time (it bounds arenas created from now on).
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, n) };
        if ok != 1 {
            tracing::debug!(n, "mallopt(M_ARENA_MAX) refused");
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = n;
}
