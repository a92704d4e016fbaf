//! Group commit: writers that arrive while a batch is being written share
//! the next batch, and so one transaction and one sync.
//!
//! Each writer adds its changes to the pending batch and waits until that
//! batch is written. If nobody is writing, the writer itself writes
//! everything pending, its own changes among them, and wakes the others.
//! Writes are serialised, but a writer never waits for more than the batch
//! being written and its own: under load, one sync covers many writers
//! instead of each waiting for every sync before its own.
//!
//! Waiting blocks the writer's thread (on a condition variable, not a
//! spin): writers are turns, whose storage is synchronous anyway.

use std::panic::AssertUnwindSafe;
use std::sync::{Condvar, Mutex};

use crate::sync::lock;

/// Batches of changes of type `T`, written one batch at a time.
pub(crate) struct GroupCommit<T> {
    queue: Mutex<Queue<T>>,
    written: Condvar,
}

struct Queue<T> {
    /// The changes of the next batch.
    pending: Vec<T>,
    /// The writers whose changes are in `pending`.
    waiting: usize,
    /// Batches taken to be written (the next is number `taken + 1`).
    taken: u64,
    /// Batches written (in order: one is written at a time).
    written: u64,
    /// A writer is writing batch `taken`.
    writing: bool,
    /// Failed batches: number, error, writers yet to learn of it.
    failed: Vec<(u64, String, usize)>,
}

impl<T> GroupCommit<T> {
    pub(crate) fn new() -> Self {
        GroupCommit {
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                waiting: 0,
                taken: 0,
                written: 0,
                writing: false,
                failed: Vec::new(),
            }),
            written: Condvar::new(),
        }
    }

    /// Writes `changes` in the next batch, and returns once that batch is
    /// written, with its number (batches are numbered from 1, in the order
    /// they are written). If this writer writes the batch, it calls `write`
    /// with every pending change; otherwise another writer's `write` does
    /// (all writers of one `GroupCommit` pass the same function).
    pub(crate) fn submit(
        &self,
        changes: impl IntoIterator<Item = T>,
        write: impl FnOnce(Vec<T>) -> Result<(), String>,
    ) -> Result<u64, String> {
        let mut queue = lock(&self.queue);
        queue.pending.extend(changes);
        queue.waiting += 1;
        let mine = queue.taken + 1;
        loop {
            if queue.written >= mine {
                return queue.outcome(mine).map(|()| mine);
            }
            if !queue.writing {
                break;
            }
            queue = self.written.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        // Nobody writes: this writer writes batch `mine`, its own changes
        // and everyone's who came since the last batch was taken.
        queue.writing = true;
        queue.taken += 1;
        let batch = std::mem::take(&mut queue.pending);
        let others = std::mem::take(&mut queue.waiting) - 1;
        drop(queue);
        // `write` is the runtime's own code; a panic in it must still not
        // leave the other writers waiting for good.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| write(batch)))
            .unwrap_or_else(|_| Err("writing the batch panicked".to_string()));
        let mut queue = lock(&self.queue);
        queue.writing = false;
        queue.written = mine;
        if let Err(err) = &result
            && others > 0
        {
            queue.failed.push((mine, err.clone(), others));
        }
        drop(queue);
        self.written.notify_all();
        result.map(|()| mine)
    }

    /// How many batches have been written (successfully or not).
    pub(crate) fn written(&self) -> u64 {
        lock(&self.queue).written
    }

    /// How many changes wait for the next batch.
    #[cfg(test)]
    fn pending(&self) -> usize {
        lock(&self.queue).pending.len()
    }
}

impl<T> Queue<T> {
    /// How batch `batch`, written by another writer, went.
    fn outcome(&mut self, batch: u64) -> Result<(), String> {
        let Some(at) = self.failed.iter().position(|(number, ..)| *number == batch) else { return Ok(()) };
        let (_, err, left) = &mut self.failed[at];
        let err = err.clone();
        *left -= 1;
        if *left == 0 {
            self.failed.swap_remove(at);
        }
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};
    use std::thread;
    use std::time::{Duration, Instant};

    use super::*;

    /// A first writer whose write blocks until released, and `n` more that
    /// arrive while it writes; returns the batches written.
    fn writers_behind_a_slow_write(
        n: u32,
        outcome: Result<(), String>,
    ) -> (Vec<Vec<u32>>, Vec<Result<u64, String>>) {
        let group = Arc::new(GroupCommit::new());
        let batches = Arc::new(Mutex::new(Vec::new()));
        let (started, wait_started) = mpsc::channel();
        let (release, wait_release) = mpsc::channel::<()>();
        let first = thread::spawn({
            let (group, batches) = (group.clone(), batches.clone());
            move || {
                group.submit([0], |batch| {
                    started.send(()).unwrap();
                    wait_release.recv().unwrap();
                    batches.lock().unwrap().push(batch);
                    Ok(())
                })
            }
        });
        wait_started.recv().unwrap();
        let others: Vec<_> = (1..=n)
            .map(|change| {
                let (group, batches, outcome) = (group.clone(), batches.clone(), outcome.clone());
                thread::spawn(move || {
                    group.submit([change], |batch| {
                        batches.lock().unwrap().push(batch);
                        outcome
                    })
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while group.pending() < n as usize {
            assert!(Instant::now() < deadline, "the writers never queued");
            thread::sleep(Duration::from_millis(1));
        }
        release.send(()).unwrap();
        assert_eq!(first.join().unwrap(), Ok(1));
        let outcomes = others.into_iter().map(|other| other.join().unwrap()).collect();
        let batches = std::mem::take(&mut *batches.lock().unwrap());
        (batches, outcomes)
    }

    #[test]
    fn writers_that_arrive_during_a_write_share_the_next_batch() {
        let (mut batches, outcomes) = writers_behind_a_slow_write(7, Ok(()));
        assert_eq!(batches.len(), 2, "one batch for the first writer, one for the seven others");
        batches[1].sort_unstable();
        assert_eq!(batches, [vec![0], (1..=7).collect::<Vec<_>>()]);
        assert!(outcomes.iter().all(|outcome| *outcome == Ok(2)), "all in batch 2: {outcomes:?}");
    }

    #[test]
    fn a_failed_batch_fails_every_writer_in_it() {
        let (_, outcomes) = writers_behind_a_slow_write(5, Err("disk full".into()));
        assert_eq!(outcomes, vec![Err::<u64, _>("disk full".to_string()); 5]);
    }
}
