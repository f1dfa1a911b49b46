//! `zns-report-loop DEVICE SECONDS`: reports every zone of a zoned block device with the
//! `BLKREPORTZONE` ioctl, again and again from one process for SECONDS, and prints
//!
//! ```text
//! <reports> <seconds> <p50 µs> <p99 µs>
//! ```
//!
//! It is the guest side of the benchmark's `report` job (tests/guest/scenarios/perf-fio.sh).
//! Looping `blkzone report` instead measures mostly the start-up of a process under TCG
//! (tens of milliseconds), so two devices whose reports differ several-fold came out even.
//! The ioctl is the one `blkzone` issues: the kernel turns it into Zone Management Receive
//! commands and copies the zones out, so what is timed is the kernel and the device.
//!
//! bench/run builds it statically linked (the guest's C library is not the host's) and
//! copies it into the guest.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `struct blk_zone_report` of `<linux/blkzoned.h>`, without its flexible array.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct ReportHeader {
    sector: u64,
    nr_zones: u32,
    flags: u32,
}

/// `struct blk_zone` of `<linux/blkzoned.h>`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct BlkZone {
    start: u64,
    len: u64,
    wp: u64,
    kind: u8,
    cond: u8,
    non_seq: u8,
    reset: u8,
    resv: [u8; 4],
    capacity: u64,
    reserved: [u8; 24],
}

// The kernel's layout: 16 and 64 bytes, zones right after the header.
const _: () = assert!(std::mem::size_of::<ReportHeader>() == 16);
const _: () = assert!(std::mem::size_of::<BlkZone>() == 64);

/// `_IOC(dir, 0x12, nr, size)` for the block layer's ioctls.
const fn ioc(dir: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (0x12 << 8) | nr
}
const IOC_READ: u64 = 2;
const IOC_WRITE: u64 = 1;
/// `BLKREPORTZONE = _IOWR(0x12, 130, struct blk_zone_report)`.
const BLKREPORTZONE: u64 = ioc(IOC_READ | IOC_WRITE, 130, 16);
/// `BLKGETNRZONES = _IOR(0x12, 133, __u32)`.
const BLKGETNRZONES: u64 = ioc(IOC_READ, 133, 4);

/// The report buffer: the header followed by room for `zones.len()` zones, as one `repr(C)`
/// allocation so the kernel sees them contiguous.
#[repr(C)]
struct Report<const N: usize> {
    hdr: ReportHeader,
    zones: [BlkZone; N],
}

/// Zones fetched per ioctl (the kernel fills as many as the device has from `sector` on).
const BATCH: usize = 1024;

fn nr_zones(dev: &File) -> std::io::Result<u32> {
    let mut n: u32 = 0;
    // SAFETY: BLKGETNRZONES writes one u32 through the pointer, which is a live, aligned
    // local for the whole call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), BLKGETNRZONES as _, &mut n as *mut u32) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n)
}

/// One whole-device report; returns the number of zones seen, after checking that they tile
/// the device from sector 0 without gaps.
fn report_all(dev: &File, buf: &mut Report<BATCH>, total: u32) -> Result<u32, String> {
    let mut sector = 0u64;
    let mut seen = 0u32;
    while seen < total {
        buf.hdr = ReportHeader {
            sector,
            nr_zones: BATCH as u32,
            flags: 0,
        };
        // SAFETY: the argument is a `blk_zone_report` header followed by room for
        // `nr_zones` (= BATCH) `blk_zone`s in one repr(C) allocation that is exclusively
        // borrowed for the call; the kernel writes at most that many zones.
        let r = unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                BLKREPORTZONE as _,
                buf as *mut Report<BATCH>,
            )
        };
        if r < 0 {
            return Err(format!(
                "BLKREPORTZONE at sector {sector}: {}",
                std::io::Error::last_os_error()
            ));
        }
        let got = (buf.hdr.nr_zones as usize).min(BATCH);
        if got == 0 {
            break;
        }
        for z in &buf.zones[..got] {
            if z.start != sector {
                return Err(format!(
                    "zone at sector {} where {sector} was expected",
                    z.start
                ));
            }
            sector = z.start + z.len;
        }
        seen += got as u32;
    }
    if seen != total {
        return Err(format!("report saw {seen} zones, the device has {total}"));
    }
    Ok(seen)
}

/// The `p`-th percentile (0..=100) of sorted samples, nearest rank.
fn percentile(sorted: &[Duration], p: u32) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * p as usize).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn run(path: &str, seconds: f64) -> Result<String, String> {
    let dev = File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let total = nr_zones(&dev).map_err(|e| format!("BLKGETNRZONES on {path}: {e}"))?;
    if total == 0 {
        return Err(format!("{path} is not a zoned device"));
    }
    let mut buf = Box::new(Report::<BATCH> {
        hdr: ReportHeader::default(),
        zones: [BlkZone::default(); BATCH],
    });
    let limit = Duration::from_secs_f64(seconds);
    let mut lat = Vec::with_capacity(1 << 16);
    let t0 = Instant::now();
    loop {
        let t = Instant::now();
        report_all(&dev, &mut buf, total)?;
        lat.push(t.elapsed());
        if t0.elapsed() >= limit {
            break;
        }
    }
    let el = t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Ok(format!(
        "{} {el:.3} {:.1} {:.1}",
        lat.len(),
        us(percentile(&lat, 50)),
        us(percentile(&lat, 99))
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let seconds = args
        .get(2)
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0);
    let (Some(path), Some(seconds)) = (args.get(1), seconds) else {
        eprintln!("usage: zns-report-loop DEVICE SECONDS");
        return ExitCode::from(2);
    };
    match run(path, seconds) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zns-report-loop: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // Values of BLKREPORTZONE and BLKGETNRZONES on x86-64 and arm64 Linux.
        assert_eq!(BLKREPORTZONE, 0xc010_1282);
        assert_eq!(BLKGETNRZONES, 0x8004_1285);
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v: Vec<Duration> = (1..=200).map(Duration::from_micros).collect();
        assert_eq!(percentile(&v, 50), Duration::from_micros(100));
        assert_eq!(percentile(&v, 99), Duration::from_micros(198));
        assert_eq!(
            percentile(&[Duration::from_micros(7)], 99),
            Duration::from_micros(7)
        );
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }

    #[test]
    fn a_regular_file_is_not_a_zoned_device() {
        let f = File::open("/proc/self/status").unwrap();
        assert!(nr_zones(&f).is_err());
    }
}
