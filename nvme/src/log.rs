//! Log pages (Get Log Page): Error Information, SMART / Health, Firmware Slot, Commands
//! Supported and Effects (per CSI) and the ZNS Changed Zone List.

use crate::cmd::{admin_opc, io_opc};
use crate::ctrl::{lock, Ctrl, Features};
use crate::identify::{CSI_NVM, CSI_ZNS, FIRMWARE};
use crate::io::{NSID, NSID_ALL};
use crate::status::Status;
use crate::wire::{ChangedZoneList, EffectsLog, FwSlotLog, SmartLog};
use std::sync::atomic::Ordering;
use zerocopy::{FromZeros, IntoBytes};

/// Warning composite temperature threshold (Kelvin), also the default over-temperature
/// threshold feature value.
pub const WCTEMP: u16 = 0x157;
/// Critical composite temperature threshold (Kelvin).
pub const CCTEMP: u16 = 0x175;
/// Reported composite temperature (Kelvin).
pub const TEMPERATURE: u16 = 0x143;

/// Log identifiers.
pub mod lid {
    /// Error Information.
    pub const ERROR: u8 = 0x01;
    /// SMART / Health Information.
    pub const SMART: u8 = 0x02;
    /// Firmware Slot Information.
    pub const FW_SLOT: u8 = 0x03;
    /// Commands Supported and Effects.
    pub const EFFECTS: u8 = 0x05;
    /// Changed Zone List.
    pub const CHANGED_ZONES: u8 = 0xBF;
}

/// Whether the composite temperature is beyond a threshold set with Feature 04h.
pub(crate) fn temperature_warning(f: &Features) -> bool {
    TEMPERATURE > f.temp_over || TEMPERATURE < f.temp_under
}

/// Effects entry bits.
const CSUPP: u32 = 1 << 0;
const LBCC: u32 = 1 << 1;

/// Asynchronous event types whose mask a log page clears when read without RAE.
fn event_type_of(lid: u8) -> Option<u8> {
    match lid {
        lid::ERROR => Some(0),
        lid::SMART => Some(1),
        lid::CHANGED_ZONES => Some(2),
        _ => None,
    }
}

