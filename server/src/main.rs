//! `znsd`: serve a zoned qcow2 image as an NVMe ZNS controller over vfio-user.

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use qcow2zoned::{OpenOptions, ZonedImage};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use znsd::cli::{qemu_command_line, Cli, Command, ServeArgs};
use znsd::ServerOptions;

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // `try_init` also installs the `log` bridge (tracing-subscriber's tracing-log feature), so
    // the vfio_user crate's log records show up too.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn serve(args: &ServeArgs) -> Result<(), String> {
    // Block the termination signals in every thread (threads inherit the mask); the main
    // thread waits for them below and shuts down in order.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .map_err(|e| format!("Cannot block signals: {e}"))?;

    if !args.image.exists() {
        let opts = args.create_options()?;
        tracing::info!(
            image = %args.image.display(),
            size = opts.size,
            zone_size = opts.zone.size,
            "Creating zoned image"
        );
        ZonedImage::create(&args.image, &opts)
            .map_err(|e| format!("Cannot create {}: {e}", args.image.display()))?;
    } else if args.create.is_some() || args.options.is_some() {
        tracing::warn!(image = %args.image.display(), "Image exists; --create/-o ignored");
    }
    let image = ZonedImage::open(
        &args.image,
        OpenOptions {
            read_only: false,
            cache: args.cache.into(),
            direct: args.direct,
            keep_clusters_on_reset: !args.discard_on_reset,
            pread_only: args.pread_reads,
        },
    )
    .map_err(|e| format!("Cannot open {}: {e}", args.image.display()))?;
    let image = Arc::new(image);
    let cfg = nvme::ControllerConfig {
        lba_size: args.lba_size,
        max_io_queues: args.queues,
        volatile_write_cache: matches!(args.cache, znsd::cli::Cache::Writeback),
        aio_threads: args.aio_threads(),
        ..nvme::ControllerConfig::default()
    };
    let ctrl = nvme::Controller::new(Arc::clone(&image), cfg).map_err(|e| e.to_string())?;
    if args.backend == znsd::cli::Backend::Null {
        tracing::warn!("Null backend: data I/O completes without reaching the image");
        ctrl.set_null_io(true);
    }
    let socket = args.socket_path();
    let running = znsd::start(
        Arc::new(ctrl),
        &ServerOptions {
            socket: socket.clone(),
            io_pollers: args.io_pollers(),
            msix_vectors: args.queues + 1,
        },
    )
    .map_err(|e| error_chain(&e))?;
    println!(
        "znsd: serving {} on {}",
        args.image.display(),
        socket.display()
    );
    println!(
        "Attach with:\n  qemu-system-x86_64 {}",
        qemu_command_line(&socket)
    );

    let sig = signals
        .wait()
        .map_err(|e| format!("Waiting for signals failed: {e}"))?;
    tracing::info!(signal = ?sig, "Shutting down");
    running
        .shutdown()
        .map_err(|e| format!("Image flush failed: {e}"))?;
    drop(image);
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let args = match cli.command {
        Some(Command::Serve(a)) => a,
        None => ServeArgs::default(),
    };
    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("znsd: {e}");
            ExitCode::FAILURE
        }
    }
}
