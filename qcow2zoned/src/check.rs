//! Consistency check of a (zoned) qcow2 image, in the spirit of `qemu-img check`.
//!
//! Recomputes every cluster's expected reference count from the header, refcount structures,
//! L1/L2 tables and — unlike stock QEMU — the zoned metadata clusters, compares them with the
//! stored refcounts, checks the copied flags and entry alignment, and validates every zone
//! word. Exit codes follow `qemu-img check`: 0 clean, 2 corruptions, 3 leaks only.

use crate::image::{validate_ext, ImgResult};
use crate::meta::{
    read_full, Meta, COMPRESSED, COPIED, L1_RESERVED, L2_RESERVED, OFFSET_MASK, ZERO_FLAG,
};
use crate::storage::Storage;
use crate::zone::{word, ZoneSet};

/// Result of a check.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CheckReport {
    /// Clusters referenced more often than their refcount says, bad entries, bad zone words.
    pub corruptions: u64,
    /// Clusters with a refcount but fewer references.
    pub leaks: u64,
    /// Problems found in the zone words (also counted in `corruptions`).
    pub zone_errors: u64,
    /// Clusters holding the zoned metadata (counted as referenced, not leaked).
    pub zoned_metadata_clusters: u64,
    /// Guest clusters in the image.
    pub total_clusters: u64,
    /// Guest clusters mapped to host clusters.
    pub allocated_clusters: u64,
    /// End of the last used host cluster.
    pub image_end_offset: u64,
    /// One line per finding.
    pub messages: Vec<String>,
}

impl CheckReport {
    /// Exit status as `qemu-img check`: 0 clean, 2 corruptions, 3 leaks only.
    pub fn exit_code(&self) -> i32 {
        if self.corruptions > 0 {
            2
        } else if self.leaks > 0 {
            3
        } else {
            0
        }
    }

    fn corrupt(&mut self, msg: String) {
        self.corruptions += 1;
        self.messages.push(format!("ERROR {msg}"));
    }
}

struct Refs {
    v: Vec<u32>,
}

impl Refs {
    fn add(&mut self, c: u64) {
        let c = c as usize;
        if c >= self.v.len() {
            self.v.resize(c + 1, 0);
        }
        self.v[c] = self.v[c].saturating_add(1);
    }
    fn add_range(&mut self, off: u64, len: u64, cs: u64) {
        if len == 0 {
            return;
        }
        for c in off / cs..(off + len).div_ceil(cs) {
            self.add(c);
        }
    }
}

