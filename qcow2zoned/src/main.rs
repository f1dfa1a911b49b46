//! `qcow2zoned`: create, inspect, check and exercise zoned qcow2 images.
//!
//! Options are spelled like qemu-img's (`-o key=value,...`) and the `io` sub-command takes
//! qemu-io style commands (`-c 'write -P 0xab 0 4k'`).

use clap::{Parser, Subcommand, ValueEnum};
use qcow2zoned::options::{parse_create_options, parse_size};
use qcow2zoned::{
    check_image, CreateOptions, FileStorage, OpenOptions, ZoneAction, ZoneInfo, ZoneState,
    ZoneType, ZonedImage,
};
use std::io::{IoSlice, IoSliceMut};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "qcow2zoned", version, about = "Zoned qcow2 image tool")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a zoned image: -o zone.size=…,zone.capacity=…,cluster_size=… FILE SIZE
    Create {
        /// Comma separated key=value options (may be repeated).
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Image file to create.
        file: PathBuf,
        /// Virtual size (K, M, G, T suffixes).
        size: String,
    },
    /// Show image and zone geometry.
    Info {
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Image file.
        file: PathBuf,
    },
    /// Check consistency (exit 0 clean, 2 corruptions, 3 leaks only, 1 could not check).
    Check {
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Image file.
        file: PathBuf,
    },
    /// Report every zone.
    Zones {
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Image file.
        file: PathBuf,
    },
    /// Resize: refused for zoned images (the zone count is part of the format).
    Resize {
        /// Image file.
        file: PathBuf,
        /// New size.
        size: String,
    },
    /// Run qemu-io style commands: write, read, zrp, zo, zc, zf, zrs, zap, flush.
    Io {
        /// Image file.
        file: PathBuf,
        /// Command (may be repeated; run in order).
        #[arg(short = 'c', value_name = "CMD", required = true)]
        commands: Vec<String>,
    },
}

/// The `-o` options of `create` (repeatable, each a comma-separated list).
fn create_options(opts: &[String], size: u64) -> Result<CreateOptions, String> {
    parse_create_options(&opts.join(","), size)
}

fn type_name(t: ZoneType) -> &'static str {
    match t {
        ZoneType::Conventional => "conventional",
        ZoneType::SequentialWriteRequired => "sequential-write-required",
    }
}

fn state_name(s: ZoneState) -> &'static str {
    match s {
        ZoneState::NotWritePointer => "not-write-pointer",
        ZoneState::Empty => "empty",
        ZoneState::ImplicitlyOpened => "implicitly-opened",
        ZoneState::ExplicitlyOpened => "explicitly-opened",
        ZoneState::Closed => "closed",
        ZoneState::ReadOnly => "read-only",
        ZoneState::Full => "full",
        ZoneState::Offline => "offline",
    }
}

fn zone_json(z: &ZoneInfo) -> serde_json::Value {
    serde_json::json!({
        "index": z.index,
        "start": z.start,
        "size": z.size,
        "capacity": z.capacity,
        "wp": z.wp,
        "type": type_name(z.ztype),
        "state": state_name(z.state),
        "attrs": z.attrs.bits(),
    })
}

fn open_ro(file: &Path) -> Result<ZonedImage, String> {
    ZonedImage::open(
        file,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .map_err(|e| format!("{}: {e}", file.display()))
}

fn human_size(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.3} {}", units[u])
            .replace(".000 ", " ")
            .to_string()
    }
}

