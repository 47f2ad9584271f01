//! The stop signal: SIGTERM or SIGINT.

use std::future::Future;

/// Listens for SIGTERM and SIGINT from the call on, and resolves on the
/// first. The handlers are installed here, not when the future is first
/// awaited: the server awaits it only once it has started, and a SIGTERM
/// that came while it was still starting (its ports already open) found
/// the default action and ended the process with no drain.
pub fn signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let stop = {
        use tokio::signal::unix::{signal, SignalKind};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (terminate, interrupt) {
                (Ok(mut terminate), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (Err(error), Ok(mut interrupt)) => {
                    tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT will stop the server");
                    interrupt.recv().await;
                }
                (Ok(mut terminate), Err(error)) => {
                    tracing::error!(%error, "cannot listen for SIGINT; only SIGTERM will stop the server");
                    terminate.recv().await;
                }
                (Err(error), Err(_)) => {
                    tracing::error!(%error, "cannot listen for SIGTERM or SIGINT; the server stops only when killed");
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    #[cfg(not(unix))]
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    async move {
        stop.await;
        tracing::info!("stop signal received");
    }
}
