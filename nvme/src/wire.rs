//! On-the-wire NVMe structures (little-endian), laid out byte for byte as NVMe Base 2.0 and
//! NVMe ZNS 1.1 define them. Every struct has a const size assertion; field offsets that a
//! host depends on are asserted in the unit tests.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}

/// Submission Queue Entry (Base 2.0 fig. "Common Command Format").
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Sqe {
    /// CDW0: OPC 7:0, FUSE 9:8, PSDT 15:14, CID 31:16.
    pub cdw0: U32,
    /// Namespace Identifier.
    pub nsid: U32,
    /// CDW2 (command specific).
    pub cdw2: U32,
    /// CDW3 (command specific).
    pub cdw3: U32,
    /// Metadata Pointer.
    pub mptr: U64,
    /// Data Pointer: PRP Entry 1, or the first 8 bytes of an SGL descriptor.
    pub prp1: U64,
    /// Data Pointer: PRP Entry 2, or the last 8 bytes of an SGL descriptor.
    pub prp2: U64,
    /// Command Dword 10.
    pub cdw10: U32,
    /// Command Dword 11.
    pub cdw11: U32,
    /// Command Dword 12.
    pub cdw12: U32,
    /// Command Dword 13.
    pub cdw13: U32,
    /// Command Dword 14.
    pub cdw14: U32,
    /// Command Dword 15.
    pub cdw15: U32,
}
assert_size!(Sqe, 64);

impl Sqe {
    /// Opcode.
    pub fn opc(&self) -> u8 {
        (self.cdw0.get() & 0xFF) as u8
    }
    /// Fused operation (0 = normal).
    pub fn fuse(&self) -> u8 {
        ((self.cdw0.get() >> 8) & 0x3) as u8
    }
    /// PRP or SGL for Data Transfer: 0 PRP, 1 SGL (MPTR buffer), 2 SGL (MPTR segment).
    pub fn psdt(&self) -> u8 {
        ((self.cdw0.get() >> 14) & 0x3) as u8
    }
    /// Command Identifier.
    pub fn cid(&self) -> u16 {
        (self.cdw0.get() >> 16) as u16
    }
    /// CDW10 and CDW11 as one 64-bit value (SLBA of I/O commands).
    pub fn cdw10_11(&self) -> u64 {
        u64::from(self.cdw10.get()) | (u64::from(self.cdw11.get()) << 32)
    }
}

/// Completion Queue Entry (Base 2.0 fig. "Common Completion Queue Entry Layout").
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Cqe {
    /// DW0: command specific result.
    pub dw0: U32,
    /// DW1: command specific result (upper half of a 64-bit result).
    pub dw1: U32,
    /// SQ Head Pointer.
    pub sqhd: U16,
    /// SQ Identifier.
    pub sqid: U16,
    /// Command Identifier.
    pub cid: U16,
    /// Phase Tag (bit 0) and Status Field (bits 15:1).
    pub status: U16,
}
assert_size!(Cqe, 16);

impl Cqe {
    /// Phase tag.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn phase(&self) -> bool {
        self.status.get() & 1 != 0
    }
    /// The 15-bit status field.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn status_field(&self) -> u16 {
        self.status.get() >> 1
    }
}

/// SGL descriptor types (Base 2.0 fig. "SGL Descriptor Type").
pub mod sgl_type {
    /// Data Block.
    pub const DATA_BLOCK: u8 = 0x0;
    /// Bit Bucket.
    #[cfg_attr(not(test), allow(dead_code))]
    pub const BIT_BUCKET: u8 = 0x1;
    /// Segment.
    pub const SEGMENT: u8 = 0x2;
    /// Last Segment.
    pub const LAST_SEGMENT: u8 = 0x3;
}

/// SGL descriptor (16 bytes; Base 2.0 section 4.1.4 "Scatter Gather List").
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SglDescriptor {
    /// Address.
    pub addr: U64,
    /// Length in bytes.
    pub len: U32,
    /// Reserved.
    pub rsvd: [u8; 3],
    /// SGL Identifier: descriptor type 7:4, sub type 3:0.
    pub id: u8,
}
assert_size!(SglDescriptor, 16);

