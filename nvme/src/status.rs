//! NVMe completion status: one `Status` value type and the mapping from the image layer's
//! errors (NVMe Base 2.0 fig. "Status Field", ZNS 1.1 section 3.1.2).

use qcow2zoned::{Error as ImgError, ZoneError};
use std::fmt;

/// Status Code Type: generic command status.
pub const SCT_GENERIC: u8 = 0;
/// Status Code Type: command specific status.
pub const SCT_CMD_SPECIFIC: u8 = 1;

/// A completion status: Status Code Type, Status Code and Do Not Retry.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status {
    /// Status Code Type (3 bits).
    pub sct: u8,
    /// Status Code.
    pub sc: u8,
    /// Do Not Retry.
    pub dnr: bool,
}

impl Status {
    const fn new(sct: u8, sc: u8, dnr: bool) -> Status {
        Status { sct, sc, dnr }
    }

    /// Successful Completion.
    pub const SUCCESS: Status = Status::new(SCT_GENERIC, 0x00, false);
    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: Status = Status::new(SCT_GENERIC, 0x01, true);
    /// Invalid Field in Command.
    pub const INVALID_FIELD: Status = Status::new(SCT_GENERIC, 0x02, true);
    /// Data Transfer Error.
    pub const DATA_TRANSFER: Status = Status::new(SCT_GENERIC, 0x04, false);
    /// Internal Error.
    pub const INTERNAL: Status = Status::new(SCT_GENERIC, 0x06, false);
    /// Command Abort Requested.
    pub const ABORT_REQUESTED: Status = Status::new(SCT_GENERIC, 0x07, false);
    /// Command Aborted due to SQ Deletion.
    pub const ABORTED_SQ_DELETION: Status = Status::new(SCT_GENERIC, 0x08, false);
    /// Invalid Namespace or Format.
    pub const INVALID_NS: Status = Status::new(SCT_GENERIC, 0x0B, true);
    /// Command Sequence Error.
    pub const CMD_SEQUENCE: Status = Status::new(SCT_GENERIC, 0x0C, true);
    /// Invalid SGL Segment Descriptor.
    pub const SGL_INVALID_SEGMENT: Status = Status::new(SCT_GENERIC, 0x0D, true);
    /// Invalid Number of SGL Descriptors.
    pub const SGL_INVALID_COUNT: Status = Status::new(SCT_GENERIC, 0x0E, true);
    /// Data SGL Length Invalid.
    pub const SGL_INVALID_DATA_LEN: Status = Status::new(SCT_GENERIC, 0x0F, true);
    /// SGL Descriptor Type Invalid.
    pub const SGL_INVALID_TYPE: Status = Status::new(SCT_GENERIC, 0x11, true);
    /// PRP Offset Invalid.
    pub const PRP_INVALID_OFFSET: Status = Status::new(SCT_GENERIC, 0x13, true);
    /// SGL Offset Invalid.
    pub const SGL_INVALID_OFFSET: Status = Status::new(SCT_GENERIC, 0x16, true);
    /// LBA Out of Range.
    pub const LBA_RANGE: Status = Status::new(SCT_GENERIC, 0x80, true);
    /// Invalid Completion Queue.
    pub const INVALID_CQ: Status = Status::new(SCT_CMD_SPECIFIC, 0x00, true);
    /// Invalid Queue Identifier.
    pub const INVALID_QID: Status = Status::new(SCT_CMD_SPECIFIC, 0x01, true);
    /// Invalid Queue Size (Maximum Queue Size Exceeded).
    pub const INVALID_QSIZE: Status = Status::new(SCT_CMD_SPECIFIC, 0x02, true);
    /// Asynchronous Event Request Limit Exceeded.
    pub const AER_LIMIT: Status = Status::new(SCT_CMD_SPECIFIC, 0x05, true);
    /// Invalid Interrupt Vector.
    pub const INVALID_VECTOR: Status = Status::new(SCT_CMD_SPECIFIC, 0x08, true);
    /// Invalid Log Page.
    pub const INVALID_LOG_PAGE: Status = Status::new(SCT_CMD_SPECIFIC, 0x09, true);
    /// Invalid Queue Deletion.
    pub const INVALID_QUEUE_DELETION: Status = Status::new(SCT_CMD_SPECIFIC, 0x0C, true);
    /// Feature Identifier Not Saveable.
    pub const FEATURE_NOT_SAVEABLE: Status = Status::new(SCT_CMD_SPECIFIC, 0x0D, true);
    /// I/O Command Set Combination Rejected.
    pub const IOCS_COMBINATION_REJECTED: Status = Status::new(SCT_CMD_SPECIFIC, 0x2B, true);
    /// Zone Boundary Error.
    pub const ZONE_BOUNDARY: Status = Status::new(SCT_CMD_SPECIFIC, 0xB8, true);
    /// Zone Is Full.
    pub const ZONE_FULL: Status = Status::new(SCT_CMD_SPECIFIC, 0xB9, true);
    /// Zone Is Read Only.
    pub const ZONE_READ_ONLY: Status = Status::new(SCT_CMD_SPECIFIC, 0xBA, true);
    /// Zone Is Offline.
    pub const ZONE_OFFLINE: Status = Status::new(SCT_CMD_SPECIFIC, 0xBB, true);
    /// Zone Invalid Write.
    pub const ZONE_INVALID_WRITE: Status = Status::new(SCT_CMD_SPECIFIC, 0xBC, true);
    /// Too Many Active Zones.
    pub const TOO_MANY_ACTIVE: Status = Status::new(SCT_CMD_SPECIFIC, 0xBD, true);
    /// Too Many Open Zones.
    pub const TOO_MANY_OPEN: Status = Status::new(SCT_CMD_SPECIFIC, 0xBE, true);
    /// Invalid Zone State Transition.
    pub const INVALID_ZONE_TRANSITION: Status = Status::new(SCT_CMD_SPECIFIC, 0xBF, true);

