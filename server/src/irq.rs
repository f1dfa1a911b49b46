//! Interrupts: SET_IRQS bookkeeping and the [`nvme::Interrupts`] implementation.
//!
//! IRQ indexes (vfio): 0 INTx, 1 MSI (unused, count 0), 2 MSI-X, 3 ERR, 4 REQ (unused).
//! Eventfds arrive as `File`s; raising an interrupt writes 1 (8 bytes, native endian).
//!
//! MSI-X delivery follows the function's MSI-X enable and function-mask bits, which the
//! backend copies here from config writes. While function-masked, raised vectors are recorded
//! as pending (PBA) and delivered on unmask. When MSI-X is off, vector raises go to INTx
//! (automasked: after one trigger, further raises stay pending until the VMM unmasks, by an
//! UNMASK SET_IRQS or a write on the KVM resample eventfd).
//!
//! Locking: `vectors` and `intx` are short `Mutex`es taken by pollers to raise and by the
//! vfio-user thread to install fds; no other lock is held while they are.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
};
use vfio_user::IrqInfo;

/// INTx index.
pub const INTX: u32 = 0;
/// MSI index.
pub const MSI: u32 = 1;
/// MSI-X index.
pub const MSIX: u32 = 2;
/// Error notification index.
pub const ERR: u32 = 3;
/// Device request index.
pub const REQ: u32 = 4;

/// The five IRQ entries in index order, for `Server::new`.
pub fn irq_infos(msix_vectors: u16) -> Vec<IrqInfo> {
    vec![
        IrqInfo {
            index: INTX,
            flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
            count: 1,
        },
        IrqInfo {
            index: MSI,
            flags: VFIO_IRQ_INFO_EVENTFD,
            count: 0,
        },
        IrqInfo {
            index: MSIX,
            flags: VFIO_IRQ_INFO_EVENTFD,
            count: u32::from(msix_vectors),
        },
        IrqInfo {
            index: ERR,
            flags: VFIO_IRQ_INFO_EVENTFD,
            count: 1,
        },
        IrqInfo {
            index: REQ,
            flags: VFIO_IRQ_INFO_EVENTFD,
            count: 0,
        },
    ]
}

#[derive(Default)]
struct Intx {
    trigger: Option<File>,
    resample: Option<File>,
    masked: bool,
    pending: bool,
}

/// Interrupt state shared by the vfio-user thread and the pollers.
pub struct IrqState {
    vectors: Mutex<Vec<Option<File>>>,
    /// Pending bits (PBA), one per vector, 64 per word.
    pending: Vec<AtomicU64>,
    msix_enabled: AtomicBool,
    msix_masked: AtomicBool,
    intx_disabled: AtomicBool,
    intx: Mutex<Intx>,
    err: Mutex<Option<File>>,
    raised: AtomicU64,
}

impl std::fmt::Debug for IrqState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrqState")
            .field("msix_enabled", &self.msix_enabled.load(Ordering::Relaxed))
            .field("msix_masked", &self.msix_masked.load(Ordering::Relaxed))
            .finish()
    }
}