fn cmd_info(file: &Path, output: Output) -> Result<ExitCode, String> {
    let img = open_ro(file)?;
    let i = img.info().clone();
    let disk = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let g = i.geometry;
    let (open, active) = img.counts();
    if output == Output::Json {
        let v = serde_json::json!({
            "filename": file.display().to_string(),
            "format": "qcow2",
            "zoned": "host-managed",
            "virtual-size": i.size,
            "actual-size": disk,
            "cluster-size": i.cluster_size,
            "zone-size": g.zone_size,
            "zone-capacity": g.zone_capacity,
            "nr-zones": g.nr_zones,
            "conventional-zones": g.conventional_zones,
            "max-open-zones": g.max_open,
            "max-active-zones": g.max_active,
            "max-append-bytes": i.max_append_bytes,
            "zd-extension-size": i.zd_extension_size,
            "active-zones": active,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!("image: {}", file.display());
        println!("file format: qcow2 (zoned, host-managed)");
        println!("virtual size: {} ({} bytes)", human_size(i.size), i.size);
        println!("disk size: {}", human_size(disk));
        println!("cluster_size: {}", i.cluster_size);
        println!(
            "zone size: {} ({} bytes)",
            human_size(g.zone_size),
            g.zone_size
        );
        println!(
            "zone capacity: {} ({} bytes)",
            human_size(g.zone_capacity),
            g.zone_capacity
        );
        println!(
            "zones: {} ({} conventional)",
            g.nr_zones, g.conventional_zones
        );
        println!("max open zones: {} (0 = no limit)", g.max_open);
        println!("max active zones: {} (0 = no limit)", g.max_active);
        println!("max append bytes: {}", i.max_append_bytes);
        println!("zone descriptor extension size: {}", i.zd_extension_size);
        println!("open zones: {open}, active zones: {active}");
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_check(file: &Path, output: Output) -> Result<ExitCode, String> {
    let st = FileStorage::open(file, true, false)
        .map_err(|e| format!("{}: could not open: {e}", file.display()))?;
    let rep = check_image(&st).map_err(|e| format!("{}: {e}", file.display()))?;
    if output == Output::Json {
        let mut v = serde_json::to_value(&rep).map_err(|e| e.to_string())?;
        if let Some(o) = v.as_object_mut() {
            o.insert("filename".into(), file.display().to_string().into());
            o.insert("format".into(), "qcow2".into());
            o.insert("check-errors".into(), 0.into());
        }
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        for m in &rep.messages {
            println!("{m}");
        }
        if rep.corruptions > 0 {
            println!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.",
                rep.corruptions
            );
        }
        if rep.leaks > 0 {
            println!(
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.",
                rep.leaks
            );
        }
        if rep.corruptions == 0 && rep.leaks == 0 {
            println!("No errors were found on the image.");
        }
        println!(
            "{}/{} = {:.2}% allocated clusters; {} zoned metadata clusters",
            rep.allocated_clusters,
            rep.total_clusters,
            if rep.total_clusters == 0 {
                0.0
            } else {
                rep.allocated_clusters as f64 * 100.0 / rep.total_clusters as f64
            },
            rep.zoned_metadata_clusters
        );
        println!("Image end offset: {}", rep.image_end_offset);
    }
    Ok(ExitCode::from(rep.exit_code() as u8))
}

fn cmd_zones(file: &Path, output: Output) -> Result<ExitCode, String> {
    let img = open_ro(file)?;
    let zones = img.zones(0, u32::MAX);
    if output == Output::Json {
        let v: Vec<serde_json::Value> = zones.iter().map(zone_json).collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "{:>6} {:>18} {:>14} {:>14} {:>18} {:<26} {:<18} {:>5}",
            "index", "start", "size", "capacity", "wp", "type", "state", "attrs"
        );
        for z in &zones {
            println!(
                "{:>6} {:>#18x} {:>14} {:>14} {:>#18x} {:<26} {:<18} {:>#5x}",
                z.index,
                z.start,
                z.size,
                z.capacity,
                z.wp,
                type_name(z.ztype),
                state_name(z.state),
                z.attrs.bits()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One qemu-io style command: name, `-P` pattern, positional numbers.
struct IoCmd<'a> {
    name: &'a str,
    pattern: Option<u8>,
    args: Vec<u64>,
}

fn parse_io(s: &str) -> Result<IoCmd<'_>, String> {
    let mut it = s.split_whitespace();
    let name = it.next().ok_or("empty command")?;
    let mut pattern = None;
    let mut args = Vec::new();
    while let Some(t) = it.next() {
        if t == "-P" {
            let v = it.next().ok_or("-P needs a pattern")?;
            let n = parse_size(v)?;
            pattern = Some(u8::try_from(n).map_err(|_| format!("pattern {v} is not a byte"))?);
        } else if t.starts_with('-') {
            return Err(format!("{name}: unknown flag {t}"));
        } else {
            args.push(parse_size(t)?);
        }
    }
    Ok(IoCmd {
        name,
        pattern,
        args,
    })
}

fn want(c: &IoCmd<'_>, n: usize, usage: &str) -> Result<(), String> {
    if c.args.len() != n {
        return Err(format!("{}: usage: {usage}", c.name));
    }
    Ok(())
}

fn zone_at(img: &ZonedImage, off: u64) -> Result<u32, String> {
    img.zone_of(off)
        .ok_or_else(|| format!("offset 0x{off:x} is beyond the end of the device"))
}

fn run_io(img: &ZonedImage, line: &str) -> Result<(), String> {
    let c = parse_io(line)?;
    let err = |e: qcow2zoned::Error| format!("{}: {e}", c.name);
    match c.name {
        "write" => {
            want(&c, 2, "write [-P pattern] OFF LEN")?;
            let (off, len) = (c.args[0], c.args[1]);
            let buf = vec![c.pattern.unwrap_or(0xcd); len as usize];
            img.write(off, &[IoSlice::new(&buf)], false).map_err(err)?;
            println!("wrote {len}/{len} bytes at offset {off}");
        }
        "read" => {
            want(&c, 2, "read [-P pattern] OFF LEN")?;
            let (off, len) = (c.args[0], c.args[1]);
            let mut buf = vec![0u8; len as usize];
            img.read(off, &mut [IoSliceMut::new(&mut buf)])
                .map_err(err)?;
            if let Some(p) = c.pattern {
                if let Some(i) = buf.iter().position(|&b| b != p) {
                    let bad = buf[i..].iter().take_while(|&&b| b != p).count();
                    return Err(format!(
                        "read: pattern verification failed at offset {}, {bad} bytes (expected 0x{p:02x}, found 0x{:02x})",
                        off + i as u64,
                        buf[i]
                    ));
                }
            }
            println!("read {len}/{len} bytes at offset {off}");
        }
        "zap" => {
            want(&c, 2, "zap [-P pattern] OFF LEN")?;
            let (off, len) = (c.args[0], c.args[1]);
            let buf = vec![c.pattern.unwrap_or(0xcd); len as usize];
            let at = img.append(off, &[IoSlice::new(&buf)], false).map_err(err)?;
            println!("appended {len} bytes at offset {at} (0x{at:x})");
        }
        "zrp" => {
            want(&c, 2, "zrp OFF NR_ZONES")?;
            let first = zone_at(img, c.args[0])?;
            let n = u32::try_from(c.args[1]).unwrap_or(u32::MAX);
            for z in img.zones(first, n) {
                println!(
                    "start: 0x{:x}, len 0x{:x}, cap 0x{:x}, wptr 0x{:x}, zcond:{}, [type: {}] state {} attrs 0x{:x}",
                    z.start,
                    z.size,
                    z.capacity,
                    z.wp,
                    z.state as u8,
                    match z.ztype {
                        ZoneType::Conventional => 1,
                        ZoneType::SequentialWriteRequired => 2,
                    },
                    state_name(z.state),
                    z.attrs.bits()
                );
            }
        }
        "zo" | "zc" | "zf" | "zrs" => {
            let action = match c.name {
                "zo" => ZoneAction::Open,
                "zc" => ZoneAction::Close,
                "zf" => ZoneAction::Finish,
                _ => ZoneAction::Reset,
            };
            let (off, len) = match c.args.as_slice() {
                [o] => (*o, 0),
                [o, l] => (*o, *l),
                _ => return Err(format!("{}: usage: {} OFF [LEN]", c.name, c.name)),
            };
            let size = img.info().size;
            if off == 0 && len == size {
                img.zone_action(None, action).map_err(err)?;
            } else {
                let first = zone_at(img, off)?;
                let last = if len == 0 {
                    first
                } else {
                    zone_at(img, off + len - 1)?
                };
                for z in first..=last {
                    img.zone_action(Some(z), action).map_err(err)?;
                }
            }
        }
        "flush" => {
            want(&c, 0, "flush")?;
            img.flush().map_err(err)?;
        }
        other => return Err(format!("unknown command '{other}'")),
    }
    Ok(())
}

fn cmd_io(file: &Path, commands: &[String]) -> Result<ExitCode, String> {
    let img = ZonedImage::open(file, OpenOptions::default())
        .map_err(|e| format!("{}: {e}", file.display()))?;
    for line in commands {
        run_io(&img, line)?;
    }
    img.close().map_err(|e| format!("close: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.cmd {
        Cmd::Create {
            options,
            file,
            size,
        } => {
            let size = parse_size(&size)?;
            let opts = create_options(&options, size)?;
            ZonedImage::create(&file, &opts).map_err(|e| e.to_string())?;
            println!(
                "Formatting '{}', fmt=qcow2 cluster_size={} size={size} zone.mode=host-managed zone.size={} zone.capacity={} zone.conventional_zones={} zone.max_open_zones={} zone.max_active_zones={} zone.max_append_bytes={} zone.zd_extension_size={}",
                file.display(),
                opts.cluster_size,
                opts.zone.size,
                opts.zone.capacity,
                opts.zone.conventional_zones,
                opts.zone.max_open_zones,
                opts.zone.max_active_zones,
                opts.zone.max_append_bytes,
                opts.zone.zd_extension_size
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Info { output, file } => cmd_info(&file, output),
        Cmd::Check { output, file } => cmd_check(&file, output),
        Cmd::Zones { output, file } => cmd_zones(&file, output),
        Cmd::Io { file, commands } => cmd_io(&file, &commands),
        Cmd::Resize { file, size } => {
            let size = parse_size(&size)?;
            let img = open_ro(&file)?;
            img.resize(size)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qcow2zoned: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_o_options_combine() {
        let o = create_options(
            &["zone.size=1M".into(), "zone.max_active_zones=6".into()],
            1 << 30,
        )
        .unwrap();
        assert_eq!(o.zone.size, 1 << 20);
        assert_eq!((o.zone.max_open_zones, o.zone.max_active_zones), (6, 6));
        assert!(create_options(&["bogus=1".into()], 1 << 30)
            .unwrap_err()
            .contains("bogus"));
    }
}
