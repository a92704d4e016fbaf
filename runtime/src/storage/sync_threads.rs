//! The threads that sync object databases to disk, off the tokio workers.
//!
//! A sync (`fdatasync`) takes tens to hundreds of microseconds on a virtual
//! disk, during which the thread that asked for it can do nothing else. Run
//! on a tokio worker, that would stall every other task of the worker
//! (sockets, timers, other objects' turns), and cap the syncs in flight at
//! the number of workers. So syncs run here instead: a pool of plain
//! threads, started when work comes and none is idle, at most
//! `sync_threads` of them (see `Builder::sync_threads`), each leaving after
//! [`IDLE`] without work. Disks serve concurrent syncs of different files
//! in parallel, up to their queue depth: the bound is the disk's, not the
//! CPU's.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::sync::lock;

/// How long a thread without work waits before it leaves.
const IDLE: Duration = Duration::from_secs(10);

/// A job: a sync and what follows it.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// The pool. Cheap to clone.
#[derive(Clone)]
pub(crate) struct SyncThreads {
    inner: Arc<Inner>,
}

struct Inner {
    max: usize,
    queue: Mutex<Queue>,
    work: Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    threads: usize,
    idle: usize,
}

impl SyncThreads {
    /// A pool of at most `max` threads (at least one).
    pub(crate) fn new(max: usize) -> Self {
        SyncThreads {
            inner: Arc::new(Inner { max: max.max(1), queue: Mutex::default(), work: Condvar::new() }),
        }
    }

    /// Runs `job` on a thread of the pool, as soon as one is free.
    pub(crate) fn submit(&self, job: Job) {
        let mut queue = lock(&self.inner.queue);
        queue.jobs.push_back(job);
        if queue.idle > 0 {
            drop(queue);
            self.inner.work.notify_one();
            return;
        }
        if queue.threads >= self.inner.max {
            // Every thread is busy: the job waits for the first one free.
            return;
        }
        queue.threads += 1;
        drop(queue);
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new().name("stead-sync".into()).spawn(move || inner.run());
        if let Err(err) = spawned {
            // The job waits for a thread that exists, if any; with none,
            // it runs here (a sync on the caller's thread, as without a pool).
            let mut queue = lock(&self.inner.queue);
            queue.threads -= 1;
            tracing::warn!(%err, "could not start a sync thread");
            if queue.threads == 0
                && let Some(job) = queue.jobs.pop_front()
            {
                drop(queue);
                job();
            }
        }
    }
}

impl Inner {
    fn run(&self) {
        let mut queue = lock(&self.queue);
        loop {
            if let Some(job) = queue.jobs.pop_front() {
                drop(queue);
                // Jobs are the runtime's own; a panic in one must still not
                // take the thread's later jobs down with it.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                queue = lock(&self.queue);
                continue;
            }
            queue.idle += 1;
            let (next, timeout) =
                self.work.wait_timeout(queue, IDLE).unwrap_or_else(|poisoned| poisoned.into_inner());
            queue = next;
            queue.idle -= 1;
            if timeout.timed_out() && queue.jobs.is_empty() {
                queue.threads -= 1;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn jobs_run_on_at_most_max_threads_and_all_run() {
        let pool = SyncThreads::new(3);
        let (done, finished) = mpsc::channel();
        let names = Arc::new(Mutex::new(std::collections::HashSet::new()));
        for i in 0..100 {
            let (done, names) = (done.clone(), names.clone());
            pool.submit(Box::new(move || {
                names.lock().unwrap().insert(std::thread::current().id());
                std::thread::sleep(Duration::from_micros(200));
                done.send(i).unwrap();
            }));
        }
        let mut seen: Vec<i32> = (0..100).map(|_| finished.recv().unwrap()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        let threads = names.lock().unwrap().len();
        assert!((1..=3).contains(&threads), "{threads} threads ran the jobs");
    }

    #[test]
    fn a_panicking_job_does_not_stop_the_next() {
        let pool = SyncThreads::new(1);
        let (done, finished) = mpsc::channel();
        pool.submit(Box::new(|| panic!("a job panicked")));
        pool.submit(Box::new(move || done.send(()).unwrap()));
        finished.recv().unwrap();
    }
}
