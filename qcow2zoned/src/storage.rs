//! The one door to the image file.
//!
//! Every byte the image layer reads or writes goes through [`Storage`], so a test harness can
//! substitute an implementation that records writes and syncs (to rebuild the file as it
//! would look after a power loss at any point) or injects I/O errors.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::mapped::FileMap;

/// Positional, thread-safe access to the bytes of an image file.
///
/// Writes are not durable until `sync_data` returns. Reads past the end return fewer bytes
/// (the callers treat the missing part as zeros).
pub trait Storage: Send + Sync {
    /// Read up to `buf.len()` bytes at `offset`; returns the count (short only at the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Write all of `buf` at `offset`, growing the file if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Scatter read at `offset`; returns the count (short only at the end).
    fn readv_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<usize> {
        let mut done = 0usize;
        for b in bufs.iter_mut() {
            let n = self.read_at(b, offset + done as u64)?;
            done += n;
            if n < b.len() {
                break;
            }
        }
        Ok(done)
    }
    /// Gather write of all of `bufs` at `offset`.
    fn writev_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let mut off = offset;
        for b in bufs {
            self.write_at(b, off)?;
            off += b.len() as u64;
        }
        Ok(())
    }
    /// Make every completed write durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncate or extend (with zeros) to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Extend the file to at least `len` bytes; never shrinks it, even when other threads
    /// extend it at the same time. The default checks the length first (fine for
    /// single-threaded use).
    fn grow(&self, len: u64) -> io::Result<()> {
        if self.len()? < len {
            self.set_len(len)?;
        }
        Ok(())
    }
    /// Make `[offset, offset+len)` read as zeros, releasing host space where possible.
    /// The default writes zeros.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done);
            self.write_at(&zeros[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }
}

/// [`Storage`] on a host file, with `preadv`/`pwritev` for vectors.
///
/// With `direct`, a second descriptor opened with `O_DIRECT` serves data I/O whose buffers,
/// lengths and offset are all 4 KiB aligned; everything else (metadata, unaligned guest I/O)
/// goes through the buffered descriptor.
///
/// With [`FileStorage::map_reads`] (buffered only), reads copy from a shared mapping of the
/// file instead of calling `pread` (module `mapped`); writes always use `pwrite`.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    direct: Option<File>,
    map: Option<FileMap>,
}

const DIRECT_ALIGN: usize = 4096;

