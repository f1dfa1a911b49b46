//! Submission and completion queue state: ring arithmetic, doorbell validation, the CQ phase
//! tag and CQ-slot reservation (a slot is reserved before an SQE is fetched so a completion
//! never overwrites an entry the host has not consumed).

use crate::status::Status;
use crate::wire::{Cqe, Sqe};
use crate::{DmaError, GuestMemory};
use zerocopy::{FromBytes, IntoBytes};

/// SQE size (IOSQES = 6).
pub const SQE_SIZE: u64 = 64;
/// CQE size (IOCQES = 4).
pub const CQE_SIZE: u64 = 16;

/// Number of occupied slots between `head` and `tail` in a ring of `size`.
pub fn ring_used(head: u32, tail: u32, size: u32) -> u32 {
    debug_assert!(head < size && tail < size);
    (tail + size - head) % size
}

/// A submission queue (admin or I/O).
#[derive(Debug)]
pub struct SubQueue {
    /// Queue identifier.
    pub qid: u16,
    /// Guest physical base address (contiguous).
    pub base: u64,
    /// Number of entries.
    pub size: u32,
    /// Next entry the controller will fetch.
    pub head: u32,
    /// Completion queue this SQ posts to.
    pub cqid: u16,
    /// Last invalid tail doorbell reported (to log each bad value once).
    bad_tail: Option<u32>,
    /// Tail doorbell value found when the queue was created: left by an earlier queue with
    /// this id, so it means "nothing submitted" until the host writes another value.
    stale_tail: Option<u32>,
    /// Results of this queue's commands run by the I/O threads, waiting to be posted.
    pub inbox: std::sync::Arc<crate::aio::Inbox>,
    /// Whether early interrupts pay off for this queue's host.
    pub early: EarlyRaise,
    /// How many commands the host keeps outstanding on this queue (sets the early batch).
    pub depth: HostDepth,
}

/// The host's queue depth as the poller can see it at the start of a pass: commands waiting
/// in the SQ, plus those of its CQ's entries that are posted and not yet reaped or still
/// reserved by commands in flight. The early interrupt then comes after half of that, so
/// the host reaps and resubmits while the other half is being done: with 128 KiB writes at
/// depth 8, raising every 8 (at the end of the pass) ran at 43.7k-46.2k IOPS, every 4 at
/// 51.5k-56.0k; 4 KiB reads at depth 32 want 8 (docs/performance.md). A snapshot misses the
/// commands the host is reaping or resubmitting at that moment, so the estimate rises at once
/// and falls by a sixteenth of the gap per pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostDepth {
    est: u32,
}

impl HostDepth {
    /// A pass starts with `outstanding` commands in the host's hands or the controller's.
    pub fn observe(&mut self, outstanding: u32) {
        if outstanding >= self.est {
            self.est = outstanding;
        } else {
            self.est -= (self.est - outstanding).div_ceil(16);
        }
    }

    /// Completions to post before raising the vector early: three quarters of the depth, 1
    /// to `cap`. The quarter still running covers the host's wake-up, so it resubmits before
    /// the poller runs dry; half the depth cost a third more interrupts for the same overlap
    /// (docs/performance.md, "Early interrupts after three quarters").
    pub fn raise_every(&self, cap: usize) -> usize {
        usize::try_from(self.est * 3 / 4)
            .unwrap_or(cap)
            .clamp(1, cap.max(1))
    }
}

/// Passes in a row whose early interrupt went unanswered before early interrupts pause
/// (with 4, and a pause of 64, the load generator, which does answer, lost 15% of its
/// warm reads to pauses after the odd short pass; 8 and 16 kept it).
const EARLY_MISSES: u8 = 8;
/// Passes (that got as far as an early interrupt) they then stay paused.
const EARLY_PAUSE: u16 = 16;

