//! BAR0 (16 KiB) and the MSI-X BARs.
//!
//! * `[0x0000, 0x1000)`: controller registers, always trapped (REGION_READ/WRITE) and handed
//!   to the controller (`mmio_read`/`mmio_write`): CC/CSTS/AQA/ASQ/ACQ side effects run there.
//! * `[0x1000, 0x2000)`: doorbells, stride 0 (SQ y tail at `0x1000 + 8y`, CQ y head at
//!   `0x1000 + 8y + 4`, room for 512 queue pairs). Backed by a memfd announced to the client as the
//!   region's only sparse-mmap area, so guest stores land in our page with no message. When
//!   QEMU traps them anyway (INTx in use), REGION_WRITEs are stored into the same page.
//! * `[0x2000, 0x4000)`: reserved, reads zero.
//!
//! Barrier pairing: the guest writes an SQE to RAM, then (x86 store order / its wmb) the tail
//! doorbell; pollers load the doorbell with acquire ordering before reading SQEs. Trapped
//! writes are stored with release ordering.

use crate::dma::{memfd_mapping, MapError, SharedMapping};
use std::os::fd::{AsRawFd, OwnedFd};
use vfio_bindings::bindings::vfio::{
    vfio_region_info, vfio_region_sparse_mmap_area, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{ServerRegion, SparseArea};

/// Controller Configuration register (CC) offset.
pub const REG_CC: u64 = 0x14;
/// BAR0 size.
pub const BAR0_SIZE: u64 = 0x4000;
/// Start of the doorbell page.
pub const DOORBELL_BASE: u64 = 0x1000;
/// Size of the doorbell page.
pub const DOORBELL_SIZE: u64 = 0x1000;
/// Queue pairs whose doorbells fit the page (4096 / 8).
pub const MAX_QUEUE_PAIRS: u16 = 512;
/// MSI-X vectors whose table entries fit BAR4 (4096 / 16).
pub const MAX_MSIX_VECTORS: u16 = 256;
/// MSI-X table BAR (4) and PBA BAR (5) size.
pub const MSIX_BAR_SIZE: u64 = 0x1000;

/// Region indexes (vfio PCI).
pub mod region {
    /// BAR0.
    pub const BAR0: u32 = 0;
    /// MSI-X table.
    pub const BAR4: u32 = 4;
    /// MSI-X PBA.
    pub const BAR5: u32 = 5;
    /// ROM.
    pub const ROM: u32 = 6;
    /// Config space.
    pub const CONFIG: u32 = 7;
    /// VGA.
    pub const VGA: u32 = 8;
    /// Number of regions declared.
    pub const COUNT: u32 = 9;
}

/// The doorbell page: a memfd mapped here and (by the client) into the guest.
pub struct DoorbellPage {
    fd: OwnedFd,
    map: SharedMapping,
}

impl std::fmt::Debug for DoorbellPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoorbellPage")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

impl DoorbellPage {
    /// Create the memfd (sized to the end of the doorbell page, so file offset = BAR offset).
    pub fn new() -> Result<Self, MapError> {
        let (fd, map) = memfd_mapping(c"znsd-bar0", DOORBELL_BASE + DOORBELL_SIZE)?;
        Ok(DoorbellPage { fd, map })
    }

    /// The memfd, for the region's `mmap_fd`.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Doorbell value at BAR0 offset `off` (must be inside the page, dword aligned).
    pub fn load(&self, off: u64) -> u32 {
        self.map.load_u32_acquire(off)
    }

    /// Store a trapped doorbell write.
    pub fn store(&self, off: u64, value: u32) {
        self.map.store_u32_release(off, value);
    }
}

impl nvme::Doorbells for DoorbellPage {
    fn sq_tail(&self, qid: u16) -> u32 {
        if qid >= MAX_QUEUE_PAIRS {
            return 0;
        }
        self.load(DOORBELL_BASE + 8 * u64::from(qid))
    }

    fn cq_head(&self, qid: u16) -> u32 {
        if qid >= MAX_QUEUE_PAIRS {
            return 0;
        }
        self.load(DOORBELL_BASE + 8 * u64::from(qid) + 4)
    }

    fn clear(&self) {
        let mut off = DOORBELL_BASE;
        while off < DOORBELL_BASE + DOORBELL_SIZE {
            self.store(off, 0);
            off += 4;
        }
    }
}

/// Classification of a BAR0 access after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bar0Access {
    /// Register page, 4 or 8 bytes, naturally aligned.
    Register,
    /// A doorbell: queue id and whether it is the CQ head (else SQ tail).
    Doorbell {
        /// Queue id.
        qid: u16,
        /// CQ head doorbell (false: SQ tail).
        cq: bool,
    },
    /// Anything else: reads as zero, writes ignored.
    Invalid(&'static str),
}

/// Validate a BAR0 access of `len` bytes at `offset`.
pub fn classify(offset: u64, len: usize) -> Bar0Access {
    let Some(end) = offset.checked_add(len as u64) else {
        return Bar0Access::Invalid("offset overflows");
    };
    if end > BAR0_SIZE {
        return Bar0Access::Invalid("beyond BAR0");
    }
    if offset < DOORBELL_BASE {
        if end > DOORBELL_BASE {
            return Bar0Access::Invalid("crosses into the doorbells");
        }
        if (len == 4 || len == 8) && offset & (len as u64 - 1) == 0 {
            return Bar0Access::Register;
        }
        return Bar0Access::Invalid("register access must be 4 or 8 bytes, aligned");
    }
    if offset < DOORBELL_BASE + DOORBELL_SIZE {
        if len != 4 || offset & 3 != 0 {
            return Bar0Access::Invalid("doorbell access must be 4 bytes, aligned");
        }
        let rel = offset - DOORBELL_BASE;
        let Ok(qid) = u16::try_from(rel / 8) else {
            return Bar0Access::Invalid("doorbell out of range");
        };
        return Bar0Access::Doorbell {
            qid,
            cq: rel % 8 == 4,
        };
    }
    Bar0Access::Invalid("reserved BAR0 space")
}

fn info(index: u32, size: u64, flags: u32) -> ServerRegion {
    ServerRegion {
        region_info: vfio_region_info {
            argsz: u32::try_from(std::mem::size_of::<vfio_region_info>()).unwrap_or(u32::MAX),
            flags,
            index,
            cap_offset: 0,
            size,
            offset: 0,
        },
        sparse_areas: Vec::new(),
        mmap_fd: None,
    }
}

/// The nine regions, in index order.
pub fn regions(doorbells: &DoorbellPage) -> Vec<ServerRegion> {
    let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    (0..region::COUNT)
        .map(|i| match i {
            region::BAR0 => {
                let mut r = info(i, BAR0_SIZE, rw | VFIO_REGION_INFO_FLAG_MMAP);
                r.sparse_areas = vec![SparseArea {
                    area: vfio_region_sparse_mmap_area {
                        offset: DOORBELL_BASE,
                        size: DOORBELL_SIZE,
                    },
                }];
                r.mmap_fd = Some(doorbells.raw_fd());
                r
            }
            region::BAR4 | region::BAR5 => info(i, MSIX_BAR_SIZE, rw),
            region::CONFIG => info(i, crate::pci::CONFIG_SIZE as u64, rw),
            _ => info(i, 0, 0),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme::Doorbells;

    #[test]
    fn classify_accesses() {
        assert_eq!(classify(0x14, 4), Bar0Access::Register);
        assert_eq!(classify(0x28, 8), Bar0Access::Register);
        assert!(matches!(classify(0x14, 2), Bar0Access::Invalid(_)));
        assert!(matches!(classify(0x2c, 8), Bar0Access::Invalid(_)));
        assert_eq!(
            classify(0x1000, 4),
            Bar0Access::Doorbell { qid: 0, cq: false }
        );
        assert_eq!(
            classify(0x100c, 4),
            Bar0Access::Doorbell { qid: 1, cq: true }
        );
        assert_eq!(
            classify(0x1ffc, 4),
            Bar0Access::Doorbell { qid: 511, cq: true }
        );
        assert!(matches!(classify(0x1002, 4), Bar0Access::Invalid(_)));
        assert!(matches!(classify(0x2000, 4), Bar0Access::Invalid(_)));
        assert!(matches!(classify(0x3ffc, 8), Bar0Access::Invalid(_)));
        assert!(matches!(classify(u64::MAX, 4), Bar0Access::Invalid(_)));
    }

    #[test]
    fn doorbells_in_page() {
        let p = DoorbellPage::new().unwrap();
        p.store(0x1000 + 8 * 3, 17);
        p.store(0x1000 + 8 * 3 + 4, 5);
        assert_eq!(p.sq_tail(3), 17);
        assert_eq!(p.cq_head(3), 5);
        assert_eq!(p.sq_tail(600), 0);
        p.clear();
        assert_eq!(p.sq_tail(3), 0);
        let r = regions(&p);
        assert_eq!(r.len(), 9);
        assert!(r
            .iter()
            .enumerate()
            .all(|(i, r)| r.region_info.index as usize == i));
    }
}
