//! Giving freed memory back to the system. glibc keeps what a burst of requests freed in its
//! per-thread arenas, so a server that served 64 concurrent layer applies would stay at
//! their peak RSS long after they finished; trimming when the server goes idle brings it
//! back to its working set.

/// Returns free heap memory to the system (glibc's `malloc_trim`; a no-op elsewhere). Walks
/// every arena: call it when a burst ends, not per request.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only takes glibc's allocator locks; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}
