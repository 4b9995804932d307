//! `geowall exec -- CMD [ARGS]`: runs one program confined to a network
//! namespace of its own whose only way out is geowall's TUN (plus
//! loopback), with a resolv.conf pointing into the TUN, as the invoking
//! user. The engine stays in the host namespace, so its sockets cannot
//! loop. The namespace is removed when the program exits; its exit status
//! is geowall's.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::Context;
use geowall::driver::{Protection, TunSpec};
use geowall::engine::dataplane::AppOwner;

/// The TUN's addresses inside the namespace, and the resolver address the
/// program is given (any address works: every query is answered by
/// geowall). Benchmark and documentation ranges only.
const V4: &str = "198.18.255.2/24";
const V6: &str = "2001:db8:ffff:1::2/64";
const RESOLVER: &str = "198.18.255.1";

/// Arguments of `geowall exec`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    engine: super::tunnel::EngineArgs,
    /// The program and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// The namespace and its resolv.conf, removed on drop (also on error).
struct Sandbox {
    name: String,
    etc: PathBuf,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// The user to run the program as: the one who called sudo, else root.
fn invoking_user() -> Option<(String, String)> {
    let uid = std::env::var("SUDO_UID").ok()?;
    let gid = std::env::var("SUDO_GID").ok()?;
    (uid != "0").then_some((uid, gid))
}

/// The executable `program` names: found on `PATH` when it has no slash,
/// with links resolved; as given when it cannot be found (the command then
/// fails to start and says so).
fn program_path(program: &std::ffi::OsStr) -> String {
    let given = Path::new(program);
    let found = if given.components().count() > 1 {
        Some(given.to_path_buf())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(given))
                .find(|p| p.is_file())
        })
    };
    found
        .and_then(|p| std::fs::canonicalize(p).ok())
        .unwrap_or_else(|| given.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

/// The control socket's file, removed when dropped (on every way out).
struct ControlSocket(PathBuf);

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    super::need_root("exec", "it creates a network namespace and a TUN device")?;
    let mut prepared = a.engine.prepare(&Protection::default())?;
    // Every flow in the namespace is the program's (by its executable's
    // full path, as `app` rules and events name programs under `run`),
    // running as the invoking user.
    let app = program_path(&a.command[0]);
    let uid = invoking_user()
        .and_then(|(u, _)| u.parse().ok())
        .unwrap_or_else(|| nix::unistd::geteuid().as_raw());
    prepared
        .engine
        .set_app_lookup(Box::new(move |_, _, _| AppOwner {
            app: Some(app.clone()),
            uid: Some(uid),
        }));
    // The program's end stops the firewall, not geowall's signals.
    prepared.stop_on_signals = false;
    let name = format!("gwexec{}", std::process::id());
    let etc = PathBuf::from("/etc/netns").join(&name);
    // Leftovers of an earlier run that died are removed first.
    let _ = Command::new("ip").args(["netns", "del", &name]).output();
    super::ip(&["netns", "add", &name])?;
    let sandbox = Sandbox {
        name: name.clone(),
        etc: etc.clone(),
    };
    super::ip(&["-n", &name, "link", "set", "lo", "up"])?;
    std::fs::create_dir_all(&etc).with_context(|| format!("cannot create {}", etc.display()))?;
    std::fs::write(etc.join("resolv.conf"), format!("nameserver {RESOLVER}\n"))
        .with_context(|| format!("cannot write {}/resolv.conf", etc.display()))?;
    let spec = TunSpec {
        name: format!("gwx{}", std::process::id() % 1_000_000_000),
        mtu: prepared.mtu,
        netns: Some(name.clone()),
        addresses: vec![
            V4.parse().context("address")?,
            V6.parse().context("address")?,
        ],
        default_route: true,
        offload: !a.engine.no_offload,
    };
    // `geowall status|reload|answer --tun NAME` reach it as any tunnel.
    let (watch, sock) = super::tunnel::control(&spec.name, &prepared)?;
    let control = ControlSocket(sock);
    let (up_tx, up_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let engine = std::thread::spawn(move || {
        let shutdown = async move {
            // Ctrl-C reaches the program (same terminal); geowall stays up
            // until the program is gone, then cleans up.
            let _int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
            let _ = stop_rx.await;
        };
        super::tunnel::serve(
            prepared,
            &spec,
            Protection::default(),
            || {
                let _ = up_tx.send(());
            },
            shutdown,
            Some(watch),
        )
    });
    if up_rx.recv().is_err() {
        // The engine ended before the TUN was up: its error says why.
        return match engine.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(anyhow::anyhow!("the firewall did not start")),
        };
    }
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &name]);
    if let Some((uid, gid)) = invoking_user() {
        cmd.args([
            "setpriv",
            "--reuid",
            &uid,
            "--regid",
            &gid,
            "--init-groups",
            "--",
        ]);
    }
    cmd.args(&a.command);
    let status = cmd.status();
    let _ = stop_tx.send(());
    let summary = engine.join();
    drop(control);
    drop(sandbox);
    let status = status.with_context(|| format!("cannot run {:?}", a.command[0]))?;
    match summary {
        Ok(Ok(s)) => eprintln!("{}", super::tunnel::summary_line(&s)),
        Ok(Err(e)) => eprintln!("geowall: the firewall stopped with an error: {e:#}"),
        Err(_) => eprintln!("geowall: the firewall thread failed"),
    }
    Ok(match status.code() {
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        // Killed by a signal: the shell convention.
        None => {
            use std::os::unix::process::ExitStatusExt;
            ExitCode::from(
                128u8.saturating_add(u8::try_from(status.signal().unwrap_or(1)).unwrap_or(1)),
            )
        }
    })
}
