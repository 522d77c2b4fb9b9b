//! Waiting for SIGTERM or SIGINT, the start of a two-phase shutdown in every Strait binary.

/// Tells the service manager once `ready` resolves (`READY=1`), pings its watchdog if it has
/// one, and returns when SIGTERM or SIGINT arrives, having told it the process drains
/// (`STOPPING=1`).
pub async fn serve_until_signal(ready: impl std::future::Future<Output = ()>) {
    let notifier = std::sync::Arc::new(crate::notify::Notifier::from_env());
    notifier.spawn_watchdog();
    let announce = async {
        ready.await;
        notifier.ready();
        tracing::info!("ready");
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = wait_for_signal() => {}
        () = announce => {}
    }
    notifier.stopping();
}

/// Returns when SIGTERM or SIGINT arrives (never, if the handlers cannot be installed).
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
