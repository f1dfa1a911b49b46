//! Queue pollers: one thread for the admin queue and N for I/O queues.
//!
//! Each poller calls the controller (`process_admin`, or `process_io(env, i, N)`) in a loop.
//! Doorbells live in a shared memory page the guest writes without telling us, so pollers
//! poll: while commands keep completing they spin; when idle they spin a little longer (a
//! few microseconds for a host that batches its commands, several of its turnarounds for one
//! that submits them one at a time and comes back quickly: see [`HostPace`]), then
//! sleep with a growing interval (10 µs doubling up to [`MAX_SLEEP`], see `backoff_sleep`),
//! so an idle znsd uses almost no CPU and a new doorbell is noticed within about a
//! millisecond. After about 10 ms without work a poller stops polling: the doorbell watcher
//! thread ("znsd-doorbells") scans the page every millisecond and wakes the poller owning a
//! changed doorbell, so an idle controller costs one 1 kHz thread instead of one per poller
//! (125 Hz after a second without any doorbell moving). The watcher only scans
//! while some poller is deeply idle (pollers that are busy or backing off watch their own
//! doorbells), and it sleeps with `thread::sleep` rather than a channel timeout, whose
//! spin-and-yield backoff cost a busy 2-CPU host a quarter of znsd's CPU time. While the
//! controller is disabled everything sleeps longer; a register write wakes the pollers. A
//! trapped doorbell write (REGION_WRITE) wakes the owning poller at once through its channel.
//!
//! Control messages (quiesce, resume, stop) travel on the same crossbeam channel; quiesce is
//! acknowledged between two controller calls, so once every poller has acked no command is
//! being executed by a poller until `resume`.

use crate::bar;
use crate::device::Device;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest idle sleep between two doorbell checks.
pub const MAX_SLEEP: Duration = Duration::from_millis(1);
/// How long a poller keeps spinning after its last command before it starts to sleep (then
/// [`backoff_sleep`]) depends on the host's pace ([`HostPace`]): its turnaround (the time
/// from a poller's last command to the next one it finds, averaged) and whether it submits
/// one command at a time.
///
/// A host that batches gets twice its turnaround, within [`SPIN_MIN`, `SPIN_MAX`], and only
/// [`SPIN_MIN`] when it takes longer than [`SPIN_MAX`] to come back, since spinning would
/// then only take the CPU from it. Measured with a fixed window, all with the 1 µs timer
/// slack below: the load generator's 4 KiB QD32 reads on one queue pair (a host that comes
/// back in tens of microseconds) ran at 249k IOPS with 5 µs and 298k with 50 µs, the null
/// backend at 0.65 M and 1.46 M; the TCG test guest (hundreds of microseconds) was at or
/// ahead of QEMU's device on every job with 5 µs, but its QD32 reads fell behind (0.92,
/// 0.96) with 50 µs, its vCPUs needing the CPU the poller spun on.
///
/// A host that submits one command at a time and comes back within [`DUE_SPIN_MAX`] is
/// waiting for each completion, so every microsecond between its doorbell and our noticing
/// it is latency; the poller spins for [`DUE_TURNAROUNDS`] turnarounds. Sleeping there cost
/// far more than the sleep asked for: on the test guest's 4 KiB QD1 reads (turnaround about
/// 100 µs), backoff sleeps of at most 25 µs gave 5.1k IOPS at 122 µs p50, spinning 8.9k at
/// 58 µs. Spinning that long for every host cost the guest's batched jobs 10-30% (QD32 reads
/// 0.91 of QEMU's device instead of 1.06, zone writes 1.01 instead of 1.47).
const SPIN_MIN: Duration = Duration::from_micros(5);
/// Longest spin window for a host that batches (see [`SPIN_MIN`]).
const SPIN_MAX: Duration = Duration::from_micros(50);
/// Gaps longer than this are idle periods, not a host's turnaround.
const TURNAROUND_MAX: Duration = Duration::from_millis(1);
/// Slowest turnaround of a one-at-a-time host the poller spins for (see [`SPIN_MIN`]).
const DUE_SPIN_MAX: Duration = Duration::from_micros(400);
/// How many turnarounds a poller spins for a one-at-a-time host (see [`SPIN_MIN`]).
const DUE_TURNAROUNDS: u32 = 4;
/// Share of busy runs with more than one command (averaged, in 1/1024) below which a host
/// counts as submitting one command at a time. The test guest measured 1% at QD1, 27% for
/// QD32 zone writes (most runs single commands, the others of 2-8), 65% for QD32 reads.
/// Judged on commands per run instead (the average under 1.25), the zone writes' average
/// of 1.55 dipped below often enough to cost them: 1.07-1.20 of QEMU's device, against
/// 1.30-1.47 with short spins. Turnarounds over [`DUE_SPIN_MAX`] get short spins. The limit
/// was 200 µs, on weak evidence (a 500 µs limit seemed to cost the guest's 128 KiB writes,
/// in a job that lasted 0.3 s). On the 5 s guest jobs, two runs each, 400 µs against 200:
/// zone reports (one command each, about 150 µs apart) 1.14x and 1.34x QEMU's device
/// against 1.11x and 1.10x; 128 KiB writes 2.69x and 2.70x against 2.18x and 2.61x; zone
/// writes 1.34x and 1.36x against 1.06x and 1.19x.
const ONE_AT_A_TIME: u32 = 102;

