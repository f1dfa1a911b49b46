//! The controller: register side effects, queue tables and the fetch/execute/complete loop.
//!
//! # Threads and locks
//!
//! `mmio_write` runs on the transport thread, `process_admin` and `process_io` on poller
//! threads (an I/O queue pair is processed by exactly one poller). State and its locks:
//!
//! | lock | protects |
//! |---|---|
//! | `admin: Mutex<AdminState>` | admin SQ/CQ, outstanding AERs, feature values |
//! | `io: RwLock<IoQueues>` | the I/O queue table (create/delete/reset write-lock it) |
//! | per-SQ `Mutex<SubQueue>` | SQ head (one poller at a time) |
//! | per-CQ `Mutex<CompQueue>` | CQ tail/head/phase/reservations (several SQs may share it) |
//! | `regs: Mutex<Regs>` | the BAR0 register file (leaf) |
//! | `events: Mutex<Events>` | pending asynchronous events (leaf) |
//!
//! **Lock order: `admin` → `io` → SQ → CQ → {`regs`, `events`}.** Leaves are never held while
//! taking another lock. A poller holds `io` for reading for one batch, so a controller reset
//! or a queue deletion (which take `io` for writing) waits until every command being executed
//! has posted its completion: no command survives a reset. Data I/O to the image runs with
//! only the `io` read lock and the SQ lock held, never a CQ lock, so queues sharing a CQ run
//! in parallel. Transfers handed to the I/O threads (`aio`) hold no controller lock at all:
//! they leave their result in the SQ's inbox, which the owning poller posts on its next
//! pass; deletion, reset and shutdown wait for them with the locks above held (the threads
//! never take a controller lock, so this cannot deadlock).
//!
//! A CQ slot is reserved before each SQE is fetched; when the CQ has no free slot the SQ is
//! left alone until the host advances the CQ head doorbell. Each SQE is read once.

use crate::aio::Pool;
use crate::cmd::{AdminCmd, IoCmd};
use crate::queue::{CompQueue, SubQueue};
use crate::regs::{self, CcAction, Csts, Regs};
use crate::status::Status;
use crate::wire::{Cqe, Sqe};
use crate::zns::NsGeom;
use crate::{ControllerConfig, GeometryError, HostEnv, RegEffect};
use qcow2zoned::ZonedImage;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// Maximum Queue Entries Supported (0's based): 1024 entries.
pub const MQES: u16 = 1023;
/// Asynchronous Event Request Limit (0's based): four outstanding.
pub const AERL: u8 = 3;
/// SQEs processed per I/O SQ per `process_io` call (fairness between queues).
const IO_BUDGET: usize = 64;
/// How long queue deletion, reset and shutdown wait for transfers in flight on the I/O
/// threads before going on (a hung host disk; the results are then dropped).
pub(crate) const TRANSFER_WAIT: Duration = Duration::from_secs(30);

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Lock a mutex, recovering the data if a previous holder panicked (guest input never panics;
/// a poisoned lock would only come from a bug, and stopping the controller would not help).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Result of executing one command.
pub(crate) enum Outcome {
    /// Post a completion.
    Done {
        /// Status.
        status: Status,
        /// CQE DW0.
        dw0: u32,
        /// CQE DW1.
        dw1: u32,
    },
    /// Completion deferred (Asynchronous Event Request): the CQ slot is released and the
    /// completion posted later with `post_late`.
    Deferred,
    /// Handed to the I/O threads: the CQ slot stays reserved and the result arrives in the
    /// SQ's inbox.
    Queued,
}

impl Outcome {
    pub(crate) fn status(status: Status) -> Outcome {
        Outcome::Done {
            status,
            dw0: 0,
            dw1: 0,
        }
    }
    pub(crate) fn ok(dw0: u32) -> Outcome {
        Outcome::Done {
            status: Status::SUCCESS,
            dw0,
            dw1: 0,
        }
    }
}

impl From<Result<(), Status>> for Outcome {
    fn from(r: Result<(), Status>) -> Outcome {
        Outcome::status(r.err().unwrap_or(Status::SUCCESS))
    }
}

/// Current feature values (Set/Get Features).
#[derive(Debug, Clone)]
pub(crate) struct Features {
    pub arbitration: u32,
    pub power_mgmt: u32,
    /// Composite temperature thresholds: over, under (Kelvin).
    pub temp_over: u16,
    pub temp_under: u16,
    pub irq_coalescing: u32,
    pub async_event_cfg: u32,
    pub iocs_profile: u32,
    /// Number of Queues was set in this enable cycle (value returned).
    pub num_queues_set: bool,
}

impl Default for Features {
    fn default() -> Features {
        Features {
            arbitration: 0,
            power_mgmt: 0,
            temp_over: crate::log::WCTEMP,
            temp_under: 0,
            irq_coalescing: 0,
            async_event_cfg: 0,
            iocs_profile: 0,
            num_queues_set: false,
        }
    }
}

/// Admin queue pair and admin-side state.
#[derive(Default)]
pub(crate) struct AdminState {
    pub sq: Option<SubQueue>,
    pub cq: Option<Arc<Mutex<CompQueue>>>,
    /// CIDs of outstanding Asynchronous Event Requests.
    pub aers: VecDeque<u16>,
    pub features: Features,
}

/// An asynchronous event waiting for an AER (CQE DW0 and DW1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AsyncEvent {
    pub dw0: u32,
    pub dw1: u32,
}

