//! qcow2 v3 header, header extensions and the feature name table (all big-endian).
//!
//! `Header::parse` decodes cluster 0 into a validated domain value; `Header::serialize`
//! produces cluster 0 again, keeping unknown header bytes and unknown extensions verbatim.

use crate::image::{Error, ImgResult};
use zerocopy::byteorder::{BigEndian, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// "QFI\xfb".
pub const MAGIC: u32 = 0x5146_49fb;
/// Size of the header structure we know (v3 with compression_type and padding).
pub const HEADER_LEN: usize = 112;
/// Smallest v3 header.
pub const MIN_HEADER_LEN: usize = 104;

/// Smallest supported cluster_bits (512 B).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest supported cluster_bits (2 MiB).
pub const MAX_CLUSTER_BITS: u32 = 21;

/// Header extension: end of the list.
pub const EXT_END: u32 = 0;
/// Header extension: backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;
/// Header extension: feature name table.
pub const EXT_FEATURE_TABLE: u32 = 0x6803_F857;
/// Header extension: bitmaps.
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Header extension: full disk encryption header pointer.
pub const EXT_CRYPTO: u32 = 0x0537_BE77;
/// Header extension: external data file name.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;
/// Header extension: zoned format ("\0zbd").
pub const EXT_ZONED: u32 = 0x007A_6264;

/// Incompatible feature bits.
pub mod incompat {
    /// Refcounts may be stale (lazy refcounts).
    pub const DIRTY: u64 = 1 << 0;
    /// Image marked corrupt.
    pub const CORRUPT: u64 = 1 << 1;
    /// External data file.
    pub const DATA_FILE: u64 = 1 << 2;
    /// Compression type field in use.
    pub const COMPRESSION: u64 = 1 << 3;
    /// Extended L2 entries.
    pub const EXTL2: u64 = 1 << 4;
    /// Zoned format.
    pub const ZONED: u64 = 1 << 5;
}

/// Feature name table entry types.
const FEAT_INCOMPAT: u8 = 0;
const FEAT_COMPAT: u8 = 1;
const FEAT_AUTOCLEAR: u8 = 2;

/// The feature names we write (same spelling as QEMU, plus the zoned bit).
const FEATURE_NAMES: &[(u8, u8, &str)] = &[
    (FEAT_INCOMPAT, 0, "dirty bit"),
    (FEAT_INCOMPAT, 1, "corrupt bit"),
    (FEAT_INCOMPAT, 2, "external data file"),
    (FEAT_INCOMPAT, 3, "compression type"),
    (FEAT_INCOMPAT, 4, "extended L2 entries"),
    (FEAT_INCOMPAT, 5, "zoned format"),
    (FEAT_COMPAT, 0, "lazy refcounts"),
    (FEAT_AUTOCLEAR, 0, "bitmaps"),
    (FEAT_AUTOCLEAR, 1, "raw external data"),
];

/// The fixed part of the v3 header as laid out on disk (QCowHeader).
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct RawHeader {
    /// 0-3: "QFI\xfb".
    pub magic: U32<BigEndian>,
    /// 4-7: format version (3).
    pub version: U32<BigEndian>,
    /// 8-15: backing file name offset, 0 = none.
    pub backing_file_offset: U64<BigEndian>,
    /// 16-19: backing file name length.
    pub backing_file_size: U32<BigEndian>,
    /// 20-23: log2 of the cluster size.
    pub cluster_bits: U32<BigEndian>,
    /// 24-31: virtual size in bytes.
    pub size: U64<BigEndian>,
    /// 32-35: encryption method.
    pub crypt_method: U32<BigEndian>,
    /// 36-39: entries in the active L1 table.
    pub l1_size: U32<BigEndian>,
    /// 40-47: L1 table offset.
    pub l1_table_offset: U64<BigEndian>,
    /// 48-55: refcount table offset.
    pub refcount_table_offset: U64<BigEndian>,
    /// 56-59: refcount table length in clusters.
    pub refcount_table_clusters: U32<BigEndian>,
    /// 60-63: number of internal snapshots.
    pub nb_snapshots: U32<BigEndian>,
    /// 64-71: snapshot table offset.
    pub snapshots_offset: U64<BigEndian>,
    /// 72-79: incompatible feature bits.
    pub incompatible_features: U64<BigEndian>,
    /// 80-87: compatible feature bits.
    pub compatible_features: U64<BigEndian>,
    /// 88-95: autoclear feature bits.
    pub autoclear_features: U64<BigEndian>,
    /// 96-99: refcount width is `1 << refcount_order` bits.
    pub refcount_order: U32<BigEndian>,
    /// 100-103: header length in bytes.
    pub header_length: U32<BigEndian>,
    /// 104: compression type.
    pub compression_type: u8,
    /// 105-111: padding.
    pub padding: [u8; 7],
}
const _: () = assert!(std::mem::size_of::<RawHeader>() == HEADER_LEN);

/// Zoned format extension data (v8 layout; offsets inside the extension data).
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct RawZonedExt {
    /// 0: zone model, 1 = host-managed.
    pub zoned: u8,
    /// 1-3: reserved, zero.
    pub reserved: [u8; 3],
    /// 4-11: bytes per zone.
    pub zone_size: U64<BigEndian>,
    /// 12-19: writable bytes per zone.
    pub zone_capacity: U64<BigEndian>,
    /// 20-23: conventional zones (the first ones).
    pub conventional_zones: U32<BigEndian>,
    /// 24-27: total zones.
    pub nr_zones: U32<BigEndian>,
    /// 28-31: max active zones, 0 = no limit.
    pub max_active_zones: U32<BigEndian>,
    /// 32-35: max open zones, 0 = no limit.
    pub max_open_zones: U32<BigEndian>,
    /// 36-39: largest append payload in bytes.
    pub max_append_bytes: U32<BigEndian>,
    /// 40-47: bytes of zoned metadata.
    pub zonedmeta_size: U64<BigEndian>,
    /// 48-55: file offset of the zoned metadata.
    pub zonedmeta_offset: U64<BigEndian>,
}
/// Length of the v8 extension.
pub const ZONED_EXT_LEN: usize = 56;
/// Length of the extension carrying `zd_extension_size` at 56-59 (and 4 zero bytes).
pub const ZONED_EXT_LEN_ZDED: usize = 64;
const _: () = assert!(std::mem::size_of::<RawZonedExt>() == ZONED_EXT_LEN);

/// Decoded zoned extension (not yet validated against the geometry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZonedExt {
    /// Zone model byte.
    pub zoned: u8,
    /// Bytes per zone.
    pub zone_size: u64,
    /// Writable bytes per zone.
    pub zone_capacity: u64,
    /// Conventional zones.
    pub conventional_zones: u32,
    /// Total zones.
    pub nr_zones: u32,
    /// Max active zones.
    pub max_active_zones: u32,
    /// Max open zones.
    pub max_open_zones: u32,
    /// Largest append payload.
    pub max_append_bytes: u32,
    /// Bytes of zoned metadata.
    pub zonedmeta_size: u64,
    /// File offset of the zoned metadata.
    pub zonedmeta_offset: u64,
    /// Zone descriptor extension bytes per zone (0 = none).
    pub zd_extension_size: u32,
}

