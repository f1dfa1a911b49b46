//! BAR0 controller registers (NVMe Base 2.0 section 3.1): the register file, CAP construction,
//! and the CC transition decoding (enable, reset, shutdown) that the controller acts on.

use bitflags::bitflags;

/// Register offsets.
pub mod off {
    /// Controller Capabilities (8 bytes).
    pub const CAP: u64 = 0x00;
    /// Version.
    pub const VS: u64 = 0x08;
    /// Interrupt Mask Set.
    pub const INTMS: u64 = 0x0C;
    /// Interrupt Mask Clear.
    pub const INTMC: u64 = 0x10;
    /// Controller Configuration.
    pub const CC: u64 = 0x14;
    /// Controller Status.
    pub const CSTS: u64 = 0x1C;
    /// Admin Queue Attributes.
    pub const AQA: u64 = 0x24;
    /// Admin SQ Base Address (8 bytes).
    pub const ASQ: u64 = 0x28;
    /// Admin CQ Base Address (8 bytes).
    pub const ACQ: u64 = 0x30;
}

/// Version 2.0.0.
pub const VERSION: u32 = 0x0002_0000;
/// Largest memory page size exponent offered (CAP.MPSMAX: 2^(12+4) = 64 KiB).
pub const MPSMAX: u32 = 4;

bitflags! {
    /// Controller Status bits.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct Csts: u32 {
        /// Ready.
        const RDY = 1 << 0;
        /// Controller Fatal Status.
        const CFS = 1 << 1;
        /// Shutdown processing occurring (SHST = 01b).
        const SHST_OCCURRING = 1 << 2;
        /// Shutdown processing complete (SHST = 10b).
        const SHST_COMPLETE = 1 << 3;
    }
}

/// CC fields (Base 2.0 fig. "Controller Configuration").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cc(pub u32);

impl Cc {
    /// Enable.
    pub fn en(self) -> bool {
        self.0 & 1 != 0
    }
    /// I/O Command Set Selected.
    pub fn css(self) -> u8 {
        ((self.0 >> 4) & 0x7) as u8
    }
    /// Memory Page Size exponent (page = 2^(12+MPS)).
    pub fn mps(self) -> u32 {
        (self.0 >> 7) & 0xF
    }
    /// Arbitration Mechanism Selected.
    pub fn ams(self) -> u32 {
        (self.0 >> 11) & 0x7
    }
    /// Shutdown Notification.
    pub fn shn(self) -> u32 {
        (self.0 >> 14) & 0x3
    }
    /// I/O SQ Entry Size exponent.
    pub fn iosqes(self) -> u32 {
        (self.0 >> 16) & 0xF
    }
    /// I/O CQ Entry Size exponent.
    pub fn iocqes(self) -> u32 {
        (self.0 >> 20) & 0xF
    }
    /// Memory page size in bytes.
    pub fn page_size(self) -> u64 {
        1u64 << (12 + self.mps())
    }
}

/// CC.CSS: NVM command set only.
pub const CSS_NVM: u8 = 0b000;
/// CC.CSS: all supported I/O command sets.
pub const CSS_ALL: u8 = 0b110;
/// CC.CSS: admin command set only.
pub const CSS_ADMIN_ONLY: u8 = 0b111;

/// CAP for this controller.
pub fn cap(mqes: u16) -> u64 {
    let mut cap = u64::from(mqes); // MQES, 0's based
    cap |= 1 << 16; // CQR: contiguous queues required
    cap |= 0x0F << 24; // TO: 7.5 s
                       // DSTRD = 0 (4-byte doorbell stride), NSSRS = 0.
    cap |= 1 << 37; // CSS bit 0: NVM command set
    cap |= 1 << 43; // CSS bit 6: one or more I/O command sets (CC.CSS = 110b)
    cap |= 1 << 44; // CSS bit 7: admin command set only
                    // MPSMIN = 0 (4 KiB).
    cap |= u64::from(MPSMAX) << 52;
    cap
}

/// What a CC write asks the controller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CcAction {
    /// Nothing beyond storing the value.
    None,
    /// EN 0 -> 1: validate and bring up the admin queue.
    Enable,
    /// EN 1 -> 0: controller reset.
    Reset,
    /// SHN became non-zero while enabled.
    Shutdown,
}