/// What a poller knows of the host's pace, from the commands it found.
#[derive(Debug, Clone, Copy)]
struct HostPace {
    /// Averaged gap from the end of a busy run to the next command.
    turnaround: Duration,
    /// Averaged share of busy runs with more than one command, in 1/1024.
    multi: u32,
    /// Commands in the current busy run.
    run: u32,
}

impl HostPace {
    /// A cautious start: a slow, batching host (short spins).
    fn new() -> HostPace {
        HostPace {
            turnaround: SPIN_MAX,
            multi: 1024,
            run: 0,
        }
    }

    /// `done` commands found; `gap` is the time since the last command when the poller had
    /// found nothing in between (the previous busy run ended).
    fn found(&mut self, done: usize, gap: Option<Duration>) {
        if let Some(gap) = gap {
            if gap < TURNAROUND_MAX {
                self.turnaround = (self.turnaround * 7 + gap) / 8;
                let m = if self.run > 1 { 1024 } else { 0 };
                self.multi = (self.multi * 15 + m) / 16;
            }
            self.run = 0;
        }
        self.run = self
            .run
            .saturating_add(u32::try_from(done).unwrap_or(u32::MAX));
    }

    /// How long after its last command the poller keeps spinning.
    fn spin_window(&self) -> Duration {
        let t = self.turnaround;
        if self.multi < ONE_AT_A_TIME && t < DUE_SPIN_MAX {
            (t * DUE_TURNAROUNDS).max(SPIN_MIN)
        } else if t < SPIN_MAX {
            (t * 2).clamp(SPIN_MIN, SPIN_MAX)
        } else {
            SPIN_MIN
        }
    }
}

/// The idle sleep after `idle` (>= 1) rounds without work, `since` after the last command,
/// for a host whose turnaround averages `t`: 10 µs doubling up to [`MAX_SLEEP`], except
/// that within four turnarounds of the last command, when the host is expected back, no
/// sleep is longer than a quarter of the turnaround. Without that bound a poller serving a
/// host that comes back after ~100 µs (the TCG test guest) was asleep in its 80 µs
/// round when the host came back, and found the command up to 65 µs late.
fn backoff_sleep(idle: u32, since: Duration, t: Duration) -> Duration {
    let doubling = MIN_SLEEP
        .saturating_mul(1 << (idle - 1).min(16))
        .min(MAX_SLEEP);
    if since < t * 4 {
        doubling.min((t / 4).max(MIN_SLEEP))
    } else {
        doubling
    }
}