impl ZonedExt {
    /// Decode extension data; errors name the field.
    pub fn parse(data: &[u8]) -> ImgResult<ZonedExt> {
        let len = data.len();
        if len < ZONED_EXT_LEN || (len > ZONED_EXT_LEN && len < ZONED_EXT_LEN_ZDED) {
            return Err(Error::Format(format!(
                "zoned extension length {len} (expected {ZONED_EXT_LEN} or at least {ZONED_EXT_LEN_ZDED})"
            )));
        }
        let raw = RawZonedExt::read_from_bytes(&data[..ZONED_EXT_LEN])
            .map_err(|_| Error::Format("zoned extension truncated".into()))?;
        if raw.reserved != [0; 3] {
            return Err(Error::Format(format!(
                "zoned extension reserved bytes 1-3 {:02x?} (expected zero)",
                raw.reserved
            )));
        }
        let mut zdes = 0;
        if len >= ZONED_EXT_LEN_ZDED {
            zdes = u32::from_be_bytes([data[56], data[57], data[58], data[59]]);
            if let Some(pos) = data[60..].iter().position(|&b| b != 0) {
                return Err(Error::Format(format!(
                    "zoned extension byte {} is 0x{:02x} (bytes past 60 must be zero)",
                    60 + pos,
                    data[60 + pos]
                )));
            }
        }
        Ok(ZonedExt {
            zoned: raw.zoned,
            zone_size: raw.zone_size.get(),
            zone_capacity: raw.zone_capacity.get(),
            conventional_zones: raw.conventional_zones.get(),
            nr_zones: raw.nr_zones.get(),
            max_active_zones: raw.max_active_zones.get(),
            max_open_zones: raw.max_open_zones.get(),
            max_append_bytes: raw.max_append_bytes.get(),
            zonedmeta_size: raw.zonedmeta_size.get(),
            zonedmeta_offset: raw.zonedmeta_offset.get(),
            zd_extension_size: zdes,
        })
    }

