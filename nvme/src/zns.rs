//! Zoned namespace: the geometry in LBAs (and the checks that make a Linux host accept it),
//! Zone Management Send and Zone Management Receive (NVMe ZNS 1.1 sections 3.4.2, 3.4.3).

use crate::cmd::{ZoneRecv, ZoneSend};
use crate::ctrl::Ctrl;
use crate::prp;
use crate::status::Status;
use crate::wire::{ZoneDescriptor, ZoneReportHeader};
use crate::{ControllerConfig, GeometryError, HostEnv};
use qcow2zoned::{ImageInfo, ZoneAction, ZoneInfo, ZoneState};
use zerocopy::{FromZeros, IntoBytes};

/// Zone Type: Sequential Write Required.
pub const ZT_SEQ_WRITE_REQUIRED: u8 = 0x2;

/// Namespace geometry in LBAs, derived once from the image and the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsGeom {
    /// Bytes per LBA.
    pub lba_size: u64,
    /// log2(lba_size).
    pub lba_shift: u32,
    /// Namespace size in LBAs.
    pub nsze: u64,
    /// Zone size in LBAs (power of two).
    pub zone_lbas: u64,
    /// log2(zone_lbas).
    pub zone_shift: u32,
    /// Zone capacity in LBAs.
    pub zcap_lbas: u64,
    /// Number of zones.
    pub nr_zones: u32,
    /// Max open zones (0 = unlimited).
    pub max_open: u32,
    /// Max active zones (0 = unlimited).
    pub max_active: u32,
    /// Zone descriptor extension size in bytes.
    pub zdes_bytes: u32,
    /// MDTS field value (0 = unlimited).
    pub mdts: u8,
    /// Largest data transfer in bytes (None = unlimited).
    pub max_xfer: Option<u64>,
    /// ZASL field value.
    pub zasl: u8,
    /// Largest Zone Append payload in bytes.
    pub max_append: u64,
}

impl NsGeom {
    /// Derive and check the geometry; the error says why Linux could not use the namespace.
    pub fn new(info: &ImageInfo, cfg: &ControllerConfig) -> Result<NsGeom, GeometryError> {
        let err = |m: String| Err(GeometryError(m));
        let lba = u64::from(cfg.lba_size);
        if lba != 512 && lba != 4096 {
            return err(format!("lba_size {} must be 512 or 4096", cfg.lba_size));
        }
        let g = &info.geometry;
        if g.conventional_zones != 0 {
            return err(format!(
                "{} conventional zones: Linux's NVMe driver only accepts sequential-write-required zones",
                g.conventional_zones
            ));
        }
        if g.nr_zones == 0 {
            return err("the image has no zones".into());
        }
        if g.zone_size == 0 || !g.zone_size.is_multiple_of(lba) {
            return err(format!(
                "zone size {} is not a multiple of the LBA size {lba}",
                g.zone_size
            ));
        }
        let zone_lbas = g.zone_size / lba;
        if !zone_lbas.is_power_of_two() {
            return err(format!("zone size {zone_lbas} LBAs is not a power of two"));
        }
        if g.zone_capacity == 0
            || !g.zone_capacity.is_multiple_of(lba)
            || g.zone_capacity > g.zone_size
        {
            return err(format!(
                "zone capacity {} is not a non-zero multiple of the LBA size {lba} within the zone",
                g.zone_capacity
            ));
        }
        if !info.size.is_multiple_of(lba) {
            return err(format!(
                "image size {} is not a multiple of the LBA size {lba}",
                info.size
            ));
        }
        if info.size != u64::from(g.nr_zones) * g.zone_size {
            return err(format!(
                "image size {} is not a whole number of {}-byte zones",
                info.size, g.zone_size
            ));
        }
        if !info.zd_extension_size.is_multiple_of(64) || info.zd_extension_size / 64 > 255 {
            return err(format!(
                "zone descriptor extension size {} is not a multiple of 64 up to 16320",
                info.zd_extension_size
            ));
        }
        if cfg.mdts > 15 {
            return err(format!("mdts {} is beyond 15 (128 MiB)", cfg.mdts));
        }
        let max_xfer = (cfg.mdts != 0).then(|| 4096u64 << cfg.mdts);
        if max_xfer.is_some_and(|m| m < lba) {
            return err(format!("mdts {} is smaller than one LBA", cfg.mdts));
        }
        let limit = u64::from(info.max_append_bytes).min(max_xfer.unwrap_or(u64::MAX));
        if limit < 8192 {
            return err(format!(
                "max append {} bytes: ZASL must describe at least 8 KiB (ZASL 0 would mean MDTS)",
                info.max_append_bytes
            ));
        }
        let pages = limit / 4096;
        let zasl = 63 - pages.leading_zeros();
        let zasl_u8 = u8::try_from(zasl).unwrap_or(u8::MAX);
        let max_append = 4096u64 << zasl;
        if max_append < lba {
            return err(format!(
                "max append {max_append} bytes is smaller than one LBA"
            ));
        }
        Ok(NsGeom {
            lba_size: lba,
            lba_shift: lba.trailing_zeros(),
            nsze: info.size / lba,
            zone_lbas,
            zone_shift: zone_lbas.trailing_zeros(),
            zcap_lbas: g.zone_capacity / lba,
            nr_zones: g.nr_zones,
            max_open: g.max_open,
            max_active: g.max_active,
            zdes_bytes: info.zd_extension_size,
            mdts: cfg.mdts,
            max_xfer,
            zasl: zasl_u8,
            max_append,
        })
    }

