//! qcow2 metadata engine: L1/L2 mapping, refcounts, cluster allocation and the ordered
//! write-back of dirty metadata.
//!
//! Everything here runs under the owner's lock and does only metadata I/O. Mapping calls
//! return a plan (host extents) that the caller executes outside the lock.
//!
//! Metadata is write-back cached: allocations and L2 updates change memory and mark ranges
//! dirty; `take_dirty` + `write_back` persist them in crash-safe order:
//! refcount blocks (and all data written so far) → sync → new refcount-table entries → sync
//! → L2 tables → sync → L1 entries → sync → deferred refcount decrements → caller's extra
//! writes (zone words) → sync. A crash at any point leaves at worst leaked clusters.

use crate::header::{Header, HEADER_LEN};
use crate::image::{Error, ImgResult};
use crate::storage::Storage;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;

/// L1/L2 offset field (bits 9-55).
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// "Copied" flag: refcount is exactly one.
pub const COPIED: u64 = 1 << 63;
/// Compressed cluster descriptor.
pub const COMPRESSED: u64 = 1 << 62;
/// Reads-as-zero flag of a standard descriptor.
pub const ZERO_FLAG: u64 = 1;
/// Reserved bits of an L1 entry.
pub const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
/// Reserved bits of a standard L2 entry.
pub const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;

/// QEMU's L1 limit.
const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU's refcount table limit.
const MAX_RT_BYTES: u64 = 8 << 20;
/// Scan all L2 tables at open (compressed-cluster check) when they total at most this.
const L2_SCAN_LIMIT: u64 = 64 << 20;

/// What one guest cluster maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Not allocated (reads zeros, no backing files here).
    Unallocated,
    /// Reads as zeros; `Some(host)` when a cluster stays preallocated.
    Zero(Option<u64>),
    /// Data at this host offset.
    Data(u64),
}

/// Outcome of a planning call: ready, or an allocation in flight overlaps (wait and retry).
#[derive(Debug)]
pub enum Plan<T> {
    /// Go ahead.
    Ready(T),
    /// Wait for the owner's condition variable, then plan again.
    Wait,
}

/// A run of guest bytes for a read: from the host file or zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSeg {
    /// Bytes.
    pub len: u64,
    /// Host offset, None = zeros.
    pub host: Option<u64>,
}

/// A host write covering guest bytes, with zero padding for freshly mapped clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteExtent {
    /// Host offset where the (padded) write starts.
    pub host: u64,
    /// Zero bytes before the data.
    pub pad_before: u64,
    /// Data bytes from the caller.
    pub len: u64,
    /// Zero bytes after the data.
    pub pad_after: u64,
}

/// A planned write: extents in guest order plus the L2 changes to make once data is written.
#[derive(Debug, Default)]
pub struct WritePlan {
    /// Host writes in guest order.
    pub extents: Vec<WriteExtent>,
    /// (guest cluster, new L2 entry, joinable) for clusters this plan maps.
    commits: Vec<(u64, u64, bool)>,
    /// Guest clusters whose in-flight mapping (by another write) this plan shares.
    joined: Vec<u64>,
    /// Clusters taken from free space for this plan (returned on failure).
    fresh: Vec<u64>,
    /// I/O sequence number (see `Meta::begin_io`).
    seq: u64,
}

/// A guest cluster being mapped by writes still in flight.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// L2 entry to install.
    entry: u64,
    /// Writes using the new mapping.
    users: u32,
    /// The host cluster reads as zeros, so other writes may share it without padding.
    joinable: bool,
    /// At least one user's data I/O succeeded.
    ok: bool,
    /// The host cluster came from free space (give it back if every user failed).
    fresh: bool,
}

