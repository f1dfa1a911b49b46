//! Decoding of SQEs into typed admin and I/O commands. Sub-dword fields are sliced here, once;
//! 0's based counts are widened before adding one.

use crate::prp::DataPtr;
use crate::regs::{CSS_ADMIN_ONLY, CSS_ALL};
use crate::wire::Sqe;

/// Admin opcodes.
pub mod admin_opc {
    /// Delete I/O Submission Queue.
    pub const DELETE_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue.
    pub const DELETE_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0A;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT: u8 = 0x0C;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Every admin opcode this controller implements.
    pub const SUPPORTED: [u8; 11] = [
        DELETE_SQ,
        CREATE_SQ,
        GET_LOG_PAGE,
        DELETE_CQ,
        CREATE_CQ,
        IDENTIFY,
        ABORT,
        SET_FEATURES,
        GET_FEATURES,
        ASYNC_EVENT,
        KEEP_ALIVE,
    ];
}

/// I/O opcodes.
pub mod io_opc {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Zone Management Send.
    pub const ZONE_MGMT_SEND: u8 = 0x79;
    /// Zone Management Receive.
    pub const ZONE_MGMT_RECV: u8 = 0x7A;
    /// Zone Append.
    pub const ZONE_APPEND: u8 = 0x7D;
    /// NVM command set opcodes implemented.
    pub const NVM: [u8; 4] = [FLUSH, WRITE, READ, WRITE_ZEROES];
    /// ZNS command set opcodes implemented (in addition to NVM).
    pub const ZNS: [u8; 3] = [ZONE_MGMT_SEND, ZONE_MGMT_RECV, ZONE_APPEND];
}

/// Which I/O opcodes are enabled for the zoned namespace under a CC.CSS value.
pub fn io_opcode_enabled(css: u8, opc: u8) -> bool {
    match css {
        CSS_ADMIN_ONLY => false,
        CSS_ALL => io_opc::NVM.contains(&opc) || io_opc::ZNS.contains(&opc),
        _ => io_opc::NVM.contains(&opc),
    }
}

/// Read / Write / Write Zeroes fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rw {
    /// Starting LBA.
    pub slba: u64,
    /// Number of logical blocks (already widened: NLB + 1).
    pub nlb: u32,
    /// Force Unit Access.
    pub fua: bool,
    /// Data pointer.
    pub dptr: DataPtr,
}

/// Zone Management Receive fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneRecv {
    /// Starting LBA (zone of interest).
    pub slba: u64,
    /// Buffer size in bytes ((NUMD + 1) × 4).
    pub len: u64,
    /// Zone Receive Action (0 report, 1 extended report).
    pub zra: u8,
    /// Reporting option / filter.
    pub zrasf: u8,
    /// Partial Report.
    pub partial: bool,
    /// Data pointer.
    pub dptr: DataPtr,
}

/// Zone Management Send fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneSend {
    /// Starting LBA (zone start, ignored with Select All).
    pub slba: u64,
    /// Zone Send Action.
    pub zsa: u8,
    /// Select All.
    pub select_all: bool,
    /// Zone Send Action Specific Option (Open: allocate a ZRWA).
    pub zsaso: bool,
    /// Data pointer (Set Zone Descriptor Extension).
    pub dptr: DataPtr,
}

/// A decoded I/O command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoCmd {
    /// Flush.
    Flush,
    /// Read.
    Read(Rw),
    /// Write.
    Write(Rw),
    /// Write Zeroes.
    WriteZeroes(Rw),
    /// Zone Append (slba = ZSLBA).
    ZoneAppend(Rw),
    /// Zone Management Send.
    ZoneSend(ZoneSend),
    /// Zone Management Receive.
    ZoneRecv(ZoneRecv),
    /// Opcode not enabled under the selected command set.
    Invalid(u8),
}

fn dptr(sqe: &Sqe) -> DataPtr {
    DataPtr {
        psdt: sqe.psdt(),
        prp1: sqe.prp1.get(),
        prp2: sqe.prp2.get(),
    }
}

