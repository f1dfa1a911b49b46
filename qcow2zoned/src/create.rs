//! Laying out a new qcow2 v3 image (optionally zoned).
//!
//! Layout: cluster 0 header (+ extensions), then the refcount table (sized so the image can
//! grow to full allocation without moving it), the refcount blocks covering the initial
//! clusters, the zoned metadata (words, then the ZDED array), and the L1 table.
//! Every one of these clusters is refcounted.

use crate::header::{incompat, Header, RawHeader, ZonedExt, HEADER_LEN, MAGIC};
use crate::image::{Error, ImgResult};
use crate::meta::read_full;
use crate::storage::Storage;

fn io_err(context: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        context: context.to_string(),
        source,
    }
}

/// Refcount width we write (16 bits, like qemu-img).
const REFCOUNT_ORDER: u32 = 4;

/// Zoned part of a new image.
pub struct NewZoned {
    /// Extension with every field but `zonedmeta_offset` filled.
    pub ext: ZonedExt,
    /// Initial zone words (one per zone).
    pub words: Vec<u64>,
}

/// Write a fresh image to empty storage.
pub fn write_new_image(
    st: &dyn Storage,
    size: u64,
    cluster_bits: u32,
    zoned: Option<NewZoned>,
) -> ImgResult<()> {
    let cs = 1u64 << cluster_bits;
    let pb = cs * 8 / (1 << REFCOUNT_ORDER);
    let data_cl = size.div_ceil(cs);
    let l1_entries = data_cl.div_ceil(cs / 8).max(1);
    let l1c = (l1_entries * 8).div_ceil(cs);
    let zm_bytes = zoned.as_ref().map_or(0, |z| z.ext.zonedmeta_size);
    let zmc = zm_bytes.div_ceil(cs);
    let mut rtc = 1u64;
    loop {
        let base = 1 + rtc + zmc + l1c + l1_entries + data_cl + 64;
        let total = base + base.div_ceil(pb) + 1;
        let need = (total.div_ceil(pb) * 8).div_ceil(cs);
        if need <= rtc {
            break;
        }
        rtc = need;
    }
    if rtc * cs > 8 << 20 {
        return Err(Error::Invalid(format!(
            "size {size} needs a refcount table over 8 MiB with {cs}-byte clusters; use larger clusters"
        )));
    }
    if l1_entries * 8 > 32 << 20 {
        return Err(Error::Invalid(format!(
            "size {size} needs an L1 table over 32 MiB with {cs}-byte clusters; use larger clusters"
        )));
    }
    let mut rbc = 1u64;
    loop {
        let used = 1 + rtc + rbc + zmc + l1c;
        let n = used.div_ceil(pb);
        if n <= rbc {
            break;
        }
        rbc = n;
    }
    let rt_off = cs;
    let rb_off = (1 + rtc) * cs;
    let zm_off = (1 + rtc + rbc) * cs;
    let l1_off = zm_off + zmc * cs;
    let used = 1 + rtc + rbc + zmc + l1c;

    let raw = RawHeader {
        magic: MAGIC.into(),
        version: 3.into(),
        backing_file_offset: 0.into(),
        backing_file_size: 0.into(),
        cluster_bits: cluster_bits.into(),
        size: size.into(),
        crypt_method: 0.into(),
        l1_size: u32::try_from(l1_entries)
            .map_err(|_| Error::Invalid(format!("size {size} too large")))?
            .into(),
        l1_table_offset: l1_off.into(),
        refcount_table_offset: rt_off.into(),
        refcount_table_clusters: u32::try_from(rtc)
            .map_err(|_| Error::Invalid(format!("size {size} too large")))?
            .into(),
        nb_snapshots: 0.into(),
        snapshots_offset: 0.into(),
        incompatible_features: if zoned.is_some() { incompat::ZONED } else { 0 }.into(),
        compatible_features: 0.into(),
        autoclear_features: 0.into(),
        refcount_order: REFCOUNT_ORDER.into(),
        header_length: (HEADER_LEN as u32).into(),
        compression_type: 0,
        padding: [0; 7],
    };
    let header = Header {
        raw,
        extra: Vec::new(),
        feature_names: Vec::new(),
        zoned: zoned.as_ref().map(|z| ZonedExt {
            zonedmeta_offset: zm_off,
            ..z.ext
        }),
        other_exts: Vec::new(),
    };
    let c0 = header.serialize(cs as usize)?;

    st.set_len(used * cs)
        .map_err(io_err("sizing the new image"))?;
    st.write_at(&c0, 0).map_err(io_err("writing the header"))?;
    let mut rt = vec![0u8; (rtc * cs) as usize];
    for i in 0..rbc {
        let off = rb_off + i * cs;
        rt[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&off.to_be_bytes());
    }
    st.write_at(&rt, rt_off)
        .map_err(io_err("writing the refcount table"))?;
    let mut rb = vec![0u8; (rbc * cs) as usize];
    for c in 0..used {
        rb[(c * 2) as usize..(c * 2 + 2) as usize].copy_from_slice(&1u16.to_be_bytes());
    }
    st.write_at(&rb, rb_off)
        .map_err(io_err("writing the refcount blocks"))?;
    if let Some(z) = &zoned {
        let mut m = vec![0u8; (zmc * cs) as usize];
        for (i, w) in z.words.iter().enumerate() {
            m[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        st.write_at(&m, zm_off)
            .map_err(io_err("writing the zoned metadata"))?;
    }
    st.sync_data().map_err(io_err("syncing the new image"))?;
    // Read back the header as a cheap self-check.
    let back = read_full(st, 0, cs as usize, "header")?;
    Header::parse(&back)?;
    Ok(())
}