    /// Encode: 56 bytes without ZDED, 64 with.
    pub fn to_bytes(&self) -> Vec<u8> {
        let raw = RawZonedExt {
            zoned: self.zoned,
            reserved: [0; 3],
            zone_size: self.zone_size.into(),
            zone_capacity: self.zone_capacity.into(),
            conventional_zones: self.conventional_zones.into(),
            nr_zones: self.nr_zones.into(),
            max_active_zones: self.max_active_zones.into(),
            max_open_zones: self.max_open_zones.into(),
            max_append_bytes: self.max_append_bytes.into(),
            zonedmeta_size: self.zonedmeta_size.into(),
            zonedmeta_offset: self.zonedmeta_offset.into(),
        };
        let mut v = raw.as_bytes().to_vec();
        if self.zd_extension_size != 0 {
            v.extend_from_slice(&self.zd_extension_size.to_be_bytes());
            v.extend_from_slice(&[0; 4]);
        }
        v
    }
}

/// One header extension kept as raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawExt {
    /// Extension type.
    pub kind: u32,
    /// Data (without padding).
    pub data: Vec<u8>,
}

/// Decoded, validated qcow2 v3 header.
#[derive(Debug, Clone)]
pub struct Header {
    /// Fixed fields as read (compression_type/padding zero when header_length is 104).
    pub raw: RawHeader,
    /// Header bytes past 112 that we do not know (kept verbatim).
    pub extra: Vec<u8>,
    /// Feature names read from the image: (type, bit) -> name.
    pub feature_names: Vec<(u8, u8, String)>,
    /// Zoned extension, if present.
    pub zoned: Option<ZonedExt>,
    /// Every other extension, in file order, kept verbatim.
    pub other_exts: Vec<RawExt>,
}

fn round8(v: usize) -> usize {
    (v + 7) & !7
}

impl Header {
    /// Cluster bits.
    pub fn cluster_bits(&self) -> u32 {
        self.raw.cluster_bits.get()
    }

    /// Name for an incompatible bit, from the image's table, else ours.
    fn incompat_name(&self, bit: u8) -> String {
        self.feature_names
            .iter()
            .find(|(t, b, _)| *t == FEAT_INCOMPAT && *b == bit)
            .map(|(_, _, n)| n.clone())
            .or_else(|| {
                FEATURE_NAMES
                    .iter()
                    .find(|(t, b, _)| *t == FEAT_INCOMPAT && *b == bit)
                    .map(|(_, _, n)| n.to_string())
            })
            .unwrap_or_else(|| format!("unknown incompatible feature bit {bit}"))
    }

    /// Parse cluster 0 (`buf` holds at least the whole cluster, or the whole file if
    /// shorter). Structural errors name the field and value. Does not judge feature bits:
    /// see `check_features`.
    pub fn parse(buf: &[u8]) -> ImgResult<Header> {
        if buf.len() < MIN_HEADER_LEN {
            return Err(Error::Format(format!(
                "file is {} bytes, too short for a qcow2 header ({MIN_HEADER_LEN} bytes)",
                buf.len()
            )));
        }
        let mut fixed = [0u8; HEADER_LEN];
        let n = buf.len().min(HEADER_LEN);
        fixed[..n].copy_from_slice(&buf[..n]);
        let mut raw = RawHeader::read_from_bytes(&fixed[..])
            .map_err(|_| Error::Format("header truncated".into()))?;
        let magic = raw.magic.get();
        if magic != MAGIC {
            return Err(Error::Format(format!(
                "magic 0x{magic:08x} (expected 0x{MAGIC:08x}, \"QFI\\xfb\")"
            )));
        }
        let version = raw.version.get();
        if version == 2 {
            return Err(Error::Unsupported(
                "qcow2 version 2 (compat=0.10); convert to version 3 (compat=1.1)".into(),
            ));
        }
        if version != 3 {
            return Err(Error::Format(format!("version {version} (expected 3)")));
        }
        let cb = raw.cluster_bits.get();
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cb) {
            return Err(Error::Format(format!(
                "cluster_bits {cb} out of range {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
            )));
        }
        let cs = 1usize << cb;
        let hl = raw.header_length.get() as usize;
        if hl < MIN_HEADER_LEN || !hl.is_multiple_of(8) || hl > cs {
            return Err(Error::Format(format!(
                "header_length {hl} (expected a multiple of 8 in {MIN_HEADER_LEN}..={cs})"
            )));
        }
        if buf.len() < hl {
            return Err(Error::Format(format!(
                "file is {} bytes, shorter than header_length {hl}",
                buf.len()
            )));
        }
        if hl < HEADER_LEN {
            raw.compression_type = 0;
            raw.padding = [0; 7];
        }
        let extra = if hl > HEADER_LEN {
            buf[HEADER_LEN..hl].to_vec()
        } else {
            Vec::new()
        };
        let ro = raw.refcount_order.get();
        if ro > 6 {
            return Err(Error::Format(format!(
                "refcount_order {ro} out of range 0..=6"
            )));
        }
        let bfo = raw.backing_file_offset.get();
        let ext_end = if bfo != 0 && bfo < cs as u64 {
            bfo as usize
        } else {
            cs
        }
        .min(buf.len());