/// Asynchronous events raised but not yet reported, and the per-type masks that hold further
/// events of a type back until its log page is read.
#[derive(Default)]
pub(crate) struct Events {
    pub queue: VecDeque<AsyncEvent>,
    /// Event types (bit per type) reported and not yet cleared by reading the log page.
    pub masked: u8,
    /// Error-log entries recorded (count for SMART and log 01h).
    pub error_count: u64,
}

/// The I/O queue table, indexed by queue id (index 0 unused).
pub(crate) struct IoQueues {
    pub sqs: Vec<Option<Arc<Mutex<SubQueue>>>>,
    pub cqs: Vec<Option<Arc<Mutex<CompQueue>>>>,
}

impl IoQueues {
    fn new(max: u16) -> IoQueues {
        let n = usize::from(max) + 1;
        IoQueues {
            sqs: vec![None; n],
            cqs: vec![None; n],
        }
    }
    pub fn any(&self) -> bool {
        self.sqs.iter().any(Option::is_some) || self.cqs.iter().any(Option::is_some)
    }
    fn clear(&mut self) {
        self.sqs.iter_mut().for_each(|q| *q = None);
        self.cqs.iter_mut().for_each(|q| *q = None);
    }
}

/// SMART counters.
#[derive(Default)]
pub(crate) struct Stats {
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub host_reads: AtomicU64,
    pub host_writes: AtomicU64,
}

/// Controller state (the `Controller` façade delegates here).
pub(crate) struct Ctrl {
    pub id: u32,
    pub ns: Arc<ZonedImage>,
    pub cfg: ControllerConfig,
    pub geo: NsGeom,
    pub admin: Mutex<AdminState>,
    pub io: RwLock<IoQueues>,
    pub regs: Mutex<Regs>,
    pub events: Mutex<Events>,
    pub stats: Arc<Stats>,
    /// CSTS.RDY mirror for lock-free checks.
    pub ready: AtomicBool,
    /// Controller fatal status raised: stop processing until reset.
    pub halted: AtomicBool,
    /// CC.CSS captured at enable.
    pub css: AtomicU8,
    /// Memory page size captured at enable.
    pub page_size: AtomicU64,
    /// Volatile write cache enabled (Feature 06h).
    pub wce: AtomicBool,
    /// Some asynchronous event is queued (lets idle pollers skip the events lock).
    pub events_pending: AtomicBool,
    /// Interrupt Coalescing (Feature 08h) value: THR in bits 7:0, TIME (100 µs) in 15:8.
    pub irq_coalescing: AtomicU32,
    /// Null data path (benchmarking): Read, Write, Write Zeroes and Zone Append complete
    /// after their checks without touching the image or moving data.
    pub null_io: AtomicBool,
    /// I/O threads for asynchronous data transfers (`aio_threads` > 0).
    pub aio: Option<Pool>,
}

