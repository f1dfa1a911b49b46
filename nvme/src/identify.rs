//! Identify data structures (CNS 00h, 01h, 02h, 03h, 05h, 06h, 07h, 08h, 1Ch), filled from
//! the image geometry and the controller configuration.

use crate::ctrl::{Ctrl, AERL};
use crate::io::{NSID, NSID_ALL};
use crate::log::{CCTEMP, WCTEMP};
use crate::regs::VERSION;
use crate::status::Status;
use crate::wire::{IdCtrl, IdCtrlZnsRaw, IdNs, IdNsIndep, IdNsZns, LbaFormat, LbaFormatExt};
use zerocopy::{FromZeros, IntoBytes};

/// Command Set Identifier: NVM.
pub const CSI_NVM: u8 = 0x00;
/// Command Set Identifier: Zoned Namespace.
pub const CSI_ZNS: u8 = 0x02;

/// CNS values.
pub mod cns {
    /// Identify Namespace (NVM).
    pub const NS: u8 = 0x00;
    /// Identify Controller.
    pub const CTRL: u8 = 0x01;
    /// Active Namespace ID list.
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    /// Namespace Identification Descriptor list.
    pub const NS_DESC_LIST: u8 = 0x03;
    /// I/O command set specific Identify Namespace.
    pub const CS_NS: u8 = 0x05;
    /// I/O command set specific Identify Controller.
    pub const CS_CTRL: u8 = 0x06;
    /// I/O command set specific active Namespace ID list.
    pub const CS_ACTIVE_NS_LIST: u8 = 0x07;
    /// I/O command set independent Identify Namespace.
    pub const NS_INDEP: u8 = 0x08;
    /// I/O Command Set data structure.
    pub const IOCS: u8 = 0x1C;
}

/// Copy `s` into a space-padded ASCII field; characters outside printable ASCII (space
/// included) are dropped.
fn ascii(field: &mut [u8], s: &str) {
    field.fill(b' ');
    let printable = |c: &u8| *c == b' ' || c.is_ascii_graphic();
    for (d, c) in field.iter_mut().zip(s.bytes().filter(printable)) {
        *d = c;
    }
}

/// FNV-1a, for stable identifiers derived from the serial number.
fn fnv1a(data: &[u8], seed: u64) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Model Number reported.
pub const MODEL: &str = "znsd ZNS Controller";
/// Firmware revision reported.
pub const FIRMWARE: &str = env!("CARGO_PKG_VERSION");

impl Ctrl {
    /// Namespace UUID (RFC 4122 version 4 layout), stable for a given serial number.
    pub(crate) fn ns_uuid(&self) -> [u8; 16] {
        let a = fnv1a(self.cfg.serial.as_bytes(), 1);
        let b = fnv1a(self.cfg.serial.as_bytes(), 2);
        let mut u = [0u8; 16];
        u[..8].copy_from_slice(&a.to_be_bytes());
        u[8..].copy_from_slice(&b.to_be_bytes());
        u[6] = (u[6] & 0x0F) | 0x40;
        u[8] = (u[8] & 0x3F) | 0x80;
        u
    }

    /// Build the 4096-byte Identify data for a command.
    pub(crate) fn identify(&self, cns: u8, nsid: u32, csi: u8) -> Result<Vec<u8>, Status> {
        let bad_field = |reason: &str| {
            tracing::debug!(cns, nsid, csi, reason, "identify rejected");
            Err(Status::INVALID_FIELD)
        };
        let bad_ns = || {
            tracing::debug!(
                cns,
                nsid,
                csi,
                reason = "no such namespace",
                "identify rejected"
            );
            Err(Status::INVALID_NS)
        };
        match cns {
            cns::CTRL => Ok(self.id_ctrl().as_bytes().to_vec()),
            cns::NS => match nsid {
                NSID => Ok(self.id_ns(true).as_bytes().to_vec()),
                NSID_ALL => Ok(self.id_ns(false).as_bytes().to_vec()),
                _ => bad_ns(),
            },
            cns::ACTIVE_NS_LIST => self.ns_list(nsid, true),
            cns::CS_ACTIVE_NS_LIST => match csi {
                CSI_ZNS => self.ns_list(nsid, true),
                CSI_NVM => self.ns_list(nsid, false),
                _ => bad_field("unsupported CSI"),
            },
            cns::NS_DESC_LIST => match nsid {
                NSID => Ok(self.ns_descriptors()),
                _ => bad_ns(),
            },
            cns::CS_NS => {
                if nsid != NSID {
                    return bad_ns();
                }
                match csi {
                    CSI_ZNS => Ok(self.id_ns_zns().as_bytes().to_vec()),
                    // NVM-specific fields (extended LBA formats): not supported, all zero.
                    CSI_NVM => Ok(vec![0u8; 4096]),
                    _ => bad_field("unsupported CSI"),
                }
            }
            cns::CS_CTRL => match csi {
                CSI_ZNS => {
                    let mut z = IdCtrlZnsRaw::new_zeroed();
                    z.zasl = self.geo.zasl;
                    Ok(z.as_bytes().to_vec())
                }
                // NVM-specific controller fields (VSL, WZSL, DMRL...): none reported.
                CSI_NVM => Ok(vec![0u8; 4096]),
                _ => bad_field("unsupported CSI"),
            },
            cns::NS_INDEP => match nsid {
                NSID => {
                    let mut d = IdNsIndep::new_zeroed();
                    d.nstat = 1;
                    Ok(d.as_bytes().to_vec())
                }
                _ => bad_ns(),
            },
            cns::IOCS => {
                // Vector 0: NVM (bit 0) and ZNS (bit 2).
                let mut v = vec![0u8; 4096];
                v[0] = (1 << CSI_NVM) | (1 << CSI_ZNS);
                Ok(v)
            }
            _ => bad_field("unsupported CNS"),
        }
    }