/// Whether raising the CQ's vector within a pass (`HostEnv::raise_every`) pays off for a
/// queue: it does when the host answers, i.e. reaps and submits again before the pass
/// ends, so that both work at once. A host that does not (it shares the CPUs with the
/// poller, like a TCG guest, or is busy anyway) only pays for more interrupts: after
/// [`EARLY_MISSES`] unanswered passes in a row, early interrupts pause for [`EARLY_PAUSE`]
/// passes, then are tried again.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EarlyRaise {
    misses: u8,
    paused: u16,
}

impl EarlyRaise {
    /// May this pass raise early?
    pub fn allowed(&self) -> bool {
        self.paused == 0
    }

    /// The pass ended. `reached`: it posted enough completions for an early interrupt;
    /// `raised`: it raised one; `answered`: the host submitted after the first of them,
    /// before the pass ended.
    pub fn end_pass(&mut self, reached: bool, raised: bool, answered: bool) {
        if self.paused > 0 {
            if reached {
                self.paused -= 1;
            }
            return;
        }
        if !raised {
            return;
        }
        if answered {
            self.misses = 0;
        } else {
            self.misses += 1;
            if self.misses >= EARLY_MISSES {
                self.misses = 0;
                self.paused = EARLY_PAUSE;
            }
        }
    }
}

impl SubQueue {
    /// A fresh SQ.
    pub fn new(qid: u16, base: u64, size: u32, cqid: u16) -> SubQueue {
        SubQueue {
            qid,
            base,
            size,
            head: 0,
            cqid,
            bad_tail: None,
            stale_tail: None,
            early: EarlyRaise::default(),
            depth: HostDepth::default(),
            inbox: std::sync::Arc::default(),
        }
    }

    /// Record the doorbell value seen at creation (non-zero = stale).
    pub fn set_stale_tail(&mut self, tail: u32) {
        self.stale_tail = (tail != 0).then_some(tail);
    }

    /// Number of SQEs pending given the tail doorbell, or None if the doorbell value is invalid
    /// (beyond the queue size): such a write is ignored.
    pub fn pending(&mut self, tail: u32) -> Option<u32> {
        if let Some(stale) = self.stale_tail {
            if tail == stale {
                return Some(0);
            }
            self.stale_tail = None;
        }
        if tail >= self.size {
            if self.bad_tail != Some(tail) {
                tracing::debug!(
                    qid = self.qid,
                    tail,
                    size = self.size,
                    reason = "sq tail doorbell beyond queue size",
                    "ignoring doorbell"
                );
                self.bad_tail = Some(tail);
            }
            return None;
        }
        self.bad_tail = None;
        Some(ring_used(self.head, tail, self.size))
    }

    /// Read the SQE at the head (once) and advance the head.
    pub fn fetch(&mut self, mem: &dyn GuestMemory) -> Result<Sqe, DmaError> {
        let mut buf = [0u8; SQE_SIZE as usize];
        mem.read(self.base + u64::from(self.head) * SQE_SIZE, &mut buf)?;
        self.head = (self.head + 1) % self.size;
        Ok(Sqe::read_from_bytes(&buf).unwrap_or_default())
    }
}

/// A completion queue (admin or I/O).
#[derive(Debug)]
pub struct CompQueue {
    /// Queue identifier.
    pub qid: u16,
    /// Guest physical base address (contiguous).
    pub base: u64,
    /// Number of entries.
    pub size: u32,
    /// Next slot the controller writes.
    pub tail: u32,
    /// Last valid head doorbell value.
    pub head: u32,
    /// Current phase tag (starts at 1).
    pub phase: bool,
    /// Interrupts enabled.
    pub ien: bool,
    /// Interrupt vector.
    pub iv: u16,
    /// Slots reserved by commands in flight.
    pub reserved: u32,
    /// Number of SQs bound to this CQ.
    pub sq_count: u32,
    /// Last invalid head doorbell reported.
    bad_head: Option<u32>,
    /// Entries posted since the last interrupt (Interrupt Coalescing).
    pub unsignalled: u32,
    /// When the oldest of them was posted.
    pub unsignalled_since: Option<std::time::Instant>,
    /// Head doorbell value found at creation (left by an earlier queue with this id): taken
    /// for "nothing consumed" until the host writes another value, so a stale head can never
    /// release entries the host has not read.
    stale_head: Option<u32>,
}

