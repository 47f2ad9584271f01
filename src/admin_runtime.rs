//! The runtime the administrative listeners (KeyAdmin gRPC and the REST API)
//! run on, apart from the one that answers Check and forward-auth.
//!
//! An admin request decodes, validates, hashes and sorts on the thread that
//! serves it. On a runtime shared with Check, a burst of large admin requests
//! occupies the worker threads Check needs, and a cache-hit Check waits
//! behind them (a 13.5 s stall was measured before request sizes were capped;
//! see docs/architecture.md, "Runtimes"). On their own runtime, admin requests
//! compete with Check only for CPU time, which the kernel shares fairly,
//! never for a worker thread.

use std::{future::Future, net::TcpListener as StdTcpListener};

use anyhow::Context;
use tokio::{
    net::TcpListener,
    runtime::{Builder, Runtime},
    task::JoinHandle,
};

/// Worker threads of the admin runtime: admin traffic is small next to
/// Check's, and more threads would only contend with Check for CPU.
const ADMIN_WORKER_THREADS: usize = 2;

/// Owns the admin runtime. Dropping it stops the runtime without blocking,
/// so it may be dropped from inside another runtime (the lifecycle task).
pub struct AdminRuntime {
    runtime: Option<Runtime>,
}

impl AdminRuntime {
    pub fn start() -> anyhow::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(ADMIN_WORKER_THREADS)
            .thread_name("keygate-admin")
            .enable_all()
            .build()
            .context("cannot start the admin runtime")?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// Serves `listener` on the admin runtime with the server `serve` builds.
    ///
    /// The listener moves over as a std socket and is registered again inside
    /// the admin runtime, so that accepting and reading its connections is
    /// driven by this runtime's I/O driver, not by the Check runtime's.
    pub fn serve<F>(
        &self,
        listener: TcpListener,
        serve: impl FnOnce(TcpListener) -> F,
    ) -> anyhow::Result<JoinHandle<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self
            .runtime
            .as_ref()
            .context("the admin runtime has stopped")?;
        let listener: StdTcpListener = listener
            .into_std()
            .context("cannot hand a listener to the admin runtime")?;
        let _inside = runtime.enter();
        let listener = TcpListener::from_std(listener)
            .context("cannot register a listener with the admin runtime")?;
        Ok(runtime.spawn(serve(listener)))
    }
}

impl Drop for AdminRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
