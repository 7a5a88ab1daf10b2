//! The runtime every upstream connection of a process runs on: one tokio current-thread
//! runtime on a thread of its own, started on first use.
//!
//! One thread per worker process: the gateway's Python thread hands a request over and goes on
//! with other requests while this thread does the HTTP work (framing, TLS, decompression,
//! stream parsing) without the GIL. Granian forks its workers from a parent that may have
//! used the runtime (a `tollway check`, tests): a forked child has no such thread, so a child
//! starts its own (the runtime is keyed by process id).

use std::sync::Mutex;

use tokio::runtime::{Builder, Handle};

static RUNTIME: Mutex<Option<(u32, Handle)>> = Mutex::new(None);

/// The process's runtime, started if needed (an error only when the process is out of threads
/// or file descriptors).
pub fn handle() -> std::io::Result<Handle> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if let Some((owner, handle)) = slot.as_ref() {
        if *owner == pid {
            return Ok(handle.clone());
        }
    }
    let runtime = Builder::new_current_thread()
        .enable_all()
        .thread_name("tollway-upstream")
        .build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("tollway-upstream".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    *slot = Some((pid, handle.clone()));
    Ok(handle)
}
