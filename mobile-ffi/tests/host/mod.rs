//! Driving a program that embeds geowall (the C host, the Java host): it
//! runs in a network namespace, under valgrind when asked, and answers one
//! line per command.
#![allow(dead_code, reason = "each test binary uses a part")]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long one command may take (valgrind is slow).
const REPLY: Duration = Duration::from_secs(120);

/// Where cargo put `libgeowall_ffi.so` (beside this test's `deps/`).
/// `cargo test` builds the crate only as the Rust library its tests link,
/// so the shared library is built here, by cargo, once per test binary.
pub(crate) fn library_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test executable");
            let dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile>")
                .to_owned();
            let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            c.args(["build", "--quiet", "-p", "geowall-ffi", "--lib"])
                .current_dir(crate_dir());
            if dir.file_name().is_some_and(|n| n == "release") {
                c.arg("--release");
            }
            let o = c.output().expect("cargo runs");
            assert!(
                o.status.success(),
                "cargo build -p geowall-ffi: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                dir.join("libgeowall_ffi.so").exists(),
                "no libgeowall_ffi.so in {}",
                dir.display()
            );
            dir
        })
        .clone()
}

/// Routes the firewall namespace `fw` into the app's TUN `tun`, as a
/// phone's VPN does: an address on it, and everything not marked `mark`
/// (sockets the library protected) through it.
pub(crate) fn route_into_tun(fw: &str, tun: &str, mark: &str) {
    use crate::support::ip;
    ip(&["-n", fw, "addr", "add", "198.18.1.2/24", "dev", tun]);
    ip(&["-n", fw, "link", "set", tun, "up"]);
    ip(&[
        "-n", fw, "route", "add", "default", "dev", tun, "table", "100",
    ]);
    ip(&[
        "-n", fw, "rule", "add", "not", "fwmark", mark, "table", "100", "prio", "100",
    ]);
}

/// Starts the C host `exe` on the TUN of `net`'s firewall namespace
/// (under valgrind if `memcheck` and installed), its protected sockets
/// marked `mark`, and routes that namespace into the TUN.
pub(crate) fn c_host_on_tun(
    net: &crate::support::Net,
    exe: &Path,
    mark: &str,
    memcheck: bool,
) -> Host {
    let mut app = Host::spawn_with(
        &net.fw,
        &[exe.to_str().expect("path")],
        &[&net.tun, mark],
        memcheck,
    );
    app.expect_line("tun ready");
    route_into_tun(&net.fw, &net.tun, mark);
    app
}

/// The crate's directory.
pub(crate) fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Compiles `tests/c/NAME` against the header and the library with the
/// system `cc`, warnings as errors; the executable's path.
pub(crate) fn compile(name: &str) -> PathBuf {
    let lib = library_dir();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name.trim_end_matches(".c"));
    let o = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join("tests/c").join(name))
        .arg("-L")
        .arg(&lib)
        .arg("-lgeowall_ffi")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&out)
        .output()
        .expect("cc runs");
    assert!(
        o.status.success(),
        "cc {name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Whether valgrind is there to run the host under.
pub(crate) fn valgrind() -> bool {
    let ok = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("valgrind is not installed: running without it (.ci/run installs it)");
    }
    ok
}

/// A running host program.
pub(crate) struct Host {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    /// Its standard error (callbacks' log, valgrind's report).
    pub(crate) log: PathBuf,
    vg_log: Option<PathBuf>,
}

impl Host {
    /// Starts `program ARGS` in namespace `ns` (under valgrind if present).
    pub(crate) fn spawn(ns: &str, program: &Path, args: &[&str]) -> Self {
        Self::spawn_with(
            ns,
            &[program.as_os_str().to_str().expect("path")],
            args,
            true,
        )
    }

    /// Starts `argv ARGS` in namespace `ns`; `memcheck`: under valgrind if
    /// it is installed.
    pub(crate) fn spawn_with(ns: &str, argv: &[&str], args: &[&str], memcheck: bool) -> Self {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let tag = format!("{}-{}", std::process::id(), ns);
        let log = tmp.join(format!("host-{tag}.log"));
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        let vg_log = (memcheck && valgrind()).then(|| tmp.join(format!("valgrind-{tag}.log")));
        if let Some(v) = &vg_log {
            c.args([
                "valgrind",
                "--error-exitcode=99",
                "--leak-check=full",
                "--show-leak-kinds=definite,indirect",
                "--errors-for-leak-kinds=definite,indirect",
            ])
            .arg(format!("--log-file={}", v.display()));
        }
        c.args(argv).args(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = c.spawn().expect("the host starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
            log,
            vg_log,
        }
    }

    /// What the host wrote to standard error so far (its `log` and
    /// `event` lines).
    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn diagnostics(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let vg = self
            .vg_log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let tail = |s: &str| {
            let l: Vec<&str> = s.lines().collect();
            l[l.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "--- host stderr ---\n{}\n--- valgrind ---\n{}",
            tail(&log),
            tail(&vg)
        )
    }

    /// The next line the host prints.
    pub(crate) fn line(&mut self) -> String {
        match self.lines.recv_timeout(REPLY) {
            Ok(l) => l,
            Err(e) => panic!("no answer from the host ({e})\n{}", self.diagnostics()),
        }
    }

    /// Waits for exactly `want`.
    pub(crate) fn expect_line(&mut self, want: &str) {
        let l = self.line();
        assert_eq!(l, want, "{}", self.diagnostics());
    }

    /// Sends a command; its one-line answer.
    pub(crate) fn cmd(&mut self, c: &str) -> String {
        writeln!(self.stdin, "{c}").expect("the host reads");
        self.stdin.flush().expect("flush");
        self.line()
    }

    /// Ends the host and checks it exited cleanly (valgrind: no errors,
    /// no leaks).
    pub(crate) fn quit(mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let status = self.child.wait().expect("the host exits");
        assert!(
            status.success(),
            "the host exited with {status} (99: valgrind found errors)\n{}",
            self.diagnostics()
        );
        if let Some(v) = &self.vg_log {
            let report = std::fs::read_to_string(v).unwrap_or_default();
            eprintln!("valgrind: {}", summary(&report));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Valgrind's error and leak summary lines.
fn summary(report: &str) -> String {
    report
        .lines()
        .filter(|l| {
            l.contains("ERROR SUMMARY")
                || l.contains("definitely lost")
                || l.contains("indirectly lost")
        })
        .map(|l| l.split_once("== ").map_or(l, |(_, r)| r).trim())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The number after `key=` in a stats line.
pub(crate) fn stat(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_owned))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in '{line}'"))
}
