//! Throughput of zoned qcow2 I/O next to `qemu-img bench` on a plain qcow2 image and the
//! same I/O on a raw file (warm page cache, queue depth 1, no flushes inside a run).
//!
//! Run: `cargo run --release -p qcow2zoned --example bench`
//! Optional: `BENCH_MIB=<MiB per run>` (default 128), `BENCH_REPS=<repetitions>` (default 5),
//! `BENCH_ONLY=<substring of a workload name>`.

use qcow2zoned::{CreateOptions, OpenOptions, ZoneAction, ZoneOptions, ZonedImage};
use std::io::{IoSlice, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const CLUSTER: u64 = 64 << 10;
const ZONE: u64 = 256 * MIB;
const DISK: u64 = 4 * ZONE;

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mibs(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

#[derive(Clone, Copy)]
enum Work {
    Write(u64),
    Append(u64),
    Read4k,
}

impl Work {
    fn name(self) -> String {
        match self {
            Work::Write(b) => format!("seq write {} KiB", b >> 10),
            Work::Append(b) => format!("append {} KiB", b >> 10),
            Work::Read4k => "random read 4 KiB".into(),
        }
    }
    fn block(self) -> u64 {
        match self {
            Work::Write(b) | Work::Append(b) => b,
            Work::Read4k => 4096,
        }
    }
}

/// Random 4 KiB-aligned offsets inside `[0, span)`.
fn offsets(n: u64, span: u64) -> Vec<u64> {
    let mut x = 0x1234_5678_9abc_def1u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (span / 4096)) * 4096
        })
        .collect()
}

fn run_ours(img: &ZonedImage, w: Work, bytes: u64, rep: u64) -> Duration {
    let blk = w.block();
    let n = bytes / blk;
    let buf = vec![0x5au8; blk as usize];
    // Zone 0 holds the data the reads use; writes rotate over zones 1..3.
    let zone = 1 + (rep % 3) as u32;
    let start = u64::from(zone) * ZONE;
    match w {
        Work::Read4k => {
            let offs = offsets(n, bytes);
            let mut rb = vec![0u8; 4096];
            let t = Instant::now();
            for o in offs {
                img.read(o, &mut [IoSliceMut::new(&mut rb)]).unwrap();
            }
            t.elapsed()
        }
        Work::Write(_) | Work::Append(_) => {
            img.zone_action(Some(zone), ZoneAction::Reset).unwrap();
            let t = Instant::now();
            for i in 0..n {
                if let Work::Write(_) = w {
                    img.write(start + i * blk, &[IoSlice::new(&buf)], false)
                        .unwrap();
                } else {
                    img.append(start, &[IoSlice::new(&buf)], false).unwrap();
                }
            }
            t.elapsed()
        }
    }
}

fn run_raw(f: &std::fs::File, w: Work, bytes: u64, rep: u64) -> Duration {
    let blk = w.block();
    let n = bytes / blk;
    let buf = vec![0x5au8; blk as usize];
    let start = (1 + rep % 3) * ZONE;
    match w {
        Work::Read4k => {
            let offs = offsets(n, bytes);
            let mut rb = vec![0u8; 4096];
            let t = Instant::now();
            for o in offs {
                f.read_exact_at(&mut rb, o).unwrap();
            }
            t.elapsed()
        }
        _ => {
            // Same host work as a zone reset: give the range back to the file system.
            punch(f, start, ZONE);
            let t = Instant::now();
            for i in 0..n {
                nix::sys::uio::pwritev(f, &[IoSlice::new(&buf)], (start + i * blk) as i64).unwrap();
            }
            t.elapsed()
        }
    }
}

fn punch(f: &std::fs::File, off: u64, len: u64) {
    use nix::fcntl::{fallocate, FallocateFlags};
    use std::os::fd::AsRawFd;
    let _ = fallocate(
        f.as_raw_fd(),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        off as i64,
        len as i64,
    );
}

