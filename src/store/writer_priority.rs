//! Keeps the SQLite writer from taking the CPU away from Check.
//!
//! SQLite runs inside keygate: sqlx gives every connection a worker thread
//! of its own, and the single writer connection spends most of its time on
//! usage flushes, thousands of rows at a time. At the default priority the
//! scheduler hands that thread whole time slices while Checks wait behind
//! it: on one core at 11,000 Checks/s with usage on, p90 was 31 ms and p99
//! 51 ms before this module, 1.6–2.0 ms and 7.5–8.7 ms with it, no usage
//! dropped either way (BENCHMARKS.md, s4). So the writer's thread runs at
//! [`WRITER_NICE`]: it still gets every idle cycle, and a tenth of a
//! default thread's weight when Check wants the core; and under
//! `SCHED_BATCH`, so that waking it (a flush, a webhook round's statements)
//! does not preempt Check's thread (`low_priority::run_as_batch`). If it
//! falls behind, the usage buffer absorbs the backlog and, when full, drops
//! and counts events, as it does whenever the store is slow: Check never
//! waits for usage. KeyAdmin writes share the writer, so under load they wait longer
//! too (a revoke up to 1.3–2.2 s instead of 0.35–0.38 s; BENCHMARKS.md).
//!
//! Threads on Linux have a nice value each, so only the writer's thread is
//! lowered; the Check pool's readers keep the default. sqlx starts the
//! thread itself, so it is found by the name the writer's connections give
//! their threads.

/// Prefix of the writer connections' thread names. Linux keeps the first
/// 15 bytes of a name (`sqlite-writer-12` shows as `sqlite-writer-1`), so
/// the prefix must fit in them.
pub(super) const WRITER_THREAD_PREFIX: &str = "sqlite-writer";
const _: () = assert!(WRITER_THREAD_PREFIX.len() <= 15);

/// The writer thread's nice value: a tenth of a default thread's CPU
/// weight when both want the core.
pub(super) const WRITER_NICE: i32 = 10;

/// The thread name for writer connection `id`.
pub(super) fn writer_thread_name(id: u64) -> String {
    format!("{WRITER_THREAD_PREFIX}-{id}")
}

/// Lowers every writer thread of this process to [`WRITER_NICE`] and puts
/// it under `SCHED_BATCH`; called
/// after each writer connection is made, when its thread exists. Returns how
/// many threads were lowered. Failure costs latency, not correctness, so it
/// is logged and otherwise ignored.
pub(super) fn lower_writer_threads() -> usize {
    match lower_threads_named(WRITER_THREAD_PREFIX, WRITER_NICE) {
        Ok(lowered) => lowered,
        Err(error) => {
            tracing::warn!(%error, "could not lower the SQLite writer thread's priority; usage flushes may delay Checks");
            0
        }
    }
}

#[cfg(target_os = "linux")]
fn lower_threads_named(prefix: &str, nice: i32) -> std::io::Result<usize> {
    use rustix::process::{getpriority_process, setpriority_process};

    let mut lowered = 0;
    for tid in threads_named(prefix)? {
        let below = getpriority_process(Some(tid)).is_ok_and(|current| current < nice);
        if below && setpriority_process(Some(tid), nice).is_ok() {
            lowered += 1;
        }
        // Like the nice value, the policy costs Check throughput if it
        // cannot be set, not correctness; a thread that exited is skipped.
        let _ = crate::low_priority::run_as_batch(Some(tid));
    }
    Ok(lowered)
}

/// This process's threads whose names start with `prefix`. Any thread may
/// exit between the listing and the calls about it (an old writer does,
/// just after its replacement connects), so one that cannot be read is
/// skipped, and callers must expect calls about a listed thread to fail.
#[cfg(target_os = "linux")]
fn threads_named(prefix: &str) -> std::io::Result<Vec<rustix::process::Pid>> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")?.flatten() {
        let task = entry.path();
        let Ok(name) = std::fs::read_to_string(task.join("comm")) else {
            continue;
        };
        let tid = task
            .file_name()
            .and_then(|tid| tid.to_str()?.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw);
        threads.extend(tid.filter(|_| name.trim_end().starts_with(prefix)));
    }
    Ok(threads)
}