impl SglDescriptor {
    /// Build from the two data pointer qwords of an SQE.
    pub fn from_halves(lo: u64, hi: u64) -> SglDescriptor {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&lo.to_le_bytes());
        b[8..].copy_from_slice(&hi.to_le_bytes());
        SglDescriptor::read_from_bytes(&b).unwrap_or_default()
    }
    /// Build a descriptor.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn new(addr: u64, len: u32, dtype: u8) -> SglDescriptor {
        SglDescriptor {
            addr: addr.into(),
            len: len.into(),
            rsvd: [0; 3],
            id: dtype << 4,
        }
    }
    /// Descriptor type.
    pub fn dtype(&self) -> u8 {
        self.id >> 4
    }
    /// Descriptor sub type (0 = address).
    pub fn subtype(&self) -> u8 {
        self.id & 0xF
    }
    /// The two data pointer qwords carrying this descriptor in an SQE.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn halves(&self) -> (u64, u64) {
        let b = self.as_bytes();
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&b[..8]);
        hi.copy_from_slice(&b[8..]);
        (u64::from_le_bytes(lo), u64::from_le_bytes(hi))
    }
}

/// Power State Descriptor (32 bytes).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PowerState {
    /// Maximum Power (centiwatts when MXPS = 0).
    pub mp: U16,
    /// Reserved.
    pub rsvd2: u8,
    /// MXPS bit 0, NOPS bit 1.
    pub flags: u8,
    /// Entry Latency (us).
    pub enlat: U32,
    /// Exit Latency (us).
    pub exlat: U32,
    /// Relative Read Throughput, Latency, Write Throughput, Latency.
    pub rel: [u8; 4],
    /// Remaining fields (idle/active power), unused.
    pub rsvd16: [u8; 16],
}
assert_size!(PowerState, 32);

/// Identify Controller data structure (CNS 01h; Base 2.0 fig. "Identify Controller").
#[derive(Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IdCtrl {
    /// PCI Vendor ID.
    pub vid: U16,
    /// PCI Subsystem Vendor ID.
    pub ssvid: U16,
    /// Serial Number (ASCII, space padded).
    pub sn: [u8; 20],
    /// Model Number.
    pub mn: [u8; 40],
    /// Firmware Revision.
    pub fr: [u8; 8],
    /// Recommended Arbitration Burst.
    pub rab: u8,
    /// IEEE OUI.
    pub ieee: [u8; 3],
    /// Controller Multi-Path I/O and Namespace Sharing Capabilities.
    pub cmic: u8,
    /// Maximum Data Transfer Size (2^n minimum pages; 0 = unlimited).
    pub mdts: u8,
    /// Controller ID.
    pub cntlid: U16,
    /// Version (same as VS).
    pub ver: U32,
    /// RTD3 Resume Latency.
    pub rtd3r: U32,
    /// RTD3 Entry Latency.
    pub rtd3e: U32,
    /// Optional Asynchronous Events Supported.
    pub oaes: U32,
    /// Controller Attributes.
    pub ctratt: U32,
    /// Read Recovery Levels Supported.
    pub rrls: U16,
    /// Reserved.
    pub rsvd102: [u8; 9],
    /// Controller Type (1 = I/O controller).
    pub cntrltype: u8,
    /// FRU GUID.
    pub fguid: [u8; 16],
    /// Command Retry Delay Times 1..3.
    pub crdt: [U16; 3],
    /// Reserved.
    pub rsvd134: [u8; 119],
    /// NVM Subsystem Report.
    pub nvmsr: u8,
    /// VPD Write Cycle Information.
    pub vwci: u8,
    /// Management Endpoint Capabilities.
    pub mec: u8,
    /// Optional Admin Command Support.
    pub oacs: U16,
    /// Abort Command Limit (0's based).
    pub acl: u8,
    /// Asynchronous Event Request Limit (0's based).
    pub aerl: u8,
    /// Firmware Updates.
    pub frmw: u8,
    /// Log Page Attributes.
    pub lpa: u8,
    /// Error Log Page Entries (0's based).
    pub elpe: u8,
    /// Number of Power States Support (0's based).
    pub npss: u8,
    /// Admin Vendor Specific Command Configuration.
    pub avscc: u8,
    /// Autonomous Power State Transition Attributes.
    pub apsta: u8,
    /// Warning Composite Temperature Threshold (K).
    pub wctemp: U16,
    /// Critical Composite Temperature Threshold (K).
    pub cctemp: U16,
    /// Bytes 270..512: remaining capability fields, all zero.
    pub rsvd270: [u8; 242],
    /// Submission Queue Entry Size: required 3:0, maximum 7:4.
    pub sqes: u8,
    /// Completion Queue Entry Size: required 3:0, maximum 7:4.
    pub cqes: u8,
    /// Maximum Outstanding Commands.
    pub maxcmd: U16,
    /// Number of Namespaces.
    pub nn: U32,
    /// Optional NVM Command Support.
    pub oncs: U16,
    /// Fused Operation Support.
    pub fuses: U16,
    /// Format NVM Attributes.
    pub fna: u8,
    /// Volatile Write Cache.
    pub vwc: u8,
    /// Atomic Write Unit Normal.
    pub awun: U16,
    /// Atomic Write Unit Power Fail.
    pub awupf: U16,
    /// I/O Command Set Vendor Specific Command Configuration.
    pub icsvscc: u8,
    /// Namespace Write Protection Capabilities.
    pub nwpc: u8,
    /// Atomic Compare & Write Unit.
    pub acwu: U16,
    /// Optional Copy Formats Supported.
    pub ocfs: U16,
    /// SGL Support.
    pub sgls: U32,
    /// Maximum Number of Allowed Namespaces.
    pub mnan: U32,
    /// Bytes 544..768: reserved / not reported.
    pub rsvd544: [u8; 224],
    /// NVM Subsystem NVMe Qualified Name.
    pub subnqn: [u8; 256],
    /// Reserved.
    pub rsvd1024: [u8; 768],
    /// NVMe over Fabrics attributes (unused on PCIe).
    pub fabrics: [u8; 256],
    /// Power State Descriptors 0..31.
    pub psd: [PowerState; 32],
    /// Vendor Specific.
    pub vs: [u8; 1024],
}
assert_size!(IdCtrl, 4096);

