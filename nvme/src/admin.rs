//! Admin command execution: queue creation/deletion, Identify, Get Log Page, Set/Get Features,
//! Asynchronous Event Request, Abort, Keep Alive.

use crate::cmd::AdminCmd;
use crate::ctrl::{lock, AdminState, Ctrl, Features, Outcome, AERL, MQES};
use crate::prp::{self, DataPtr};
use crate::queue::{CompQueue, SubQueue};
use crate::status::Status;
use crate::wire::Sqe;
use crate::HostEnv;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Feature identifiers.
pub mod fid {
    /// Arbitration.
    pub const ARBITRATION: u8 = 0x01;
    /// Power Management.
    pub const POWER_MGMT: u8 = 0x02;
    /// Temperature Threshold.
    pub const TEMP_THRESHOLD: u8 = 0x04;
    /// Volatile Write Cache.
    pub const VWC: u8 = 0x06;
    /// Number of Queues.
    pub const NUM_QUEUES: u8 = 0x07;
    /// Interrupt Coalescing.
    pub const IRQ_COALESCING: u8 = 0x08;
    /// Asynchronous Event Configuration.
    pub const ASYNC_EVENT_CFG: u8 = 0x0B;
    /// I/O Command Set Profile.
    pub const IOCS_PROFILE: u8 = 0x19;
}

/// Asynchronous Event Configuration bits we accept: SMART warnings 7:0 and zone descriptor
/// changed notices (bit 27).
const AEC_SUPPORTED: u32 = 0xFF | (1 << 27);

/// Get Features capabilities (SEL 011b): changeable.
const CAP_CHANGEABLE: u32 = 1 << 2;

impl Ctrl {
    /// Transfer a controller-to-host payload through the command's PRPs (admin commands use
    /// PRPs only).
    fn send_data(&self, env: &HostEnv<'_>, dptr: DataPtr, data: &[u8]) -> Result<(), Status> {
        let ranges = prp::map_prp(
            env.mem,
            dptr.prp1,
            dptr.prp2,
            data.len() as u64,
            self.page(),
        )?;
        prp::copy_to_guest(env.mem, &ranges, data)
    }

    /// Execute one admin command with the admin state locked.
    pub(crate) fn exec_admin(
        &self,
        env: &HostEnv<'_>,
        admin: &mut AdminState,
        sqe: &Sqe,
        cmd: AdminCmd,
    ) -> Outcome {
        if sqe.fuse() != 0 || sqe.psdt() != 0 {
            tracing::debug!(
                opc = sqe.opc(),
                reason = "fused operation or SGL on an admin command",
                "rejected"
            );
            return Outcome::status(Status::INVALID_FIELD);
        }
        let nsid = sqe.nsid.get();
        match cmd {
            AdminCmd::Identify { cns, csi, dptr, .. } => self
                .identify(cns, nsid, csi)
                .and_then(|d| self.send_data(env, dptr, &d))
                .into(),
            AdminCmd::GetLogPage {
                lid,
                rae,
                len,
                offset,
                csi,
                dptr,
                ..
            } => {
                if self.geo.max_xfer.is_some_and(|m| len > m) {
                    tracing::debug!(
                        lid,
                        len,
                        reason = "log transfer larger than MDTS",
                        "rejected"
                    );
                    return Outcome::status(Status::INVALID_FIELD);
                }
                self.get_log(&admin.features, lid, rae, offset, len, csi, nsid)
                    .and_then(|d| self.send_data(env, dptr, &d))
                    .into()
            }
            AdminCmd::CreateCq {
                qid,
                size,
                pc,
                ien,
                iv,
                base,
            } => self.create_cq(env, qid, size, pc, ien, iv, base).into(),
            AdminCmd::CreateSq {
                qid,
                size,
                pc,
                cqid,
                base,
            } => self.create_sq(env, qid, size, pc, cqid, base).into(),
            AdminCmd::DeleteSq { qid } => self.delete_sq(env, qid).into(),
            AdminCmd::DeleteCq { qid } => self.delete_cq(env, qid).into(),
            AdminCmd::SetFeatures { fid, sv, dw11, .. } => {
                match self.set_features(&mut admin.features, fid, sv, dw11) {
                    Ok(dw0) => Outcome::ok(dw0),
                    Err(st) => Outcome::status(st),
                }
            }
            AdminCmd::GetFeatures { fid, sel, dw11 } => {
                match self.get_features(&admin.features, fid, sel, dw11) {
                    Ok(dw0) => Outcome::ok(dw0),
                    Err(st) => Outcome::status(st),
                }
            }
            AdminCmd::AsyncEventRequest => {
                if admin.aers.len() > usize::from(AERL) {
                    tracing::debug!(reason = "more AERs than AERL + 1", "rejected");
                    return Outcome::status(Status::AER_LIMIT);
                }
                admin.aers.push_back(sqe.cid());
                Outcome::Deferred
            }
            // Commands are either executed before the next is fetched or already transferring
            // on an I/O thread: nothing can be aborted.
            AdminCmd::Abort { .. } => Outcome::ok(1),
            AdminCmd::KeepAlive => Outcome::ok(0),
            AdminCmd::Invalid(opc) => {
                tracing::debug!(opc, reason = "unsupported admin opcode", "rejected");
                Outcome::status(Status::INVALID_OPCODE)
            }
        }
    }