    /// Zone index of an LBA.
    pub fn zone_of(&self, lba: u64) -> u32 {
        u32::try_from(lba >> self.zone_shift).unwrap_or(u32::MAX)
    }

    /// MOR field: max open resources, 0's based; FFFFFFFFh = unlimited. Never above MAR.
    pub fn mor(&self) -> u32 {
        match (self.max_open, self.max_active) {
            (0, 0) => u32::MAX,
            (0, a) => a - 1,
            (o, 0) => o - 1,
            (o, a) => o.min(a) - 1,
        }
    }

    /// MAR field: max active resources, 0's based; FFFFFFFFh = unlimited.
    pub fn mar(&self) -> u32 {
        if self.max_active == 0 {
            u32::MAX
        } else {
            self.max_active - 1
        }
    }

    /// Build the descriptor of a zone.
    pub fn descriptor(&self, z: &ZoneInfo) -> ZoneDescriptor {
        let wp_valid = !matches!(
            z.state,
            ZoneState::Full | ZoneState::ReadOnly | ZoneState::Offline
        );
        ZoneDescriptor {
            zt: ZT_SEQ_WRITE_REQUIRED,
            zs: (z.state as u8) << 4,
            za: z.attrs.bits(),
            zcap: (z.capacity >> self.lba_shift).into(),
            zslba: (z.start >> self.lba_shift).into(),
            wp: if wp_valid {
                (z.wp >> self.lba_shift).into()
            } else {
                u64::MAX.into()
            },
            ..Default::default()
        }
    }
}

/// Zone Send Action values.
pub mod zsa {
    /// Close Zone.
    pub const CLOSE: u8 = 0x01;
    /// Finish Zone.
    pub const FINISH: u8 = 0x02;
    /// Open Zone.
    pub const OPEN: u8 = 0x03;
    /// Reset Zone.
    pub const RESET: u8 = 0x04;
    /// Offline Zone.
    pub const OFFLINE: u8 = 0x05;
    /// Set Zone Descriptor Extension.
    pub const SET_ZDE: u8 = 0x10;
}

/// Whether a zone passes a Zone Receive Action Specific Field filter (ZRASF).
fn filter_matches(zrasf: u8, state: ZoneState) -> bool {
    match zrasf {
        0 => true,
        1 => state == ZoneState::Empty,
        2 => state == ZoneState::ImplicitlyOpened,
        3 => state == ZoneState::ExplicitlyOpened,
        4 => state == ZoneState::Closed,
        5 => state == ZoneState::Full,
        6 => state == ZoneState::ReadOnly,
        7 => state == ZoneState::Offline,
        _ => false,
    }
}

