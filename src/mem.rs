//! Process memory housekeeping.

/// Returns the heap's free pages to the OS (glibc `malloc_trim`): loading an ONNX model
/// and fitting a DFKDE allocate hundreds of MB transiently, and glibc keeps freed memory
/// in the process (resident) otherwise. Cheap (a few ms); call after such phases, never per
/// frame. A no-op on other C libraries.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks glibc's own allocator state under its arena
        // locks; it has no preconditions on the caller and does not invalidate any live
        // allocation.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(released = released != 0, "malloc_trim");
    }
}