    fn ns_list(&self, nsid: u32, has_ns: bool) -> Result<Vec<u8>, Status> {
        if nsid >= 0xFFFF_FFFE {
            return Err(Status::INVALID_NS);
        }
        let mut v = vec![0u8; 4096];
        if has_ns && nsid < NSID {
            v[..4].copy_from_slice(&NSID.to_le_bytes());
        }
        Ok(v)
    }

    fn ns_descriptors(&self) -> Vec<u8> {
        let mut v = vec![0u8; 4096];
        // NIDT 3: UUID (16 bytes).
        v[0] = 3;
        v[1] = 16;
        v[4..20].copy_from_slice(&self.ns_uuid());
        // NIDT 4: Command Set Identifier (1 byte).
        v[20] = 4;
        v[21] = 1;
        v[24] = CSI_ZNS;
        v
    }

    pub(crate) fn id_ctrl(&self) -> IdCtrl {
        let mut c = IdCtrl::new_zeroed();
        // PCI IDs belong to the transport; these mirror QEMU's NVMe controller.
        c.vid = 0x1b36.into();
        c.ssvid = 0x1af4.into();
        ascii(&mut c.sn, &self.cfg.serial);
        ascii(&mut c.mn, MODEL);
        ascii(&mut c.fr, FIRMWARE);
        c.rab = 6;
        c.ieee = [0x00, 0x54, 0x52];
        c.mdts = self.geo.mdts;
        c.cntlid = 0.into();
        c.ver = VERSION.into();
        c.oaes = (1u32 << 27).into(); // zone descriptor changed notices (configurable)
        c.cntrltype = 1;
        c.oacs = 0.into();
        c.acl = 3;
        c.aerl = AERL;
        c.frmw = (1 << 1) | 1; // one slot, slot 1 read-only
        c.lpa = (1 << 1) | (1 << 2); // effects log, extended data for Get Log Page
        c.elpe = 0;
        c.npss = 0;
        c.wctemp = WCTEMP.into();
        c.cctemp = CCTEMP.into();
        c.sqes = 0x66;
        c.cqes = 0x44;
        c.maxcmd = 0.into();
        c.nn = 1.into();
        c.oncs = (1 << 3).into(); // Write Zeroes
        c.vwc = if self.cfg.volatile_write_cache {
            0x07
        } else {
            0x06
        };
        // SGLs supported (no alignment constraint) for I/O commands: Data Block, Segment and
        // Last Segment descriptors with the Address sub type.
        c.sgls = 0x1.into();
        let nqn = format!("nqn.2026-01.io.znsd:{}", self.cfg.serial);
        let n = nqn.len().min(c.subnqn.len());
        c.subnqn[..n].copy_from_slice(&nqn.as_bytes()[..n]);
        c.psd[0].mp = 2500.into(); // 25 W
        c
    }

    pub(crate) fn id_ns(&self, active: bool) -> IdNs {
        let g = &self.geo;
        let mut n = IdNs::new_zeroed();
        if active {
            n.nsze = g.nsze.into();
            n.ncap = g.nsze.into();
            n.nuse = g.nsze.into();
        }
        n.nlbaf = 0;
        n.flbas = 0;
        n.dlfeat = 0x1; // deallocated blocks read as zeros
        let lbads = u8::try_from(g.lba_shift).unwrap_or(12);
        n.lbaf[0] = LbaFormat {
            ms: 0.into(),
            lbads,
            rp: 0,
        };
        if active {
            let cap = u128::from(g.nsze) << g.lba_shift;
            n.nvmcap = cap.to_le_bytes();
        }
        n
    }

    pub(crate) fn id_ns_zns(&self) -> IdNsZns {
        let g = &self.geo;
        let mut z = IdNsZns::new_zeroed();
        z.zoc = 0.into();
        z.ozcs = 0.into();
        z.mar = g.mar().into();
        z.mor = g.mor().into();
        let zdes = u8::try_from(g.zdes_bytes / 64).unwrap_or(0);
        z.lbafe[0] = LbaFormatExt {
            zsze: g.zone_lbas.into(),
            zdes,
            rsvd: [0; 7],
        };
        z
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_pads_and_truncates() {
        let mut f = [0u8; 8];
        ascii(&mut f, "ab");
        assert_eq!(&f, b"ab      ");
        ascii(&mut f, "0123456789");
        assert_eq!(&f, b"01234567");
    }

    #[test]
    fn ascii_keeps_inner_spaces_and_drops_control_bytes() {
        let mut f = [0u8; 12];
        ascii(&mut f, "znsd ZNS\tx\u{e9}");
        assert_eq!(&f, b"znsd ZNSx   ");
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b"", 0), 0xcbf2_9ce4_8422_2325);
        assert_ne!(fnv1a(b"a", 1), fnv1a(b"a", 2));
    }
}