/// Zones fetched from the image per snapshot while building a report.
const REPORT_CHUNK: u32 = 1024;

impl Ctrl {
    /// Zone Management Send.
    pub(crate) fn zone_send(&self, env: &HostEnv<'_>, z: ZoneSend) -> Result<(), Status> {
        if z.zsaso {
            tracing::debug!(
                zsa = z.zsa,
                reason = "ZRWA not supported (ZSASO set)",
                "rejected"
            );
            return Err(Status::INVALID_FIELD);
        }
        let action = match z.zsa {
            zsa::CLOSE => ZoneAction::Close,
            zsa::FINISH => ZoneAction::Finish,
            zsa::OPEN => ZoneAction::Open,
            zsa::RESET => ZoneAction::Reset,
            zsa::OFFLINE => ZoneAction::Offline,
            zsa::SET_ZDE => return self.set_zde(env, z),
            other => {
                tracing::debug!(
                    zsa = other,
                    reason = "unsupported zone send action",
                    "rejected"
                );
                return Err(Status::INVALID_FIELD);
            }
        };
        let zone = if z.select_all {
            None
        } else {
            Some(self.zone_start_index(z.slba)?)
        };
        self.ns.zone_action(zone, action).map_err(|e| {
            let st = Status::from(&e);
            tracing::debug!(slba = z.slba, zsa = z.zsa, select_all = z.select_all, %st, reason = %e, "zone send refused");
            st
        })
    }

    /// Index of the zone starting at `slba` (LBA Out of Range / Invalid Field otherwise).
    fn zone_start_index(&self, slba: u64) -> Result<u32, Status> {
        if slba >= self.geo.nsze {
            return Err(Status::LBA_RANGE);
        }
        if slba & (self.geo.zone_lbas - 1) != 0 {
            tracing::debug!(slba, reason = "SLBA is not a zone start", "rejected");
            return Err(Status::INVALID_FIELD);
        }
        Ok(self.geo.zone_of(slba))
    }

    fn set_zde(&self, env: &HostEnv<'_>, z: ZoneSend) -> Result<(), Status> {
        if z.select_all || self.geo.zdes_bytes == 0 {
            tracing::debug!(
                reason = "set zone descriptor extension with select all or without ZDES",
                "rejected"
            );
            return Err(Status::INVALID_FIELD);
        }
        let idx = self.zone_start_index(z.slba)?;
        let len = u64::from(self.geo.zdes_bytes);
        let ranges = prp::map(env.mem, z.dptr, len, self.page())?;
        let mut data = vec![0u8; self.geo.zdes_bytes as usize];
        prp::copy_from_guest(env.mem, &ranges, &mut data)?;
        self.ns.set_zde(idx, &data).map_err(|e| Status::from(&e))
    }

    /// Zone Management Receive.
    pub(crate) fn zone_recv(&self, env: &HostEnv<'_>, r: ZoneRecv) -> Result<(), Status> {
        let extended = match r.zra {
            0 => false,
            1 if self.geo.zdes_bytes > 0 => true,
            _ => {
                tracing::debug!(
                    zra = r.zra,
                    reason = "unsupported zone receive action",
                    "rejected"
                );
                return Err(Status::INVALID_FIELD);
            }
        };
        if r.zrasf > 7 {
            tracing::debug!(
                zrasf = r.zrasf,
                reason = "unsupported reporting option",
                "rejected"
            );
            return Err(Status::INVALID_FIELD);
        }
        if r.len < 64 || self.geo.max_xfer.is_some_and(|m| r.len > m) {
            tracing::debug!(
                len = r.len,
                reason = "report buffer below 64 bytes or above MDTS",
                "rejected"
            );
            return Err(Status::INVALID_FIELD);
        }
        if r.slba >= self.geo.nsze {
            return Err(Status::LBA_RANGE);
        }
        // Never build (or transfer) more than the zones from SLBA to the end can fill.
        let dsize = 64
            + if extended {
                u64::from(self.geo.zdes_bytes)
            } else {
                0
            };
        let zones_left = u64::from(self.geo.nr_zones - self.geo.zone_of(r.slba));
        let len = r.len.min(64 + zones_left * dsize);
        let ranges = prp::map(env.mem, r.dptr, len, self.page())?;
        let buf = self.build_report(r.slba, r.zrasf, r.partial, len, extended);
        prp::copy_to_guest(env.mem, &ranges, &buf)
    }