/// Dirty metadata captured for write-back.
#[derive(Debug, Default)]
pub struct Snapshot {
    grow_to: Option<u64>,
    rb: Vec<(u64, Vec<u8>)>,
    rt: Vec<(u64, Vec<u8>)>,
    l2: Vec<(u64, Vec<u8>)>,
    l1: Vec<(u64, Vec<u8>)>,
    frees: Vec<(u64, u64)>,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

fn div_ceil(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

fn be_u64s(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
        .collect()
}

/// Decode a table of big-endian 64-bit entries.
pub fn be_table(bytes: &[u8]) -> Vec<u64> {
    be_u64s(bytes)
}

fn u64s_be(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

fn merge_range(r: &mut Option<(usize, usize)>, lo: usize, hi: usize) {
    *r = Some(match *r {
        None => (lo, hi),
        Some((a, b)) => (a.min(lo), b.max(hi)),
    });
}

/// Read exactly `len` bytes at `off` (zeros past the end of the file).
pub fn read_full(st: &dyn Storage, off: u64, len: usize, what: &str) -> ImgResult<Vec<u8>> {
    let mut v = vec![0u8; len];
    st.read_at(&mut v, off).map_err(|source| Error::Io {
        context: format!("reading {what} at 0x{off:x}"),
        source,
    })?;
    Ok(v)
}

/// Cached qcow2 metadata of one image.
pub struct Meta {
    /// Decoded header (kept for rewrites).
    pub header: Header,
    /// Cluster size.
    pub cs: u64,
    /// Virtual size.
    pub size: u64,
    l2_entries: u64,
    /// Active L1 table.
    pub l1: Vec<u64>,
    /// L1 table offset.
    pub l1_offset: u64,
    l1_dirty: Option<(usize, usize)>,
    l2: Vec<Option<Box<[u64]>>>,
    l2_dirty: BTreeMap<usize, (usize, usize)>,
    rc_bits: u64,
    per_block: u64,
    /// Refcount table.
    pub rt: Vec<u64>,
    /// Refcount table offset.
    pub rt_offset: u64,
    /// Refcount table clusters.
    pub rt_clusters: u64,
    rt_dirty: Option<(usize, usize)>,
    rb: HashMap<usize, Vec<u8>>,
    rb_dirty: BTreeMap<usize, (usize, usize)>,
    free_hint: u64,
    /// One past the last cluster that may be in use.
    pub end_cluster: u64,
    file_clusters: u64,
    /// File length as far as we know (we only ever grow it).
    file_len: u64,
    pending: HashMap<u64, Pending>,
    /// (host cluster, I/O sequence at the time it was unmapped): freed once the L2 change
    /// is durable and every I/O planned before the unmap has finished.
    deferred_free: Vec<(u64, u64)>,
    /// Next I/O sequence number.
    io_seq: u64,
    /// I/O planned but not yet finished, in sequence order (sequence, finished); finished
    /// entries are dropped from the front.
    io_inflight: VecDeque<(u64, bool)>,
    /// Free clusters known to read as zeros (holes punched this session).
    clean: HashSet<u64>,
    /// A write-back failed: further flushes fail.
    pub failed: bool,
    /// Opened read-only.
    pub read_only: bool,
}

impl Meta {
    /// Load and validate header, L1 and refcount table. `zoned_ok`: accept bit 5.
    pub fn load(st: &dyn Storage, read_only: bool, zoned_ok: bool) -> ImgResult<Meta> {
        let file_len = st.len().map_err(io_err("reading the image length"))?;
        let probe = read_full(st, 0, file_len.min(HEADER_LEN as u64) as usize, "header")?;
        let cb = if probe.len() >= 24 {
            u32::from_be_bytes([probe[20], probe[21], probe[22], probe[23]])
        } else {
            0
        };
        let want =
            if (crate::header::MIN_CLUSTER_BITS..=crate::header::MAX_CLUSTER_BITS).contains(&cb) {
                (1u64 << cb).min(file_len)
            } else {
                file_len.min(HEADER_LEN as u64)
            };
        let c0 = read_full(st, 0, want as usize, "cluster 0")?;
        let header = Header::parse(&c0)?;
        header.check_features(zoned_ok, read_only)?;
        Self::from_header(st, header, file_len, read_only)
    }

    fn from_header(
        st: &dyn Storage,
        header: Header,
        file_len: u64,
        read_only: bool,
    ) -> ImgResult<Meta> {
        let r = header.raw;
        let cluster_bits = r.cluster_bits.get();
        let cs = 1u64 << cluster_bits;
        let size = r.size.get();
        let l2_entries = cs / 8;
        if size > (1u64 << 56) {
            return Err(Error::Format(format!("size {size} too large")));
        }
        let need_l1 = div_ceil(div_ceil(size, cs), l2_entries);
        let l1_size = u64::from(r.l1_size.get());
        if l1_size < need_l1 {
            return Err(Error::Format(format!(
                "l1_size {l1_size} too small for size {size} (needs {need_l1})"
            )));
        }
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(Error::Format(format!(
                "l1_size {l1_size} exceeds the {MAX_L1_BYTES}-byte L1 limit"
            )));
        }
        let l1_offset = r.l1_table_offset.get();
        let l1_bytes = l1_size * 8;
        if l1_size > 0 {
            if !l1_offset.is_multiple_of(cs) || l1_offset == 0 {
                return Err(Error::Format(format!(
                    "l1_table_offset 0x{l1_offset:x} is not a non-zero multiple of the cluster size {cs}"
                )));
            }
            if l1_offset.checked_add(l1_bytes).is_none_or(|e| e > file_len) {
                return Err(Error::Format(format!(
                    "l1_table_offset 0x{l1_offset:x} ({l1_bytes} bytes) lies outside the file ({file_len} bytes)"
                )));
            }
        }
        let rt_offset = r.refcount_table_offset.get();
        let rt_clusters = u64::from(r.refcount_table_clusters.get());
        if rt_clusters == 0 {
            return Err(Error::Format("refcount_table_clusters 0".into()));
        }
        if rt_clusters * cs > MAX_RT_BYTES {
            return Err(Error::Format(format!(
                "refcount_table_clusters {rt_clusters} exceeds the {MAX_RT_BYTES}-byte refcount table limit"
            )));
        }
        if !rt_offset.is_multiple_of(cs) || rt_offset == 0 {
            return Err(Error::Format(format!(
                "refcount_table_offset 0x{rt_offset:x} is not a non-zero multiple of the cluster size {cs}"
            )));
        }
        let rt_bytes = rt_clusters * cs;
        if rt_offset.checked_add(rt_bytes).is_none_or(|e| e > file_len) {
            return Err(Error::Format(format!(
                "refcount_table_offset 0x{rt_offset:x} ({rt_bytes} bytes) lies outside the file ({file_len} bytes)"
            )));
        }
        if l1_size > 0 && l1_offset < rt_offset + rt_bytes && rt_offset < l1_offset + l1_bytes {
            return Err(Error::Format(format!(
                "l1_table_offset 0x{l1_offset:x} overlaps the refcount table at 0x{rt_offset:x}"
            )));
        }
        let l1 = be_u64s(&read_full(st, l1_offset, l1_bytes as usize, "L1 table")?);
        let rt = be_u64s(&read_full(
            st,
            rt_offset,
            rt_bytes as usize,
            "refcount table",
        )?);
        let file_clusters = div_ceil(file_len, cs);
        for (i, e) in rt.iter().enumerate() {
            let off = *e;
            if off == 0 {
                continue;
            }
            if off % cs != 0 {
                return Err(Error::Format(format!(
                    "refcount table entry {i}: refcount block offset 0x{off:x} is not cluster aligned"
                )));
            }
            if off / cs >= file_clusters {
                return Err(Error::Format(format!(
                    "refcount table entry {i}: refcount block at 0x{off:x} lies outside the file ({file_len} bytes)"
                )));
            }
            if off == 0 || (off >= rt_offset && off < rt_offset + rt_bytes) {
                return Err(Error::Format(format!(
                    "refcount table entry {i}: refcount block at 0x{off:x} overlaps the header or refcount table"
                )));
            }
        }
        for (i, e) in l1.iter().enumerate() {
            let off = e & OFFSET_MASK;
            if off != 0 && (off / cs >= file_clusters || !off.is_multiple_of(cs)) {
                return Err(Error::Format(format!(
                    "L1 entry {i}: L2 table offset 0x{off:x} is unaligned or outside the file ({file_len} bytes)"
                )));
            }
        }
        let rc_bits = 1u64 << r.refcount_order.get();
        let per_block = cs * 8 / rc_bits;
        let l1_len = l1.len();
        let mut m = Meta {
            header,
            cs,
            size,
            l2_entries,
            l1,
            l1_offset,
            l1_dirty: None,
            l2: vec![None; l1_len],
            l2_dirty: BTreeMap::new(),
            rc_bits,
            per_block,
            rt,
            rt_offset,
            rt_clusters,
            rt_dirty: None,
            rb: HashMap::new(),
            rb_dirty: BTreeMap::new(),
            free_hint: 0,
            end_cluster: file_clusters,
            file_clusters,
            file_len,
            pending: HashMap::new(),
            deferred_free: Vec::new(),
            io_seq: 0,
            io_inflight: VecDeque::new(),
            clean: HashSet::new(),
            failed: false,
            read_only,
        };
        // The tables we rely on must be refcounted.
        m.expect_refcounted(st, 0, cs, "header cluster")?;
        m.expect_refcounted(st, rt_offset, rt_bytes, "refcount table")?;
        if l1_size > 0 {
            m.expect_refcounted(st, l1_offset, l1_bytes, "L1 table")?;
        }
        if l1_size * cs <= L2_SCAN_LIMIT {
            for i in 0..m.l1.len() {
                if m.l1[i] & OFFSET_MASK == 0 {
                    continue;
                }
                let t = m.l2_table(st, i)?;
                if let Some(e) = t.iter().find(|e| *e & COMPRESSED != 0) {
                    return Err(Error::Unsupported(format!(
                        "compressed clusters (L2 table {i} holds entry 0x{e:016x})"
                    )));
                }
            }
        }
        Ok(m)
    }

    /// Error unless every cluster of `[off, off+len)` has a non-zero refcount.
    pub fn expect_refcounted(
        &mut self,
        st: &dyn Storage,
        off: u64,
        len: u64,
        what: &str,
    ) -> ImgResult<()> {
        let first = off / self.cs;
        let last = div_ceil(off + len.max(1), self.cs);
        for c in first..last {
            if self.refcount(st, c)? == 0 {
                return Err(Error::Format(format!(
                    "{what} cluster at 0x{:x} has refcount 0",
                    c * self.cs
                )));
            }
        }
        Ok(())
    }

    /// Entries per refcount block.
    pub fn per_block(&self) -> u64 {
        self.per_block
    }

    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.l2_entries
    }

    // ---------------------------------------------------------------- refcounts

    fn rc_block(&mut self, st: &dyn Storage, ti: usize) -> ImgResult<Option<&mut Vec<u8>>> {
        if ti >= self.rt.len() || self.rt[ti] == 0 {
            return Ok(None);
        }
        if !self.rb.contains_key(&ti) {
            let off = self.rt[ti];
            let b = read_full(st, off, self.cs as usize, "refcount block")?;
            self.rb.insert(ti, b);
        }
        Ok(self.rb.get_mut(&ti))
    }

    fn rc_get_in(block: &[u8], k: u64, bits: u64) -> u64 {
        if bits < 8 {
            let bit = k * bits;
            let byte = block[(bit / 8) as usize];
            (u64::from(byte) >> (bit % 8)) & ((1 << bits) - 1)
        } else {
            let n = (bits / 8) as usize;
            let s = k as usize * n;
            block[s..s + n]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        }
    }

    fn rc_set_in(block: &mut [u8], k: u64, bits: u64, v: u64) -> (usize, usize) {
        if bits < 8 {
            let bit = k * bits;
            let i = (bit / 8) as usize;
            let mask = (((1u64 << bits) - 1) << (bit % 8)) as u8;
            let val = ((v << (bit % 8)) as u8) & mask;
            block[i] = (block[i] & !mask) | val;
            (i, i + 1)
        } else {
            let n = (bits / 8) as usize;
            let s = k as usize * n;
            let bytes = v.to_be_bytes();
            block[s..s + n].copy_from_slice(&bytes[8 - n..]);
            (s, s + n)
        }
    }

    /// Refcount of cluster index `c`.
    pub fn refcount(&mut self, st: &dyn Storage, c: u64) -> ImgResult<u64> {
        let ti = (c / self.per_block) as usize;
        let k = c % self.per_block;
        let bits = self.rc_bits;
        Ok(match self.rc_block(st, ti)? {
            None => 0,
            Some(b) => Self::rc_get_in(b, k, bits),
        })
    }

    fn rc_max(&self) -> u64 {
        if self.rc_bits >= 64 {
            u64::MAX
        } else {
            (1u64 << self.rc_bits) - 1
        }
    }

    /// Set refcount of cluster `c`; its refcount block must exist.
    fn set_refcount(&mut self, st: &dyn Storage, c: u64, v: u64) -> ImgResult<()> {
        let ti = (c / self.per_block) as usize;
        let k = c % self.per_block;
        let bits = self.rc_bits;
        let b = self
            .rc_block(st, ti)?
            .ok_or_else(|| Error::Format(format!("no refcount block for cluster {c}")))?;
        let (lo, hi) = Self::rc_set_in(b, k, bits, v);
        let e = self.rb_dirty.entry(ti).or_insert((lo, hi));
        e.0 = e.0.min(lo);
        e.1 = e.1.max(hi);
        Ok(())
    }

    fn adjust_refcount(&mut self, st: &dyn Storage, c: u64, delta: i64) -> ImgResult<()> {
        let cur = self.refcount(st, c)?;
        let new = if delta >= 0 {
            cur.checked_add(delta.unsigned_abs())
                .filter(|v| *v <= self.rc_max())
        } else {
            cur.checked_sub(delta.unsigned_abs())
        }
        .ok_or_else(|| {
            Error::Format(format!(
                "refcount of cluster {c} is {cur}, cannot add {delta}"
            ))
        })?;
        self.set_refcount(st, c, new)?;
        if new == 0 && c < self.free_hint {
            self.free_hint = c;
        }
        Ok(())
    }

    /// Create the refcount block for table index `ti`, placed at the first cluster it covers
    /// (free: no block means nothing in its range is in use) and counting itself.
    fn create_rc_block(&mut self, ti: usize) {
        let c = ti as u64 * self.per_block;
        let mut b = vec![0u8; self.cs as usize];
        Self::rc_set_in(&mut b, 0, self.rc_bits, 1);
        self.rb.insert(ti, b);
        self.rb_dirty.insert(ti, (0, self.cs as usize));
        self.rt[ti] = c * self.cs;
        merge_range(&mut self.rt_dirty, ti, ti + 1);
        self.end_cluster = self.end_cluster.max(c + 1);
    }

    /// Allocate one cluster (refcount 0 → 1). Returns its host offset.
    pub fn alloc_cluster(&mut self, st: &dyn Storage) -> ImgResult<u64> {
        Ok(self.alloc_cluster_z(st)?.0)
    }

    /// Allocate one cluster; also says whether it is known to read as zeros (never used
    /// before, or punched when freed this session).
    fn alloc_cluster_z(&mut self, st: &dyn Storage) -> ImgResult<(u64, bool)> {
        if self.read_only {
            return Err(Error::Invalid("image opened read-only".into()));
        }
        loop {
            let c = self.free_hint;
            if c.checked_mul(self.cs).is_none_or(|o| o > OFFSET_MASK) {
                return Err(Error::Invalid("image file full (offset limit)".into()));
            }
            let ti = (c / self.per_block) as usize;
            if ti >= self.rt.len() {
                // Growth switches tables in memory as it goes: after an error there, memory
                // and disk disagree, so the image refuses changes until reopened.
                if let Err(e) = self.grow_refcount_table(st, ti + 1) {
                    self.failed = true;
                    return Err(e);
                }
                continue;
            }
            if self.rt[ti] == 0 {
                self.create_rc_block(ti);
                continue;
            }
            if self.refcount(st, c)? == 0 {
                self.set_refcount(st, c, 1)?;
                let zeroed = self.clean.remove(&c) || c >= self.end_cluster;
                self.free_hint = c + 1;
                self.end_cluster = self.end_cluster.max(c + 1);
                self.reserve_file(st, (c + 1) * self.cs)?;
                return Ok((c * self.cs, zeroed));
            }
            self.free_hint = c + 1;
        }
    }

    /// Keep the file longer than every allocated cluster, growing it in chunks: data writes
    /// then never extend the file, which costs the host file system a size update each time.
    fn reserve_file(&mut self, st: &dyn Storage, need: u64) -> ImgResult<()> {
        if need <= self.file_len {
            return Ok(());
        }
        let chunk = (self.size / 8).clamp(self.cs, 32 << 20);
        let new = (need + chunk).div_ceil(self.cs) * self.cs;
        st.grow(new).map_err(io_err("growing the image file"))?;
        self.file_len = new;
        Ok(())
    }

    /// Put a new, larger refcount table (and the blocks covering it) at the end of the file.
    /// Synchronous and ordered: blocks → sync → table → sync → header → sync.
    fn grow_refcount_table(&mut self, st: &dyn Storage, min_entries: usize) -> ImgResult<()> {
        let cs = self.cs;
        let pb = self.per_block;
        let start = self.end_cluster.max(self.free_hint);
        let mut entries = (min_entries as u64).max(self.rt.len() as u64 * 2).max(1);
        let (tcl, new_blocks) = loop {
            let tcl = div_ceil(entries * 8, cs);
            let mut nb = 0u64;
            loop {
                let end = start + tcl + nb;
                let need = (start / pb..=(end - 1) / pb)
                    .filter(|ti| (*ti as usize) >= self.rt.len() || self.rt[*ti as usize] == 0)
                    .count() as u64;
                if need <= nb {
                    break;
                }
                nb = need;
            }
            let last_ti = (start + tcl + nb - 1) / pb;
            if last_ti < entries {
                let blocks: Vec<u64> = (start / pb..=last_ti)
                    .filter(|ti| (*ti as usize) >= self.rt.len() || self.rt[*ti as usize] == 0)
                    .collect();
                break (tcl, blocks);
            }
            entries = (last_ti + 1) * 2;
        };
        if tcl * cs > MAX_RT_BYTES {
            return Err(Error::Invalid(format!(
                "refcount table would exceed {MAX_RT_BYTES} bytes"
            )));
        }
        tracing::debug!(
            entries,
            tcl,
            blocks = new_blocks.len(),
            "growing refcount table"
        );
        let old_offset = self.rt_offset;
        let old_clusters = self.rt_clusters;
        self.rt.resize(entries as usize, 0);
        // New blocks right after the new table.
        for (i, ti) in new_blocks.iter().enumerate() {
            let c = start + tcl + i as u64;
            self.rb.insert(*ti as usize, vec![0u8; cs as usize]);
            self.rb_dirty.insert(*ti as usize, (0, cs as usize));
            self.rt[*ti as usize] = c * cs;
        }
        for c in start..start + tcl + new_blocks.len() as u64 {
            self.set_refcount(st, c, 1)?;
        }
        self.end_cluster = self.end_cluster.max(start + tcl + new_blocks.len() as u64);
        // Blocks first (all dirty ones, so the new table only points at durable blocks).
        let dirty: Vec<usize> = self.rb_dirty.keys().copied().collect();
        for ti in dirty {
            let off = self.rt[ti];
            let b = &self.rb[&ti];
            st.write_at(b, off).map_err(|source| Error::Io {
                context: format!("writing refcount block at 0x{off:x}"),
                source,
            })?;
        }
        self.rb_dirty.clear();
        st.sync_data().map_err(io_err("syncing refcount blocks"))?;
        let mut tbytes = u64s_be(&self.rt);
        tbytes.resize((tcl * cs) as usize, 0);
        st.write_at(&tbytes, start * cs)
            .map_err(io_err("writing the new refcount table"))?;
        st.sync_data()
            .map_err(io_err("syncing the new refcount table"))?;
        self.rt_offset = start * cs;
        self.rt_clusters = tcl;
        self.rt_dirty = None;
        self.header.raw.refcount_table_offset = self.rt_offset.into();
        self.header.raw.refcount_table_clusters = u32::try_from(tcl)
            .map_err(|_| Error::Invalid("refcount table too large".into()))?
            .into();
        self.write_header(st)?;
        st.sync_data().map_err(io_err("syncing the header"))?;
        // The old table is unreferenced now.
        for c in old_offset / cs..old_offset / cs + old_clusters {
            self.adjust_refcount(st, c, -1)?;
        }
        Ok(())
    }

    /// Rewrite cluster 0 from `self.header` (no sync).
    pub fn write_header(&mut self, st: &dyn Storage) -> ImgResult<()> {
        let c0 = self.header.serialize(self.cs as usize)?;
        st.write_at(&c0, 0).map_err(io_err("writing the header"))
    }

    // ---------------------------------------------------------------- L1 / L2

    fn l2_table(&mut self, st: &dyn Storage, l1i: usize) -> ImgResult<&mut [u64]> {
        if self.l2[l1i].is_none() {
            let off = self.l1[l1i] & OFFSET_MASK;
            let t = be_u64s(&read_full(st, off, self.cs as usize, "L2 table")?);
            self.l2[l1i] = Some(t.into_boxed_slice());
        }
        match self.l2[l1i].as_deref_mut() {
            Some(t) => Ok(t),
            None => Err(Error::Format(format!("L2 table {l1i} missing"))),
        }
    }

    /// Mapping of guest cluster `gc`.
    pub fn mapping(&mut self, st: &dyn Storage, gc: u64) -> ImgResult<Mapping> {
        let l1i = (gc / self.l2_entries) as usize;
        let l2i = (gc % self.l2_entries) as usize;
        if l1i >= self.l1.len() || self.l1[l1i] & OFFSET_MASK == 0 {
            return Ok(Mapping::Unallocated);
        }
        let e = self.l2_table(st, l1i)?[l2i];
        self.decode(e, gc)
    }

    fn decode(&self, e: u64, gc: u64) -> ImgResult<Mapping> {
        if e & COMPRESSED != 0 {
            return Err(Error::Unsupported(format!(
                "compressed clusters (guest offset 0x{:x})",
                gc * self.cs
            )));
        }
        let off = e & OFFSET_MASK;
        if !off.is_multiple_of(self.cs) {
            return Err(Error::Format(format!(
                "L2 entry 0x{e:016x} for guest offset 0x{:x} is not cluster aligned",
                gc * self.cs
            )));
        }
        Ok(if e & ZERO_FLAG != 0 {
            Mapping::Zero((off != 0).then_some(off))
        } else if off == 0 {
            Mapping::Unallocated
        } else {
            Mapping::Data(off)
        })
    }

    /// Set the L2 entry of guest cluster `gc` (the L2 table must exist).
    fn set_l2(&mut self, st: &dyn Storage, gc: u64, e: u64) -> ImgResult<()> {
        let l1i = (gc / self.l2_entries) as usize;
        let l2i = (gc % self.l2_entries) as usize;
        self.l2_table(st, l1i)?[l2i] = e;
        let r = self.l2_dirty.entry(l1i).or_insert((l2i, l2i + 1));
        r.0 = r.0.min(l2i);
        r.1 = r.1.max(l2i + 1);
        Ok(())
    }

    /// Make sure the L2 table for guest cluster `gc` exists (allocating it if needed).
    fn ensure_l2(&mut self, st: &dyn Storage, gc: u64) -> ImgResult<()> {
        let l1i = (gc / self.l2_entries) as usize;
        if l1i >= self.l1.len() {
            return Err(Error::Zone(crate::zone::ZoneError::OutOfRange));
        }
        if self.l1[l1i] & OFFSET_MASK != 0 {
            return Ok(());
        }
        let off = self.alloc_cluster(st)?;
        self.l2[l1i] = Some(vec![0u64; self.l2_entries as usize].into_boxed_slice());
        self.l2_dirty.insert(l1i, (0, self.l2_entries as usize));
        self.l1[l1i] = off | COPIED;
        merge_range(&mut self.l1_dirty, l1i, l1i + 1);
        Ok(())
    }

    fn range_clusters(&self, off: u64, len: u64) -> std::ops::Range<u64> {
        if len == 0 {
            return 0..0;
        }
        off / self.cs..div_ceil(off + len, self.cs)
    }

    /// A write must wait for clusters being mapped unless it can share the mapping.
    fn write_must_wait(&self, off: u64, len: u64) -> bool {
        !self.pending.is_empty()
            && self
                .range_clusters(off, len)
                .any(|c| self.pending.get(&c).is_some_and(|p| !p.joinable))
    }

    fn any_pending(&self, off: u64, len: u64) -> bool {
        !self.pending.is_empty()
            && self
                .range_clusters(off, len)
                .any(|c| self.pending.contains_key(&c))
    }

    /// Register an I/O that is about to touch host clusters outside the lock; clusters
    /// unmapped after this point are not freed before the matching `end_io`.
    pub fn begin_io(&mut self) -> u64 {
        let seq = self.io_seq;
        self.io_seq += 1;
        self.io_inflight.push_back((seq, false));
        seq
    }

    /// The I/O registered as `seq` is done.
    pub fn end_io(&mut self, seq: u64) {
        if let Ok(i) = self.io_inflight.binary_search_by_key(&seq, |e| e.0) {
            self.io_inflight[i].1 = true;
        }
        while self.io_inflight.front().is_some_and(|e| e.1) {
            self.io_inflight.pop_front();
        }
    }

    /// Plan a read of guest `[off, off+len)`.
    pub fn plan_read(
        &mut self,
        st: &dyn Storage,
        off: u64,
        len: u64,
        out: &mut Vec<ReadSeg>,
    ) -> ImgResult<Plan<()>> {
        if self.any_pending(off, len) {
            return Ok(Plan::Wait);
        }
        let cs = self.cs;
        for gc in self.range_clusters(off, len) {
            let s = off.max(gc * cs);
            let e = (off + len).min((gc + 1) * cs);
            let host = match self.mapping(st, gc)? {
                Mapping::Data(h) => Some(h + (s - gc * cs)),
                _ => None,
            };
            push_read(out, ReadSeg { len: e - s, host });
        }
        Ok(Plan::Ready(()))
    }

    /// Plan a write of guest `[off, off+len)`: clusters already holding data are written in
    /// place; others get a cluster (preallocated or fresh) written whole with zero padding,
    /// linked into L2 by `finish_write` after the data I/O.
    pub fn plan_write(
        &mut self,
        st: &dyn Storage,
        off: u64,
        len: u64,
    ) -> ImgResult<Plan<WritePlan>> {
        if self.read_only {
            return Err(Error::Invalid("image opened read-only".into()));
        }
        if self.write_must_wait(off, len) {
            return Ok(Plan::Wait);
        }
        let mut plan = WritePlan::default();
        match self.plan_write_inner(st, off, len, &mut plan) {
            Ok(()) => {
                for &(gc, entry, joinable) in &plan.commits {
                    let fresh = plan.fresh.contains(&(entry & OFFSET_MASK));
                    self.pending.insert(
                        gc,
                        Pending {
                            entry,
                            users: 1,
                            joinable,
                            ok: false,
                            fresh,
                        },
                    );
                }
                for gc in &plan.joined {
                    if let Some(p) = self.pending.get_mut(gc) {
                        p.users += 1;
                    }
                }
                plan.seq = self.begin_io();
                Ok(Plan::Ready(plan))
            }
            Err(e) => {
                for h in plan.fresh.drain(..) {
                    let _ = self.adjust_refcount(st, h / self.cs, -1);
                }
                Err(e)
            }
        }
    }

    fn plan_write_inner(
        &mut self,
        st: &dyn Storage,
        off: u64,
        len: u64,
        plan: &mut WritePlan,
    ) -> ImgResult<()> {
        let cs = self.cs;
        for gc in self.range_clusters(off, len) {
            let s = off.max(gc * cs) - gc * cs;
            let e = (off + len).min((gc + 1) * cs) - gc * cs;
            if let Some(p) = self.pending.get(&gc) {
                // Another write in flight is mapping this cluster onto zeros: share it.
                plan.joined.push(gc);
                let ext = WriteExtent {
                    host: (p.entry & OFFSET_MASK) + s,
                    pad_before: 0,
                    len: e - s,
                    pad_after: 0,
                };
                push_extent(&mut plan.extents, ext);
                continue;
            }
            let m = self.mapping(st, gc)?;
            let ext = match m {
                Mapping::Data(h) => WriteExtent {
                    host: h + s,
                    pad_before: 0,
                    len: e - s,
                    pad_after: 0,
                },
                Mapping::Zero(_) | Mapping::Unallocated => {
                    let pre = match m {
                        Mapping::Zero(p) => p,
                        _ => None,
                    };
                    self.ensure_l2(st, gc)?;
                    // A cluster past everything ever handed out is a hole of the file, and a
                    // cluster freed this session had its hole punched: both read as zeros
                    // already, so no padding (the common case for sequential zones). Any
                    // other cluster may hold stale bytes.
                    let (h, virgin) = match pre {
                        Some(h) => (h, false),
                        None => {
                            let (h, zeroed) = self.alloc_cluster_z(st)?;
                            plan.fresh.push(h);
                            (h, zeroed)
                        }
                    };
                    plan.commits.push((gc, h | COPIED, virgin));
                    if virgin {
                        WriteExtent {
                            host: h + s,
                            pad_before: 0,
                            len: e - s,
                            pad_after: 0,
                        }
                    } else {
                        WriteExtent {
                            host: h,
                            pad_before: s,
                            len: e - s,
                            pad_after: cs - e,
                        }
                    }
                }
            };
            push_extent(&mut plan.extents, ext);
        }
        Ok(())
    }

    /// After the data I/O of `plan`: link new clusters (`ok`) or give them back.
    pub fn finish_write(&mut self, st: &dyn Storage, plan: WritePlan, ok: bool) -> ImgResult<()> {
        self.end_io(plan.seq);
        let gcs = plan
            .commits
            .iter()
            .map(|c| c.0)
            .chain(plan.joined.iter().copied());
        for gc in gcs {
            let Some(p) = self.pending.get_mut(&gc) else {
                continue;
            };
            p.users -= 1;
            p.ok |= ok;
            if p.users > 0 {
                continue;
            }
            // The last user links the cluster if any user's data got there, else gives a
            // fresh cluster back (it was never referenced).
            let p = *p;
            self.pending.remove(&gc);
            if p.ok {
                self.set_l2(st, gc, p.entry)?;
            } else if p.fresh {
                self.adjust_refcount(st, (p.entry & OFFSET_MASK) / self.cs, -1)?;
            }
        }
        Ok(())
    }

    /// Make guest `[off, off+len)` read as zeros: whole clusters become zero clusters (their
    /// host clusters are freed once the L2 change is durable, or kept preallocated when
    /// `keep`), partial ones get zero bytes written in place.
    pub fn zero_range(
        &mut self,
        st: &dyn Storage,
        zeros: &[u8],
        off: u64,
        len: u64,
        discard: bool,
    ) -> ImgResult<Plan<()>> {
        if self.read_only {
            return Err(Error::Invalid("image opened read-only".into()));
        }
        if self.any_pending(off, len) {
            return Ok(Plan::Wait);
        }
        let cs = self.cs;
        for gc in self.range_clusters(off, len) {
            let s = off.max(gc * cs) - gc * cs;
            let e = (off + len).min((gc + 1) * cs) - gc * cs;
            let m = self.mapping(st, gc)?;
            if e - s < cs {
                if let Mapping::Data(h) = m {
                    st.write_at(&zeros[..(e - s) as usize], h + s)
                        .map_err(|source| Error::Io {
                            context: format!("zeroing host range at 0x{:x}", h + s),
                            source,
                        })?;
                }
                continue;
            }
            match m {
                Mapping::Unallocated | Mapping::Zero(None) => {}
                Mapping::Data(h) | Mapping::Zero(Some(h)) => {
                    self.set_l2(st, gc, if discard { 0 } else { ZERO_FLAG })?;
                    self.deferred_free.push((h, self.io_seq));
                }
            }
        }
        Ok(Plan::Ready(()))
    }

    // ---------------------------------------------------------------- write-back

    /// Capture dirty metadata for `write_back` and clear the dirty marks.
    pub fn take_dirty(&mut self) -> Snapshot {
        let cs = self.cs;
        let mut s = Snapshot::default();
        let need_len = self.end_cluster * cs;
        if self.end_cluster > self.file_clusters {
            // Usually the file was grown ahead of allocation already (`reserve_file`).
            if need_len > self.file_len {
                s.grow_to = Some(need_len);
                self.file_len = need_len;
            }
            self.file_clusters = self.end_cluster;
        }
        for (ti, (lo, hi)) in std::mem::take(&mut self.rb_dirty) {
            let b = &self.rb[&ti];
            s.rb.push((self.rt[ti] + lo as u64, b[lo..hi].to_vec()));
        }
        if let Some((lo, hi)) = self.rt_dirty.take() {
            s.rt.push((self.rt_offset + lo as u64 * 8, u64s_be(&self.rt[lo..hi])));
        }
        for (l1i, (lo, hi)) in std::mem::take(&mut self.l2_dirty) {
            let base = self.l1[l1i] & OFFSET_MASK;
            if let Some(t) = &self.l2[l1i] {
                s.l2.push((base + lo as u64 * 8, u64s_be(&t[lo..hi])));
            }
        }
        if let Some((lo, hi)) = self.l1_dirty.take() {
            s.l1.push((self.l1_offset + lo as u64 * 8, u64s_be(&self.l1[lo..hi])));
        }
        s.frees = std::mem::take(&mut self.deferred_free);
        s
    }

    /// Release clusters whose references are durably gone; returns refcount writes to do.
    pub fn release(&mut self, st: &dyn Storage, frees: &[(u64, u64)]) -> ImgResult<Writes> {
        // A cluster may still be the target of an I/O planned before it was unmapped (a
        // host racing its own write-zeroes): keep those for a later write-back.
        let oldest = self.io_inflight.front().map(|e| e.0);
        let (ready, later): (Vec<_>, Vec<_>) = frees
            .iter()
            .partition(|(_, seq)| oldest.is_none_or(|o| o >= *seq));
        self.deferred_free.extend(later);
        let frees: Vec<u64> = ready.into_iter().map(|(h, _)| h).collect();
        // Punch the freed clusters first (nothing references them any more), so they read
        // as zeros and can be reused without zero padding.
        let mut sorted = frees.clone();
        sorted.sort_unstable();
        let mut i = 0;
        while i < sorted.len() {
            let mut j = i + 1;
            while j < sorted.len() && sorted[j] == sorted[j - 1] + self.cs {
                j += 1;
            }
            let (off, len) = (sorted[i], (j - i) as u64 * self.cs);
            match st.punch_hole(off, len) {
                Ok(()) => {
                    for h in &sorted[i..j] {
                        self.clean.insert(h / self.cs);
                    }
                }
                Err(e) => tracing::warn!(error = %e, off, len, "punching freed clusters failed"),
            }
            i = j;
        }
        for h in &frees {
            self.adjust_refcount(st, h / self.cs, -1)?;
        }
        let mut out = Vec::new();
        for (ti, (lo, hi)) in std::mem::take(&mut self.rb_dirty) {
            out.push((self.rt[ti] + lo as u64, self.rb[&ti][lo..hi].to_vec()));
        }
        Ok(out)
    }
}

fn push_extent(v: &mut Vec<WriteExtent>, ext: WriteExtent) {
    match v.last_mut() {
        Some(p)
            if p.pad_after == 0
                && ext.pad_before == 0
                && p.host + p.pad_before + p.len == ext.host =>
        {
            p.len += ext.len;
            p.pad_after = ext.pad_after;
        }
        _ => v.push(ext),
    }
}

fn push_read(out: &mut Vec<ReadSeg>, seg: ReadSeg) {
    if let Some(p) = out.last_mut() {
        match (p.host, seg.host) {
            (None, None) => {
                p.len += seg.len;
                return;
            }
            (Some(a), Some(b)) if a + p.len == b => {
                p.len += seg.len;
                return;
            }
            _ => {}
        }
    }
    out.push(seg);
}

/// Append a zero segment to a read plan.
pub fn push_zero(out: &mut Vec<ReadSeg>, len: u64) {
    if len > 0 {
        push_read(out, ReadSeg { len, host: None });
    }
}

fn write_all(st: &dyn Storage, items: &[(u64, Vec<u8>)], what: &str) -> ImgResult<()> {
    for (off, b) in items {
        st.write_at(b, *off).map_err(|source| Error::Io {
            context: format!("writing {what} at 0x{off:x}"),
            source,
        })?;
    }
    Ok(())
}

/// Positioned writes: (file offset, bytes).
pub type Writes = Vec<(u64, Vec<u8>)>;

/// Turns unmapped clusters (host offset, I/O sequence) into refcount writes, under the
/// owner's lock.
pub type Release<'a> = dyn FnMut(&[(u64, u64)]) -> ImgResult<Writes> + 'a;

/// Persist a snapshot in crash-safe order, then `extra` (zone words, ...) after everything
/// they depend on is durable, then sync. `release` is called (under the owner's lock) to
/// turn deferred frees into refcount writes once the L2 changes are durable.
pub fn write_back(
    st: &dyn Storage,
    snap: Snapshot,
    release: &mut Release<'_>,
    extra: &[(u64, Vec<u8>)],
) -> ImgResult<()> {
    tracing::trace!(
        refcount_writes = snap.rb.len(),
        l2_writes = snap.l2.len(),
        l1_writes = snap.l1.len(),
        frees = snap.frees.len(),
        extra = extra.len(),
        "metadata write-back"
    );
    let sync = |what: &str| {
        st.sync_data().map_err(|source| Error::Io {
            context: format!("syncing {what}"),
            source,
        })
    };
    if let Some(len) = snap.grow_to {
        st.grow(len).map_err(io_err("growing the image file"))?;
    }
    write_all(st, &snap.rb, "refcount block")?;
    sync("data and refcount blocks")?;
    if !snap.rt.is_empty() {
        write_all(st, &snap.rt, "refcount table")?;
        sync("refcount table")?;
    }
    let tables = !snap.l2.is_empty() || !snap.l1.is_empty();
    write_all(st, &snap.l2, "L2 table")?;
    if !snap.l1.is_empty() {
        sync("L2 tables")?;
        write_all(st, &snap.l1, "L1 table")?;
    }
    if tables {
        sync("mapping tables")?;
    }
    let mut dirty = false;
    if !snap.frees.is_empty() {
        let w = release(&snap.frees)?;
        write_all(st, &w, "refcount block")?;
        dirty |= !w.is_empty();
    }
    write_all(st, extra, "zoned metadata")?;
    dirty |= !extra.is_empty();
    if dirty {
        sync("zoned metadata")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_entries_of_every_width() {
        for order in 0..=6u32 {
            let bits = 1u64 << order;
            let mut b = vec![0u8; 64];
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1 << bits) - 1
            };
            let n = 64 * 8 / bits;
            for k in 0..n {
                Meta::rc_set_in(&mut b, k, bits, k % (max.min(1000) + 1));
            }
            for k in 0..n {
                assert_eq!(
                    Meta::rc_get_in(&b, k, bits),
                    k % (max.min(1000) + 1),
                    "order {order} k {k}"
                );
            }
        }
        // 16-bit entries are big-endian.
        let mut b = vec![0u8; 8];
        Meta::rc_set_in(&mut b, 1, 16, 0x0102);
        assert_eq!(b, [0, 0, 1, 2, 0, 0, 0, 0]);
    }

    #[test]
    fn read_segments_coalesce() {
        let mut v = Vec::new();
        push_read(
            &mut v,
            ReadSeg {
                len: 10,
                host: Some(100),
            },
        );
        push_read(
            &mut v,
            ReadSeg {
                len: 5,
                host: Some(110),
            },
        );
        push_read(&mut v, ReadSeg { len: 5, host: None });
        push_zero(&mut v, 7);
        push_read(
            &mut v,
            ReadSeg {
                len: 5,
                host: Some(200),
            },
        );
        assert_eq!(
            v,
            vec![
                ReadSeg {
                    len: 15,
                    host: Some(100)
                },
                ReadSeg {
                    len: 12,
                    host: None
                },
                ReadSeg {
                    len: 5,
                    host: Some(200)
                }
            ]
        );
    }
}