impl CompQueue {
    /// A fresh CQ (phase 1, empty).
    pub fn new(qid: u16, base: u64, size: u32, ien: bool, iv: u16) -> CompQueue {
        CompQueue {
            qid,
            base,
            size,
            tail: 0,
            head: 0,
            phase: true,
            ien,
            iv,
            reserved: 0,
            sq_count: 0,
            bad_head: None,
            unsignalled: 0,
            unsignalled_since: None,
            stale_head: None,
        }
    }

    /// Take a new head doorbell value. Values beyond the queue size, or that would release
    /// entries the controller never posted, are ignored.
    pub fn update_head(&mut self, head: u32) {
        if let Some(stale) = self.stale_head {
            if head == stale {
                return;
            }
            self.stale_head = None;
        }
        if head == self.head {
            return;
        }
        let valid = head < self.size && ring_used(self.head, head, self.size) <= self.used();
        if !valid {
            if self.bad_head != Some(head) {
                tracing::debug!(
                    qid = self.qid,
                    head,
                    tail = self.tail,
                    size = self.size,
                    reason = "cq head doorbell invalid",
                    "ignoring doorbell"
                );
                self.bad_head = Some(head);
            }
            return;
        }
        self.bad_head = None;
        self.head = head;
    }

    /// Record the head doorbell value seen at creation (non-zero = stale).
    pub fn set_stale_head(&mut self, head: u32) {
        self.stale_head = (head != 0).then_some(head);
    }

    /// Entries posted and not yet consumed by the host.
    pub fn used(&self) -> u32 {
        ring_used(self.head, self.tail, self.size)
    }

    /// Free slots not yet reserved (one slot always stays empty: full is tail + 1 == head).
    pub fn free(&self) -> u32 {
        (self.size - 1 - self.used()).saturating_sub(self.reserved)
    }

    /// Reserve a slot for a command about to be fetched.
    pub fn reserve(&mut self) -> bool {
        if self.free() == 0 {
            return false;
        }
        self.reserved += 1;
        true
    }

    /// Give back a reservation without posting (command deferred or dropped).
    pub fn unreserve(&mut self) {
        debug_assert!(self.reserved > 0);
        self.reserved = self.reserved.saturating_sub(1);
    }