/// LBA Format data structure (Base 2.0 fig. "LBA Format Data Structure").
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct LbaFormat {
    /// Metadata Size.
    pub ms: U16,
    /// LBA Data Size (2^n).
    pub lbads: u8,
    /// Relative Performance (bits 1:0).
    pub rp: u8,
}
assert_size!(LbaFormat, 4);

/// Identify Namespace, NVM command set (CNS 00h; NVM Command Set 1.0 fig. 97).
#[derive(Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IdNs {
    /// Namespace Size (LBAs).
    pub nsze: U64,
    /// Namespace Capacity (LBAs).
    pub ncap: U64,
    /// Namespace Utilization (LBAs).
    pub nuse: U64,
    /// Namespace Features.
    pub nsfeat: u8,
    /// Number of LBA Formats (0's based).
    pub nlbaf: u8,
    /// Formatted LBA Size.
    pub flbas: u8,
    /// Metadata Capabilities.
    pub mc: u8,
    /// End-to-end Data Protection Capabilities.
    pub dpc: u8,
    /// End-to-end Data Protection Type Settings.
    pub dps: u8,
    /// Namespace Multi-path I/O and Namespace Sharing Capabilities.
    pub nmic: u8,
    /// Reservation Capabilities.
    pub rescap: u8,
    /// Format Progress Indicator.
    pub fpi: u8,
    /// Deallocate Logical Block Features (bits 2:0 = 001b: reads as zeros).
    pub dlfeat: u8,
    /// NAWUN .. NOIOB.
    pub nawun_noiob: [U16; 7],
    /// NVM Capacity (bytes, 128-bit).
    pub nvmcap: [u8; 16],
    /// NPWG, NPWA, NPDG, NPDA, NOWS.
    pub npwg_nows: [U16; 5],
    /// Bytes 74..92: copy limits and reserved.
    pub rsvd74: [u8; 18],
    /// ANA Group Identifier.
    pub anagrpid: U32,
    /// Reserved.
    pub rsvd96: [u8; 3],
    /// Namespace Attributes.
    pub nsattr: u8,
    /// NVM Set Identifier.
    pub nvmsetid: U16,
    /// Endurance Group Identifier.
    pub endgid: U16,
    /// Namespace Globally Unique Identifier.
    pub nguid: [u8; 16],
    /// IEEE Extended Unique Identifier.
    pub eui64: [u8; 8],
    /// LBA Formats 0..63.
    pub lbaf: [LbaFormat; 64],
    /// Vendor Specific.
    pub vs: [u8; 3712],
}
assert_size!(IdNs, 4096);

