//! PCI configuration space of the NVMe function (4 KiB, PCI Express).
//!
//! Layout (see `docs` of the server crate and the vfio-user notes, section 5):
//!
//! | offset | what |
//! |---|---|
//! | 0x00 | IDs 1b36:0010, command/status, class 01 08 02, revision 2 |
//! | 0x10 | BAR0 64-bit memory (16 KiB, registers + doorbells), BAR1 = upper half |
//! | 0x20 | BAR4 MSI-X table, BAR5 MSI-X PBA (32-bit memory, 4 KiB each) |
//! | 0x2c | subsystem 1af4:1100 |
//! | 0x40 | Power Management capability |
//! | 0x50 | MSI-X capability (table BIR 4 offset 0, PBA BIR 5 offset 0) |
//! | 0x60 | PCI Express v2 capability, endpoint, FLR capable |
//!
//! QEMU emulates BARs and the MSI-X capability bytes itself and forwards writes to us; BAR
//! writes are accepted and ignored. Writable bits are described by a per-byte mask.

/// Config space size (PCI Express).
pub const CONFIG_SIZE: usize = 4096;

/// Vendor ID (Red Hat, QEMU's NVMe).
pub const VENDOR_ID: u16 = 0x1b36;
/// Device ID (QEMU NVMe).
pub const DEVICE_ID: u16 = 0x0010;
/// Subsystem vendor ID.
pub const SUBSYS_VENDOR_ID: u16 = 0x1af4;
/// Subsystem ID.
pub const SUBSYS_ID: u16 = 0x1100;
/// Class code: mass storage / non-volatile memory / NVMe.
pub const CLASS_CODE: u32 = 0x010802;
/// Revision.
pub const REVISION: u8 = 2;

/// Offset of the PM capability (as a config byte, for pointers).
const PM_CAP_PTR: u8 = 0x40;
/// Offset of the MSI-X capability (as a config byte).
const MSIX_CAP_PTR: u8 = 0x50;
/// Offset of the PCI Express capability (as a config byte).
const PCIE_CAP_PTR: u8 = 0x60;
/// Offset of the PM capability.
pub const PM_CAP: usize = PM_CAP_PTR as usize;
/// Offset of the MSI-X capability.
pub const MSIX_CAP: usize = MSIX_CAP_PTR as usize;
/// Offset of the PCI Express capability.
pub const PCIE_CAP: usize = PCIE_CAP_PTR as usize;

/// Command register bits.
pub mod command {
    /// I/O space enable.
    pub const IO: u16 = 1 << 0;
    /// Memory space enable.
    pub const MEMORY: u16 = 1 << 1;
    /// Bus master enable.
    pub const BUS_MASTER: u16 = 1 << 2;
    /// Parity error response.
    pub const PARITY: u16 = 1 << 6;
    /// SERR# enable.
    pub const SERR: u16 = 1 << 8;
    /// Interrupt disable (INTx).
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// MSI-X message control bits.
pub mod msix_ctl {
    /// Function mask.
    pub const MASK: u16 = 1 << 14;
    /// MSI-X enable.
    pub const ENABLE: u16 = 1 << 15;
}

/// What a config write changed (for the caller to act on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConfigEffect {
    /// The command register changed.
    pub command_changed: bool,
    /// The MSI-X message control changed.
    pub msix_changed: bool,
    /// Function level reset was requested (DEVCTL bit 15).
    pub flr: bool,
}

/// The config space bytes and their writable mask.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: Box<[u8; CONFIG_SIZE]>,
    wmask: Box<[u8; CONFIG_SIZE]>,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("command", &format_args!("{:#06x}", self.command()))
            .field(
                "msix_control",
                &format_args!("{:#06x}", self.msix_control()),
            )
            .finish()
    }
}