/// Spin rounds between two `yield_now` calls while spinning (a spinning poller shares the
/// CPU with whatever else is runnable there: the guest's vCPUs, the load generator).
const SPIN_YIELD_EVERY: u32 = 32;
/// First idle sleep.
const MIN_SLEEP: Duration = Duration::from_micros(10);
/// Idle sleep while the controller is disabled (enabling it wakes every poller at once).
const DISABLED_SLEEP: Duration = Duration::from_millis(50);
/// Sleeps after which a poller leaves doorbell polling to the watcher (about 10 ms of 1 ms
/// sleeps after the backoff).
const DEEP_IDLE_ROUNDS: u32 = 8 + 10;
/// Sleep of a deeply idle poller; the watcher wakes it on any doorbell change.
const DEEP_SLEEP: Duration = Duration::from_millis(50);
/// Watcher period once no doorbell has moved for [`WATCH_SLOW_AFTER`]: each wake-up of the
/// watcher costs 15-40 µs of CPU on the 2-CPU VMs we measured on, so 1 kHz alone was 1.5% of
/// a core, and 250 Hz still 0.7-1.1%. With half a period of timer slack, the first command
/// after a second of silence may wait up to 12 ms.
const WATCH_SLOW_PERIOD: Duration = Duration::from_millis(8);
/// Quiet time after which the watcher slows down to [`WATCH_SLOW_PERIOD`].
const WATCH_SLOW_AFTER: Duration = Duration::from_secs(1);
/// How long `quiesce` waits for all acks.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(3);

enum Msg {
    Wake,
    Quiesce(Sender<()>),
    Resume,
    Stop,
}

/// Sends wake-ups to one poller, coalescing them while one is pending.
#[derive(Clone)]
struct Waker {
    tx: Sender<Msg>,
    pending: Arc<AtomicBool>,
}

impl Waker {
    fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Msg::Wake);
        }
    }
}

/// Wakers of every poller, indexed like the queues they own.
#[derive(Clone)]
struct Wakers {
    admin: Waker,
    io: Vec<Waker>,
    /// Pollers currently relying on the watcher (deeply idle).
    deep_idle: Arc<AtomicUsize>,
}

impl Wakers {
    fn all(&self) -> impl Iterator<Item = &Waker> {
        std::iter::once(&self.admin).chain(self.io.iter())
    }

    fn queue(&self, qid: u16) {
        if qid == 0 {
            self.admin.wake();
        } else if !self.io.is_empty() {
            self.io[usize::from(qid) % self.io.len()].wake();
        }
    }
}

/// What a poller works on.
#[derive(Debug, Clone, Copy)]
enum Role {
    Admin,
    Io { index: usize, count: usize },
}

/// The running pollers and the doorbell watcher.
pub struct Pollers {
    wakers: Wakers,
    joins: Vec<JoinHandle<()>>,
    watcher: Option<(Sender<bool>, JoinHandle<()>)>,
}

impl std::fmt::Debug for Pollers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pollers")
            .field("io", &self.wakers.io.len())
            .finish()
    }
}

