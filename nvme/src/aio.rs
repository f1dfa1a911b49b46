//! Asynchronous execution of data commands on a pool of I/O threads.
//!
//! Without it a poller executes each command before fetching the next, so one queue pair
//! keeps one request at the image file at a time: fine when the page cache serves it (the
//! "I/O" is a copy), a bottleneck with O_DIRECT, where each request waits for the disk.
//! With a pool, the poller still fetches, decodes, checks and admits every command in
//! submission order (zone writes reserve their range in the image here, so a queue of
//! sequential writes to one zone stays valid), then hands the data transfer to a pool
//! thread and goes on fetching. When the transfer ends the pool thread leaves the result in
//! the submission queue's inbox and wakes the poller owning the queue, which posts the
//! completion (the CQ slot was reserved at fetch) and raises the interrupt, batched with
//! the others it posts.
//!
//! Nothing here touches queues or guest memory layout: a job owns what it needs (the image,
//! the pinned guest buffers) and reports a status. Commands with ordering or controller-state
//! side effects (zone management, Write Zeroes, admin commands) still run on the poller.
//!
//! Outstanding jobs are counted per submission queue and per controller: deleting a queue,
//! resetting or shutting down the controller first waits until the count is zero, so no
//! transfer to guest memory happens after the host was told the queue or controller is gone.

use crate::ctrl::lock;
use crate::status::Status;
use crossbeam_channel::Sender;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The result of a command executed by the pool, waiting to be posted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Finished {
    pub cid: u16,
    pub status: Status,
    pub dw0: u32,
    pub dw1: u32,
}

/// A submission queue's share of the pool: finished results and the count in flight.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    done: Mutex<Vec<Finished>>,
    outstanding: AtomicUsize,
}

impl Inbox {
    /// Take every finished result (in completion order).
    pub fn take(&self) -> Vec<Finished> {
        let mut d = lock(&self.done);
        if d.is_empty() {
            Vec::new()
        } else {
            std::mem::take(&mut *d)
        }
    }

    /// Commands handed to the pool and not finished yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    /// Wait (bounded) until nothing of this queue is in flight.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        wait_zero(&self.outstanding, timeout)
    }
}

/// Called with a submission queue id when a result for it is ready.
pub type Notify = Box<dyn Fn(u16) + Send + Sync>;

type Job = Box<dyn FnOnce() + Send>;

struct Shared {
    outstanding: AtomicUsize,
    notify: RwLock<Option<Notify>>,
}

/// The pool.
pub(crate) struct Pool {
    /// Held from a write's admission to its hand-off, so that the pool receives the writes of
    /// a zone in admission order even from several pollers: a FUA write waits for the writes
    /// admitted before it, which must therefore never sit in the queue behind it.
    order: Mutex<()>,
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads.len())
            .field("outstanding", &self.outstanding())
            .finish()
    }
}

