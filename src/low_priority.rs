//! A thread of its own, at a lower CPU priority, for background work that
//! must not take the core away from Check: the webhook dispatcher.
//!
//! Delivering a webhook costs CPU on the replica that delivers it (the
//! outbound HTTP exchange, the signature, the claim and the record). On the
//! runtime that answers Check, at the default priority, that work takes its
//! share of the core from Checks whenever both want it. Here it runs on a
//! single-threaded runtime whose thread has [`LOW_NICE`]: it gets every idle
//! cycle and a tenth of a default thread's weight when Check wants the core
//! (the same trade as the SQLite writer's, `store::writer_priority`), and
//! runs under `SCHED_BATCH` ([`run_as_batch`]). If
//! delivery falls behind, the outbox holds the events (docs/behaviour.md §9):
//! nothing is lost, it is delivered later.

use std::future::Future;

use anyhow::Context;
use tokio::task::JoinHandle;

/// The nice value of a low-priority thread: a tenth of a default thread's
/// CPU weight when both want the core.
const LOW_NICE: i32 = 10;

/// Runs the future `task` builds on a new thread named `name` (at most 15
/// bytes show in `top`), on a current-thread runtime, at [`LOW_NICE`]. The
/// handle resolves when the future has finished; dropping it does not stop
/// the work.
///
/// The runtime itself lives on until `release` resolves: a database
/// connection the task opened stays in the shared pool, registered with
/// this runtime's I/O driver, and another task that takes it from the pool
/// later (the credit return during a drain) needs that driver running. So
/// `release` is "the pools are closed".
pub fn spawn<F, Fut>(
    name: &str,
    task: F,
    release: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (finished, ended) = tokio::sync::oneshot::channel::<()>();
    let thread_name = name.to_owned();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_this_thread(&thread_name);
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => {
                    runtime.block_on(task());
                    let _ = finished.send(());
                    runtime.block_on(release);
                }
                Err(error) => {
                    tracing::error!(%error, thread = %thread_name, "cannot start a background runtime");
                    let _ = finished.send(());
                }
            }
        })
        .with_context(|| format!("cannot start the {name} thread"))?;
    Ok(tokio::spawn(async move {
        let _ = ended.await;
    }))
}

/// Failure costs Check some throughput, not correctness: logged and
/// otherwise ignored.
#[cfg(target_os = "linux")]
fn lower_this_thread(name: &str) {
    use rustix::process::{getpriority_process, setpriority_process};
    // On Linux a nice value belongs to a thread, and `None` (0) names the
    // calling thread only, not the whole process. Never raised: a keygate
    // started with a higher nice keeps it.
    let already_low = getpriority_process(None).is_ok_and(|current| current >= LOW_NICE);
    if !already_low {
        if let Err(error) = setpriority_process(None, LOW_NICE) {
            tracing::warn!(%error, thread = name, "could not lower a background thread's priority; it competes with Check at full weight");
        }
    }
    if let Err(error) = run_as_batch(None) {
        tracing::warn!(%error, thread = name, "could not put a background thread under SCHED_BATCH; it preempts Check when it wakes");
    }
}

/// Puts thread `tid` (`None`: the calling thread) under `SCHED_BATCH`, its
/// nice value kept. The scheduler then never lets it preempt the running
/// thread when it wakes: it runs when Check's thread sleeps or its time
/// slice ends, and does more at a time. Woken by every answer and every
/// statement under the default policy, the dispatcher and the SQLite
/// writer preempted Check's thread about 1,000 times in 3 s of delivering
/// 1,000 webhooks a second; under `SCHED_BATCH` about 630 times, and Check
/// kept more of the core (BENCHMARKS.md, session 15). Any thread may move
/// itself or its process's threads between the normal policies without
/// privilege.
#[cfg(target_os = "linux")]
pub(crate) fn run_as_batch(tid: Option<rustix::process::Pid>) -> std::io::Result<()> {
    let param: uapi::c::sched_param = uapi::pod_zeroed();
    let tid = tid.map_or(0, |tid| tid.as_raw_nonzero().get());
    uapi::sched_setscheduler(tid, uapi::c::SCHED_BATCH, &param)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn lower_this_thread(_name: &str) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_work_runs_on_its_own_lowered_thread_and_the_handle_waits_for_it() {
        let (seen, saw) = std::sync::mpsc::channel();
        let here = rustix::process::getpriority_process(None).unwrap();
        let policy_here = uapi::sched_getscheduler(0).unwrap();
        let handle = spawn(
            "kg-test-low",
            move || async move {
                let nice = rustix::process::getpriority_process(None).unwrap();
                let policy = uapi::sched_getscheduler(0).unwrap();
                let name = std::thread::current().name().map(str::to_owned);
                tokio::task::yield_now().await;
                seen.send((nice, policy, name)).unwrap();
            },
            std::future::ready(()),
        )
        .unwrap();
        handle.await.unwrap();
        let (nice, policy, name) = saw
            .try_recv()
            .expect("the handle resolved before the work ran");
        assert_eq!(name.as_deref(), Some("kg-test-low"));
        // Under `nice -n 19` the thread cannot go lower than it already is.
        assert_eq!(nice, LOW_NICE.max(here));
        assert_eq!(policy, uapi::c::SCHED_BATCH);
        assert_eq!(
            uapi::sched_getscheduler(0).unwrap(),
            policy_here,
            "the caller's thread changed policy"
        );
        assert_eq!(
            rustix::process::getpriority_process(None).unwrap(),
            here,
            "the caller's thread was lowered"
        );
    }
}
