//! The process around a service: allocator settings, then the Tokio runtime.

use std::future::Future;

/// The allocator of every binary that links this crate (the services, the CLI, the tests).
///
/// The incentive apply spent ~38% of its samples in glibc's malloc and free (perf, 40 s of
/// the bench's apply): a recompute builds and drops hundreds of thousands of small postings,
/// explanations and decoded rows per batch, on Tokio workers that share the capped arenas
/// below. mimalloc's thread-local free lists take those without a lock. librdkafka's own
/// allocations (C) stay on glibc, hence the arena cap still applies.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// glibc malloc arenas a service process may use (see [`limit_malloc_arenas`]).
pub const MALLOC_ARENAS: i32 = 2;

/// Runs a service's main future on a multi-threaded Tokio runtime, after
/// [`limit_malloc_arenas`] (which has to come before any thread starts).
pub fn run<F, Fut>(main: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(main())
}

/// Caps glibc's malloc arenas at [`MALLOC_ARENAS`] unless `MALLOC_ARENA_MAX` says
/// otherwise.
///
/// glibc gives each thread that contends for malloc its own arena, up to eight per core,
/// and an arena keeps what its thread freed. A service has a dozen threads (Tokio workers
/// and librdkafka's per-broker threads) that allocate and free batches of MiBs in turn, so
/// each arena ends up holding the high-water mark of its thread: incentive measured ~100
/// MiB resident for a 35 MiB heap, and 87 MiB with two arenas at the same throughput.
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; M_ARENA_MAX with a positive value is
    // valid at any time, and this runs on the main thread before the runtime starts.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}