/// Check the image held by `st` (opened read-only). Errors only when it cannot be opened.
pub fn check_image(st: &dyn Storage) -> ImgResult<CheckReport> {
    let mut m = Meta::load(st, true, true)?;
    let cs = m.cs;
    let mut rep = CheckReport {
        total_clusters: m.size.div_ceil(cs),
        ..Default::default()
    };
    let mut refs = Refs { v: Vec::new() };
    refs.add(0);
    refs.add_range(m.rt_offset, m.rt_clusters * cs, cs);
    for &b in &m.rt.clone() {
        if b != 0 {
            refs.add(b / cs);
        }
    }
    refs.add_range(m.l1_offset, m.l1.len() as u64 * 8, cs);
    let file_len = st.len().unwrap_or(0);
    let l1 = m.l1.clone();
    let mut l2_tables = Vec::new();
    for (i, e) in l1.iter().enumerate() {
        if e & L1_RESERVED != 0 {
            rep.corrupt(format!("L1 entry {i} 0x{e:016x} has reserved bits set"));
        }
        let off = e & OFFSET_MASK;
        if off == 0 {
            continue;
        }
        refs.add(off / cs);
        let rc = m.refcount(st, off / cs)?;
        if (rc == 1) != (e & COPIED != 0) {
            rep.corrupt(format!(
                "OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={e:x} refcount={rc}"
            ));
        }
        l2_tables.push((i, off));
    }
    let mut seen_l2 = std::collections::HashSet::new();
    for (i, off) in l2_tables {
        if !seen_l2.insert(off) {
            // Counted twice above (a corruption); its entries are counted once.
            continue;
        }
        let t = crate::meta::be_table(&read_full(st, off, cs as usize, "L2 table")?);
        for (j, e) in t.iter().enumerate() {
            let e = *e;
            if e == 0 {
                continue;
            }
            let guest = (i as u64 * m.l2_entries() + j as u64) * cs;
            if e & COMPRESSED != 0 {
                rep.corrupt(format!(
                    "compressed cluster at guest offset 0x{guest:x} (not supported)"
                ));
                continue;
            }
            if e & L2_RESERVED != 0 {
                rep.corrupt(format!(
                    "L2 entry 0x{e:016x} at guest offset 0x{guest:x} has reserved bits set"
                ));
            }
            let h = e & OFFSET_MASK;
            if h == 0 {
                if e & COPIED != 0 {
                    rep.corrupt(format!(
                        "OFLAG_COPIED set on unallocated entry at guest offset 0x{guest:x}"
                    ));
                }
                continue;
            }
            if !h.is_multiple_of(cs) {
                rep.corrupt(format!(
                    "cluster offset 0x{h:x} at guest offset 0x{guest:x} is not properly aligned; L2 entry corrupted"
                ));
                continue;
            }
            if h >= file_len {
                rep.corrupt(format!(
                    "cluster offset 0x{h:x} at guest offset 0x{guest:x} is beyond the end of the file ({file_len} bytes)"
                ));
                continue;
            }
            if e & ZERO_FLAG == 0 {
                rep.allocated_clusters += 1;
            }
            refs.add(h / cs);
            let rc = m.refcount(st, h / cs)?;
            if (rc == 1) != (e & COPIED != 0) {
                rep.corrupt(format!(
                    "OFLAG_COPIED data cluster: l2_entry={e:x} refcount={rc}"
                ));
            }
        }
    }
    // Zoned metadata and zone words.
    if let Some(ext) = m.header.zoned {
        match validate_ext(&ext, m.size) {
            Err(e) => {
                rep.zone_errors += 1;
                rep.corrupt(format!("zoned extension: {e}"));
            }
            Ok(geom) => {
                let zo = ext.zonedmeta_offset;
                let zl = ext.zonedmeta_size;
                if zo % cs != 0 || zo == 0 || zo + zl > file_len {
                    rep.zone_errors += 1;
                    rep.corrupt(format!(
                        "zonedmeta_offset 0x{zo:x} size {zl} is unaligned or outside the file"
                    ));
                } else {
                    refs.add_range(zo, zl, cs);
                    rep.zoned_metadata_clusters = zl.div_ceil(cs);
                    let raw = read_full(
                        st,
                        zo,
                        (u64::from(geom.nr_zones) * 8) as usize,
                        "zone words",
                    )?;
                    let words: Vec<u64> = raw
                        .chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                        .collect();
                    for (i, w) in words.iter().enumerate() {
                        let zs = i as u64 * geom.zone_size;
                        let wp = w & word::WP_MASK;
                        let conv = w & word::CONVENTIONAL != 0;
                        let state = w >> word::STATE_SHIFT;
                        let mut bad = Vec::new();
                        if conv != ((i as u32) < geom.conventional_zones) {
                            bad.push("conventional flag does not match conventional_zones");
                        }
                        if wp < zs || wp > zs + geom.zone_size {
                            bad.push("write pointer outside its zone");
                        }
                        if ![
                            0,
                            word::STATE_CLOSED,
                            word::STATE_READ_ONLY,
                            word::STATE_OFFLINE,
                        ]
                        .contains(&state)
                        {
                            bad.push("unknown state nibble");
                        }
                        if !bad.is_empty() {
                            rep.zone_errors += 1;
                            rep.corrupt(format!("zone {i} word 0x{w:016x}: {}", bad.join(", ")));
                        }
                    }
                    if rep.zone_errors == 0 {
                        match ZoneSet::from_words(geom, &words) {
                            Err(e) => {
                                rep.zone_errors += 1;
                                rep.corrupt(format!("zone words: {e}"));
                            }
                            Ok(set) => {
                                let (_, active) = set.counts();
                                if geom.max_active != 0 && active > geom.max_active {
                                    // Legal after a crash with a zone's last write in flight;
                                    // the device opens and frees resources as zones finish.
                                    rep.messages.push(format!(
                                        "Warning: {active} active zones exceed max_active_zones {}",
                                        geom.max_active
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // Compare with the stored refcounts: every referenced cluster, then whatever the
    // refcount blocks count beyond them (each distinct block once).
    let pb = m.per_block();
    let n_refs = refs.v.len() as u64;
    let mut extra = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (ti, &b) in m.rt.clone().iter().enumerate() {
        if b == 0 || !seen.insert(b) {
            continue;
        }
        let first = (ti as u64 * pb).max(n_refs);
        for c in first..(ti as u64 + 1) * pb {
            if m.refcount(st, c)? != 0 {
                extra.push(c);
            }
        }
    }
    let mut end = 0u64;
    for c in (0..n_refs).chain(extra) {
        let r = u64::from(refs.v.get(c as usize).copied().unwrap_or(0));
        let rc = m.refcount(st, c)?;
        if rc > 0 || r > 0 {
            end = c + 1;
        }
        if rc < r {
            rep.corrupt(format!("cluster {c} refcount={rc} reference={r}"));
        } else if rc > r {
            rep.leaks += 1;
            rep.messages
                .push(format!("Leaked cluster {c} refcount={rc} reference={r}"));
        }
    }
    rep.image_end_offset = end * cs;
    Ok(rep)
}