impl ConfigSpace {
    /// Power-on config space for a function with `msix_vectors` MSI-X vectors (1..=2048).
    pub fn new(msix_vectors: u16) -> Self {
        let mut c = ConfigSpace {
            bytes: Box::new([0; CONFIG_SIZE]),
            wmask: Box::new([0; CONFIG_SIZE]),
        };
        c.set16(0x00, VENDOR_ID);
        c.set16(0x02, DEVICE_ID);
        c.set16(0x06, 1 << 4); // Status: capabilities list.
        c.bytes[0x08] = REVISION;
        c.bytes[0x09..0x0c].copy_from_slice(&CLASS_CODE.to_le_bytes()[..3]);
        c.set32(0x10, 0x4); // BAR0: memory, 64-bit, non-prefetchable. BAR1 upper half = 0.
        c.set16(0x2c, SUBSYS_VENDOR_ID);
        c.set16(0x2e, SUBSYS_ID);
        c.bytes[0x34] = PM_CAP_PTR;
        c.bytes[0x3d] = 1; // Interrupt pin INTA.

        // Power management: version 3; PMCSR No_Soft_Reset.
        c.bytes[PM_CAP] = 0x01;
        c.bytes[PM_CAP + 1] = MSIX_CAP_PTR;
        c.set16(PM_CAP + 2, 0x0003);
        c.set16(PM_CAP + 4, 0x0008);

        // MSI-X: table in BAR4 at 0, PBA in BAR5 at 0.
        let vectors = msix_vectors.clamp(1, 2048);
        c.bytes[MSIX_CAP] = 0x11;
        c.bytes[MSIX_CAP + 1] = PCIE_CAP_PTR;
        c.set16(MSIX_CAP + 2, vectors - 1);
        c.set32(MSIX_CAP + 4, 4);
        c.set32(MSIX_CAP + 8, 5);

        // PCI Express v2, endpoint.
        c.bytes[PCIE_CAP] = 0x10;
        c.bytes[PCIE_CAP + 1] = 0;
        c.set16(PCIE_CAP + 2, 0x0002); // Version 2, device/port type 0 (endpoint).
        c.set32(PCIE_CAP + 4, (1 << 28) | (1 << 15)); // DEVCAP: FLR, role-based errors.
        c.set16(PCIE_CAP + 8, 0x2810); // DEVCTL: relaxed ordering, MRRS 512, no snoop.
        c.set32(PCIE_CAP + 0xc, 0x0000_0011); // LNKCAP: 2.5 GT/s x1.
        c.set16(PCIE_CAP + 0x12, 0x0011); // LNKSTA: 2.5 GT/s x1.
        c.set32(PCIE_CAP + 0x24, 1 << 4); // DEVCAP2: completion timeout disable.

        // Writable bits.
        let cmd_mask = command::IO
            | command::MEMORY
            | command::BUS_MASTER
            | command::PARITY
            | command::SERR
            | command::INTX_DISABLE;
        c.setmask16(0x04, cmd_mask);
        c.wmask[0x0c] = 0xff; // Cache line size.
        c.wmask[0x0d] = 0xff; // Latency timer.
        c.wmask[0x3c] = 0xff; // Interrupt line.
        c.setmask16(PM_CAP + 4, 0x0103); // PowerState, PME_En.
        c.setmask16(MSIX_CAP + 2, msix_ctl::MASK | msix_ctl::ENABLE);
        c.setmask16(PCIE_CAP + 8, 0xffff); // DEVCTL (bit 15: FLR, self-clearing).
        c.setmask16(PCIE_CAP + 0x10, 0x01c3); // LNKCTL: ASPM, RCB, common clock, ext sync.
        c.setmask16(PCIE_CAP + 0x28, 0x001f); // DEVCTL2: completion timeout.
        c
    }

