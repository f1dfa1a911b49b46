//! Command line: `znsd [serve] [options]`, and the `-o` option parser for `--create`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use qcow2zoned::{CacheMode, CreateOptions, ZoneOptions};
use std::path::{Path, PathBuf};

/// Default image path.
pub const DEFAULT_IMAGE: &str = "znsd.qcow2";
/// Default socket file name.
pub const DEFAULT_SOCKET: &str = "znsd.sock";

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// NVMe ZNS controller served over vfio-user, backed by a zoned qcow2 image.
#[derive(Debug, Parser)]
#[command(name = "znsd", version, about)]
pub struct Cli {
    /// What to do (default: serve with default options).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a zoned image as an NVMe ZNS PCI function on a vfio-user socket.
    Serve(ServeArgs),
}

/// Cache modes on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Cache {
    /// Volatile write cache advertised; writes durable after Flush/FUA.
    Writeback,
    /// No volatile write cache; every write durable on completion.
    Writethrough,
}

impl From<Cache> for CacheMode {
    fn from(c: Cache) -> Self {
        match c {
            Cache::Writeback => CacheMode::WriteBack,
            Cache::Writethrough => CacheMode::WriteThrough,
        }
    }
}

/// Data paths on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Reads and writes go to the zoned qcow2 image.
    Qcow2,
    /// Benchmarking only: reads, writes, write zeroes and appends complete successfully after
    /// their checks without touching the image or moving data (zone state not tracked; an
    /// append reports its ZSLBA). Zone management, reports and flushes still use the image.
    Null,
}

/// I/O threads with `--direct` unless `--aio-threads` says otherwise: enough to keep a
/// QD32 queue pair's requests at the disk at once, about half of them.
pub const DEFAULT_DIRECT_AIO_THREADS: u16 = 16;

/// Options of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Zoned qcow2 image (created with defaults if missing).
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: PathBuf,
    /// vfio-user UNIX socket path [default: ./znsd.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Create the image with this virtual size (K/M/G/T suffixes) if it does not exist.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub create: Option<u64>,
    /// Creation options, exactly as for `qcow2zoned create -o`: cluster_size=…,
    /// zone.size=…, zone.capacity=…, zone.conventional_zones=…, zone.max_open_zones=…,
    /// zone.max_active_zones=…, zone.max_append_bytes=…, zone.zd_extension_size=…
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Option<String>,
    /// Namespace LBA size.
    #[arg(long, default_value_t = 4096, value_parser = parse_lba_size)]
    pub lba_size: u32,
    /// I/O queue pairs offered to the guest (1..=255).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=255))]
    pub queues: u16,
    /// I/O poller threads [default: min(queues, CPUs, 4)].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub io_threads: Option<u16>,
    /// Cache mode.
    #[arg(long, value_enum, default_value_t = Cache::Writeback)]
    pub cache: Cache,
    /// Open the image with O_DIRECT.
    #[arg(long)]
    pub direct: bool,
    /// I/O threads for asynchronous data transfers; 0 runs every command on its poller
    /// [default: 16 with --direct, else 0].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=256))]
    pub aio_threads: Option<u16>,
    /// Zone Reset frees the zone's host clusters (the image file gives the space back).
    /// Without it a reset zone keeps its clusters and the next pass of writes overwrites
    /// them in place, which is faster, above all with --direct.
    #[arg(long)]
    pub discard_on_reset: bool,
    /// Read the image with pread(2) only. By default (without --direct) the image file is
    /// also mapped, and reads of data in the host page cache are a plain copy.
    #[arg(long)]
    pub pread_reads: bool,
    /// Data path: the image, or `null` to measure the command path alone.
    #[arg(long, value_enum, default_value_t = Backend::Qcow2)]
    pub backend: Backend,
}

impl Default for ServeArgs {
    fn default() -> Self {
        ServeArgs {
            image: PathBuf::from(DEFAULT_IMAGE),
            socket: None,
            create: None,
            options: None,
            lba_size: 4096,
            queues: 4,
            io_threads: None,
            cache: Cache::Writeback,
            direct: false,
            aio_threads: None,
            discard_on_reset: false,
            pread_reads: false,
            backend: Backend::Qcow2,
        }
    }
}

impl ServeArgs {
    /// Socket path in force.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(".").join(DEFAULT_SOCKET))
    }

    /// I/O poller threads in force.
    pub fn io_pollers(&self) -> usize {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        match self.io_threads {
            Some(n) => usize::from(n).min(usize::from(self.queues)),
            None => usize::from(self.queues).min(cpus).min(4),
        }
        .max(1)
    }

    /// I/O threads in force: with the page cache a transfer is a copy and runs best on the
    /// poller; with O_DIRECT it waits for the disk, and threads keep many requests at the
    /// disk from one queue pair.
    pub fn aio_threads(&self) -> usize {
        usize::from(self.aio_threads.unwrap_or(if self.direct {
            DEFAULT_DIRECT_AIO_THREADS
        } else {
            0
        }))
    }

    /// Creation options for a missing image. Without `-o`: znsd's defaults (see
    /// [`default_create_options`]), sized by `--create` if given. With `-o`: exactly what
    /// `qcow2zoned create -o … FILE SIZE` would create (its defaults for keys not given),
    /// with SIZE from `--create` (default 4 GiB).
    pub fn create_options(&self) -> Result<CreateOptions, String> {
        let size = self.create.unwrap_or(DEFAULT_SIZE);
        match &self.options {
            None => Ok(CreateOptions {
                size,
                ..default_create_options()
            }),
            Some(s) => parse_create_options(s, size),
        }
    }
}