/// I/O Command Set Independent Identify Namespace (CNS 08h; Base 2.0 fig. "I/O Command Set
/// Independent Identify Namespace Data Structure").
#[derive(Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IdNsIndep {
    /// Common Namespace Features.
    pub nsfeat: u8,
    /// Namespace Multi-path I/O and Namespace Sharing Capabilities.
    pub nmic: u8,
    /// Reservation Capabilities.
    pub rescap: u8,
    /// Format Progress Indicator.
    pub fpi: u8,
    /// ANA Group Identifier.
    pub anagrpid: U32,
    /// Namespace Attributes.
    pub nsattr: u8,
    /// Reserved.
    pub rsvd9: u8,
    /// NVM Set Identifier.
    pub nvmsetid: U16,
    /// Endurance Group Identifier.
    pub endgid: U16,
    /// Namespace Status (bit 0: ready).
    pub nstat: u8,
    /// Reserved.
    pub rsvd15: [u8; 4081],
}
assert_size!(IdNsIndep, 4096);

/// LBA Format Extension (ZNS 1.1 fig. "Zoned Namespace LBA Format Extension").
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct LbaFormatExt {
    /// Zone Size (LBAs).
    pub zsze: U64,
    /// Zone Descriptor Extension Size (64-byte units).
    pub zdes: u8,
    /// Reserved.
    pub rsvd: [u8; 7],
}
assert_size!(LbaFormatExt, 16);

/// ZNS I/O-command-set-specific Identify Namespace (CNS 05h, CSI 02h; ZNS 1.1 section 4.1.5.1).
#[derive(Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IdNsZns {
    /// Zone Operation Characteristics.
    pub zoc: U16,
    /// Optional Zoned Command Support.
    pub ozcs: U16,
    /// Maximum Active Resources (0's based, FFFFFFFFh = no limit).
    pub mar: U32,
    /// Maximum Open Resources (0's based, FFFFFFFFh = no limit).
    pub mor: U32,
    /// Reset Recommended Limit.
    pub rrl: U32,
    /// Finish Recommended Limit.
    pub frl: U32,
    /// RRL1..3, FRL1..3.
    pub rrl_frl_123: [U32; 6],
    /// Number of ZRWA Resources.
    pub numzrwa: U32,
    /// ZRWA Flush Granularity.
    pub zrwafg: U16,
    /// ZRWA Size.
    pub zrwasz: U16,
    /// ZRWA Capability.
    pub zrwacap: u8,
    /// Reserved.
    pub rsvd53: [u8; 2763],
    /// LBA Format Extensions 0..63.
    pub lbafe: [LbaFormatExt; 64],
    /// Vendor Specific.
    pub vs: [u8; 256],
}
assert_size!(IdNsZns, 4096);

/// ZNS I/O-command-set-specific Identify Controller (CNS 06h, CSI 02h; ZNS 1.1 section 4.1.5.2).
#[derive(Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IdCtrlZnsRaw {
    /// Zone Append Size Limit (2^n minimum pages; 0 = MDTS).
    pub zasl: u8,
    /// Reserved.
    pub rsvd1: [u8; 4095],
}
assert_size!(IdCtrlZnsRaw, 4096);

/// Zone Descriptor (ZNS 1.1 fig. "Zone Descriptor Data Structure").
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ZoneDescriptor {
    /// Zone Type (bits 3:0).
    pub zt: u8,
    /// Zone State (bits 7:4).
    pub zs: u8,
    /// Zone Attributes.
    pub za: u8,
    /// Zone Attributes Information.
    pub zai: u8,
    /// Reserved.
    pub rsvd4: [u8; 4],
    /// Zone Capacity (LBAs).
    pub zcap: U64,
    /// Zone Start Logical Block Address.
    pub zslba: U64,
    /// Write Pointer (LBA).
    pub wp: U64,
    /// Reserved.
    pub rsvd32: [u8; 32],
}
assert_size!(ZoneDescriptor, 64);

