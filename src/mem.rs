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

/// glibc thresholds for the heap that serves what [`recycle`] leaves to it (requests under
/// [`recycle::LARGE_MIN`]): `mmap` only from `LARGE_MIN` up, and a 4 MiB trim threshold.
/// glibc raises both by itself once it has freed a large `mmap`'d block, which it never sees
/// when the recycling allocator takes those; left at their 128 KiB defaults, every
/// 128–256 KiB request became an `mmap`/`munmap` pair and each worker's arena was trimmed
/// (`MADV_DONTNEED`) and faulted back in several times per frame (measured: ~4× glibc-only's
/// page faults). Call first thing in `main`; `MALLOC_MMAP_THRESHOLD_` /
/// `MALLOC_TRIM_THRESHOLD_` in the environment win. A no-op on other C libraries.
pub fn tune_small_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set = |param: i32, env: &str, value: usize| {
            if std::env::var_os(env).is_some() {
                return;
            }
            let v = i32::try_from(value).unwrap_or(i32::MAX);
            // SAFETY: mallopt only sets a glibc tunable; both thresholds accept any
            // non-negative value at any time.
            if unsafe { libc::mallopt(param, v) } != 1 {
                tracing::debug!(env, value, "mallopt refused");
            }
        };
        set(
            libc::M_MMAP_THRESHOLD,
            "MALLOC_MMAP_THRESHOLD_",
            recycle::LARGE_MIN,
        );
        set(libc::M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", 4 << 20);
    }
}