/// Why CC/AQA/ASQ/ACQ cannot be used for enabling (sets CSTS.CFS).
pub fn enable_check(cc: Cc, cap: u64, aqa: u32, asq: u64, acq: u64) -> Result<(), &'static str> {
    let mpsmax = u32::try_from((cap >> 52) & 0xF).unwrap_or(0);
    if cc.mps() > mpsmax {
        return Err("CC.MPS beyond CAP.MPSMAX");
    }
    match cc.css() {
        CSS_NVM | CSS_ALL | CSS_ADMIN_ONLY => {}
        _ => return Err("CC.CSS not supported"),
    }
    if cc.ams() != 0 {
        return Err("CC.AMS not supported (round robin only)");
    }
    if cc.iosqes() != 0 && cc.iosqes() != 6 {
        return Err("CC.IOSQES must be 6");
    }
    if cc.iocqes() != 0 && cc.iocqes() != 4 {
        return Err("CC.IOCQES must be 4");
    }
    if aqa & 0xFFF == 0 || (aqa >> 16) & 0xFFF == 0 {
        return Err("AQA queue size below 2 entries");
    }
    let page = cc.page_size();
    if asq & (page - 1) != 0 || acq & (page - 1) != 0 {
        return Err("ASQ/ACQ not page aligned");
    }
    if asq == 0 || acq == 0 {
        return Err("ASQ/ACQ not programmed");
    }
    Ok(())
}

/// The register file.
#[derive(Debug, Clone)]
pub struct Regs {
    /// CAP.
    pub cap: u64,
    /// INTMS/INTMC mask.
    pub intm: u32,
    /// CC.
    pub cc: Cc,
    /// CSTS.
    pub csts: Csts,
    /// AQA.
    pub aqa: u32,
    /// ASQ.
    pub asq: u64,
    /// ACQ.
    pub acq: u64,
}

impl Regs {
    /// Power-on values.
    pub fn new(mqes: u16) -> Regs {
        Regs {
            cap: cap(mqes),
            intm: 0,
            cc: Cc(0),
            csts: Csts::empty(),
            aqa: 0,
            asq: 0,
            acq: 0,
        }
    }

    /// Read the dword at `offset` (dword aligned).
    pub fn read32(&self, offset: u64) -> u32 {
        let lo = |v: u64| (v & 0xFFFF_FFFF) as u32;
        let hi = |v: u64| (v >> 32) as u32;
        match offset {
            off::CAP => lo(self.cap),
            0x04 => hi(self.cap),
            off::VS => VERSION,
            off::INTMS | off::INTMC => self.intm,
            off::CC => self.cc.0,
            off::CSTS => self.csts.bits(),
            off::AQA => self.aqa,
            off::ASQ => lo(self.asq),
            0x2C => hi(self.asq),
            off::ACQ => lo(self.acq),
            0x34 => hi(self.acq),
            _ => 0,
        }
    }

    /// Read `data.len()` (4 or 8) bytes at `offset`; anything else reads as zeros.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match data.len() {
            4 if offset.is_multiple_of(4) => {
                data.copy_from_slice(&self.read32(offset).to_le_bytes())
            }
            8 if offset.is_multiple_of(8) => {
                let v = u64::from(self.read32(offset)) | (u64::from(self.read32(offset + 4)) << 32);
                data.copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }

    /// Store a dword write to anything but CC; returns false if the offset is read-only or
    /// unknown.
    pub fn write32_simple(&mut self, offset: u64, v: u32) -> bool {
        let set_lo = |r: &mut u64, v: u32| *r = (*r & !0xFFFF_FFFF) | u64::from(v);
        let set_hi = |r: &mut u64, v: u32| *r = (*r & 0xFFFF_FFFF) | (u64::from(v) << 32);
        match offset {
            off::INTMS => self.intm |= v,
            off::INTMC => self.intm &= !v,
            off::AQA => self.aqa = v & 0x0FFF_0FFF,
            0x28 => set_lo(&mut self.asq, v & !0xFFF),
            0x2C => set_hi(&mut self.asq, v),
            0x30 => set_lo(&mut self.acq, v & !0xFFF),
            0x34 => set_hi(&mut self.acq, v),
            _ => return false,
        }
        true
    }

    /// Store a CC write and classify the transition. While enabled, CSS/MPS/AMS keep their
    /// values (they may only change while CC.EN = 0).
    pub fn write_cc(&mut self, v: u32) -> CcAction {
        let old = self.cc;
        let mut new = Cc(v & 0x00FF_FFF1);
        if old.en() && new.en() {
            const FROZEN: u32 = (0x7 << 4) | (0xF << 7) | (0x7 << 11);
            new = Cc((new.0 & !FROZEN) | (old.0 & FROZEN));
        }
        self.cc = new;
        match (old.en(), new.en()) {
            (false, true) => CcAction::Enable,
            (true, false) => CcAction::Reset,
            (true, true) if new.shn() != 0 && old.shn() == 0 => CcAction::Shutdown,
            _ => CcAction::None,
        }
    }

    /// Admin SQ size (entries).
    pub fn asqs(&self) -> u32 {
        (self.aqa & 0xFFF) + 1
    }