    /// Build a report buffer of `len` bytes starting with the zone holding `slba`.
    fn build_report(
        &self,
        slba: u64,
        zrasf: u8,
        partial: bool,
        len: u64,
        extended: bool,
    ) -> Vec<u8> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let ext = if extended {
            self.geo.zdes_bytes as usize
        } else {
            0
        };
        let dsize = 64 + ext;
        let capacity = (len - 64) / dsize;
        let mut buf = vec![0u8; len];
        let mut returned = 0usize;
        let mut matching = 0u64;
        let mut idx = self.geo.zone_of(slba);
        'outer: while idx < self.geo.nr_zones {
            let zones = self.ns.zones(idx, REPORT_CHUNK);
            if zones.is_empty() {
                break;
            }
            idx += u32::try_from(zones.len()).unwrap_or(REPORT_CHUNK);
            for z in &zones {
                if !filter_matches(zrasf, z.state) {
                    continue;
                }
                matching += 1;
                if returned < capacity {
                    let at = 64 + returned * dsize;
                    buf[at..at + 64].copy_from_slice(self.geo.descriptor(z).as_bytes());
                    if ext > 0 && z.attrs.contains(qcow2zoned::ZoneAttrs::ZDEV) {
                        let data = self.ns.zde(z.index);
                        let n = data.len().min(ext);
                        buf[at + 64..at + 64 + n].copy_from_slice(&data[..n]);
                    }
                    returned += 1;
                } else if partial {
                    break 'outer;
                }
            }
        }
        let nr = if partial { returned as u64 } else { matching };
        let mut hdr = ZoneReportHeader::new_zeroed();
        hdr.nr_zones = nr.into();
        buf[..64].copy_from_slice(hdr.as_bytes());
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qcow2zoned::{ZoneAttrs, ZoneGeometry, ZoneType};

    fn info(size: u64, zone: u64, cap: u64, conv: u32) -> ImageInfo {
        ImageInfo {
            size,
            cluster_size: 65536,
            geometry: ZoneGeometry {
                zone_size: zone,
                zone_capacity: cap,
                nr_zones: u32::try_from(size / zone).unwrap(),
                conventional_zones: conv,
                max_open: 0,
                max_active: 0,
            },
            max_append_bytes: 65536,
            zd_extension_size: 64,
        }
    }

    fn cfg(lba: u32) -> ControllerConfig {
        ControllerConfig {
            lba_size: lba,
            ..Default::default()
        }
    }

    #[test]
    fn geometry_accepts_linux_compatible() {
        let g = NsGeom::new(&info(64 << 20, 4 << 20, 3 << 20, 0), &cfg(4096)).unwrap();
        assert_eq!(g.nsze, (64 << 20) / 4096);
        assert_eq!(g.zone_lbas, 1024);
        assert_eq!(g.zcap_lbas, 768);
        assert_eq!(g.zasl, 4, "64 KiB = 16 pages");
        assert_eq!(g.max_append, 65536);
        assert_eq!(g.zone_of(1023), 0);
        assert_eq!(g.zone_of(1024), 1);
        let g = NsGeom::new(&info(64 << 20, 4 << 20, 4 << 20, 0), &cfg(512)).unwrap();
        assert_eq!(g.zone_lbas, 8192);
        assert_eq!(g.lba_shift, 9);
    }

    #[test]
    fn geometry_refusals_say_why() {
        let e = NsGeom::new(&info(64 << 20, 4 << 20, 4 << 20, 1), &cfg(4096)).unwrap_err();
        assert!(e.to_string().contains("conventional"), "{e}");
        let e = NsGeom::new(&info(64 << 20, 4 << 20, 4 << 20, 0), &cfg(1024)).unwrap_err();
        assert!(e.to_string().contains("512 or 4096"), "{e}");
        let e = NsGeom::new(&info(64 << 20, 4 << 20, (3 << 20) + 512, 0), &cfg(4096)).unwrap_err();
        assert!(e.to_string().contains("capacity"), "{e}");
        let mut i = info(64 << 20, 4 << 20, 4 << 20, 0);
        i.size += 4096;
        let e = NsGeom::new(&i, &cfg(4096)).unwrap_err();
        assert!(e.to_string().contains("whole number"), "{e}");
        // 2 KiB zones at 4 KiB LBAs: not a multiple.
        let mut i = info(64 << 20, 4 << 20, 4 << 20, 0);
        i.geometry.zone_size = 2048;
        i.geometry.zone_capacity = 2048;
        let e = NsGeom::new(&i, &cfg(4096)).unwrap_err();
        assert!(e.to_string().contains("multiple of the LBA size"), "{e}");
        let mut i = info(64 << 20, 4 << 20, 4 << 20, 0);
        i.max_append_bytes = 4096;
        let e = NsGeom::new(&i, &cfg(4096)).unwrap_err();
        assert!(e.to_string().contains("ZASL"), "{e}");
    }

    #[test]
    fn zasl_is_clamped_by_mdts_and_rounded_down() {
        let mut i = info(64 << 20, 4 << 20, 4 << 20, 0);
        i.max_append_bytes = 100 * 1024;
        let g = NsGeom::new(&i, &cfg(4096)).unwrap();
        assert_eq!((g.zasl, g.max_append), (4, 65536));
        i.max_append_bytes = 4 << 20;
        let g = NsGeom::new(
            &i,
            &ControllerConfig {
                mdts: 5,
                ..cfg(4096)
            },
        )
        .unwrap();
        assert_eq!(
            (g.zasl, g.max_append, g.max_xfer),
            (5, 128 << 10, Some(128 << 10))
        );
    }

    #[test]
    fn mor_mar_fields() {
        let mut g = NsGeom::new(&info(64 << 20, 4 << 20, 4 << 20, 0), &cfg(4096)).unwrap();
        assert_eq!((g.mor(), g.mar()), (u32::MAX, u32::MAX));
        g.max_open = 4;
        g.max_active = 6;
        assert_eq!((g.mor(), g.mar()), (3, 5));
        g.max_open = 0;
        assert_eq!((g.mor(), g.mar()), (5, 5));
    }

    #[test]
    fn descriptor_encoding() {
        let g = NsGeom::new(&info(64 << 20, 4 << 20, 3 << 20, 0), &cfg(4096)).unwrap();
        let z = ZoneInfo {
            index: 2,
            start: 8 << 20,
            size: 4 << 20,
            capacity: 3 << 20,
            wp: (8 << 20) + 8192,
            ztype: ZoneType::SequentialWriteRequired,
            state: ZoneState::ImplicitlyOpened,
            attrs: ZoneAttrs::ZDEV,
        };
        let d = g.descriptor(&z);
        assert_eq!((d.zt, d.zs, d.za), (2, 0x20, 0x80));
        assert_eq!((d.zcap.get(), d.zslba.get(), d.wp.get()), (768, 2048, 2050));
        let full = ZoneInfo {
            state: ZoneState::Full,
            ..z
        };
        assert_eq!(g.descriptor(&full).wp.get(), u64::MAX);
        assert_eq!(g.descriptor(&full).zs, 0xE0);
    }

    #[test]
    fn filters() {
        assert!(filter_matches(0, ZoneState::Offline));
        assert!(filter_matches(1, ZoneState::Empty));
        assert!(!filter_matches(1, ZoneState::Closed));
        assert!(filter_matches(5, ZoneState::Full));
        assert!(filter_matches(6, ZoneState::ReadOnly));
        assert!(filter_matches(7, ZoneState::Offline));
        assert!(!filter_matches(8, ZoneState::Empty));
    }
}