#[cfg(not(target_os = "linux"))]
fn lower_threads_named(_prefix: &str, _nice: i32) -> std::io::Result<usize> {
    Ok(0)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        rustix::process::getpriority_process(None).expect("getpriority")
    }

    #[test]
    fn only_threads_with_the_writer_prefix_are_lowered() {
        let (named_tx, named_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let done_rx = std::sync::Arc::new(std::sync::Mutex::new(done_rx));
        let spawn = |name: String| {
            let named_tx = named_tx.clone();
            let done_rx = done_rx.clone();
            std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    named_tx.send(()).unwrap();
                    let _ = done_rx.lock().unwrap().recv();
                    (nice_of_this_thread(), uapi::sched_getscheduler(0).unwrap())
                })
                .unwrap()
        };
        let prefix = "kg-test-lower";
        let target = spawn(format!("{prefix}-1"));
        let bystander = spawn("kg-test-other".into());
        named_rx.recv().unwrap();
        named_rx.recv().unwrap();

        // Above this thread's own value, whatever the test runner's is.
        let nice = nice_of_this_thread().max(6) + 1;
        assert_eq!(lower_threads_named(prefix, nice).unwrap(), 1);
        // Already at that value: nothing more to do.
        assert_eq!(lower_threads_named(prefix, nice).unwrap(), 0);

        done_tx.send(()).unwrap();
        done_tx.send(()).unwrap();
        let policy_here = uapi::sched_getscheduler(0).unwrap();
        assert_eq!(target.join().unwrap(), (nice, uapi::c::SCHED_BATCH));
        assert_eq!(
            bystander.join().unwrap(),
            (nice_of_this_thread(), policy_here)
        );
    }

    /// Nice values of this process's threads whose names start with `prefix`.
    fn nices_of_threads_named(prefix: &str) -> Vec<i32> {
        threads_named(prefix)
            .unwrap()
            .into_iter()
            .filter_map(|tid| rustix::process::getpriority_process(Some(tid)).ok())
            .collect()
    }

    #[tokio::test]
    async fn a_sqlite_store_runs_its_writer_below_and_its_readers_at_the_default_priority() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("priority.db").display());
        let store = crate::store::Store::connect(&crate::store::StoreOptions::new(url))
            .await
            .unwrap();
        store.migrate().await.unwrap(); // a write: the writer connection exists
        let unknown = crate::domain::KeyHash::of_token("no-such-token");
        assert!(store.find_for_check(&unknown).await.unwrap().is_none()); // a reader too

        // Other tests in this process may have writers of their own, each
        // lowered by its own connection.
        let lowered = WRITER_NICE.max(nice_of_this_thread());
        assert!(nices_of_threads_named(WRITER_THREAD_PREFIX).contains(&lowered));
        let policies = |prefix: &str| -> Vec<i32> {
            threads_named(prefix)
                .unwrap()
                .into_iter()
                .filter_map(|tid| uapi::sched_getscheduler(tid.as_raw_nonzero().get()).ok())
                .collect()
        };
        assert!(policies(WRITER_THREAD_PREFIX).contains(&uapi::c::SCHED_BATCH));
        let policy_here = uapi::sched_getscheduler(0).unwrap();
        assert!(policies("sqlx-sqlite-wor")
            .iter()
            .all(|p| *p == policy_here));
        let readers = nices_of_threads_named("sqlx-sqlite-wor");
        assert!(!readers.is_empty());
        assert!(readers.iter().all(|nice| *nice == nice_of_this_thread()));
        store.close().await;
    }
}