fn rw(sqe: &Sqe) -> Rw {
    let cdw12 = sqe.cdw12.get();
    Rw {
        slba: sqe.cdw10_11(),
        nlb: (cdw12 & 0xFFFF) + 1,
        fua: cdw12 & (1 << 30) != 0,
        dptr: dptr(sqe),
    }
}

impl IoCmd {
    /// Decode an I/O SQE under CC.CSS `css`.
    pub fn decode(sqe: &Sqe, css: u8) -> IoCmd {
        let opc = sqe.opc();
        if !io_opcode_enabled(css, opc) {
            return IoCmd::Invalid(opc);
        }
        match opc {
            io_opc::FLUSH => IoCmd::Flush,
            io_opc::READ => IoCmd::Read(rw(sqe)),
            io_opc::WRITE => IoCmd::Write(rw(sqe)),
            io_opc::WRITE_ZEROES => IoCmd::WriteZeroes(rw(sqe)),
            io_opc::ZONE_APPEND => IoCmd::ZoneAppend(rw(sqe)),
            io_opc::ZONE_MGMT_SEND => {
                let cdw13 = sqe.cdw13.get();
                IoCmd::ZoneSend(ZoneSend {
                    slba: sqe.cdw10_11(),
                    zsa: (cdw13 & 0xFF) as u8,
                    select_all: cdw13 & (1 << 8) != 0,
                    zsaso: cdw13 & (1 << 9) != 0,
                    dptr: dptr(sqe),
                })
            }
            io_opc::ZONE_MGMT_RECV => {
                let cdw13 = sqe.cdw13.get();
                IoCmd::ZoneRecv(ZoneRecv {
                    slba: sqe.cdw10_11(),
                    len: (u64::from(sqe.cdw12.get()) + 1) * 4,
                    zra: (cdw13 & 0xFF) as u8,
                    zrasf: ((cdw13 >> 8) & 0xFF) as u8,
                    partial: cdw13 & (1 << 16) != 0,
                    dptr: dptr(sqe),
                })
            }
            other => IoCmd::Invalid(other),
        }
    }
}

/// A decoded admin command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCmd {
    /// Delete I/O SQ.
    DeleteSq {
        /// Queue identifier.
        qid: u16,
    },
    /// Create I/O SQ.
    CreateSq {
        /// Queue identifier.
        qid: u16,
        /// Entries (widened QSIZE + 1).
        size: u32,
        /// Physically contiguous.
        pc: bool,
        /// Completion queue identifier.
        cqid: u16,
        /// Base address (PRP1).
        base: u64,
    },
    /// Get Log Page.
    GetLogPage {
        /// Log Page Identifier.
        lid: u8,
        /// Log Specific Parameter.
        lsp: u8,
        /// Retain Asynchronous Event.
        rae: bool,
        /// Bytes requested.
        len: u64,
        /// Byte offset.
        offset: u64,
        /// Command Set Identifier.
        csi: u8,
        /// Data pointer.
        dptr: DataPtr,
    },
    /// Delete I/O CQ.
    DeleteCq {
        /// Queue identifier.
        qid: u16,
    },
    /// Create I/O CQ.
    CreateCq {
        /// Queue identifier.
        qid: u16,
        /// Entries (widened QSIZE + 1).
        size: u32,
        /// Physically contiguous.
        pc: bool,
        /// Interrupts enabled.
        ien: bool,
        /// Interrupt vector.
        iv: u16,
        /// Base address (PRP1).
        base: u64,
    },
    /// Identify.
    Identify {
        /// Controller or Namespace Structure.
        cns: u8,
        /// CNS specific identifier (CDW11 15:0).
        cnssid: u16,
        /// Command Set Identifier.
        csi: u8,
        /// Data pointer.
        dptr: DataPtr,
    },
    /// Abort.
    Abort {
        /// SQ of the command to abort.
        sqid: u16,
        /// CID of the command to abort.
        cid: u16,
    },
    /// Set Features.
    SetFeatures {
        /// Feature Identifier.
        fid: u8,
        /// Save.
        sv: bool,
        /// CDW11 value.
        dw11: u32,
        /// CDW14 (I/O command set profile carries nothing else we need).
        dw14: u32,
    },
    /// Get Features.
    GetFeatures {
        /// Feature Identifier.
        fid: u8,
        /// Select: 0 current, 1 default, 2 saved, 3 capabilities.
        sel: u8,
        /// CDW11 value.
        dw11: u32,
    },
    /// Asynchronous Event Request.
    AsyncEventRequest,
    /// Keep Alive.
    KeepAlive,
    /// Unsupported opcode.
    Invalid(u8),
}

