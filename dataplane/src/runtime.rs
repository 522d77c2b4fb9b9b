//! The threads of the data path, apart from the control side (zone connection, certificate
//! renewal, admin endpoint), so that control-plane work never delays a request.
//!
//! In: `--concurrency`. Out: a runtime handle to spawn the data path on, and its stop.

/// The data path's runtime: one thread running a current-thread runtime (concurrency 1), or a
/// multi-thread runtime with that many workers.
pub struct DataPathRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pool: Option<tokio::runtime::Runtime>,
}

impl DataPathRuntime {
    /// Where to spawn the data path.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Starts the threads.
    pub fn start(concurrency: u16) -> std::io::Result<Self> {
        if concurrency > 1 {
            let pool = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(usize::from(concurrency))
                .thread_name("strait-dp-proxy")
                .enable_all()
                .build()?;
            return Ok(DataPathRuntime { handle: pool.handle().clone(), stop: None, thread: None, pool: Some(pool) });
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("strait-dp-proxy".into()).spawn(move || {
            let _ = runtime.block_on(stopped);
        })?;
        Ok(DataPathRuntime { handle, stop: Some(stop), thread: Some(thread), pool: None })
    }

    /// Stops the threads (after the sidecar's shutdown) and waits for the single one to end.
    /// This blocks: call it from a blocking context.
    pub fn stop(mut self) {
        self.signal_stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(pool) = self.pool.take() {
            // Dropping a runtime blocks, which panics in async code: let it go in the background.
            pool.shutdown_background();
        }
    }
}

/// A sidecar dropped without its shutdown (a failed test) still stops its threads, without
/// waiting for them.
impl Drop for DataPathRuntime {
    fn drop(&mut self) {
        self.signal_stop();
    }
}