impl Ctrl {
    pub fn new(ns: Arc<ZonedImage>, cfg: ControllerConfig) -> Result<Ctrl, GeometryError> {
        if cfg.max_io_queues == 0 || cfg.max_io_queues > 255 {
            return Err(GeometryError(format!(
                "max_io_queues {} must be 1..=255 (one 4 KiB doorbell page)",
                cfg.max_io_queues
            )));
        }
        let geo = NsGeom::new(ns.info(), &cfg)?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            ctrl = id,
            lba_size = geo.lba_size,
            nsze = geo.nsze,
            zone_lbas = geo.zone_lbas,
            nr_zones = geo.nr_zones,
            zasl = geo.zasl,
            "controller created"
        );
        let wce = cfg.volatile_write_cache;
        let aio = match cfg.aio_threads {
            0 => None,
            n => Some(
                Pool::start(n)
                    .map_err(|e| GeometryError(format!("cannot start {n} I/O threads: {e}")))?,
            ),
        };
        Ok(Ctrl {
            id,
            ns,
            io: RwLock::new(IoQueues::new(cfg.max_io_queues)),
            cfg,
            geo,
            admin: Mutex::new(AdminState::default()),
            regs: Mutex::new(Regs::new(MQES)),
            events: Mutex::new(Events::default()),
            stats: Arc::new(Stats::default()),
            ready: AtomicBool::new(false),
            halted: AtomicBool::new(false),
            css: AtomicU8::new(0),
            page_size: AtomicU64::new(4096),
            wce: AtomicBool::new(wce),
            events_pending: AtomicBool::new(false),
            irq_coalescing: AtomicU32::new(0),
            null_io: AtomicBool::new(false),
            aio,
        })
    }

    pub(crate) fn io_write(&self) -> std::sync::RwLockWriteGuard<'_, IoQueues> {
        self.io.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn io_read(&self) -> std::sync::RwLockReadGuard<'_, IoQueues> {
        self.io.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait (bounded) until no transfer runs on the I/O threads (reset, shutdown, flush).
    pub(crate) fn wait_transfers(&self, why: &'static str) {
        if let Some(pool) = &self.aio {
            if !pool.wait_idle(TRANSFER_WAIT) {
                tracing::warn!(
                    ctrl = self.id,
                    why,
                    outstanding = pool.outstanding(),
                    "I/O transfers still in flight; going on without them"
                );
            }
        }
    }

    /// Interrupt vectors available to CQs (admin uses 0; one per I/O queue pair).
    pub fn vectors_offered(&self) -> u16 {
        self.cfg.max_io_queues + 1
    }

    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        lock(&self.regs).read(offset, data);
    }

    pub fn mmio_write(&self, env: &HostEnv<'_>, offset: u64, data: &[u8]) -> RegEffect {
        let dwords: Vec<(u64, u32)> = match data.len() {
            4 if offset.is_multiple_of(4) => {
                vec![(
                    offset,
                    u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
                )]
            }
            8 if offset.is_multiple_of(8) => {
                let v = u64::from_le_bytes(data.try_into().unwrap_or([0; 8]));
                vec![
                    (offset, (v & 0xFFFF_FFFF) as u32),
                    (offset + 4, (v >> 32) as u32),
                ]
            }
            _ => {
                tracing::debug!(
                    ctrl = self.id,
                    offset,
                    len = data.len(),
                    reason = "register write of unsupported size/alignment",
                    "ignored"
                );
                return RegEffect::default();
            }
        };
        let mut effect = RegEffect::default();
        for (off, v) in dwords {
            if off == regs::off::CC {
                effect.queues_changed |= self.write_cc(env, v);
            } else if !lock(&self.regs).write32_simple(off, v) {
                tracing::debug!(
                    ctrl = self.id,
                    offset = off,
                    value = v,
                    reason = "write to read-only or reserved register",
                    "ignored"
                );
            }
        }
        effect
    }

    /// Handle a CC write; returns whether the queue set changed.
    fn write_cc(&self, env: &HostEnv<'_>, v: u32) -> bool {
        let mut admin = lock(&self.admin);
        let mut io = self.io_write();
        let mut regs = lock(&self.regs);
        let old_shn = regs.cc.shn();
        let action = regs.write_cc(v);
        // A shutdown notification that comes with (or without) clearing EN still completes:
        // the reset below flushes, and there is nothing else to quiesce.
        let shn_raised = old_shn == 0 && regs.cc.shn() != 0 && action != CcAction::Shutdown;
        if shn_raised && action == CcAction::None {
            self.wait_transfers("shutdown");
            if let Err(e) = self.ns.flush() {
                tracing::warn!(ctrl = self.id, error = %e, "flush at shutdown failed");
            }
            regs.csts.insert(Csts::SHST_COMPLETE);
        }
        tracing::debug!(
            ctrl = self.id,
            cc = format_args!("{v:#x}"),
            ?action,
            "CC write"
        );
        match action {
            CcAction::None => false,
            CcAction::Shutdown => {
                drop(regs);
                self.wait_transfers("shutdown");
                if let Err(e) = self.ns.flush() {
                    tracing::warn!(ctrl = self.id, error = %e, "flush at shutdown failed");
                }
                let mut regs = lock(&self.regs);
                regs.csts.remove(Csts::SHST_OCCURRING);
                regs.csts.insert(Csts::SHST_COMPLETE);
                false
            }
            CcAction::Reset => {
                drop(regs);
                self.reset_locked(env, &mut admin, &mut io);
                if shn_raised {
                    lock(&self.regs).csts.insert(Csts::SHST_COMPLETE);
                }
                true
            }
            CcAction::Enable => {
                let (cc, cap, aqa, asq, acq) = (regs.cc, regs.cap, regs.aqa, regs.asq, regs.acq);
                if let Err(reason) = regs::enable_check(cc, cap, aqa, asq, acq) {
                    tracing::debug!(
                        ctrl = self.id,
                        reason,
                        "enable refused: controller fatal status"
                    );
                    regs.csts = Csts::CFS;
                    return false;
                }
                admin.sq = Some(SubQueue::new(0, asq, regs.asqs(), 0));
                let mut acq_q = CompQueue::new(0, acq, regs.acqs(), true, 0);
                acq_q.sq_count = 1;
                admin.cq = Some(Arc::new(Mutex::new(acq_q)));
                admin.aers.clear();
                admin.features = Features::default();
                self.irq_coalescing.store(0, Ordering::Release);
                io.clear();
                lock(&self.events).queue.clear();
                self.events_pending.store(false, Ordering::Release);
                self.css.store(cc.css(), Ordering::Release);
                self.page_size.store(cc.page_size(), Ordering::Release);
                self.wce
                    .store(self.cfg.volatile_write_cache, Ordering::Release);
                env.doorbells.clear();
                regs.csts = Csts::RDY;
                self.halted.store(false, Ordering::Release);
                self.ready.store(true, Ordering::Release);
                tracing::debug!(
                    ctrl = self.id,
                    css = cc.css(),
                    page = cc.page_size(),
                    asqs = regs.asqs(),
                    acqs = regs.acqs(),
                    "enabled"
                );
                true
            }
        }
    }

    /// Controller reset with `admin` and `io` held: drop every queue and pending command.
    fn reset_locked(&self, env: &HostEnv<'_>, admin: &mut AdminState, io: &mut IoQueues) {
        self.ready.store(false, Ordering::Release);
        // No transfer into guest memory may follow the reset: wait for the I/O threads.
        // Their results go to the inboxes of the queues dropped below.
        self.wait_transfers("controller reset");
        io.clear();
        admin.sq = None;
        admin.cq = None;
        admin.aers.clear();
        admin.features = Features::default();
        self.irq_coalescing.store(0, Ordering::Release);
        {
            let mut ev = lock(&self.events);
            ev.queue.clear();
            self.events_pending.store(false, Ordering::Release);
            ev.masked = 0;
        }
        if let Err(e) = self.ns.flush() {
            tracing::warn!(ctrl = self.id, error = %e, "flush at controller reset failed");
        }
        env.doorbells.clear();
        self.halted.store(false, Ordering::Release);
        let mut regs = lock(&self.regs);
        regs.csts.remove(Csts::RDY | Csts::CFS);
        tracing::debug!(ctrl = self.id, "controller reset");
    }

    pub fn reset(&self, env: &HostEnv<'_>) {
        let mut admin = lock(&self.admin);
        let mut io = self.io_write();
        self.reset_locked(env, &mut admin, &mut io);
        *lock(&self.regs) = Regs::new(MQES);
    }

    pub fn max_vectors(&self) -> u16 {
        let io = self.io_read();
        io.cqs
            .iter()
            .flatten()
            .map(|cq| lock(cq).iv + 1)
            .max()
            .unwrap_or(1)
    }

    /// Enter controller fatal status (guest made the controller unable to continue).
    pub(crate) fn fatal(&self, reason: &str) {
        tracing::debug!(ctrl = self.id, reason, "controller fatal status");
        self.halted.store(true, Ordering::Release);
        lock(&self.regs).csts.insert(Csts::CFS);
    }

    fn running(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.halted.load(Ordering::Acquire)
    }

    /// Raise the interrupt of a CQ unless it is masked (INTMS applies to pin/MSI vectors).
    fn interrupt(&self, env: &HostEnv<'_>, cq: &CompQueue) {
        if !cq.ien {
            return;
        }
        if cq.iv < 32 && lock(&self.regs).intm & (1 << cq.iv) != 0 {
            return;
        }
        env.irq.raise(cq.iv);
    }

    /// Fetch, execute and complete up to `budget` commands of `sq`.
    fn drain(
        &self,
        env: &HostEnv<'_>,
        sq: &mut SubQueue,
        cq: &Mutex<CompQueue>,
        budget: usize,
        exec: &mut dyn FnMut(&Sqe, &SubQueue) -> Outcome,
    ) -> usize {
        let mut done = 0;
        let mut fetched = 0;
        let mut queued = 0;
        let mut unsignalled = 0;
        // Early interrupts (HostEnv::raise_every), while they pay off for this queue, after
        // three quarters of the host's depth (queue::HostDepth, observed when the pass finds
        // work).
        let early = env.raise_every > 0 && sq.early.allowed();
        let mut raise_at = env.raise_every;
        let mut reached = false;
        let mut tail_at_raise = None;
        if !self.halted.load(Ordering::Acquire) {
            match self.post_finished(env, sq, cq) {
                Ok(n) => {
                    done += n;
                    unsignalled = n;
                }
                Err(()) => return done,
            }
        }
        while fetched < budget && !self.halted.load(Ordering::Acquire) {
            let Some(pending) = sq.pending(env.doorbells.sq_tail(sq.qid)) else {
                self.invalid_doorbell_event();
                break;
            };
            if pending == 0 {
                break;
            }
            {
                let mut c = lock(cq);
                let head = env.doorbells.cq_head(c.qid);
                c.update_head(head);
                if fetched == 0 && env.raise_every > 0 {
                    sq.depth.observe(pending + c.used() + c.reserved);
                    raise_at = sq.depth.raise_every(env.raise_every);
                }
                if !c.reserve() {
                    tracing::trace!(sqid = sq.qid, cqid = c.qid, "CQ full, fetching paused");
                    break;
                }
            }
            let sqe = match sq.fetch(env.mem) {
                Ok(s) => s,
                Err(e) => {
                    lock(cq).unreserve();
                    self.fatal(&format!("SQ {} entry not readable: {e}", sq.qid));
                    break;
                }
            };
            fetched += 1;
            let outcome = exec(&sqe, sq);
            let mut c = lock(cq);
            match outcome {
                Outcome::Deferred => c.unreserve(),
                Outcome::Queued => queued += 1,
                Outcome::Done { status, dw0, dw1 } => {
                    let cqe = Cqe {
                        dw0: dw0.into(),
                        dw1: dw1.into(),
                        sqhd: ((sq.head & 0xFFFF) as u16).into(),
                        sqid: sq.qid.into(),
                        cid: sqe.cid().into(),
                        status: 0.into(),
                    };
                    if let Err(e) = c.post(env.mem, cqe, status) {
                        drop(c);
                        self.fatal(&format!("CQ {} entry not writable: {e}", cq_qid(cq)));
                        break;
                    }
                    done += 1;
                    unsignalled += 1;
                    if unsignalled == raise_at {
                        reached = true;
                        if early {
                            // The host can reap these and submit more while this pass
                            // goes on.
                            self.signal(env, &mut c, unsignalled);
                            unsignalled = 0;
                            tail_at_raise.get_or_insert(env.doorbells.sq_tail(sq.qid));
                        }
                    }
                }
            }
        }
        if unsignalled > 0 {
            self.signal(env, &mut lock(cq), unsignalled);
        }
        if env.raise_every > 0 {
            let answered = tail_at_raise.is_some_and(|t| env.doorbells.sq_tail(sq.qid) != t);
            sq.early
                .end_pass(reached, tail_at_raise.is_some(), answered);
        }
        done + queued
    }

    /// Post the results the I/O threads left in `sq`'s inbox (their CQ slots were reserved
    /// at fetch). Returns how many were posted; Err after a controller fatal error.
    pub(crate) fn post_finished(
        &self,
        env: &HostEnv<'_>,
        sq: &SubQueue,
        cq: &Mutex<CompQueue>,
    ) -> Result<usize, ()> {
        if self.aio.is_none() {
            return Ok(0);
        }
        let finished = sq.inbox.take();
        if finished.is_empty() {
            return Ok(0);
        }
        let mut c = lock(cq);
        let mut n = 0;
        for f in finished {
            let cqe = Cqe {
                dw0: f.dw0.into(),
                dw1: f.dw1.into(),
                sqhd: ((sq.head & 0xFFFF) as u16).into(),
                sqid: sq.qid.into(),
                cid: f.cid.into(),
                status: 0.into(),
            };
            if let Err(e) = c.post(env.mem, cqe, f.status) {
                let qid = c.qid;
                drop(c);
                self.fatal(&format!("CQ {qid} entry not writable: {e}"));
                return Err(());
            }
            n += 1;
        }
        Ok(n)
    }

    /// Interrupt for `n` new entries of an I/O CQ, honouring Interrupt Coalescing: with an
    /// aggregation time set, the vector is raised once more than THR entries are waiting or
    /// the oldest has waited TIME; otherwise at once. The admin CQ is never coalesced.
    pub(crate) fn signal(&self, env: &HostEnv<'_>, c: &mut CompQueue, n: usize) {
        let co = self.irq_coalescing.load(Ordering::Acquire);
        let (thr, time) = (co & 0xFF, (co >> 8) & 0xFF);
        if c.qid != 0 && time != 0 && c.ien {
            c.unsignalled = c
                .unsignalled
                .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
            let since = *c.unsignalled_since.get_or_insert_with(Instant::now);
            if c.unsignalled <= thr && since.elapsed() < coalescing_time(time) {
                return;
            }
        }
        c.unsignalled = 0;
        c.unsignalled_since = None;
        self.interrupt(env, c);
    }

    /// Raise a coalesced interrupt whose aggregation time has passed. Returns true while
    /// one is still waiting (the poller must keep polling rather than sleep).
    fn coalesced_due(&self, env: &HostEnv<'_>, cq: &Mutex<CompQueue>) -> bool {
        let mut c = lock(cq);
        let Some(since) = c.unsignalled_since else {
            return false;
        };
        let time = (self.irq_coalescing.load(Ordering::Acquire) >> 8) & 0xFF;
        if since.elapsed() >= coalescing_time(time) {
            c.unsignalled = 0;
            c.unsignalled_since = None;
            self.interrupt(env, &c);
            return false;
        }
        true
    }

    /// Post a completion outside the fetch path (an AER finished by an event).
    fn post_late(
        &self,
        env: &HostEnv<'_>,
        cq: &Mutex<CompQueue>,
        sqhd: u32,
        cid: u16,
        ev: AsyncEvent,
    ) -> bool {
        let mut c = lock(cq);
        let head = env.doorbells.cq_head(c.qid);
        c.update_head(head);
        if !c.reserve() {
            return false;
        }
        let cqe = Cqe {
            dw0: ev.dw0.into(),
            dw1: ev.dw1.into(),
            sqhd: ((sqhd & 0xFFFF) as u16).into(),
            sqid: 0.into(),
            cid: cid.into(),
            status: 0.into(),
        };
        if c.post(env.mem, cqe, Status::SUCCESS).is_err() {
            drop(c);
            self.fatal("admin CQ entry not writable");
            return false;
        }
        self.interrupt(env, &c);
        true
    }

    /// Record an invalid doorbell write value (reported through an Error AER if enabled).
    fn invalid_doorbell_event(&self) {
        // Error status, "Invalid Doorbell Write Value" (01h), log page 01h.
        self.raise_event(AsyncEvent {
            dw0: 0x01 << 16 | 0x01 << 8,
            dw1: 0,
        });
    }

    /// Queue an asynchronous event unless its type is masked or already queued.
    pub(crate) fn raise_event(&self, ev: AsyncEvent) {
        let ty = (ev.dw0 & 0x7) as u8;
        let mut events = lock(&self.events);
        if events.masked & (1 << ty) != 0 || events.queue.contains(&ev) {
            return;
        }
        if ty == 0 {
            events.error_count += 1;
        }
        events.queue.push_back(ev);
        self.events_pending.store(true, Ordering::Release);
    }

    pub fn process_admin(&self, env: &HostEnv<'_>) -> usize {
        if !self.running() {
            return 0;
        }
        let _span = tracing::debug_span!("ctrl", id = self.id).entered();
        let mut admin = lock(&self.admin);
        let AdminState { sq, cq, .. } = &mut *admin;
        let (Some(mut sq_q), Some(cq_arc)) = (sq.take(), cq.clone()) else {
            return 0;
        };
        let _sq_span = tracing::trace_span!("sq", sqid = 0).entered();
        let budget = sq_q.size as usize;
        let done = self.drain(env, &mut sq_q, &cq_arc, budget, &mut |sqe, _| {
            let cmd = AdminCmd::decode(sqe);
            let out = self.exec_admin(env, &mut admin, sqe, cmd);
            if let Outcome::Done { status, .. } = &out {
                tracing::debug!(cid = sqe.cid(), opc = sqe.opc(), nsid = sqe.nsid.get(), %status, "admin command");
            }
            out
        });
        // A reset cannot have run meanwhile: it needs the admin lock we hold.
        admin.sq = Some(sq_q);
        done + self.deliver_events(env, &mut admin)
    }

    /// Complete outstanding AERs with queued events (admin lock held).
    fn deliver_events(&self, env: &HostEnv<'_>, admin: &mut AdminState) -> usize {
        let (Some(sqhd), Some(cq)) = (admin.sq.as_ref().map(|s| s.head), admin.cq.clone()) else {
            return 0;
        };
        let mut delivered = 0;
        while !admin.aers.is_empty() && !self.halted.load(Ordering::Acquire) {
            let Some(ev) = lock(&self.events).queue.front().copied() else {
                break;
            };
            let Some(&cid) = admin.aers.front() else {
                break;
            };
            if !self.post_late(env, &cq, sqhd, cid, ev) {
                break;
            }
            admin.aers.pop_front();
            let mut events = lock(&self.events);
            events.queue.pop_front();
            self.events_pending
                .store(!events.queue.is_empty(), Ordering::Release);
            events.masked |= 1 << (ev.dw0 & 0x7);
            delivered += 1;
            tracing::debug!(cid, dw0 = ev.dw0, "asynchronous event reported");
        }
        delivered
    }

    pub fn process_io(&self, env: &HostEnv<'_>, poller: usize, pollers: usize) -> usize {
        if !self.running() || pollers == 0 {
            return 0;
        }
        let _span = tracing::trace_span!("ctrl", id = self.id).entered();
        let io = self.io_read();
        let css = self.css.load(Ordering::Acquire);
        let coalescing = self.irq_coalescing.load(Ordering::Acquire) & 0xFF00 != 0;
        let mut waiting = false;
        let mut done = 0;
        for (qid, slot) in io.sqs.iter().enumerate().skip(1) {
            if qid % pollers != poller {
                continue;
            }
            let Some(sq) = slot else { continue };
            let mut sq = lock(sq);
            let Some(Some(cq)) = io.cqs.get(usize::from(sq.cqid)) else {
                continue;
            };
            let cq = Arc::clone(cq);
            let _sq_span = tracing::trace_span!("sq", sqid = qid).entered();
            done += self.drain(env, &mut sq, &cq, IO_BUDGET, &mut |sqe, sq| {
                self.exec_io(env, sqe, IoCmd::decode(sqe, css), sq)
            });
            if coalescing && self.coalesced_due(env, &cq) {
                waiting = true;
            }
        }
        drop(io);
        // Events raised here (invalid doorbell values) go to a waiting AER now, unless the
        // admin side is busy; it delivers them at the end of its next pass anyway.
        if self.events_pending.load(Ordering::Acquire) {
            if let Ok(mut admin) = self.admin.try_lock() {
                if self.running() {
                    self.deliver_events(env, &mut admin);
                }
            }
        }
        // A coalesced interrupt still waiting for its time counts as work, so that the
        // poller keeps polling until it is raised.
        done + usize::from(waiting)
    }
}

/// Aggregation time of Interrupt Coalescing (100 µs units).
fn coalescing_time(time: u32) -> Duration {
    Duration::from_micros(100 * u64::from(time))
}

fn cq_qid(cq: &Mutex<CompQueue>) -> u16 {
    lock(cq).qid
}
