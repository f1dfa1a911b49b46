//! The real `znsd` binary as a child process: spawn on an image and socket, wait for it to
//! serve, SIGKILL or SIGTERM it.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `znsd`.
pub struct Daemon {
    pub child: Child,
    stdout: mpsc::Receiver<String>,
}

impl Daemon {
    /// Start `znsd serve --image <image> --socket <socket> <extra…>` and wait until it
    /// serves (its "serving" line on stdout). stderr is inherited so a panic message shows.
    pub fn serve(image: &Path, socket: &Path, extra: &[&str]) -> Daemon {
        let d = Daemon::serve_nowait(image, socket, extra);
        d.wait_line("znsd: serving");
        d
    }

    /// Like [`Daemon::serve`] without waiting: the process may still be opening the image.
    pub fn serve_nowait(image: &Path, socket: &Path, extra: &[&str]) -> Daemon {
        let mut args = vec![
            "serve",
            "--image",
            image.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Daemon::spawn(image.parent().unwrap(), &args)
    }

    /// Send `sig` without waiting.
    pub fn signal(&self, sig: Signal) {
        let _ = kill(self.pid(), sig);
    }

    pub fn spawn(cwd: &Path, args: &[&str]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_znsd"))
            .args(args)
            .current_dir(cwd)
            .env(
                "RUST_LOG",
                std::env::var("ZNSD_TEST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Daemon { child, stdout: rx }
    }

    /// Collect stdout until a line contains `needle` (60 s hang detector).
    pub fn wait_line(&self, needle: &str) -> String {
        let mut all = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stdout
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {needle:?} in znsd output: {all}"));
            all.push_str(&line);
            all.push('\n');
            if line.contains(needle) {
                return all;
            }
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap())
    }

    /// Exit status if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// SIGKILL and reap. Returns the status the process had if it was already gone.
    pub fn kill9(mut self) -> Option<ExitStatus> {
        if let Some(st) = self.exited() {
            return Some(st);
        }
        kill(self.pid(), Signal::SIGKILL).unwrap();
        self.child.wait().unwrap();
        None
    }

    /// SIGTERM and wait (60 s hang detector); the exit code.
    pub fn terminate(mut self) -> i32 {
        if let Some(st) = self.exited() {
            return st.code().unwrap_or(-1);
        }
        kill(self.pid(), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "znsd ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Small deterministic generator (splitmix64) for seeded test workloads.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    /// True with probability `pct`%.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Iteration count: `soak` when ZNSD_SOAK=1, `ci` otherwise.
pub fn soak_or(ci: u64, soak: u64) -> u64 {
    if std::env::var("ZNSD_SOAK").is_ok_and(|v| v == "1") {
        soak
    } else {
        ci
    }
}

/// Seed from `var` if set, else `default`.
pub fn seed_from_env(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