impl Pollers {
    /// Start the admin poller, `io_pollers` I/O pollers (at least one) and the doorbell
    /// watcher.
    pub fn start(dev: Arc<Device>, io_pollers: usize) -> std::io::Result<Pollers> {
        let count = io_pollers.max(1);
        let mut joins = Vec::with_capacity(count + 1);
        let deep_idle = Arc::new(AtomicUsize::new(0));
        let admin = spawn(
            &dev,
            Role::Admin,
            "znsd-admin".into(),
            &deep_idle,
            &mut joins,
        )?;
        let io = (0..count)
            .map(|index| {
                spawn(
                    &dev,
                    Role::Io { index, count },
                    format!("znsd-io{index}"),
                    &deep_idle,
                    &mut joins,
                )
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let wakers = Wakers {
            admin,
            io,
            deep_idle,
        };
        let w = wakers.clone();
        dev.ctrl
            .set_completion_notifier(Box::new(move |qid| w.queue(qid)));
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(4);
        let w = wakers.clone();
        let watcher = std::thread::Builder::new()
            .name("znsd-doorbells".into())
            .spawn(move || watch_doorbells(&dev, &w, &stop_rx))?;
        Ok(Pollers {
            wakers,
            joins,
            watcher: Some((stop_tx, watcher)),
        })
    }

    /// Wake the poller owning queue `qid` (a trapped doorbell write).
    pub fn wake_queue(&self, qid: u16) {
        self.wakers.queue(qid);
    }

    /// Wake every poller and the watcher (registers or queues changed).
    pub fn wake_all(&self) {
        for w in self.wakers.all() {
            w.wake();
        }
        if let Some((tx, _)) = &self.watcher {
            let _ = tx.try_send(false);
        }
    }

    /// Stop every poller between two controller calls and wait for their acks. Returns false
    /// if some poller did not ack in time (it is then still executing a command).
    pub fn quiesce(&self) -> bool {
        let (ack_tx, ack_rx) = crossbeam_channel::unbounded();
        let mut n = 0;
        for w in self.wakers.all() {
            if w.tx.send(Msg::Quiesce(ack_tx.clone())).is_ok() {
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
        for w in self.wakers.all() {
            let _ = w.tx.send(Msg::Resume);
        }
    }

    /// Stop and join every poller.
    pub fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        if let Some((tx, j)) = self.watcher.take() {
            let _ = tx.send(true);
            let _ = j.join();
        }
        for w in self.wakers.all() {
            let _ = w.tx.send(Msg::Stop);
        }
        for j in self.joins.drain(..) {
            let _ = j.join();
        }
    }
}

impl Drop for Pollers {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Doorbell dwords in the page (SQ tail and CQ head of every queue pair).
const DOORBELL_DWORDS: usize = (bar::DOORBELL_SIZE / 4) as usize;

/// Watch the doorbell page for guest stores and wake the owning poller, so that idle
/// pollers can sleep long: one thread polls at [`MAX_SLEEP`] instead of every poller.
/// Messages on `ctl`: `true` stops the watcher, `false` wakes it (the controller may have
/// been enabled).
fn watch_doorbells(dev: &Device, wakers: &Wakers, ctl: &Receiver<bool>) {
    // Only the doorbells of queue ids the controller can create (one MSI-X vector per
    // queue pair): scanning the whole page cost most of an idle znsd's CPU time.
    let dwords = (usize::from(dev.irq.vectors()) * 2).clamp(2, DOORBELL_DWORDS);
    let mut slack = Duration::ZERO;
    let mut last = vec![0u32; dwords];
    let mut scanning = false;
    let mut moved = Instant::now();
    loop {
        let ready = dev.ctrl.ready();
        if ready {
            // A plain sleep: a channel timeout would spin and yield first, every period.
            // After a second without any doorbell moving, the first command after a long
            // idle period may wait up to WATCH_SLOW_PERIOD.
            let period = if scanning && moved.elapsed() >= WATCH_SLOW_AFTER {
                WATCH_SLOW_PERIOD
            } else {
                MAX_SLEEP
            };
            // Let the kernel fold this wake-up into another one up to half a period later:
            // each separate timer wake-up costs tens of microseconds on a VM.
            if period / 2 != slack {
                slack = period / 2;
                set_timer_slack(slack);
            }
            std::thread::sleep(period);
            match ctl.try_recv() {
                Err(TryRecvError::Empty) | Ok(false) => {}
                Ok(true) | Err(TryRecvError::Disconnected) => return,
            }
        } else {
            // Disabled: long waits, cut short by the wake-up that comes with enabling.
            match ctl.recv_timeout(DISABLED_SLEEP) {
                Err(RecvTimeoutError::Timeout) | Ok(false) => {}
                Ok(true) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        // KVM's INTx resample eventfd (guest EOI) is checked here too, at the same rate.
        dev.irq.poll_resample();
        // Pollers that are not deeply idle poll their doorbells themselves. When scanning
        // resumes, `last` is stale (a doorbell may have moved and come back to the value it
        // had): take a fresh copy and wake every poller once, so each re-reads its doorbells
        // after the copy; from then on every change a scan sees wakes the owner.
        if wakers.deep_idle.load(Ordering::Acquire) == 0 {
            scanning = false;
            continue;
        }
        if !scanning {
            scanning = true;
            moved = Instant::now();
            for (i, seen) in last.iter_mut().enumerate() {
                *seen = dev.doorbells.load(bar::DOORBELL_BASE + 4 * i as u64);
            }
            if ready {
                for w in wakers.all() {
                    w.wake();
                }
            }
            continue;
        }
        for (i, seen) in last.iter_mut().enumerate() {
            let v = dev.doorbells.load(bar::DOORBELL_BASE + 4 * i as u64);
            if v != *seen {
                *seen = v;
                moved = Instant::now();
                if ready {
                    wakers.queue(u16::try_from(i / 2).unwrap_or(u16::MAX));
                }
            }
        }
    }
}

fn spawn(
    dev: &Arc<Device>,
    role: Role,
    name: String,
    deep_idle: &Arc<AtomicUsize>,
    joins: &mut Vec<JoinHandle<()>>,
) -> std::io::Result<Waker> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let pending = Arc::new(AtomicBool::new(false));
    let p = Arc::clone(&pending);
    let dev = Arc::clone(dev);
    let deep = DeepIdle {
        count: Arc::clone(deep_idle),
        mine: false,
    };
    joins.push(
        std::thread::Builder::new()
            .name(name)
            .spawn(move || poll_loop(&dev, role, &rx, &p, deep))?,
    );
    Ok(Waker { tx, pending })
}

/// A poller's registration as deeply idle (watched by the doorbell watcher).
struct DeepIdle {
    count: Arc<AtomicUsize>,
    mine: bool,
}

impl DeepIdle {
    fn set(&mut self, deep: bool) {
        if deep != self.mine {
            self.mine = deep;
            if deep {
                self.count.fetch_add(1, Ordering::AcqRel);
                // Deep sleeps are long; their exact length does not matter.
                set_timer_slack(DEEP_SLEEP / 2);
            } else {
                self.count.fetch_sub(1, Ordering::AcqRel);
                set_timer_slack(ACTIVE_TIMER_SLACK);
            }
        }
    }
}

/// Timer slack of a poller that is not deeply idle. Linux's default (50 µs) would stretch the
/// 10-40 µs backoff sleeps to several times their length, and a doorbell written meanwhile
/// waits for the end of the sleep.
const ACTIVE_TIMER_SLACK: Duration = Duration::from_micros(1);

/// Set the calling thread's timer slack (how late the kernel may end its sleeps, to
/// coalesce wake-ups). Best effort.
fn set_timer_slack(d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
    if let Err(e) = nix::sys::prctl::set_timerslack(ns) {
        tracing::debug!(error = %e, "PR_SET_TIMERSLACK failed");
    }
}

impl Drop for DeepIdle {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// Outcome of handling one control message.
enum Flow {
    Continue,
    Stop,
}

fn poll_loop(
    dev: &Device,
    role: Role,
    rx: &Receiver<Msg>,
    wake_pending: &AtomicBool,
    mut deep: DeepIdle,
) {
    let span = match role {
        Role::Admin => tracing::debug_span!("poller", queue = "admin"),
        Role::Io { index, .. } => tracing::debug_span!("poller", io = index),
    };
    let _g = span.enter();
    set_timer_slack(ACTIVE_TIMER_SLACK);
    let mut idle: u32 = 0;
    let mut busy_at = Instant::now();
    let mut pace = HostPace::new();
    let mut spin_time = pace.spin_window();
    let mut waited = false;
    let mut spins: u32 = 0;
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
            if waited {
                // Found work after a gap: how long did the host take to come back?
                pace.found(done, Some(busy_at.elapsed()));
                spin_time = pace.spin_window();
                waited = false;
            } else {
                pace.found(done, None);
            }
            idle = 0;
            busy_at = Instant::now();
            deep.set(false);
            continue;
        }
        waited = true;
        // Spin for a while after the last command: the host's turnaround from a completion
        // to its next submission (interrupt, wake-up, new SQEs) is tens of microseconds,
        // and a poller asleep by then would add its sleep to every command.
        if idle == 0 && ready && busy_at.elapsed() < spin_time {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(SPIN_YIELD_EVERY) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        idle = idle.saturating_add(1);
        let sleep = if !ready {
            DISABLED_SLEEP
        } else if idle > DEEP_IDLE_ROUNDS {
            // Register before the last doorbell check (the next round's process call):
            // from now on the watcher scans, so a doorbell written after that check is seen.
            if !deep.mine {
                deep.set(true);
                continue;
            }
            DEEP_SLEEP
        } else {
            backoff_sleep(idle, busy_at.elapsed(), pace.turnaround)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bar::DoorbellPage;
    use crate::device::NvmeDevice;
    use crate::dma::GuestRam;
    use crate::irq::IrqState;
    use nvme::{HostEnv, RegEffect};
    use std::sync::atomic::AtomicU64;

    /// Counts calls; `busy` makes every call report one completed command.
    #[derive(Default)]
    struct Counting {
        admin: AtomicU64,
        busy: AtomicBool,
        in_call: AtomicBool,
        overlapped: AtomicBool,
    }

    impl Counting {
        fn call(&self, n: &AtomicU64) -> usize {
            if self.in_call.swap(true, Ordering::AcqRel) {
                self.overlapped.store(true, Ordering::Release);
            }
            n.fetch_add(1, Ordering::AcqRel);
            std::thread::sleep(Duration::from_micros(50));
            self.in_call.store(false, Ordering::Release);
            usize::from(self.busy.load(Ordering::Acquire))
        }
    }

    impl NvmeDevice for Counting {
        fn mmio_read(&self, _: u64, _: &mut [u8]) {}
        fn mmio_write(&self, _: &HostEnv<'_>, _: u64, _: &[u8]) -> RegEffect {
            RegEffect::default()
        }
        fn process_admin(&self, _: &HostEnv<'_>) -> usize {
            self.call(&self.admin)
        }
        fn process_io(&self, _: &HostEnv<'_>, _: usize, _: usize) -> usize {
            0
        }
        fn ready(&self) -> bool {
            true
        }
        fn reset(&self, _: &HostEnv<'_>) {}
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn device(ctrl: Arc<Counting>) -> Arc<Device> {
        Arc::new(Device {
            ctrl,
            ram: GuestRam::new(),
            doorbells: DoorbellPage::new().unwrap(),
            irq: IrqState::new(2),
        })
    }

    #[test]
    fn idle_pollers_back_off_and_doorbells_wake_them() {
        let ctrl = Arc::new(Counting::default());
        let dev = device(Arc::clone(&ctrl));
        let p = Pollers::start(Arc::clone(&dev), 1).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let before = ctrl.admin.load(Ordering::Acquire);
        std::thread::sleep(Duration::from_millis(200));
        let idle_calls = ctrl.admin.load(Ordering::Acquire) - before;
        assert!(
            idle_calls <= 20,
            "idle admin poller called {idle_calls} times in 200 ms"
        );
        // A store to the mapped page (no message) is noticed by the watcher.
        let before = ctrl.admin.load(Ordering::Acquire);
        dev.doorbells.store(bar::DOORBELL_BASE, 1);
        std::thread::sleep(Duration::from_millis(15));
        assert!(
            ctrl.admin.load(Ordering::Acquire) > before,
            "doorbell store not noticed"
        );
        p.stop();
    }

    #[test]
    fn busy_poller_keeps_calling_and_quiesce_stops_it() {
        let ctrl = Arc::new(Counting::default());
        ctrl.busy.store(true, Ordering::Release);
        let dev = device(Arc::clone(&ctrl));
        let p = Pollers::start(dev, 1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let n = ctrl.admin.load(Ordering::Acquire);
        assert!(n > 50, "busy poller made only {n} calls in 50 ms");
        assert!(p.quiesce());
        let frozen = ctrl.admin.load(Ordering::Acquire);
        assert!(
            !ctrl.in_call.load(Ordering::Acquire),
            "call in progress after the ack"
        );
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            ctrl.admin.load(Ordering::Acquire),
            frozen,
            "called while quiesced"
        );
        p.resume();
        std::thread::sleep(Duration::from_millis(30));
        assert!(ctrl.admin.load(Ordering::Acquire) > frozen);
        assert!(!ctrl.overlapped.load(Ordering::Acquire));
        p.stop();
    }
}

#[cfg(test)]
mod spin_tests {
    use super::*;

    /// A pace settled on runs of `run` commands separated by `gap`.
    fn settled(run: usize, gap: Duration) -> HostPace {
        let mut p = HostPace::new();
        for _ in 0..256 {
            p.found(1, Some(gap));
            for _ in 1..run {
                p.found(1, None);
            }
        }
        p
    }

    /// The averages settle to within a fraction of a microsecond.
    fn assert_near(got: Duration, want: Duration) {
        let diff = got.abs_diff(want);
        assert!(diff <= Duration::from_micros(1), "{got:?} is not {want:?}");
    }

    #[test]
    fn spin_window_follows_a_quick_batching_host_and_stays_short_for_a_slow_one() {
        let us = Duration::from_micros;
        assert_eq!(HostPace::new().spin_window(), SPIN_MIN, "cautious start");
        assert_eq!(settled(8, us(1)).spin_window(), SPIN_MIN);
        assert_near(settled(8, us(10)).spin_window(), us(20));
        assert_eq!(settled(3, us(40)).spin_window(), SPIN_MAX);
        assert_eq!(
            settled(8, us(50)).spin_window(),
            SPIN_MIN,
            "slower than SPIN_MAX"
        );
        assert_eq!(settled(2, us(300)).spin_window(), SPIN_MIN);
        // Idle periods do not count as turnarounds.
        let mut p = settled(8, us(10));
        p.found(1, Some(Duration::from_secs(2)));
        assert_near(p.spin_window(), us(20));
    }

    #[test]
    fn a_one_at_a_time_host_gets_spins_over_several_turnarounds() {
        let us = Duration::from_micros;
        let p = settled(1, us(100));
        assert_eq!(p.multi, 0);
        assert_near(p.spin_window(), us(400));
        assert_near(settled(1, us(2)).spin_window(), us(8));
        assert_eq!(settled(1, us(1)).spin_window(), SPIN_MIN);
        assert_near(settled(1, us(300)).spin_window(), us(1200));
        // Too slow to spin for.
        assert_eq!(settled(1, us(450)).spin_window(), SPIN_MIN);
        // Mostly single commands with some batches (the guest's QD32 zone writes): batching.
        let mut p = settled(1, us(100));
        for _ in 0..16 {
            for run in [1, 1, 2, 1] {
                p.found(1, Some(us(100)));
                for _ in 1..run {
                    p.found(1, None);
                }
            }
        }
        assert!(p.multi >= ONE_AT_A_TIME, "{}", p.multi);
        assert_eq!(p.spin_window(), SPIN_MIN);
        // And back: a host that turns to QD1 gets its spins again within a few dozen runs.
        for _ in 0..32 {
            p.found(1, Some(us(100)));
        }
        assert_near(p.spin_window(), us(400));
    }

    #[test]
    fn backoff_doubles_but_not_past_a_quarter_turnaround_while_the_host_is_due() {
        let us = Duration::from_micros;
        // A host back after ~100 µs: 10, 20, then 25 µs until 400 µs have passed.
        let t = us(100);
        assert_eq!(backoff_sleep(1, us(5), t), us(10));
        assert_eq!(backoff_sleep(2, us(20), t), us(20));
        assert_eq!(backoff_sleep(3, us(45), t), us(25));
        assert_eq!(backoff_sleep(6, us(300), t), us(25));
        // Overdue: an idle host, plain doubling up to MAX_SLEEP.
        assert_eq!(backoff_sleep(6, us(400), t), us(320));
        assert_eq!(backoff_sleep(12, us(5000), t), MAX_SLEEP);
        // A quick host: never below MIN_SLEEP.
        assert_eq!(backoff_sleep(4, us(30), us(20)), MIN_SLEEP);
    }
}