impl FileStorage {
    /// Open an existing file.
    pub fn open(path: &Path, read_only: bool, direct: bool) -> io::Result<FileStorage> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)?;
        let direct = if direct {
            Some(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(!read_only)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)?,
            )
        } else {
            None
        };
        Ok(FileStorage {
            file,
            direct,
            map: None,
        })
    }

    /// Create a new file; fails if it exists.
    pub fn create_new(path: &Path) -> io::Result<FileStorage> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(FileStorage {
            file,
            direct: None,
            map: None,
        })
    }

    /// Wrap an already open file.
    pub fn from_file(file: File) -> FileStorage {
        FileStorage {
            file,
            direct: None,
            map: None,
        }
    }

    /// Serve reads from a shared mapping of the file where possible. Not with `direct`
    /// (those reads must bypass the page cache); a no-op when the process cannot map.
    pub fn map_reads(mut self) -> FileStorage {
        if self.direct.is_none() && self.map.is_none() {
            self.map = FileMap::new(&self.file);
        }
        self
    }

    /// Whether reads go through a mapping.
    pub fn is_mapped(&self) -> bool {
        self.map.is_some()
    }

    fn pick_write(&self, bufs: &[IoSlice<'_>], offset: u64) -> &File {
        match &self.direct {
            Some(d)
                if offset.is_multiple_of(DIRECT_ALIGN as u64)
                    && bufs.iter().all(|b| {
                        b.len() % DIRECT_ALIGN == 0
                            && (b.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
                    }) =>
            {
                d
            }
            _ => &self.file,
        }
    }

    fn pick_read(&self, bufs: &[IoSliceMut<'_>], offset: u64) -> &File {
        match &self.direct {
            Some(d)
                if offset.is_multiple_of(DIRECT_ALIGN as u64)
                    && bufs.iter().all(|b| {
                        b.len() % DIRECT_ALIGN == 0
                            && (b.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
                    }) =>
            {
                d
            }
            _ => &self.file,
        }
    }
}

fn off_t(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

impl Storage for FileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if let Some(n) = self
            .map
            .as_ref()
            .and_then(|m| m.read(&self.file, &mut [IoSliceMut::new(&mut *buf)], offset))
        {
            return Ok(n);
        }
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn readv_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<usize> {
        if let Some(n) = self
            .map
            .as_ref()
            .and_then(|m| m.read(&self.file, bufs, offset))
        {
            return Ok(n);
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let file = self.pick_read(bufs, offset);
        if let [one] = bufs {
            // pread is a little cheaper than preadv for a single buffer.
            let mut done = 0;
            while done < one.len() {
                match file.read_at(&mut one[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(done);
        }
        let n = loop {
            match nix::sys::uio::preadv(file, bufs, off_t(offset)?) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        };
        if n == total || n == 0 {
            return Ok(n);
        }
        // Short read: finish slice by slice (rare; only at the end of the file).
        let mut done = n;
        let mut skip = n;
        for b in bufs.iter_mut() {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            let got = self.read_at(&mut b[skip..], offset + done as u64)?;
            done += got;
            if got < b.len() - skip {
                break;
            }
            skip = 0;
        }
        Ok(done)
    }

    fn writev_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let file = self.pick_write(bufs, offset);
        if let [one] = bufs {
            return file.write_all_at(one, offset);
        }
        let n = loop {
            match nix::sys::uio::pwritev(file, bufs, off_t(offset)?) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        };
        if n == total {
            return Ok(());
        }
        // Short write: finish the rest slice by slice.
        let mut skip = n;
        let mut off = offset + n as u64;
        for b in bufs {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            self.write_at(&b[skip..], off)?;
            off += (b.len() - skip) as u64;
            skip = 0;
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if let Some(m) = &self.map {
            m.shrink(len);
        }
        self.file.set_len(len)
    }

    fn grow(&self, len: u64) -> io::Result<()> {
        use nix::fcntl::{fallocate, FallocateFlags};
        use std::os::fd::AsRawFd;
        if len == 0 {
            return Ok(());
        }
        // Allocating the last byte raises the size atomically and never lowers it, unlike a
        // length check followed by ftruncate, which could cut off a concurrent extending write.
        match fallocate(
            self.file.as_raw_fd(),
            FallocateFlags::empty(),
            off_t(len - 1)?,
            1,
        ) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EOPNOTSUPP) => {
                if self.len()? < len {
                    self.set_len(len)?;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        use nix::fcntl::{fallocate, FallocateFlags};
        use std::os::fd::AsRawFd;
        let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        let l = off_t(len)?;
        match fallocate(self.file.as_raw_fd(), mode, off_t(offset)?, l) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EOPNOTSUPP) => {
                // File system without hole punching: write the zeros.
                let zeros = vec![0u8; len.min(1 << 20) as usize];
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(zeros.len() as u64);
                    self.write_at(&zeros[..n as usize], offset + done)?;
                    done += n;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// In-memory [`Storage`] (tests, fuzzing).
#[derive(Debug, Default)]
pub struct MemStorage {
    data: std::sync::Mutex<Vec<u8>>,
}

impl MemStorage {
    /// Storage holding `bytes`.
    pub fn new(bytes: Vec<u8>) -> MemStorage {
        MemStorage {
            data: std::sync::Mutex::new(bytes),
        }
    }
    /// Copy of the current contents.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn mem_index(v: u64) -> io::Result<usize> {
    usize::try_from(v).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

impl Storage for MemStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let d = self.lock();
        let off = mem_index(offset)?;
        if off >= d.len() {
            return Ok(0);
        }
        let n = buf.len().min(d.len() - off);
        buf[..n].copy_from_slice(&d[off..off + n]);
        Ok(n)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.lock();
        let off = mem_index(offset)?;
        let end = off
            .checked_add(buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        if end > (1usize << 40) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offset too large",
            ));
        }
        if d.len() < end {
            d.resize(end, 0);
        }
        d[off..end].copy_from_slice(buf);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().len() as u64)
    }
    fn grow(&self, len: u64) -> io::Result<()> {
        let len = mem_index(len)?;
        if len > (1usize << 40) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "length too large",
            ));
        }
        let mut d = self.lock();
        if d.len() < len {
            d.resize(len, 0);
        }
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = mem_index(len)?;
        if len > (1usize << 40) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "length too large",
            ));
        }
        self.lock().resize(len, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffered files are mapped for reads and read the same either way; an O_DIRECT one is
    /// never mapped (its reads must bypass the page cache).
    #[test]
    fn only_buffered_files_are_mapped_and_they_read_the_same() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let data: Vec<u8> = (0..20000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let mapped = FileStorage::open(&p, false, false).unwrap().map_reads();
        assert!(mapped.is_mapped());
        let plain = FileStorage::open(&p, true, false).unwrap();
        assert!(!plain.is_mapped());
        let direct = FileStorage::open(&p, false, true).unwrap().map_reads();
        assert!(!direct.is_mapped());
        for (off, len) in [(0u64, 4096usize), (5000, 9000), (19000, 4000)] {
            let mut a = vec![0u8; len];
            let mut b = vec![0u8; len];
            let na = mapped.read_at(&mut a, off).unwrap();
            let nb = plain.read_at(&mut b, off).unwrap();
            assert_eq!((na, &a[..na]), (nb, &b[..nb]), "at {off}+{len}");
            assert_eq!(&a[..na], &data[off as usize..off as usize + na]);
        }
    }
}