    fn check_entry_sizes(&self, cq: bool) -> Result<(), Status> {
        let cc = lock(&self.regs).cc;
        let ok = if cq {
            cc.iocqes() == 4
        } else {
            cc.iosqes() == 6
        };
        if !ok {
            tracing::debug!(
                reason = "CC.IOSQES/IOCQES not programmed",
                "queue creation rejected"
            );
            return Err(Status::INVALID_FIELD);
        }
        Ok(())
    }

    /// The checks Create I/O CQ and Create I/O SQ share, in the spec's order: queue
    /// identifier, size, base address, physical contiguity. The error carries the reason
    /// for the trace.
    fn check_new_queue(
        &self,
        qid: u16,
        in_use: bool,
        size: u32,
        base: u64,
        pc: bool,
    ) -> Result<(), (Status, &'static str)> {
        if qid == 0 || qid > self.cfg.max_io_queues || in_use {
            return Err((
                Status::INVALID_QID,
                "queue identifier zero, too large or in use",
            ));
        }
        if size < 2 || size > u32::from(MQES) + 1 {
            return Err((Status::INVALID_QSIZE, "queue size zero or beyond MQES"));
        }
        if base == 0 {
            return Err((Status::INVALID_FIELD, "base address zero"));
        }
        if base & (self.page() - 1) != 0 {
            return Err((Status::PRP_INVALID_OFFSET, "base address not page aligned"));
        }
        if !pc {
            return Err((
                Status::INVALID_FIELD,
                "queue not physically contiguous (CAP.CQR)",
            ));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn create_cq(
        &self,
        env: &HostEnv<'_>,
        qid: u16,
        size: u32,
        pc: bool,
        ien: bool,
        iv: u16,
        base: u64,
    ) -> Result<(), Status> {
        let mut io = self.io_write();
        let reject = |st: Status, reason: &str| {
            tracing::debug!(qid, size, iv, base, reason, "create CQ rejected");
            Err(st)
        };
        let in_use = io.cqs.get(usize::from(qid)).is_some_and(Option::is_some);
        if let Err((st, reason)) = self.check_new_queue(qid, in_use, size, base, pc) {
            return reject(st, reason);
        }
        if iv >= self.vectors_offered() {
            return reject(
                Status::INVALID_VECTOR,
                "interrupt vector beyond the vectors offered",
            );
        }
        self.check_entry_sizes(true)?;
        env.doorbells.clear_cq_head(qid);
        let mut cq = CompQueue::new(qid, base, size, ien, iv);
        cq.set_stale_head(env.doorbells.cq_head(qid));
        io.cqs[usize::from(qid)] = Some(Arc::new(Mutex::new(cq)));
        tracing::debug!(qid, size, ien, iv, "I/O CQ created");
        Ok(())
    }

    fn create_sq(
        &self,
        env: &HostEnv<'_>,
        qid: u16,
        size: u32,
        pc: bool,
        cqid: u16,
        base: u64,
    ) -> Result<(), Status> {
        let mut io = self.io_write();
        let reject = |st: Status, reason: &str| {
            tracing::debug!(qid, size, cqid, base, reason, "create SQ rejected");
            Err(st)
        };
        let cq = match io.cqs.get(usize::from(cqid)) {
            Some(Some(cq)) if cqid != 0 => Arc::clone(cq),
            _ => return reject(Status::INVALID_CQ, "completion queue does not exist"),
        };
        let in_use = io.sqs.get(usize::from(qid)).is_some_and(Option::is_some);
        if let Err((st, reason)) = self.check_new_queue(qid, in_use, size, base, pc) {
            return reject(st, reason);
        }
        self.check_entry_sizes(false)?;
        lock(&cq).sq_count += 1;
        env.doorbells.clear_sq_tail(qid);
        let mut sq = SubQueue::new(qid, base, size, cqid);
        sq.set_stale_tail(env.doorbells.sq_tail(qid));
        io.sqs[usize::from(qid)] = Some(Arc::new(Mutex::new(sq)));
        tracing::debug!(qid, size, cqid, "I/O SQ created");
        Ok(())
    }

    fn delete_sq(&self, env: &HostEnv<'_>, qid: u16) -> Result<(), Status> {
        let mut io = self.io_write();
        let Some(slot) = io.sqs.get_mut(usize::from(qid)).filter(|_| qid != 0) else {
            tracing::debug!(qid, reason = "no such SQ", "delete SQ rejected");
            return Err(Status::INVALID_QID);
        };
        let Some(sq) = slot.take() else {
            tracing::debug!(qid, reason = "no such SQ", "delete SQ rejected");
            return Err(Status::INVALID_QID);
        };
        let sq = lock(&sq);
        // Commands of this queue still running on the I/O threads finish first, and their
        // completions are posted before the queue goes (the host may keep the CQ).
        if !sq.inbox.wait_idle(crate::ctrl::TRANSFER_WAIT) {
            tracing::warn!(
                qid,
                "I/O still in flight on a deleted SQ; its results are dropped"
            );
        }
        if let Some(Some(cq)) = io.cqs.get(usize::from(sq.cqid)) {
            if !self.halted.load(std::sync::atomic::Ordering::Acquire) {
                if let Ok(n) = self.post_finished(env, &sq, cq) {
                    if n > 0 {
                        self.signal(env, &mut lock(cq), n);
                    }
                }
            }
            let mut cq = lock(cq);
            cq.sq_count = cq.sq_count.saturating_sub(1);
        }
        env.doorbells.clear_sq_tail(qid);
        tracing::debug!(qid, "I/O SQ deleted");
        Ok(())
    }

    fn delete_cq(&self, env: &HostEnv<'_>, qid: u16) -> Result<(), Status> {
        let mut io = self.io_write();
        let Some(Some(cq)) = io.cqs.get(usize::from(qid)).filter(|_| qid != 0) else {
            tracing::debug!(qid, reason = "no such CQ", "delete CQ rejected");
            return Err(Status::INVALID_QID);
        };
        if lock(cq).sq_count > 0 {
            tracing::debug!(
                qid,
                reason = "SQs still bound to the CQ",
                "delete CQ rejected"
            );
            return Err(Status::INVALID_QUEUE_DELETION);
        }
        io.cqs[usize::from(qid)] = None;
        env.doorbells.clear_cq_head(qid);
        tracing::debug!(qid, "I/O CQ deleted");
        Ok(())
    }

    fn num_queues_dw0(&self) -> u32 {
        let n = u32::from(self.cfg.max_io_queues) - 1;
        n | (n << 16)
    }

    fn set_features(&self, f: &mut Features, fid: u8, sv: bool, dw11: u32) -> Result<u32, Status> {
        let invalid = |reason: &str| {
            tracing::debug!(fid, dw11, reason, "set features rejected");
            Err(Status::INVALID_FIELD)
        };
        if sv {
            tracing::debug!(
                fid,
                reason = "no feature is saveable",
                "set features rejected"
            );
            return Err(Status::FEATURE_NOT_SAVEABLE);
        }
        match fid {
            fid::ARBITRATION => f.arbitration = dw11,
            fid::POWER_MGMT => {
                if dw11 & 0x1F != 0 {
                    return invalid("power state beyond NPSS");
                }
                f.power_mgmt = dw11 & 0xFF;
            }
            fid::TEMP_THRESHOLD => {
                let tmpth = (dw11 & 0xFFFF) as u16;
                let tmpsel = (dw11 >> 16) & 0xF;
                let thsel = (dw11 >> 20) & 0x3;
                if tmpsel != 0 && tmpsel != 0xF {
                    return invalid("only the composite temperature sensor exists");
                }
                match thsel {
                    0 => f.temp_over = tmpth,
                    1 => f.temp_under = tmpth,
                    _ => return invalid("threshold type reserved"),
                }
                // Crossing a threshold is a SMART temperature warning (reported through an
                // AER when enabled in the Asynchronous Event Configuration).
                if crate::log::temperature_warning(f) && f.async_event_cfg & (1 << 1) != 0 {
                    self.raise_event(crate::ctrl::AsyncEvent {
                        dw0: 0x1 | (0x01 << 8) | (u32::from(crate::log::lid::SMART) << 16),
                        dw1: 0,
                    });
                }
            }
            fid::VWC => {
                if !self.cfg.volatile_write_cache {
                    return invalid("no volatile write cache");
                }
                self.wce.store(dw11 & 1 != 0, Ordering::Release);
            }
            fid::NUM_QUEUES => {
                if dw11 & 0xFFFF == 0xFFFF || dw11 >> 16 == 0xFFFF {
                    return invalid("65536 queues requested");
                }
                if self.io_read().any() {
                    tracing::debug!(reason = "I/O queues already exist", "set features rejected");
                    return Err(Status::CMD_SEQUENCE);
                }
                f.num_queues_set = true;
                return Ok(self.num_queues_dw0());
            }
            fid::IRQ_COALESCING => {
                f.irq_coalescing = dw11 & 0xFFFF;
                self.irq_coalescing
                    .store(f.irq_coalescing, Ordering::Release);
            }
            fid::ASYNC_EVENT_CFG => f.async_event_cfg = dw11 & AEC_SUPPORTED,
            fid::IOCS_PROFILE => {
                if dw11 & 0x1FF != 0 {
                    tracing::debug!(
                        index = dw11 & 0x1FF,
                        reason = "only command set combination 0 exists",
                        "set features rejected"
                    );
                    return Err(Status::IOCS_COMBINATION_REJECTED);
                }
                f.iocs_profile = 0;
            }
            _ => return invalid("unsupported feature"),
        }
        Ok(0)
    }

    fn get_features(&self, f: &Features, fid: u8, sel: u8, dw11: u32) -> Result<u32, Status> {
        let known = matches!(
            fid,
            fid::ARBITRATION
                | fid::POWER_MGMT
                | fid::TEMP_THRESHOLD
                | fid::NUM_QUEUES
                | fid::IRQ_COALESCING
                | fid::ASYNC_EVENT_CFG
                | fid::IOCS_PROFILE
        ) || (fid == fid::VWC && self.cfg.volatile_write_cache);
        if !known {
            tracing::debug!(fid, reason = "unsupported feature", "get features rejected");
            return Err(Status::INVALID_FIELD);
        }
        let defaults = Features::default();
        let f = match sel {
            0 => f,
            1 | 2 => &defaults,
            3 => return Ok(CAP_CHANGEABLE),
            _ => {
                tracing::debug!(
                    fid,
                    sel,
                    reason = "reserved select value",
                    "get features rejected"
                );
                return Err(Status::INVALID_FIELD);
            }
        };
        Ok(match fid {
            fid::ARBITRATION => f.arbitration,
            fid::POWER_MGMT => f.power_mgmt,
            fid::TEMP_THRESHOLD => {
                let tmpsel = (dw11 >> 16) & 0xF;
                if tmpsel != 0 && tmpsel != 0xF {
                    return Err(Status::INVALID_FIELD);
                }
                match (dw11 >> 20) & 0x3 {
                    0 => u32::from(f.temp_over),
                    1 => u32::from(f.temp_under),
                    _ => return Err(Status::INVALID_FIELD),
                }
            }
            fid::VWC => {
                if sel == 0 {
                    u32::from(self.wce.load(Ordering::Acquire))
                } else {
                    1
                }
            }
            fid::NUM_QUEUES => self.num_queues_dw0(),
            fid::IRQ_COALESCING => f.irq_coalescing,
            fid::ASYNC_EVENT_CFG => f.async_event_cfg,
            _ => f.iocs_profile,
        })
    }
}