/// Zone report header (ZNS 1.1 fig. "Report Zones Data Structure").
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ZoneReportHeader {
    /// Number of Zones.
    pub nr_zones: U64,
    /// Reserved.
    pub rsvd: [u8; 56],
}
assert_size!(ZoneReportHeader, 64);

/// SMART / Health Information log page (LID 02h; Base 2.0 fig. "SMART / Health Information").
#[derive(Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SmartLog {
    /// Critical Warning.
    pub critical_warning: u8,
    /// Composite Temperature (K).
    pub temperature: [u8; 2],
    /// Available Spare (%).
    pub avail_spare: u8,
    /// Available Spare Threshold (%).
    pub spare_thresh: u8,
    /// Percentage Used.
    pub percent_used: u8,
    /// Endurance Group Critical Warning Summary.
    pub endu_grp_crit_warn: u8,
    /// Reserved.
    pub rsvd7: [u8; 25],
    /// Data Units Read (1000 × 512 bytes, 128-bit).
    pub data_units_read: [U64; 2],
    /// Data Units Written.
    pub data_units_written: [U64; 2],
    /// Host Read Commands.
    pub host_reads: [U64; 2],
    /// Host Write Commands.
    pub host_writes: [U64; 2],
    /// Controller Busy Time.
    pub ctrl_busy_time: [U64; 2],
    /// Power Cycles.
    pub power_cycles: [U64; 2],
    /// Power On Hours.
    pub power_on_hours: [U64; 2],
    /// Unsafe Shutdowns.
    pub unsafe_shutdowns: [U64; 2],
    /// Media and Data Integrity Errors.
    pub media_errors: [U64; 2],
    /// Number of Error Information Log Entries.
    pub num_err_log_entries: [U64; 2],
    /// Remaining fields (temperature times, sensors), zero.
    pub rsvd192: [u8; 320],
}
assert_size!(SmartLog, 512);

/// Firmware Slot Information log page (LID 03h).
#[derive(Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct FwSlotLog {
    /// Active Firmware Info.
    pub afi: u8,
    /// Reserved.
    pub rsvd1: [u8; 7],
    /// Firmware Revision for slots 1..7.
    pub frs: [[u8; 8]; 7],
    /// Reserved.
    pub rsvd64: [u8; 448],
}
assert_size!(FwSlotLog, 512);

/// Commands Supported and Effects log page (LID 05h).
#[derive(Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EffectsLog {
    /// Admin Command Supported, one entry per opcode.
    pub acs: [U32; 256],
    /// I/O Command Supported, one entry per opcode.
    pub iocs: [U32; 256],
    /// Reserved.
    pub rsvd: [u8; 2048],
}
assert_size!(EffectsLog, 4096);