/// One `qemu-img bench` run; returns its own timing ("Run completed in X seconds").
fn run_qemu(img: &Path, w: Work, bytes: u64) -> Option<Duration> {
    let blk = w.block();
    let n = bytes / blk;
    let mut args = vec![
        "bench".to_string(),
        "-f".into(),
        "qcow2".into(),
        "-t".into(),
        "writeback".into(),
        "-d".into(),
        "1".into(),
        "-c".into(),
        n.to_string(),
        "-s".into(),
        blk.to_string(),
    ];
    match w {
        Work::Write(_) | Work::Append(_) => {
            args.push("-w".into());
            args.push("-o".into());
            args.push(ZONE.to_string());
        }
        Work::Read4k => {
            // qemu-img bench cannot do random offsets: sequential 4 KiB reads instead.
        }
    }
    args.push(img.display().to_string());
    let o = Command::new("qemu-img").args(&args).output().ok()?;
    if !o.status.success() {
        eprintln!(
            "qemu-img bench failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        return None;
    }
    let s = String::from_utf8_lossy(&o.stdout);
    let secs: f64 = s
        .split("Run completed in ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(Duration::from_secs_f64(secs))
}

fn main() {
    let bytes = env_u64("BENCH_MIB", 128) * MIB;
    let reps = env_u64("BENCH_REPS", 5).max(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let zpath = dir.path().join("zoned.qcow2");
    let qpath = dir.path().join("plain.qcow2");
    let rpath = dir.path().join("raw.img");

    ZonedImage::create(
        &zpath,
        &CreateOptions {
            size: DISK,
            cluster_size: CLUSTER,
            zone: ZoneOptions {
                size: ZONE,
                capacity: ZONE,
                max_append_bytes: 128 << 10,
                ..Default::default()
            },
        },
    )
    .expect("create zoned image");
    let img = ZonedImage::open(&zpath, OpenOptions::default()).expect("open");
    let raw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&rpath)
        .expect("raw file");
    raw.set_len(DISK).unwrap();
    let qemu = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o"])
        .arg(format!("cluster_size={CLUSTER}"))
        .arg(&qpath)
        .arg(DISK.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !qemu {
        eprintln!("qemu-img not available: its column stays empty");
    }
    // Data for the read test in zone 0 (all three), page cache warmed by writing it.
    let fill = vec![0xa5u8; MIB as usize];
    for i in 0..bytes / MIB {
        img.write(i * MIB, &[IoSlice::new(&fill)], false).unwrap();
        raw.write_all_at(&fill, i * MIB).unwrap();
    }
    img.flush().unwrap();
    if qemu {
        let _ = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c"])
            .arg(format!("write -P 0xa5 0 {bytes}"))
            .arg(&qpath)
            .output();
    }

    println!(
        "{} MiB per run, median of {reps} runs (+1 warm-up), queue depth 1, cluster {} KiB, warm page cache, synced between runs",
        bytes / MIB,
        CLUSTER >> 10
    );
    println!(
        "{:<20} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "workload", "qcow2zoned", "raw file", "qemu-img", "vs raw", "vs qemu"
    );
    println!("{:<20} {:>12} {:>12} {:>12}", "", "MiB/s", "MiB/s", "MiB/s");
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    for w in [
        Work::Write(4096),
        Work::Write(128 << 10),
        Work::Append(4096),
        Work::Append(128 << 10),
        Work::Read4k,
    ]
    .into_iter()
    .filter(|w| w.name().contains(&only))
    {
        let mut ours = Vec::new();
        let mut rawv = Vec::new();
        let mut qv = Vec::new();
        for rep in 0..=reps {
            // Each run starts with no dirty pages so write-back throttling from the
            // previous run does not land in the next one's timing.
            let a = run_ours(&img, w, bytes, rep);
            img.flush().unwrap();
            let b = run_raw(&raw, w, bytes, rep);
            raw.sync_data().unwrap();
            let c = if qemu {
                let c = run_qemu(&qpath, w, bytes);
                if let Ok(f) = std::fs::File::open(&qpath) {
                    let _ = f.sync_all();
                }
                c
            } else {
                None
            };
            if rep > 0 {
                ours.push(a);
                rawv.push(b);
                if let Some(c) = c {
                    qv.push(c);
                }
            }
        }
        let o = mibs(bytes, median(ours));
        let r = mibs(bytes, median(rawv));
        let (q, vq) = if qv.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            let q = mibs(bytes, median(qv));
            (format!("{q:.0}"), format!("{:.2}", o / q))
        };
        let note = if let Work::Read4k = w {
            " (qemu-img: sequential)"
        } else {
            ""
        };
        println!(
            "{:<20} {:>12.0} {:>12.0} {:>12} {:>10.2} {:>10}{note}",
            w.name(),
            o,
            r,
            q,
            o / r,
            vq
        );
    }
    img.close().unwrap();
}