    /// Post a completion into a reserved slot: writes the CQE with the current phase, then
    /// advances the tail (flipping the phase on wrap).
    pub fn post(
        &mut self,
        mem: &dyn GuestMemory,
        mut cqe: Cqe,
        status: Status,
    ) -> Result<(), DmaError> {
        debug_assert!(self.reserved > 0, "post without reservation");
        self.reserved = self.reserved.saturating_sub(1);
        cqe.status = ((status.field() << 1) | u16::from(self.phase)).into();
        // The host polls the phase tag in the last dword: make the rest of the entry visible
        // before it.
        let at = self.base + u64::from(self.tail) * CQE_SIZE;
        let bytes = cqe.as_bytes();
        mem.write(at, &bytes[..12])?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        mem.write(at + 12, &bytes[12..])?;
        self.tail += 1;
        if self.tail == self.size {
            self.tail = 0;
            self.phase = !self.phase;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::FakeMemory;

    #[test]
    fn ring_used_wraps() {
        assert_eq!(ring_used(0, 0, 4), 0);
        assert_eq!(ring_used(0, 3, 4), 3);
        assert_eq!(ring_used(3, 1, 4), 2);
        assert_eq!(ring_used(2, 1, 4), 3);
    }

    #[test]
    fn sq_pending_and_bad_tail() {
        let mut sq = SubQueue::new(1, 0x1000, 4, 1);
        assert_eq!(sq.pending(0), Some(0));
        assert_eq!(sq.pending(3), Some(3));
        assert_eq!(sq.pending(4), None);
        assert_eq!(sq.pending(u32::MAX), None);
        sq.head = 3;
        assert_eq!(sq.pending(1), Some(2));
    }

    #[test]
    fn stale_tail_ignored_until_changed() {
        let mut sq = SubQueue::new(1, 0x1000, 4, 1);
        sq.set_stale_tail(3);
        assert_eq!(sq.pending(3), Some(0));
        assert_eq!(sq.pending(1), Some(1));
        assert_eq!(
            sq.pending(3),
            Some(3),
            "once changed, values are taken as they are"
        );
        sq.set_stale_tail(0);
        assert_eq!(sq.pending(2), Some(2));
    }

    #[test]
    fn sq_fetch_wraps_head() {
        let mem = FakeMemory::new(1 << 16);
        let mut sq = SubQueue::new(1, 0x1000, 2, 1);
        let mut raw = [0u8; 64];
        raw[0] = 0x02;
        raw[2..4].copy_from_slice(&7u16.to_le_bytes());
        mem.write(0x1040, &raw).unwrap();
        sq.head = 1;
        let sqe = sq.fetch(&mem).unwrap();
        assert_eq!((sqe.opc(), sqe.cid()), (0x02, 7));
        assert_eq!(sq.head, 0);
        let mut bad = SubQueue::new(1, 0xFFFF_0000_0000, 2, 1);
        assert!(bad.fetch(&mem).is_err());
        assert_eq!(bad.head, 0, "failed fetch does not consume");
    }

    #[test]
    fn cq_full_reservation_and_phase() {
        let mem = FakeMemory::new(1 << 16);
        let mut cq = CompQueue::new(1, 0x2000, 3, true, 1);
        assert_eq!(cq.free(), 2);
        assert!(cq.reserve());
        assert!(cq.reserve());
        assert!(!cq.reserve(), "third slot must stay empty");
        cq.post(
            &mem,
            Cqe {
                cid: 1.into(),
                ..Default::default()
            },
            Status::SUCCESS,
        )
        .unwrap();
        cq.post(
            &mem,
            Cqe {
                cid: 2.into(),
                ..Default::default()
            },
            Status::ZONE_FULL,
        )
        .unwrap();
        assert_eq!(cq.tail, 2);
        assert!(!cq.reserve(), "queue full until the host consumes");
        let mut b = [0u8; 16];
        mem.read(0x2010, &mut b).unwrap();
        let c = Cqe::read_from_bytes(&b).unwrap();
        assert!(c.phase());
        assert_eq!(c.status_field(), 0x41B9);
        cq.update_head(2);
        assert_eq!(cq.free(), 2);
        assert!(cq.reserve());
        cq.post(&mem, Cqe::default(), Status::SUCCESS).unwrap();
        assert_eq!(cq.tail, 0);
        assert!(!cq.phase, "phase flips on wrap");
        assert!(cq.reserve());
        cq.post(&mem, Cqe::default(), Status::SUCCESS).unwrap();
        mem.read(0x2000, &mut b).unwrap();
        assert!(!Cqe::read_from_bytes(&b).unwrap().phase());
        mem.read(0x2020, &mut b).unwrap();
        assert!(Cqe::read_from_bytes(&b).unwrap().phase());
    }

    #[test]
    fn cq_head_doorbell_validation() {
        let mem = FakeMemory::new(1 << 16);
        let mut cq = CompQueue::new(1, 0x2000, 4, true, 1);
        for _ in 0..2 {
            assert!(cq.reserve());
            cq.post(&mem, Cqe::default(), Status::SUCCESS).unwrap();
        }
        cq.update_head(7);
        assert_eq!(cq.head, 0, "beyond size ignored");
        cq.update_head(3);
        assert_eq!(cq.head, 0, "beyond tail ignored");
        cq.update_head(1);
        assert_eq!(cq.head, 1);
        cq.update_head(2);
        assert_eq!(cq.head, 2);
        assert_eq!(cq.free(), 3);
    }

    #[test]
    fn stale_head_never_releases_unread_entries() {
        let mem = FakeMemory::new(1 << 16);
        let mut cq = CompQueue::new(1, 0x2000, 4, true, 1);
        cq.set_stale_head(2);
        for _ in 0..3 {
            assert!(cq.reserve());
            cq.post(&mem, Cqe::default(), Status::SUCCESS).unwrap();
        }
        cq.update_head(2);
        assert_eq!(cq.head, 0, "stale value ignored although it looks valid");
        assert!(!cq.reserve());
        cq.update_head(1);
        assert_eq!(cq.head, 1);
        cq.update_head(2);
        assert_eq!(cq.head, 2, "the same value is genuine once the host moved");
    }

    #[test]
    fn unreserve_releases_slot() {
        let mut cq = CompQueue::new(1, 0x2000, 2, true, 1);
        assert!(cq.reserve());
        assert!(!cq.reserve());
        cq.unreserve();
        assert!(cq.reserve());
    }

    #[test]
    fn cq_post_dma_error_reported() {
        let mem = FakeMemory::new(1 << 12);
        let mut cq = CompQueue::new(1, 0x10_0000, 4, true, 1);
        assert!(cq.reserve());
        assert!(cq.post(&mem, Cqe::default(), Status::SUCCESS).is_err());
    }

    #[test]
    fn host_depth_rises_at_once_falls_slowly_and_sets_three_quarters_as_the_batch() {
        let mut d = HostDepth::default();
        assert_eq!(
            d.raise_every(8),
            1,
            "nothing seen yet: raise at the first completion"
        );
        d.observe(8);
        assert_eq!(d.raise_every(8), 6, "depth 8: three quarters");
        d.observe(4);
        assert_eq!(
            d.est, 7,
            "a shallower pass moves it a sixteenth of the gap, rounded up"
        );
        d.observe(12);
        assert_eq!(d.raise_every(16), 9);
        d.observe(32);
        assert_eq!(d.raise_every(8), 8, "depth 32: capped");
        assert_eq!(d.raise_every(32), 24);
        // A pass that saw only the 8 the host had just resubmitted barely moves it.
        d.observe(8);
        assert_eq!(d.est, 30);
        assert_eq!(d.raise_every(8), 8);
        // A host that really went down to depth 2 is followed within some 60 passes.
        for _ in 0..60 {
            d.observe(2);
        }
        assert_eq!(d.est, 2);
        assert_eq!(d.raise_every(8), 1);
        d.observe(0);
        assert_eq!(d.raise_every(8), 1);
        assert_eq!(d.raise_every(0), 1, "a zero cap never yields a zero batch");
    }

    #[test]
    fn early_interrupts_pause_after_unanswered_passes_and_come_back() {
        let mut e = EarlyRaise::default();
        // Answered passes keep them on; a pass that never got that far changes nothing.
        for _ in 0..10 {
            e.end_pass(true, true, true);
            e.end_pass(false, false, false);
        }
        assert!(e.allowed());
        // A miss then an answer: the count starts again.
        for _ in 0..EARLY_MISSES - 1 {
            e.end_pass(true, true, false);
        }
        e.end_pass(true, true, true);
        assert!(e.allowed());
        for _ in 0..EARLY_MISSES {
            e.end_pass(true, true, false);
        }
        assert!(!e.allowed(), "paused after {EARLY_MISSES} misses in a row");
        // Only passes that would have raised count down the pause.
        for _ in 0..1000 {
            e.end_pass(false, false, false);
        }
        assert!(!e.allowed());
        for _ in 0..EARLY_PAUSE {
            e.end_pass(true, false, false);
        }
        assert!(e.allowed(), "tried again");
    }
}