fn signal(f: &File) -> bool {
    let mut w: &File = f;
    w.write_all(&1u64.to_ne_bytes()).is_ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl IrqState {
    /// State for `msix_vectors` vectors, everything off.
    pub fn new(msix_vectors: u16) -> Self {
        let n = usize::from(msix_vectors);
        IrqState {
            vectors: Mutex::new((0..n).map(|_| None).collect()),
            pending: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            msix_enabled: AtomicBool::new(false),
            msix_masked: AtomicBool::new(false),
            intx_disabled: AtomicBool::new(false),
            intx: Mutex::new(Intx::default()),
            err: Mutex::new(None),
            raised: AtomicU64::new(0),
        }
    }

    /// Number of MSI-X vectors.
    pub fn vectors(&self) -> u16 {
        u16::try_from(lock(&self.vectors).len()).unwrap_or(u16::MAX)
    }

    /// Interrupts delivered so far (for tests and stats).
    pub fn raised(&self) -> u64 {
        self.raised.load(Ordering::Relaxed)
    }

    /// Copy of the MSI-X enable/function-mask bits from config space.
    pub fn set_msix_control(&self, enabled: bool, masked: bool) {
        self.msix_enabled.store(enabled, Ordering::Release);
        let was_masked = self.msix_masked.swap(masked, Ordering::AcqRel);
        if enabled && was_masked && !masked {
            self.deliver_pending();
        }
    }

    /// Copy of the command register's Interrupt Disable bit.
    pub fn set_intx_disabled(&self, disabled: bool) {
        let was = self.intx_disabled.swap(disabled, Ordering::AcqRel);
        if was && !disabled && !self.msix_enabled.load(Ordering::Acquire) {
            self.intx_retry();
        }
    }

    fn deliver_pending(&self) {
        let vecs = lock(&self.vectors);
        for (w, word) in self.pending.iter().enumerate() {
            let bits = word.swap(0, Ordering::AcqRel);
            for b in 0..64 {
                if bits & (1 << b) != 0 {
                    if let Some(Some(f)) = vecs.get(w * 64 + b) {
                        if signal(f) {
                            self.raised.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }

    fn set_pending(&self, vector: u16) {
        let v = usize::from(vector);
        if let Some(w) = self.pending.get(v / 64) {
            w.fetch_or(1 << (v % 64), Ordering::AcqRel);
        }
    }

    /// PBA bytes at `offset` (little-endian words; beyond the bits reads 0).
    pub fn read_pba(&self, offset: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let byte = offset.saturating_add(i as u64);
            let word = usize::try_from(byte / 8).unwrap_or(usize::MAX);
            let shift = (byte % 8) * 8;
            *b = self
                .pending
                .get(word)
                .map_or(0, |w| ((w.load(Ordering::Acquire) >> shift) & 0xff) as u8);
        }
    }

    fn intx_fire(&self, ix: &mut Intx) {
        if self.intx_disabled.load(Ordering::Acquire) {
            ix.pending = true;
            return;
        }
        if ix.masked {
            ix.pending = true;
            return;
        }
        if let Some(f) = &ix.trigger {
            if signal(f) {
                self.raised.fetch_add(1, Ordering::Relaxed);
            }
            ix.masked = true; // Automasked until the VMM unmasks (EOI).
            ix.pending = false;
        } else {
            ix.pending = true;
        }
    }

    fn intx_retry(&self) {
        let mut ix = lock(&self.intx);
        if ix.pending {
            ix.pending = false;
            self.intx_fire(&mut ix);
        }
    }

    fn intx_unmask(&self) {
        let mut ix = lock(&self.intx);
        ix.masked = false;
        if ix.pending {
            ix.pending = false;
            self.intx_fire(&mut ix);
        }
    }

    /// Check the INTx resample eventfd (KVM): a readable count means the guest EOI'd.
    /// Cheap non-blocking read; called by the doorbell watcher every millisecond.
    pub fn poll_resample(&self) {
        let fired = {
            let ix = lock(&self.intx);
            match &ix.resample {
                Some(f) => {
                    let mut buf = [0u8; 8];
                    let mut r: &File = f;
                    r.read(&mut buf).is_ok_and(|n| n == 8)
                }
                None => false,
            }
        };
        if fired {
            self.intx_unmask();
        }
    }

    /// Handle a SET_IRQS request. Never fails: bad requests are logged and ignored (the
    /// vfio_user crate would turn an error into a success-looking reply anyway).
    pub fn set_irqs(&self, index: u32, flags: u32, start: u32, count: u32, fds: Vec<File>) {
        let data =
            flags & (VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD);
        let action = flags
            & (VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER);
        tracing::debug!(
            index,
            flags = format_args!("{flags:#x}"),
            start,
            count,
            fds = fds.len(),
            "SET_IRQS"
        );
        match index {
            INTX => self.set_intx(data, action, start, count, fds),
            MSIX => self.set_msix(data, action, start, count, fds),
            ERR => {
                if action == VFIO_IRQ_SET_ACTION_TRIGGER {
                    let mut e = lock(&self.err);
                    if data == VFIO_IRQ_SET_DATA_EVENTFD {
                        *e = fds.into_iter().next();
                    } else if data == VFIO_IRQ_SET_DATA_NONE && count == 0 {
                        *e = None;
                    }
                }
            }
            _ => tracing::debug!(
                index,
                reason = "index has no interrupts",
                "SET_IRQS ignored"
            ),
        }
    }

    fn set_intx(&self, data: u32, action: u32, start: u32, count: u32, fds: Vec<File>) {
        if start != 0 || count > 1 {
            tracing::debug!(
                start,
                count,
                reason = "INTx has one line",
                "SET_IRQS ignored"
            );
            return;
        }
        let mut ix = lock(&self.intx);
        match (action, data) {
            (VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD) => {
                ix.trigger = fds.into_iter().next();
                ix.masked = false;
            }
            (VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_NONE) => {
                if count == 0 {
                    ix.trigger = None;
                    ix.resample = None;
                    ix.pending = false;
                    ix.masked = false;
                } else {
                    self.intx_fire(&mut ix);
                }
            }
            (VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_DATA_NONE) if count == 1 => ix.masked = true,
            (VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_NONE) if count == 1 => {
                drop(ix);
                self.intx_unmask();
            }
            (VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD) => {
                ix.resample = fds.into_iter().next();
                if let Some(f) = &ix.resample {
                    set_nonblocking(f);
                }
            }
            _ => tracing::debug!(
                action,
                data,
                reason = "unsupported INTx action",
                "SET_IRQS ignored"
            ),
        }
    }

    fn set_msix(&self, data: u32, action: u32, start: u32, count: u32, fds: Vec<File>) {
        let mut vecs = lock(&self.vectors);
        let n = vecs.len();
        let start = usize::try_from(start).unwrap_or(usize::MAX);
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        match (action, data) {
            (VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD) => {
                if fds.is_empty() {
                    // De-assign start..start+count (QEMU's "no eventfd" run).
                    for v in vecs.iter_mut().skip(start).take(count) {
                        *v = None;
                    }
                    return;
                }
                if fds.len() != count {
                    tracing::debug!(
                        count,
                        fds = fds.len(),
                        reason = "fd count differs from count",
                        "SET_IRQS MSI-X"
                    );
                }
                for (i, f) in fds.into_iter().enumerate() {
                    match vecs.get_mut(start.saturating_add(i)) {
                        Some(slot) => *slot = Some(f),
                        None => tracing::debug!(
                            vector = start.saturating_add(i),
                            vectors = n,
                            reason = "vector out of range",
                            "SET_IRQS MSI-X"
                        ),
                    }
                }
            }
            (VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_NONE) => {
                if count == 0 {
                    for v in vecs.iter_mut() {
                        *v = None;
                    }
                    for w in &self.pending {
                        w.store(0, Ordering::Release);
                    }
                } else {
                    for v in vecs.iter().skip(start).take(count).flatten() {
                        if signal(v) {
                            self.raised.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            // Vectors are not maskable individually through SET_IRQS (QEMU masks by swapping
            // eventfds); accept and ignore.
            (VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK, _) => {}
            _ => tracing::debug!(
                action,
                data,
                reason = "unsupported MSI-X action",
                "SET_IRQS ignored"
            ),
        }
    }

    /// Drop every eventfd and all interrupt state (client gone).
    pub fn clear(&self) {
        for v in lock(&self.vectors).iter_mut() {
            *v = None;
        }
        for w in &self.pending {
            w.store(0, Ordering::Release);
        }
        *lock(&self.intx) = Intx::default();
        *lock(&self.err) = None;
        self.msix_enabled.store(false, Ordering::Release);
        self.msix_masked.store(false, Ordering::Release);
        self.intx_disabled.store(false, Ordering::Release);
    }

    /// Signal the ERR eventfd (unrecoverable device error; QEMU stops the VM).
    pub fn raise_error(&self) {
        if let Some(f) = lock(&self.err).as_ref() {
            signal(f);
        }
    }
}

fn set_nonblocking(f: &File) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fd = f.as_raw_fd();
    let flags = fcntl(fd, FcntlArg::F_GETFL).map(OFlag::from_bits_truncate);
    if let Ok(fl) = flags {
        let _ = fcntl(fd, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK));
    }
}

impl nvme::Interrupts for IrqState {
    fn raise(&self, vector: u16) {
        if self.msix_enabled.load(Ordering::Acquire) {
            if self.msix_masked.load(Ordering::Acquire) {
                self.set_pending(vector);
                return;
            }
            let vecs = lock(&self.vectors);
            match vecs.get(usize::from(vector)) {
                Some(Some(f)) => {
                    if signal(f) {
                        self.raised.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(None) => {
                    drop(vecs);
                    self.set_pending(vector);
                }
                None => {
                    tracing::debug!(vector, reason = "vector out of range", "interrupt dropped")
                }
            }
        } else {
            let mut ix = lock(&self.intx);
            self.intx_fire(&mut ix);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::eventfd::{EfdFlags, EventFd};
    use nvme::Interrupts;
    use std::os::fd::{AsFd, OwnedFd};

    fn efd() -> (EventFd, File) {
        let e = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap();
        let dup: OwnedFd = e.as_fd().try_clone_to_owned().unwrap();
        (e, File::from(dup))
    }

    fn count(e: &EventFd) -> u64 {
        e.read().unwrap_or(0)
    }

    const EFD_TRIGGER: u32 = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;

    #[test]
    fn msix_vector_eventfd_and_masking() {
        let s = IrqState::new(4);
        let (e1, f1) = efd();
        s.set_irqs(MSIX, EFD_TRIGGER, 1, 1, vec![f1]);
        s.set_msix_control(true, false);
        s.raise(1);
        assert_eq!(count(&e1), 1);
        s.set_msix_control(true, true);
        s.raise(1);
        assert_eq!(count(&e1), 0, "function masked");
        let mut pba = [0u8; 8];
        s.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        s.set_msix_control(true, false);
        assert_eq!(count(&e1), 1, "pending delivered on unmask");
        // De-assign with zero fds.
        s.set_irqs(MSIX, EFD_TRIGGER, 1, 1, vec![]);
        s.raise(1);
        assert_eq!(count(&e1), 0);
        // Disable index.
        let (e0, f0) = efd();
        s.set_irqs(MSIX, EFD_TRIGGER, 0, 1, vec![f0]);
        s.set_irqs(
            MSIX,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            0,
            vec![],
        );
        s.raise(0);
        assert_eq!(count(&e0), 0);
        s.raise(200); // Out of range: ignored.
    }

    #[test]
    fn intx_automask_and_unmask() {
        let s = IrqState::new(2);
        let (e, f) = efd();
        s.set_irqs(INTX, EFD_TRIGGER, 0, 1, vec![f]);
        s.raise(0);
        s.raise(0);
        assert_eq!(count(&e), 1, "automasked after the first trigger");
        s.set_irqs(
            INTX,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
            0,
            1,
            vec![],
        );
        assert_eq!(count(&e), 1, "pending raise delivered on unmask");
        // Resample eventfd path.
        let (r, rf) = efd();
        s.set_irqs(
            INTX,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK,
            0,
            1,
            vec![rf],
        );
        s.raise(0);
        assert_eq!(count(&e), 0, "still masked");
        r.write(1).unwrap();
        s.poll_resample();
        assert_eq!(count(&e), 1);
        // Interrupt Disable in the command register.
        s.set_intx_disabled(true);
        s.set_irqs(
            INTX,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
            0,
            1,
            vec![],
        );
        s.raise(0);
        assert_eq!(count(&e), 0);
        s.set_intx_disabled(false);
        assert_eq!(count(&e), 1);
    }
}