        // Extension walk: bounded, 8-byte padded, stops at the end marker.
        let mut feature_names = Vec::new();
        let mut zoned = None;
        let mut other_exts: Vec<RawExt> = Vec::new();
        let mut off = hl;
        let mut seen_ft = false;
        loop {
            if off + 8 > ext_end {
                return Err(Error::Format(format!(
                    "header extension at byte {off} runs past the end of the header area ({ext_end})"
                )));
            }
            let kind = u32::from_be_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]);
            let len = u32::from_be_bytes([buf[off + 4], buf[off + 5], buf[off + 6], buf[off + 7]])
                as usize;
            if kind == EXT_END {
                break;
            }
            let data_start = off + 8;
            if len > ext_end - data_start {
                return Err(Error::Format(format!(
                    "header extension 0x{kind:08x} length {len} runs past the end of the header area ({ext_end})"
                )));
            }
            let data = &buf[data_start..data_start + len];
            match kind {
                EXT_FEATURE_TABLE => {
                    if seen_ft {
                        return Err(Error::Format("feature name table appears twice".into()));
                    }
                    seen_ft = true;
                    for e in data.chunks_exact(48) {
                        let name_bytes = &e[2..48];
                        let end = name_bytes.iter().position(|&b| b == 0).unwrap_or(46);
                        let name = String::from_utf8_lossy(&name_bytes[..end]).into_owned();
                        feature_names.push((e[0], e[1], name));
                    }
                }
                EXT_ZONED => {
                    if zoned.is_some() {
                        return Err(Error::Format("zoned extension appears twice".into()));
                    }
                    zoned = Some(ZonedExt::parse(data)?);
                }
                _ => {
                    if other_exts.iter().any(|e| e.kind == kind) {
                        return Err(Error::Format(format!(
                            "header extension 0x{kind:08x} appears twice"
                        )));
                    }
                    other_exts.push(RawExt {
                        kind,
                        data: data.to_vec(),
                    })
                }
            }
            off = data_start + round8(len);
        }
        Ok(Header {
            raw,
            extra,
            feature_names,
            zoned,
            other_exts,
        })
    }

    /// Refuse features we do not implement; `zoned_ok` says whether bit 5 is acceptable.
    pub fn check_features(&self, zoned_ok: bool, read_only: bool) -> ImgResult<()> {
        let r = &self.raw;
        let inc = r.incompatible_features.get();
        let known = incompat::DIRTY
            | incompat::CORRUPT
            | incompat::DATA_FILE
            | incompat::COMPRESSION
            | incompat::EXTL2
            | incompat::ZONED;
        let unknown = inc & !known;
        if unknown != 0 {
            let names: Vec<String> = (0..64u8)
                .filter(|b| unknown & (1u64 << b) != 0)
                .map(|b| self.incompat_name(b))
                .collect();
            return Err(Error::Unsupported(format!(
                "incompatible_features 0x{inc:x}: {}",
                names.join(", ")
            )));
        }
        if r.backing_file_offset.get() != 0 {
            return Err(Error::Unsupported(format!(
                "backing file (backing_file_offset {})",
                r.backing_file_offset.get()
            )));
        }
        if r.crypt_method.get() != 0 {
            return Err(Error::Unsupported(format!(
                "encryption (crypt_method {})",
                r.crypt_method.get()
            )));
        }
        if r.nb_snapshots.get() != 0 {
            return Err(Error::Unsupported(format!(
                "internal snapshots (nb_snapshots {})",
                r.nb_snapshots.get()
            )));
        }
        if inc & incompat::DATA_FILE != 0 {
            return Err(Error::Unsupported(
                "external data file (incompatible bit 2)".into(),
            ));
        }
        if inc & incompat::COMPRESSION != 0 || r.compression_type != 0 {
            return Err(Error::Unsupported(format!(
                "compression type {} (incompatible bit 3)",
                r.compression_type
            )));
        }
        if inc & incompat::EXTL2 != 0 {
            return Err(Error::Unsupported(
                "extended L2 entries (incompatible bit 4)".into(),
            ));
        }
        if inc & incompat::DIRTY != 0 {
            return Err(Error::Unsupported(
                "dirty bit set (lazy refcounts may be stale); repair with `qemu-img check -r all` first"
                    .into(),
            ));
        }
        if inc & incompat::CORRUPT != 0 && !read_only {
            return Err(Error::Unsupported(
                "corrupt bit set; the image can only be opened read-only".into(),
            ));
        }
        let zoned_bit = inc & incompat::ZONED != 0;
        if zoned_bit && self.zoned.is_none() {
            return Err(Error::Format(
                "incompatible bit 5 (zoned format) is set but the zoned extension 0x007a6264 is missing"
                    .into(),
            ));
        }
        if !zoned_bit && self.zoned.is_some() {
            return Err(Error::Format(
                "zoned extension 0x007a6264 present but incompatible bit 5 (zoned format) is clear"
                    .into(),
            ));
        }
        if zoned_bit && !zoned_ok {
            return Err(Error::Unsupported(
                "zoned format (incompatible bit 5): open it as a zoned image".into(),
            ));
        }
        if self
            .other_exts
            .iter()
            .any(|e| e.kind == EXT_DATA_FILE || e.kind == EXT_CRYPTO)
        {
            return Err(Error::Unsupported(
                "external data file or encryption header extension present".into(),
            ));
        }
        Ok(())
    }

    /// Build cluster 0 bytes (`cluster_size` long). Writes our feature name table when it
    /// fits (the full one, else only the zoned entry, else none).
    pub fn serialize(&self, cluster_size: usize) -> ImgResult<Vec<u8>> {
        let full: Vec<(u8, u8, &str)> = FEATURE_NAMES.to_vec();
        let zoned_only: Vec<(u8, u8, &str)> = FEATURE_NAMES
            .iter()
            .copied()
            .filter(|(t, b, _)| *t == FEAT_INCOMPAT && *b == 5)
            .collect();
        for table in [Some(full), Some(zoned_only), None] {
            if let Some(v) = self.serialize_with(cluster_size, table.as_deref()) {
                return Ok(v);
            }
        }
        Err(Error::Format(format!(
            "header and extensions do not fit in one {cluster_size}-byte cluster"
        )))
    }

    fn serialize_with(&self, cs: usize, table: Option<&[(u8, u8, &str)]>) -> Option<Vec<u8>> {
        let mut raw = self.raw;
        let hl = HEADER_LEN + self.extra.len();
        raw.header_length = u32::try_from(hl).ok()?.into();
        let mut v = Vec::with_capacity(cs);
        v.extend_from_slice(raw.as_bytes());
        v.extend_from_slice(&self.extra);
        let push = |v: &mut Vec<u8>, kind: u32, data: &[u8]| {
            v.extend_from_slice(&kind.to_be_bytes());
            v.extend_from_slice(&(data.len() as u32).to_be_bytes());
            v.extend_from_slice(data);
            v.resize(round8(v.len()), 0);
        };
        if let Some(t) = table {
            let mut d = Vec::with_capacity(48 * t.len());
            for (ty, bit, name) in t {
                let mut e = [0u8; 48];
                e[0] = *ty;
                e[1] = *bit;
                e[2..2 + name.len()].copy_from_slice(name.as_bytes());
                d.extend_from_slice(&e);
            }
            push(&mut v, EXT_FEATURE_TABLE, &d);
        }
        if let Some(z) = &self.zoned {
            push(&mut v, EXT_ZONED, &z.to_bytes());
        }
        for e in &self.other_exts {
            push(&mut v, e.kind, &e.data);
        }
        v.extend_from_slice(&[0u8; 8]);
        if v.len() > cs {
            return None;
        }
        v.resize(cs, 0);
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        let raw = RawHeader {
            magic: MAGIC.into(),
            version: 3.into(),
            backing_file_offset: 0.into(),
            backing_file_size: 0.into(),
            cluster_bits: 16.into(),
            size: (1u64 << 30).into(),
            crypt_method: 0.into(),
            l1_size: 2.into(),
            l1_table_offset: 0x30000.into(),
            refcount_table_offset: 0x10000.into(),
            refcount_table_clusters: 1.into(),
            nb_snapshots: 0.into(),
            snapshots_offset: 0.into(),
            incompatible_features: incompat::ZONED.into(),
            compatible_features: 0.into(),
            autoclear_features: 0.into(),
            refcount_order: 4.into(),
            header_length: 112.into(),
            compression_type: 0,
            padding: [0; 7],
        };
        Header {
            raw,
            extra: vec![],
            feature_names: vec![],
            zoned: Some(ZonedExt {
                zoned: 1,
                zone_size: 0x400_0000,
                zone_capacity: 0x400_0000,
                conventional_zones: 0,
                nr_zones: 12,
                max_active_zones: 8,
                max_open_zones: 6,
                max_append_bytes: 4096,
                zonedmeta_size: 96,
                zonedmeta_offset: 0x30000,
                zd_extension_size: 0,
            }),
            other_exts: vec![RawExt {
                kind: 0x1234_5678,
                data: vec![1, 2, 3],
            }],
        }
    }

    #[test]
    fn zoned_extension_matches_the_worked_example() {
        let z = sample().zoned.unwrap();
        let b = z.to_bytes();
        let expect: Vec<u8> = [
            &[0x01, 0, 0, 0][..],
            &[0, 0, 0, 0, 0x04, 0, 0, 0],
            &[0, 0, 0, 0, 0x04, 0, 0, 0],
            &[0, 0, 0, 0, 0, 0, 0, 0x0c],
            &[0, 0, 0, 8, 0, 0, 0, 6, 0, 0, 0x10, 0],
            &[0, 0, 0, 0, 0, 0, 0, 0x60],
            &[0, 0, 0, 0, 0, 0x03, 0, 0],
        ]
        .concat();
        assert_eq!(b, expect);
        assert_eq!(ZonedExt::parse(&b).unwrap(), z);
    }

    #[test]
    fn zded_size_sits_at_bytes_56_to_59() {
        let mut z = sample().zoned.unwrap();
        z.zd_extension_size = 128;
        let b = z.to_bytes();
        assert_eq!(b.len(), 64);
        assert_eq!(&b[56..64], &[0, 0, 0, 128, 0, 0, 0, 0]);
        assert_eq!(ZonedExt::parse(&b).unwrap(), z);
        let mut bad = b.clone();
        bad[62] = 1;
        let e = ZonedExt::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("byte 62"), "{e}");
        let e = ZonedExt::parse(&b[..60]).unwrap_err().to_string();
        assert!(e.contains("zoned extension length 60"), "{e}");
    }

    #[test]
    fn header_round_trip_keeps_unknown_extensions_and_names_bit_5() {
        let h = sample();
        let c0 = h.serialize(65536).unwrap();
        assert_eq!(&c0[72..80], &[0, 0, 0, 0, 0, 0, 0, 0x20]);
        let p = Header::parse(&c0).unwrap();
        assert_eq!(p.zoned, h.zoned);
        assert_eq!(p.other_exts, h.other_exts);
        assert!(p
            .feature_names
            .iter()
            .any(|(t, b, n)| *t == 0 && *b == 5 && n == "zoned format"));
        assert_eq!(p.serialize(65536).unwrap(), c0);
    }

    #[test]
    fn small_clusters_keep_the_zoned_feature_name() {
        let h = sample();
        let c0 = h.serialize(512).unwrap();
        let p = Header::parse(&c0).unwrap();
        assert_eq!(p.feature_names.len(), 1);
        assert_eq!(p.feature_names[0].2, "zoned format");
    }

    #[test]
    fn extension_running_past_the_cluster_is_refused() {
        let h = sample();
        let mut c0 = h.serialize(65536).unwrap();
        // First extension (feature table) length -> huge.
        c0[116..120].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        let e = Header::parse(&c0).unwrap_err().to_string();
        assert!(e.contains("runs past the end"), "{e}");
    }
}