fn parse_lba_size(s: &str) -> Result<u32, String> {
    match s {
        "512" => Ok(512),
        "4096" | "4k" | "4K" => Ok(4096),
        _ => Err(format!("LBA size must be 512 or 4096, not {s}")),
    }
}

/// Virtual size of an image created without `--create`.
pub const DEFAULT_SIZE: u64 = 4 * GIB;

/// Defaults for an image znsd creates itself: 4 GiB, 64 MiB zones, 16 open/active zones,
/// 64-byte zone descriptor extensions.
pub fn default_create_options() -> CreateOptions {
    CreateOptions {
        size: DEFAULT_SIZE,
        cluster_size: 64 * KIB,
        zone: ZoneOptions {
            size: 64 * MIB,
            capacity: 64 * MIB,
            conventional_zones: 0,
            max_open_zones: 16,
            max_active_zones: 16,
            max_append_bytes: qcow2zoned::options::DEFAULT_MAX_APPEND_BYTES,
            zd_extension_size: 64,
        },
    }
}

pub use qcow2zoned::options::{parse_create_options, parse_size};

/// The QEMU arguments that attach a client to `socket`.
pub fn qemu_command_line(socket: &Path) -> String {
    let abs = std::fs::canonicalize(socket)
        .ok()
        .or_else(|| std::env::current_dir().ok().map(|d| d.join(socket)))
        .unwrap_or_else(|| socket.to_path_buf());
    let json = format!(
        r#"{{"driver":"vfio-user-pci","socket":{{"type":"unix","path":"{}"}}}}"#,
        abs.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    );
    format!(
        "-object memory-backend-memfd,id=mem,size=2G,share=on -machine q35,memory-backend=mem -m 2G -device '{json}'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_string_like_qcow2zoned_create() {
        let o = parse_create_options(
            "zone.mode=host-managed,zone.size=128M,zone.max_active_zones=8,zone.zd_extension_size=128,cluster_size=4K",
            GIB,
        )
        .unwrap();
        assert_eq!(o.size, GIB);
        assert_eq!(o.zone.size, 128 * MIB);
        assert_eq!(o.zone.capacity, 128 * MIB);
        assert_eq!(o.zone.max_active_zones, 8);
        assert_eq!(o.zone.max_open_zones, 8, "max_open defaults to max_active");
        assert_eq!(o.zone.zd_extension_size, 128);
        assert_eq!(o.zone.max_append_bytes, 64 << 10);
        assert_eq!(o.cluster_size, 4096);
        let o = parse_create_options("zone.size=16K", GIB).unwrap();
        assert_eq!(o.zone.max_append_bytes, 16 << 10, "capped by the capacity");
        assert_eq!((o.zone.max_open_zones, o.zone.zd_extension_size), (0, 0));
        assert!(parse_create_options("zone.bogus=1", GIB).is_err());
        assert!(parse_create_options("zone.size", GIB).is_err());
        assert!(parse_create_options("zone.mode=host-aware", GIB).is_err());
    }

    #[test]
    fn create_options_without_o_use_znsd_defaults() {
        let a = ServeArgs {
            create: Some(GIB),
            ..ServeArgs::default()
        };
        let o = a.create_options().unwrap();
        assert_eq!(o.size, GIB);
        assert_eq!(o.zone, default_create_options().zone);
        assert_eq!(ServeArgs::default().create_options().unwrap().size, 4 * GIB);
    }

    #[test]
    fn cli_parses() {
        let c = Cli::try_parse_from(["znsd"]).unwrap();
        assert!(c.command.is_none());
        let c = Cli::try_parse_from([
            "znsd",
            "serve",
            "--image",
            "x.qcow2",
            "--create",
            "1G",
            "-o",
            "zone.size=16M",
            "--lba-size",
            "512",
            "--queues",
            "8",
            "--cache",
            "writethrough",
            "--direct",
        ])
        .unwrap();
        let Some(Command::Serve(a)) = c.command else {
            panic!("serve expected")
        };
        assert_eq!(a.create, Some(GIB));
        assert_eq!(a.lba_size, 512);
        assert_eq!(a.queues, 8);
        assert_eq!(a.cache, Cache::Writethrough);
        assert!(a.direct);
        assert_eq!(a.create_options().unwrap().zone.size, 16 * MIB);
        assert!(Cli::try_parse_from(["znsd", "serve", "--lba-size", "1024"]).is_err());
        assert!(Cli::try_parse_from(["znsd", "serve", "--queues", "256"]).is_err());
        assert_eq!(a.aio_threads(), usize::from(DEFAULT_DIRECT_AIO_THREADS));
        let c = Cli::try_parse_from(["znsd", "serve", "--direct", "--aio-threads", "0"]).unwrap();
        let Some(Command::Serve(a)) = c.command else {
            panic!("serve expected")
        };
        assert_eq!(
            a.aio_threads(),
            0,
            "--aio-threads 0 keeps transfers on the pollers"
        );
        assert_eq!(
            ServeArgs::default().aio_threads(),
            0,
            "page cache: no I/O threads"
        );
        assert!(Cli::try_parse_from(["znsd", "serve", "--aio-threads", "257"]).is_err());
    }

    #[test]
    fn qemu_line_mentions_socket() {
        let l = qemu_command_line(Path::new("/run/znsd.sock"));
        assert!(l.contains(r#""path":"/run/znsd.sock""#), "{l}");
        assert!(l.contains("share=on"));
    }
}