    fn set16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn set32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn setmask16(&mut self, off: usize, v: u16) {
        self.wmask[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn get16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.bytes[off], self.bytes[off + 1]])
    }

    /// Read `buf.len()` bytes at `offset`. Bytes beyond the config space read as all-ones.
    pub fn read(&self, offset: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.bytes.get(o).copied())
                .unwrap_or(0xff);
        }
    }

    /// Write `data` at `offset`, honouring the writable mask (read-only bits, IDs, BARs and
    /// capability headers keep their values). Out-of-range bytes are ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> ConfigEffect {
        let old_cmd = self.command();
        let old_msix = self.msix_control();
        let mut effect = ConfigEffect::default();
        for (i, &v) in data.iter().enumerate() {
            let Some(o) = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .filter(|&o| o < CONFIG_SIZE)
            else {
                continue;
            };
            let m = self.wmask[o];
            self.bytes[o] = (self.bytes[o] & !m) | (v & m);
        }
        let devctl = PCIE_CAP + 8;
        if self.get16(devctl) & 0x8000 != 0 {
            effect.flr = true;
            let v = self.get16(devctl) & 0x7fff;
            self.set16(devctl, v);
        }
        effect.command_changed = self.command() != old_cmd;
        effect.msix_changed = self.msix_control() != old_msix;
        effect
    }

    /// Command register.
    pub fn command(&self) -> u16 {
        self.get16(0x04)
    }

    /// MSI-X message control word.
    pub fn msix_control(&self) -> u16 {
        self.get16(MSIX_CAP + 2)
    }

    /// Number of MSI-X vectors (table size + 1).
    pub fn msix_vectors(&self) -> u16 {
        (self.msix_control() & 0x7ff) + 1
    }

    /// Back to power-on values for the writable state (FLR / device reset), keeping IDs.
    pub fn reset(&mut self) {
        *self = ConfigSpace::new(self.msix_vectors());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r32(c: &ConfigSpace, off: u64) -> u32 {
        let mut b = [0u8; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_and_caps_chain() {
        let c = ConfigSpace::new(5);
        assert_eq!(r32(&c, 0), 0x0010_1b36);
        assert_eq!(r32(&c, 8) >> 8, CLASS_CODE);
        assert_eq!(r32(&c, 8) & 0xff, 2);
        assert_eq!(r32(&c, 0x2c), 0x1100_1af4);
        assert_eq!(r32(&c, 0x10), 4);
        // Walk: PM -> MSI-X -> PCIe -> end.
        let mut ids = vec![];
        let mut p = r32(&c, 0x34) & 0xff;
        while p != 0 {
            let h = r32(&c, u64::from(p));
            ids.push(h & 0xff);
            p = (h >> 8) & 0xff;
        }
        assert_eq!(ids, vec![0x01, 0x11, 0x10]);
        assert_eq!(c.msix_vectors(), 5);
        assert_eq!(r32(&c, 0x54), 4);
        assert_eq!(r32(&c, 0x58), 5);
        assert_eq!(r32(&c, 0x100), 0, "no extended capabilities");
        let mut b = [0u8; 4];
        c.read(4094, &mut b);
        assert_eq!(b, [0, 0, 0xff, 0xff]);
    }

    #[test]
    fn writable_bits_only() {
        let mut c = ConfigSpace::new(5);
        c.write(0, &[0xff; 4]);
        assert_eq!(r32(&c, 0), 0x0010_1b36, "IDs are read-only");
        c.write(0x10, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(r32(&c, 0x10), 4, "BAR writes are ignored");
        let e = c.write(4, &[0xff, 0xff]);
        assert!(e.command_changed);
        assert_eq!(c.command(), 0x0547);
        let e = c.write(0x52, &0xc000u16.to_le_bytes());
        assert!(e.msix_changed);
        assert_eq!(c.msix_control(), 0xc004, "table size kept");
        let e = c.write(0x68, &0x8000u16.to_le_bytes());
        assert!(e.flr);
        assert_eq!(c.write(0x3c, &[11]), ConfigEffect::default());
        assert_eq!(r32(&c, 0x3c) & 0xffff, 0x010b);
        c.reset();
        assert_eq!(c.command(), 0);
        assert_eq!(c.msix_control(), 4);
    }
}