    /// Whether this is Successful Completion.
    pub fn is_success(self) -> bool {
        self.sct == SCT_GENERIC && self.sc == 0
    }

    /// The 15-bit status field of CQE DW3 bits 31:17: `SC | SCT << 8 | DNR << 14`.
    pub fn field(self) -> u16 {
        u16::from(self.sc) | (u16::from(self.sct & 0x7) << 8) | (u16::from(self.dnr) << 14)
    }

    /// Inverse of [`Status::field`] (CRD and More are dropped).
    pub fn from_field(field: u16) -> Status {
        Status {
            sc: (field & 0xFF) as u8,
            sct: ((field >> 8) & 0x7) as u8,
            dnr: field & 0x4000 != 0,
        }
    }

    /// `(SCT << 8) | SC`, the value Linux and QEMU print as "status 0x1b9".
    pub fn code(self) -> u16 {
        u16::from(self.sc) | (u16::from(self.sct) << 8)
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#05x}{}",
            self.code(),
            if self.dnr { "/dnr" } else { "" }
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl From<ZoneError> for Status {
    fn from(e: ZoneError) -> Status {
        match e {
            ZoneError::OutOfRange => Status::LBA_RANGE,
            ZoneError::NotZoneStart | ZoneError::Conventional => Status::INVALID_FIELD,
            ZoneError::Boundary => Status::ZONE_BOUNDARY,
            ZoneError::Full => Status::ZONE_FULL,
            ZoneError::ReadOnly => Status::ZONE_READ_ONLY,
            ZoneError::Offline => Status::ZONE_OFFLINE,
            ZoneError::InvalidWrite => Status::ZONE_INVALID_WRITE,
            ZoneError::TooManyActive => Status::TOO_MANY_ACTIVE,
            ZoneError::TooManyOpen => Status::TOO_MANY_OPEN,
            ZoneError::InvalidTransition => Status::INVALID_ZONE_TRANSITION,
        }
    }
}

impl From<&ImgError> for Status {
    fn from(e: &ImgError) -> Status {
        match e {
            ImgError::Zone(z) => Status::from(*z),
            ImgError::Invalid(_) => Status::INVALID_FIELD,
            ImgError::Io { .. } | ImgError::Format(_) | ImgError::Unsupported(_) => {
                Status::INTERNAL
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_errors_map_one_to_one() {
        let cases = [
            (ZoneError::OutOfRange, 0x080),
            (ZoneError::NotZoneStart, 0x002),
            (ZoneError::Conventional, 0x002),
            (ZoneError::Boundary, 0x1B8),
            (ZoneError::Full, 0x1B9),
            (ZoneError::ReadOnly, 0x1BA),
            (ZoneError::Offline, 0x1BB),
            (ZoneError::InvalidWrite, 0x1BC),
            (ZoneError::TooManyActive, 0x1BD),
            (ZoneError::TooManyOpen, 0x1BE),
            (ZoneError::InvalidTransition, 0x1BF),
        ];
        for (e, code) in cases {
            let s = Status::from(e);
            assert_eq!(s.code(), code, "{e:?}");
            assert!(s.dnr, "{e:?} carries DNR");
            assert_eq!(Status::from(&ImgError::Zone(e)), s);
        }
    }

    #[test]
    fn io_errors_are_internal_and_retryable() {
        let e = ImgError::Io {
            context: "x".into(),
            source: std::io::Error::other("boom"),
        };
        let s = Status::from(&e);
        assert_eq!(s, Status::INTERNAL);
        assert!(!s.dnr);
    }

    #[test]
    fn field_layout_matches_linux() {
        // Linux: NVME_SC_ZONE_FULL 0x1b9, NVME_SC_DNR 0x4000.
        assert_eq!(Status::ZONE_FULL.field(), 0x41B9);
        assert_eq!(Status::DATA_TRANSFER.field(), 0x0004);
        assert_eq!(Status::SUCCESS.field(), 0);
        assert_eq!(Status::from_field(0x41BD), Status::TOO_MANY_ACTIVE);
        assert!(Status::SUCCESS.is_success());
        assert!(!Status::INVALID_FIELD.is_success());
        assert_eq!(format!("{}", Status::ZONE_OFFLINE), "0x1bb/dnr");
    }
}