    /// Admin CQ size (entries).
    pub fn acqs(&self) -> u32 {
        ((self.aqa >> 16) & 0xFFF) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields() {
        let c = cap(1023);
        assert_eq!(c & 0xFFFF, 1023);
        assert_eq!((c >> 16) & 1, 1, "CQR");
        assert_eq!((c >> 24) & 0xFF, 0x0F, "TO");
        assert_eq!((c >> 32) & 0xF, 0, "DSTRD");
        assert_eq!((c >> 37) & 0xFF, 0b1100_0001, "CSS: NVM, IOCS, admin-only");
        assert_eq!((c >> 48) & 0xF, 0, "MPSMIN 4 KiB");
    }

    #[test]
    fn read_sizes_and_halves() {
        let r = Regs::new(1023);
        let mut b8 = [0u8; 8];
        r.read(0, &mut b8);
        assert_eq!(u64::from_le_bytes(b8), r.cap);
        let mut b4 = [0u8; 4];
        r.read(4, &mut b4);
        assert_eq!(u32::from_le_bytes(b4), (r.cap >> 32) as u32);
        r.read(off::VS, &mut b4);
        assert_eq!(u32::from_le_bytes(b4), 0x0002_0000);
        let mut b2 = [0xFFu8; 2];
        r.read(0, &mut b2);
        assert_eq!(b2, [0, 0], "2-byte reads are zero");
        r.read(2, &mut b4);
        assert_eq!(b4, [0; 4], "unaligned reads are zero");
    }

    #[test]
    fn intms_intmc() {
        let mut r = Regs::new(1023);
        r.write32_simple(off::INTMS, 0b101);
        assert_eq!(r.read32(off::INTMS), 0b101);
        r.write32_simple(off::INTMC, 0b001);
        assert_eq!(r.read32(off::INTMC), 0b100);
        assert!(!r.write32_simple(0x00, 5), "CAP is read-only");
        assert!(!r.write32_simple(off::CSTS, 5), "CSTS is read-only");
    }

    #[test]
    fn admin_queue_registers() {
        let mut r = Regs::new(1023);
        r.write32_simple(off::AQA, 0x001F_001F);
        assert_eq!((r.asqs(), r.acqs()), (32, 32));
        r.write32_simple(0x28, 0x1234_5FFF);
        r.write32_simple(0x2C, 0x1);
        assert_eq!(r.asq, 0x1_1234_5000, "reserved low bits dropped");
    }

    #[test]
    fn cc_transitions() {
        let mut r = Regs::new(1023);
        assert_eq!(r.write_cc(0x0046_0000), CcAction::None);
        assert_eq!(r.write_cc(0x0046_0001), CcAction::Enable);
        assert_eq!(r.write_cc(0x0046_0001), CcAction::None);
        assert_eq!(r.write_cc(0x0046_4001), CcAction::Shutdown);
        assert_eq!(r.write_cc(0x0046_4001), CcAction::None);
        assert_eq!(r.write_cc(0x0046_0000), CcAction::Reset);
        // CSS/MPS frozen while enabled.
        assert_eq!(r.write_cc(0x0046_0061), CcAction::Enable);
        assert_eq!(r.write_cc(0x0046_0081), CcAction::None);
        assert_eq!(r.cc.css(), CSS_ALL);
        assert_eq!(r.cc.mps(), 0);
    }

    #[test]
    fn enable_checks() {
        let c = cap(1023);
        let ok = Cc(0x0046_0001);
        assert_eq!(enable_check(ok, c, 0x001F_001F, 0x10000, 0x20000), Ok(()));
        // SeaBIOS: CC=0x460001 with CSS 000b.
        assert!(enable_check(Cc(0x0046_0061), c, 0x001F_001F, 0x10000, 0x20000).is_ok());
        assert!(enable_check(Cc(0x0046_0071), c, 0x001F_001F, 0x10000, 0x20000).is_ok());
        assert!(enable_check(Cc(0x0046_0011), c, 0x001F_001F, 0x10000, 0x20000).is_err());
        assert!(enable_check(Cc(0x0047_0001), c, 0x001F_001F, 0x10000, 0x20000).is_err());
        assert!(enable_check(Cc(0x0056_0001), c, 0x001F_001F, 0x10000, 0x20000).is_err());
        assert!(enable_check(Cc(0x0046_0801), c, 0x001F_001F, 0x10000, 0x20000).is_err());
        assert!(
            enable_check(Cc(0x0046_0001 | (5 << 7)), c, 0x001F_001F, 0x10000, 0x20000).is_err()
        );
        assert!(enable_check(ok, c, 0x001F_0000, 0x10000, 0x20000).is_err());
        assert!(enable_check(ok, c, 0x001F_001F, 0, 0x20000).is_err());
        // 8 KiB pages need 8 KiB aligned queues.
        assert!(enable_check(Cc(0x0046_0081), c, 0x001F_001F, 0x11000, 0x20000).is_err());
        assert!(enable_check(Cc(0x0046_0081), c, 0x001F_001F, 0x12000, 0x20000).is_ok());
    }
}
