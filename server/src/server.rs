//! The vfio-user listener: one client at a time, reconnects, shutdown.
//!
//! `vfio_user::Server::run` accepts one connection and serves it until EOF, blocking. We run
//! it on its own thread ("znsd-vfio-user") in a loop: after each client (clean EOF, socket
//! error, or a panic inside the crate on a malformed message) the client's DMA maps and
//! eventfds are dropped, the controller is reset and the image flushed, then the next client
//! is accepted. Zones and data persist across clients.

use crate::backend::Backend;
use crate::bar::{self, DoorbellPage};
use crate::device::{Device, NvmeDevice};
use crate::dma::GuestRam;
use crate::irq::{self, IrqState};
use crate::poller::Pollers;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another process serves this socket.
    #[error("Socket {0} is in use by a running server")]
    SocketInUse(PathBuf),
    /// The path exists and is not a socket; we refuse to delete it.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Filesystem operation on the socket path failed.
    #[error("Cannot prepare socket {path}")]
    SocketPath {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The doorbell memfd could not be created.
    #[error("Cannot create the doorbell page")]
    Doorbells(#[source] crate::dma::MapError),
    /// vfio-user listener setup failed.
    #[error("Cannot listen on the vfio-user socket")]
    Listen(#[source] vfio_user::Error),
    /// Thread creation failed.
    #[error("Cannot start threads")]
    Thread(#[source] std::io::Error),
}

/// Server options.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// UNIX socket path.
    pub socket: PathBuf,
    /// Number of I/O poller threads.
    pub io_pollers: usize,
    /// MSI-X vectors offered (admin + I/O queues), 1..=256.
    pub msix_vectors: u16,
}

/// A running server.
pub struct Running {
    dev: Arc<Device>,
    pollers: Arc<Pollers>,
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    clients: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// Remove a stale socket file at `path` (nobody accepts on it); refuse if a server answers
/// or if the path is not a socket.
pub fn replace_stale_socket(path: &Path) -> Result<(), ServeError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ServeError::SocketPath {
            path: path.into(),
            source,
        }),
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(ServeError::SocketInUse(path.into()));
            }
            tracing::info!(path = %path.display(), "Removing stale socket");
            std::fs::remove_file(path).map_err(|source| ServeError::SocketPath {
                path: path.into(),
                source,
            })
        }
        Ok(_) => Err(ServeError::NotASocket(path.into())),
    }
}

/// Start serving `ctrl` on `opts.socket`.
pub fn start(ctrl: Arc<dyn NvmeDevice>, opts: &ServerOptions) -> Result<Running, ServeError> {
    let vectors = opts.msix_vectors.clamp(1, bar::MAX_MSIX_VECTORS);
    replace_stale_socket(&opts.socket)?;
    let dev = Arc::new(Device {
        ctrl,
        ram: GuestRam::new(),
        doorbells: DoorbellPage::new().map_err(ServeError::Doorbells)?,
        irq: IrqState::new(vectors),
    });
    let server = vfio_user::Server::new(
        &opts.socket,
        true,
        irq::irq_infos(vectors),
        bar::regions(&dev.doorbells),
    )
    .map_err(ServeError::Listen)?;
    let pollers =
        Arc::new(Pollers::start(Arc::clone(&dev), opts.io_pollers).map_err(ServeError::Thread)?);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = Arc::new(AtomicU64::new(0));
    let mut backend = Backend::new(Arc::clone(&dev), Arc::clone(&pollers));
    let (stop2, clients2) = (Arc::clone(&stop), Arc::clone(&clients));
    let thread = std::thread::Builder::new()
        .name("znsd-vfio-user".into())
        .spawn(move || serve_loop(&server, &mut backend, &stop2, &clients2))
        .map_err(ServeError::Thread)?;
    tracing::info!(socket = %opts.socket.display(), "Listening for vfio-user clients");
    Ok(Running {
        dev,
        pollers,
        socket: opts.socket.clone(),
        stop,
        clients,
        thread: Some(thread),
    })
}

fn serve_loop(
    server: &vfio_user::Server,
    backend: &mut Backend,
    stop: &AtomicBool,
    clients: &AtomicU64,
) {
    loop {
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| server.run(backend)));
        let n = clients.load(Ordering::Acquire) + 1;
        match r {
            Ok(Ok(())) => tracing::info!(client = n, "Client disconnected"),
            Ok(Err(e @ vfio_user::Error::SocketAccept(_))) => {
                tracing::error!(error = %e, "Accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(Err(e)) => tracing::warn!(client = n, error = %e, "Client connection failed"),
            Err(_) => tracing::error!(
                client = n,
                "Protocol loop panicked on a malformed message; dropping the client"
            ),
        }
        backend.disconnect();
        clients.fetch_add(1, Ordering::AcqRel);
        if stop.load(Ordering::Acquire) {
            return;
        }
    }
}

impl Running {
    /// The shared device state.
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Clients served to completion so far.
    pub fn clients_done(&self) -> u64 {
        self.clients.load(Ordering::Acquire)
    }

    /// Stop serving: quiesce the pollers, flush the image and remove the socket. Used on
    /// SIGTERM/SIGINT (the caller then exits) and by tests. A client still connected keeps
    /// its thread until it disconnects; nothing is served to it any more by the pollers.
    pub fn shutdown(mut self) -> std::io::Result<()> {
        self.stop.store(true, Ordering::Release);
        let _ = self.pollers.quiesce();
        let flushed = self.dev.ctrl.flush();
        // Unblock an idle accept() so the loop sees `stop`.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(1);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        match std::fs::remove_file(&self.socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(error = %e, "Cannot remove socket");
            }
            _ => {}
        }
        flushed
    }
}