/// Changed Zone List log page (LID BFh; ZNS 1.1 section 4.1.4.1).
#[derive(Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ChangedZoneList {
    /// Number of Zone Identifiers (FFFFh = more than 511).
    pub count: U16,
    /// Reserved.
    pub rsvd2: [u8; 6],
    /// Zone Identifiers (ZSLBA).
    pub ids: [U64; 511],
}
assert_size!(ChangedZoneList, 4096);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;
    use zerocopy::FromZeros;

    #[test]
    fn sqe_fields_decode() {
        let mut s = Sqe::new_zeroed();
        s.cdw0 = (0x1234_0000u32 | (2 << 14) | (1 << 8) | 0x7D).into();
        assert_eq!(s.opc(), 0x7D);
        assert_eq!(s.fuse(), 1);
        assert_eq!(s.psdt(), 2);
        assert_eq!(s.cid(), 0x1234);
        s.cdw10 = 0x89AB_CDEFu32.into();
        s.cdw11 = 0x0123_4567u32.into();
        assert_eq!(s.cdw10_11(), 0x0123_4567_89AB_CDEF);
        assert_eq!(offset_of!(Sqe, prp1), 24);
        assert_eq!(offset_of!(Sqe, cdw10), 40);
    }

    #[test]
    fn cqe_layout() {
        assert_eq!(offset_of!(Cqe, sqhd), 8);
        assert_eq!(offset_of!(Cqe, status), 14);
        let c = Cqe {
            status: ((0x41B9u16) << 1 | 1).into(),
            ..Default::default()
        };
        assert!(c.phase());
        assert_eq!(c.status_field(), 0x41B9);
    }

    #[test]
    fn sgl_descriptor_roundtrip() {
        let d = SglDescriptor::new(0xDEAD_B000, 0x1234, sgl_type::LAST_SEGMENT);
        let (lo, hi) = d.halves();
        assert_eq!(lo, 0xDEAD_B000);
        assert_eq!(hi & 0xFFFF_FFFF, 0x1234);
        assert_eq!(hi >> 56, 0x30);
        let back = SglDescriptor::from_halves(lo, hi);
        assert_eq!(back, d);
        assert_eq!(back.dtype(), sgl_type::LAST_SEGMENT);
        assert_eq!(back.subtype(), 0);
    }

    #[test]
    fn id_ctrl_offsets_match_spec() {
        assert_eq!(offset_of!(IdCtrl, sn), 4);
        assert_eq!(offset_of!(IdCtrl, mn), 24);
        assert_eq!(offset_of!(IdCtrl, fr), 64);
        assert_eq!(offset_of!(IdCtrl, mdts), 77);
        assert_eq!(offset_of!(IdCtrl, cntlid), 78);
        assert_eq!(offset_of!(IdCtrl, ver), 80);
        assert_eq!(offset_of!(IdCtrl, oaes), 92);
        assert_eq!(offset_of!(IdCtrl, ctratt), 96);
        assert_eq!(offset_of!(IdCtrl, cntrltype), 111);
        assert_eq!(offset_of!(IdCtrl, oacs), 256);
        assert_eq!(offset_of!(IdCtrl, aerl), 259);
        assert_eq!(offset_of!(IdCtrl, lpa), 261);
        assert_eq!(offset_of!(IdCtrl, wctemp), 266);
        assert_eq!(offset_of!(IdCtrl, sqes), 512);
        assert_eq!(offset_of!(IdCtrl, nn), 516);
        assert_eq!(offset_of!(IdCtrl, oncs), 520);
        assert_eq!(offset_of!(IdCtrl, vwc), 525);
        assert_eq!(offset_of!(IdCtrl, sgls), 536);
        assert_eq!(offset_of!(IdCtrl, subnqn), 768);
        assert_eq!(offset_of!(IdCtrl, psd), 2048);
    }

    #[test]
    fn id_ns_offsets_match_spec() {
        assert_eq!(offset_of!(IdNs, nsfeat), 24);
        assert_eq!(offset_of!(IdNs, flbas), 26);
        assert_eq!(offset_of!(IdNs, dlfeat), 33);
        assert_eq!(offset_of!(IdNs, nvmcap), 48);
        assert_eq!(offset_of!(IdNs, anagrpid), 92);
        assert_eq!(offset_of!(IdNs, nsattr), 99);
        assert_eq!(offset_of!(IdNs, nguid), 104);
        assert_eq!(offset_of!(IdNs, lbaf), 128);
        assert_eq!(offset_of!(IdNsIndep, nstat), 14);
        assert_eq!(offset_of!(IdNsZns, mar), 4);
        assert_eq!(offset_of!(IdNsZns, mor), 8);
        assert_eq!(offset_of!(IdNsZns, numzrwa), 44);
        assert_eq!(offset_of!(IdNsZns, zrwacap), 52);
        assert_eq!(offset_of!(IdNsZns, lbafe), 2816);
    }

    #[test]
    fn log_offsets_match_spec() {
        assert_eq!(offset_of!(ZoneDescriptor, zcap), 8);
        assert_eq!(offset_of!(ZoneDescriptor, zslba), 16);
        assert_eq!(offset_of!(ZoneDescriptor, wp), 24);
        assert_eq!(offset_of!(SmartLog, data_units_read), 32);
        assert_eq!(offset_of!(SmartLog, num_err_log_entries), 176);
        assert_eq!(offset_of!(EffectsLog, iocs), 1024);
        assert_eq!(offset_of!(ChangedZoneList, ids), 8);
        assert_eq!(offset_of!(FwSlotLog, frs), 8);
    }
}
