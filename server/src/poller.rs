//! Queue pollers: one thread for the admin queue and N for I/O queues.
//!
//! Each poller calls the controller (`process_admin`, or `process_io(env, i, N)`) in a loop.
//! Doorbells live in a shared memory page the guest writes without telling us, so pollers
//! poll: while commands keep completing they spin; when idle they spin a little longer, then
//! sleep with a growing interval (10 µs doubling up to [`MAX_SLEEP`]), so an idle znsd uses
//! almost no CPU and a new doorbell is noticed within about a millisecond. While the
//! controller is disabled they sleep longer; a register write wakes them all. A trapped doorbell
//! write (REGION_WRITE) wakes the owning poller at once through its channel.
//!
//! Control messages (quiesce, resume, stop) travel on the same crossbeam channel; quiesce is
//! acknowledged between two controller calls, so once every poller has acked no command is
//! being executed by a poller until `resume`.

use crate::device::Device;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest idle sleep between two doorbell checks.
pub const MAX_SLEEP: Duration = Duration::from_millis(1);
/// Idle rounds spent spinning before sleeping.
const SPIN_ROUNDS: u32 = 64;
/// First idle sleep.
const MIN_SLEEP: Duration = Duration::from_micros(10);
/// Idle sleep while the controller is disabled (enabling it wakes every poller at once).
const DISABLED_SLEEP: Duration = Duration::from_millis(50);
/// How long `quiesce` waits for all acks.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(3);

enum Msg {
    Wake,
    Quiesce(Sender<()>),
    Resume,
    Stop,
}

struct Handle {
    tx: Sender<Msg>,
    wake_pending: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl Handle {
    fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Msg::Wake);
        }
    }
}

/// What a poller works on.
#[derive(Debug, Clone, Copy)]
enum Role {
    Admin,
    Io { index: usize, count: usize },
}

/// The running pollers.
pub struct Pollers {
    admin: Handle,
    io: Vec<Handle>,
}

impl std::fmt::Debug for Pollers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pollers")
            .field("io", &self.io.len())
            .finish()
    }
}

impl Pollers {
    /// Start the admin poller and `io_pollers` I/O pollers (at least one).
    pub fn start(dev: Arc<Device>, io_pollers: usize) -> std::io::Result<Pollers> {
        let count = io_pollers.max(1);
        let admin = spawn(Arc::clone(&dev), Role::Admin, "znsd-admin".into())?;
        let io = (0..count)
            .map(|index| {
                spawn(
                    Arc::clone(&dev),
                    Role::Io { index, count },
                    format!("znsd-io{index}"),
                )
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Pollers { admin, io })
    }

    fn all(&self) -> impl Iterator<Item = &Handle> {
        std::iter::once(&self.admin).chain(self.io.iter())
    }

    /// Wake the poller owning queue `qid` (a trapped doorbell write).
    pub fn wake_queue(&self, qid: u16) {
        if qid == 0 {
            self.admin.wake();
        } else if let Some(h) = self.io.get(usize::from(qid) % self.io.len()) {
            h.wake();
        }
    }

    /// Wake every poller (queues changed).
    pub fn wake_all(&self) {
        for h in self.all() {
            h.wake();
        }
    }

    /// Stop every poller between two controller calls and wait for their acks. Returns false
    /// if some poller did not ack in time (it is then still executing a command).
    pub fn quiesce(&self) -> bool {
        let (ack_tx, ack_rx) = crossbeam_channel::unbounded();
        let mut n = 0;
        for h in self.all() {
            if h.tx.send(Msg::Quiesce(ack_tx.clone())).is_ok() {
                n += 1;
            }
        }
        let deadline = Instant::now() + QUIESCE_TIMEOUT;
        for _ in 0..n {
            if ack_rx.recv_deadline(deadline).is_err() {
                tracing::warn!("Poller did not quiesce in time");
                return false;
            }
        }
        true
    }

    /// Let quiesced pollers run again.
    pub fn resume(&self) {
        for h in self.all() {
            let _ = h.tx.send(Msg::Resume);
        }
    }

    /// Stop and join every poller.
    pub fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        for h in std::iter::once(&mut self.admin).chain(self.io.iter_mut()) {
            let _ = h.tx.send(Msg::Stop);
            if let Some(j) = h.join.take() {
                let _ = j.join();
            }
        }
    }
}

impl Drop for Pollers {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn spawn(dev: Arc<Device>, role: Role, name: String) -> std::io::Result<Handle> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let wake_pending = Arc::new(AtomicBool::new(false));
    let wp = Arc::clone(&wake_pending);
    let join = std::thread::Builder::new()
        .name(name)
        .spawn(move || poll_loop(&dev, role, &rx, &wp))?;
    Ok(Handle {
        tx,
        wake_pending,
        join: Some(join),
    })
}

/// Outcome of handling one control message.
enum Flow {
    Continue,
    Stop,
}

fn poll_loop(dev: &Device, role: Role, rx: &Receiver<Msg>, wake_pending: &AtomicBool) {
    let span = match role {
        Role::Admin => tracing::debug_span!("poller", queue = "admin"),
        Role::Io { index, .. } => tracing::debug_span!("poller", io = index),
    };
    let _g = span.enter();
    let mut idle: u32 = 0;
    let mut quiesced = false;
    let mut panics: u64 = 0;
    let handle = |m: Msg, quiesced: &mut bool, idle: &mut u32| -> Flow {
        match m {
            Msg::Wake => {
                wake_pending.store(false, Ordering::Release);
                *idle = 0;
            }
            Msg::Quiesce(ack) => {
                *quiesced = true;
                let _ = ack.send(());
            }
            Msg::Resume => {
                *quiesced = false;
                *idle = 0;
            }
            Msg::Stop => return Flow::Stop,
        }
        Flow::Continue
    };
    loop {
        while let Ok(m) = rx.try_recv() {
            if let Flow::Stop = handle(m, &mut quiesced, &mut idle) {
                return;
            }
        }
        if quiesced {
            match rx.recv() {
                Ok(m) => {
                    if let Flow::Stop = handle(m, &mut quiesced, &mut idle) {
                        return;
                    }
                }
                Err(_) => return,
            }
            continue;
        }
        if let Role::Admin = role {
            dev.irq.poll_resample();
        }
        let ready = dev.ctrl.ready();
        let done = if ready {
            let env = dev.env();
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| match role {
                Role::Admin => dev.ctrl.process_admin(&env),
                Role::Io { index, count } => dev.ctrl.process_io(&env, index, count),
            }));
            match r {
                Ok(n) => n,
                Err(_) => {
                    panics += 1;
                    if panics == 1 {
                        tracing::error!("Controller panicked while processing queues; backing off");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    0
                }
            }
        } else {
            0
        };
        if done > 0 {
            idle = 0;
            continue;
        }
        idle = idle.saturating_add(1);
        if idle <= SPIN_ROUNDS {
            std::hint::spin_loop();
            continue;
        }
        let shift = (idle - SPIN_ROUNDS).min(16);
        let sleep = if ready {
            MIN_SLEEP.saturating_mul(1 << shift).min(MAX_SLEEP)
        } else {
            DISABLED_SLEEP
        };
        match rx.recv_timeout(sleep) {
            Ok(m) => {
                if let Flow::Stop = handle(m, &mut quiesced, &mut idle) {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