impl Ctrl {
    /// Build the requested part of a log page: bytes `offset..offset+len`, clipped to the page.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn get_log(
        &self,
        features: &Features,
        lid: u8,
        rae: bool,
        offset: u64,
        len: u64,
        csi: u8,
        nsid: u32,
    ) -> Result<Vec<u8>, Status> {
        let page = self.log_page(features, lid, csi, nsid)?;
        if !offset.is_multiple_of(4) || offset >= page.len() as u64 {
            tracing::debug!(
                lid,
                offset,
                reason = "log page offset not dword aligned or beyond the page",
                "rejected"
            );
            return Err(Status::INVALID_FIELD);
        }
        if !rae {
            if let Some(ty) = event_type_of(lid) {
                lock(&self.events).masked &= !(1 << ty);
            }
        }
        let start = usize::try_from(offset).map_err(|_| Status::INVALID_FIELD)?;
        let end = usize::try_from(offset.saturating_add(len))
            .unwrap_or(usize::MAX)
            .min(page.len());
        Ok(page[start..end].to_vec())
    }

    fn log_page(
        &self,
        features: &Features,
        lid: u8,
        csi: u8,
        nsid: u32,
    ) -> Result<Vec<u8>, Status> {
        match lid {
            lid::ERROR => Ok(vec![0u8; 64]),
            lid::SMART => {
                if !matches!(nsid, 0 | NSID | NSID_ALL) {
                    return Err(Status::INVALID_NS);
                }
                Ok(self.smart(features).as_bytes().to_vec())
            }
            lid::FW_SLOT => {
                let mut f = FwSlotLog::new_zeroed();
                f.afi = 1;
                f.frs[0].fill(b' ');
                let n = FIRMWARE.len().min(8);
                f.frs[0][..n].copy_from_slice(&FIRMWARE.as_bytes()[..n]);
                Ok(f.as_bytes().to_vec())
            }
            lid::EFFECTS => Ok(effects(csi)?.as_bytes().to_vec()),
            lid::CHANGED_ZONES => {
                if csi != CSI_ZNS {
                    tracing::debug!(csi, reason = "changed zone list needs CSI 2", "rejected");
                    return Err(Status::INVALID_FIELD);
                }
                if nsid != NSID {
                    return Err(Status::INVALID_NS);
                }
                // The controller never changes zone attributes by itself (no RRL/FRL, no
                // active excursions), so the list is always empty.
                Ok(ChangedZoneList::new_zeroed().as_bytes().to_vec())
            }
            _ => {
                tracing::debug!(lid, reason = "unsupported log page", "rejected");
                Err(Status::INVALID_LOG_PAGE)
            }
        }
    }

    fn smart(&self, features: &Features) -> SmartLog {
        let mut s = SmartLog::new_zeroed();
        // Critical Warning bit 1: temperature above the over or below the under threshold.
        s.critical_warning = u8::from(temperature_warning(features)) << 1;
        s.temperature = TEMPERATURE.to_le_bytes();
        s.avail_spare = 100;
        s.spare_thresh = 10;
        let units = |b: u64| b.div_ceil(512_000);
        let st = &self.stats;
        s.data_units_read[0] = units(st.bytes_read.load(Ordering::Relaxed)).into();
        s.data_units_written[0] = units(st.bytes_written.load(Ordering::Relaxed)).into();
        s.host_reads[0] = st.host_reads.load(Ordering::Relaxed).into();
        s.host_writes[0] = st.host_writes.load(Ordering::Relaxed).into();
        s.power_cycles[0] = 1.into();
        s.num_err_log_entries[0] = lock(&self.events).error_count.into();
        s
    }
}

/// The Commands Supported and Effects page for a command set.
pub(crate) fn effects(csi: u8) -> Result<EffectsLog, Status> {
    let mut e = EffectsLog::new_zeroed();
    for opc in admin_opc::SUPPORTED {
        e.acs[usize::from(opc)] = CSUPP.into();
    }
    let io: &[u8] = match csi {
        CSI_NVM => &io_opc::NVM,
        CSI_ZNS => &[
            io_opc::FLUSH,
            io_opc::WRITE,
            io_opc::READ,
            io_opc::WRITE_ZEROES,
            io_opc::ZONE_MGMT_SEND,
            io_opc::ZONE_MGMT_RECV,
            io_opc::ZONE_APPEND,
        ],
        _ => {
            tracing::debug!(
                csi,
                reason = "effects log for an unsupported command set",
                "rejected"
            );
            return Err(Status::INVALID_FIELD);
        }
    };
    for &opc in io {
        let changes = matches!(
            opc,
            io_opc::WRITE | io_opc::WRITE_ZEROES | io_opc::ZONE_APPEND | io_opc::ZONE_MGMT_SEND
        );
        e.iocs[usize::from(opc)] = (CSUPP | if changes { LBCC } else { 0 }).into();
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zns_effects_list_append_and_zone_mgmt() {
        let e = effects(CSI_ZNS).unwrap();
        for opc in [0x79usize, 0x7A, 0x7D, 0x01, 0x02] {
            assert_eq!(e.iocs[opc].get() & CSUPP, CSUPP, "opcode {opc:#x}");
        }
        assert_eq!(e.iocs[0x7D].get(), CSUPP | LBCC);
        assert_eq!(e.acs[0x06].get(), CSUPP);
        assert_eq!(e.acs[0x80].get(), 0);
    }

    #[test]
    fn nvm_effects_exclude_zns() {
        let e = effects(CSI_NVM).unwrap();
        assert_eq!(e.iocs[0x7D].get(), 0);
        assert_eq!(e.iocs[0x02].get(), CSUPP);
        assert_eq!(effects(1).err(), Some(Status::INVALID_FIELD));
    }
}