impl AdminCmd {
    /// Decode an admin SQE.
    pub fn decode(sqe: &Sqe) -> AdminCmd {
        let cdw10 = sqe.cdw10.get();
        let cdw11 = sqe.cdw11.get();
        let lo16 = |v: u32| (v & 0xFFFF) as u16;
        let hi16 = |v: u32| (v >> 16) as u16;
        match sqe.opc() {
            admin_opc::DELETE_SQ => AdminCmd::DeleteSq { qid: lo16(cdw10) },
            admin_opc::DELETE_CQ => AdminCmd::DeleteCq { qid: lo16(cdw10) },
            admin_opc::CREATE_SQ => AdminCmd::CreateSq {
                qid: lo16(cdw10),
                size: u32::from(hi16(cdw10)) + 1,
                pc: cdw11 & 1 != 0,
                cqid: hi16(cdw11),
                base: sqe.prp1.get(),
            },
            admin_opc::CREATE_CQ => AdminCmd::CreateCq {
                qid: lo16(cdw10),
                size: u32::from(hi16(cdw10)) + 1,
                pc: cdw11 & 1 != 0,
                ien: cdw11 & 2 != 0,
                iv: hi16(cdw11),
                base: sqe.prp1.get(),
            },
            admin_opc::GET_LOG_PAGE => {
                let numdl = u64::from(hi16(cdw10));
                let numdu = u64::from(lo16(cdw11));
                AdminCmd::GetLogPage {
                    lid: (cdw10 & 0xFF) as u8,
                    lsp: ((cdw10 >> 8) & 0x7F) as u8,
                    rae: cdw10 & (1 << 15) != 0,
                    len: (((numdu << 16) | numdl) + 1) * 4,
                    offset: u64::from(sqe.cdw12.get()) | (u64::from(sqe.cdw13.get()) << 32),
                    csi: (sqe.cdw14.get() >> 24) as u8,
                    dptr: dptr(sqe),
                }
            }
            admin_opc::IDENTIFY => AdminCmd::Identify {
                cns: (cdw10 & 0xFF) as u8,
                cnssid: lo16(cdw11),
                csi: (cdw11 >> 24) as u8,
                dptr: dptr(sqe),
            },
            admin_opc::ABORT => AdminCmd::Abort {
                sqid: lo16(cdw10),
                cid: hi16(cdw10),
            },
            admin_opc::SET_FEATURES => AdminCmd::SetFeatures {
                fid: (cdw10 & 0xFF) as u8,
                sv: cdw10 & (1 << 31) != 0,
                dw11: cdw11,
                dw14: sqe.cdw14.get(),
            },
            admin_opc::GET_FEATURES => AdminCmd::GetFeatures {
                fid: (cdw10 & 0xFF) as u8,
                sel: ((cdw10 >> 8) & 0x7) as u8,
                dw11: cdw11,
            },
            admin_opc::ASYNC_EVENT => AdminCmd::AsyncEventRequest,
            admin_opc::KEEP_ALIVE => AdminCmd::KeepAlive,
            other => AdminCmd::Invalid(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::CSS_NVM;
    use zerocopy::FromZeros;

    fn sqe(opc: u8) -> Sqe {
        let mut s = Sqe::new_zeroed();
        s.cdw0 = (u32::from(opc) | (0x42 << 16)).into();
        s
    }

    #[test]
    fn rw_fields_widen_nlb() {
        let mut s = sqe(io_opc::WRITE);
        s.cdw10 = 0x10.into();
        s.cdw11 = 0x1.into();
        s.cdw12 = (0xFFFF | (1 << 30)).into();
        s.prp1 = 0x1000.into();
        let IoCmd::Write(rw) = IoCmd::decode(&s, CSS_ALL) else {
            panic!()
        };
        assert_eq!(rw.slba, 0x1_0000_0010);
        assert_eq!(rw.nlb, 0x10000, "NLB 0xFFFF is 65536 blocks");
        assert!(rw.fua);
        assert_eq!(rw.dptr.prp1, 0x1000);
    }

    #[test]
    fn opcode_tables_follow_css() {
        let s = sqe(io_opc::ZONE_APPEND);
        assert!(matches!(IoCmd::decode(&s, CSS_ALL), IoCmd::ZoneAppend(_)));
        assert_eq!(IoCmd::decode(&s, CSS_NVM), IoCmd::Invalid(0x7D));
        assert_eq!(
            IoCmd::decode(&sqe(io_opc::READ), CSS_ADMIN_ONLY),
            IoCmd::Invalid(0x02)
        );
        assert!(matches!(
            IoCmd::decode(&sqe(io_opc::READ), CSS_NVM),
            IoCmd::Read(_)
        ));
        assert_eq!(IoCmd::decode(&sqe(0x09), CSS_ALL), IoCmd::Invalid(0x09));
    }

    #[test]
    fn zone_mgmt_fields() {
        let mut s = sqe(io_opc::ZONE_MGMT_RECV);
        s.cdw12 = 1023.into();
        s.cdw13 = (1 | (5 << 8) | (1 << 16)).into();
        let IoCmd::ZoneRecv(r) = IoCmd::decode(&s, CSS_ALL) else {
            panic!()
        };
        assert_eq!((r.len, r.zra, r.zrasf, r.partial), (4096, 1, 5, true));
        let mut s = sqe(io_opc::ZONE_MGMT_SEND);
        s.cdw13 = (0x04 | (1 << 8)).into();
        let IoCmd::ZoneSend(z) = IoCmd::decode(&s, CSS_ALL) else {
            panic!()
        };
        assert_eq!((z.zsa, z.select_all, z.zsaso), (4, true, false));
    }

    #[test]
    fn admin_fields() {
        let mut s = sqe(admin_opc::CREATE_CQ);
        s.cdw10 = ((1023 << 16) | 3).into();
        s.cdw11 = ((5 << 16) | 3).into();
        s.prp1 = 0x5000.into();
        assert_eq!(
            AdminCmd::decode(&s),
            AdminCmd::CreateCq {
                qid: 3,
                size: 1024,
                pc: true,
                ien: true,
                iv: 5,
                base: 0x5000
            }
        );
        let mut s = sqe(admin_opc::GET_LOG_PAGE);
        s.cdw10 = ((0x3FF << 16) | (1 << 15) | 0x05).into();
        s.cdw11 = 0x1.into();
        s.cdw12 = 0x200.into();
        s.cdw14 = (2 << 24).into();
        let AdminCmd::GetLogPage {
            lid,
            rae,
            len,
            offset,
            csi,
            ..
        } = AdminCmd::decode(&s)
        else {
            panic!()
        };
        assert_eq!(
            (lid, rae, len, offset, csi),
            (5, true, (0x1_03FF + 1) * 4, 0x200, 2)
        );
        let mut s = sqe(admin_opc::IDENTIFY);
        s.cdw10 = 0x05.into();
        s.cdw11 = (2 << 24).into();
        assert!(matches!(
            AdminCmd::decode(&s),
            AdminCmd::Identify { cns: 5, csi: 2, .. }
        ));
        assert_eq!(AdminCmd::decode(&sqe(0x80)), AdminCmd::Invalid(0x80));
    }
}