impl Pool {
    /// Start `threads` I/O threads.
    pub fn start(threads: usize) -> std::io::Result<Pool> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx = rx.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("znsd-aio{i}"))
                    .spawn(move || {
                        while let Ok(job) = rx.recv() {
                            job();
                        }
                    })?,
            );
        }
        Ok(Pool {
            order: Mutex::new(()),
            tx: Some(tx),
            threads: handles,
            shared: Arc::new(Shared {
                outstanding: AtomicUsize::new(0),
                notify: RwLock::new(None),
            }),
        })
    }

    /// Hold while admitting a write and handing it to [`Pool::submit`].
    pub fn ordered(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.order)
    }

    /// Set the function that wakes the poller of a queue (replacing an earlier one).
    pub fn set_notify(&self, f: Notify) {
        *self
            .shared
            .notify
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    /// Commands in flight on the whole controller.
    pub fn outstanding(&self) -> usize {
        self.shared.outstanding.load(Ordering::Acquire)
    }

    /// Wait (bounded) until no command of the controller is in flight.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        wait_zero(&self.shared.outstanding, timeout)
    }

    /// Run `work` on a pool thread and leave its result for command `cid` in `inbox` (of
    /// submission queue `qid`). A panic in `work` becomes Internal Error.
    pub fn submit(
        &self,
        qid: u16,
        inbox: &Arc<Inbox>,
        cid: u16,
        work: impl FnOnce() -> (Status, u32, u32) + Send + 'static,
    ) {
        inbox.outstanding.fetch_add(1, Ordering::AcqRel);
        self.shared.outstanding.fetch_add(1, Ordering::AcqRel);
        let inbox = Arc::clone(inbox);
        let shared = Arc::clone(&self.shared);
        let job: Job = Box::new(move || {
            let (status, dw0, dw1) = std::panic::catch_unwind(AssertUnwindSafe(work))
                .unwrap_or_else(|_| {
                    tracing::error!(qid, cid, "I/O job panicked");
                    (Status::INTERNAL, 0, 0)
                });
            lock(&inbox.done).push(Finished {
                cid,
                status,
                dw0,
                dw1,
            });
            // Result first, count second: a zero count means every result is in the inbox.
            inbox.outstanding.fetch_sub(1, Ordering::AcqRel);
            shared.outstanding.fetch_sub(1, Ordering::AcqRel);
            if let Some(n) = &*shared.notify.read().unwrap_or_else(|e| e.into_inner()) {
                n(qid);
            }
        });
        match &self.tx {
            Some(tx) => {
                if let Err(e) = tx.send(job) {
                    // Only while the pool is being dropped: run it here.
                    (e.into_inner())();
                }
            }
            None => job(),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the channel lets every thread finish the queued jobs and exit.
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sleep-poll `n` until it is zero or `timeout` passes; returns whether it reached zero.
/// Only used on rare paths (queue deletion, reset, shutdown), so no condition variable on
/// the data path.
fn wait_zero(n: &AtomicUsize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(20);
    while n.load(Ordering::Acquire) != 0 {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_reach_the_inbox_and_counts_return_to_zero() {
        let pool = Pool::start(3).unwrap();
        let woken = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&woken);
        pool.set_notify(Box::new(move |qid| {
            assert_eq!(qid, 7);
            w.fetch_add(1, Ordering::AcqRel);
        }));
        let inbox = Arc::new(Inbox::default());
        for cid in 0..50u16 {
            pool.submit(7, &inbox, cid, move || {
                std::thread::sleep(Duration::from_micros(200));
                (Status::SUCCESS, u32::from(cid) * 2, 1)
            });
        }
        assert!(inbox.wait_idle(Duration::from_secs(10)));
        assert!(pool.wait_idle(Duration::from_secs(10)));
        let mut got = inbox.take();
        got.sort_by_key(|f| f.cid);
        assert_eq!(got.len(), 50);
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f.cid as usize, i);
            assert_eq!(f.dw0, 2 * i as u32);
            assert_eq!(f.dw1, 1);
            assert_eq!(f.status, Status::SUCCESS);
        }
        assert_eq!(woken.load(Ordering::Acquire), 50);
        assert!(inbox.take().is_empty());
    }

    #[test]
    fn a_panicking_job_completes_with_internal_error() {
        let pool = Pool::start(1).unwrap();
        let inbox = Arc::new(Inbox::default());
        pool.submit(1, &inbox, 9, || panic!("job failure"));
        pool.submit(1, &inbox, 10, || (Status::SUCCESS, 0, 0));
        assert!(pool.wait_idle(Duration::from_secs(10)));
        let got = inbox.take();
        assert_eq!(got.len(), 2, "the thread survives the panic");
        assert_eq!(got[0].cid, 9);
        assert_eq!(got[0].status, Status::INTERNAL);
        assert_eq!(got[1].status, Status::SUCCESS);
    }

    #[test]
    fn wait_idle_times_out_while_a_job_runs() {
        let pool = Pool::start(1).unwrap();
        let inbox = Arc::new(Inbox::default());
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        pool.submit(1, &inbox, 1, move || {
            let _ = rx.recv();
            (Status::SUCCESS, 0, 0)
        });
        assert!(!inbox.wait_idle(Duration::from_millis(30)));
        assert_eq!(inbox.outstanding(), 1);
        tx.send(()).unwrap();
        assert!(inbox.wait_idle(Duration::from_secs(10)));
        // Dropping the pool joins its threads after the queued work.
        drop(pool);
    }
}
