//! The host's resolver under `geowall run`: pointed at geowall while it
//! runs, put back as it was by `geowall down`, even after a power loss.
//!
//! Two ways, chosen by what manages the host's resolver:
//!
//! - **systemd-resolved** (`/etc/resolv.conf` links into
//!   `/run/systemd/resolve/` and `resolvectl` is there): geowall gives the
//!   TUN its DNS server, the routing domain `~.` and the default DNS route
//!   with `resolvectl` (as `wg-quick` does through `resolvconf`), and leaves
//!   `/etc/resolv.conf` alone; resolved forgets the settings when the TUN
//!   goes away, and `down` reverts them if it is still there.
//! - **A plain `/etc/resolv.conf`** (a file, or a link another manager
//!   owns): it is replaced by a file naming geowall; what was there (the
//!   file's bytes, or the link's target) is kept in the state directory,
//!   written durably before anything changes, so that `down` puts it back
//!   after a crash or a power loss. A backup already there is the host's
//!   own (an instance died before restoring it) and is kept.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The file the host's resolvers are read from.
pub(crate) const RESOLV_CONF: &str = "/etc/resolv.conf";
/// The backup's name in the state directory.
const BACKUP: &str = "resolver.before.json";
/// Where earlier versions kept the backup (a tmpfs: lost on power loss);
/// `down` still reads it.
const LEGACY_BACKUP: &str = "/run/geowall/resolv.conf.before";

/// What the host's resolver was before geowall changed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub(crate) enum Before {
    /// A regular file with these bytes (as UTF-8, lossy).
    File {
        /// Its text.
        content: String,
    },
    /// A symbolic link to this target.
    Symlink {
        /// Where it pointed.
        target: PathBuf,
    },
    /// systemd-resolved manages it; geowall set the TUN `link`'s DNS.
    Resolved {
        /// The link configured.
        link: String,
    },
}

/// Whether `resolv` is systemd-resolved's: a link into
/// `/run/systemd/resolve/` (its stub or its full list), or to the
/// compatibility file systemd ships.
pub(crate) fn managed_by_resolved(resolv: &Path) -> bool {
    std::fs::read_link(resolv).is_ok_and(|t| {
        t.starts_with("/run/systemd/resolve/")
            || t.starts_with("../run/systemd/resolve/")
            || t == Path::new("/usr/lib/systemd/resolv.conf")
    })
}

/// The `resolvectl` command lines that send every name the host resolves
/// to `server` through `link` (each without the program's name).
pub(crate) fn resolvectl_up(link: &str, server: &str) -> [Vec<String>; 3] {
    let v = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    [
        v(&["dns", link, server]),
        v(&["domain", link, "~."]),
        v(&["default-route", link, "yes"]),
    ]
}

/// The `resolvectl` command line that drops `link`'s settings.
pub(crate) fn resolvectl_down(link: &str) -> Vec<String> {
    vec!["revert".to_owned(), link.to_owned()]
}

fn resolvectl(args: &[String]) -> anyhow::Result<()> {
    let out = std::process::Command::new("resolvectl")
        .args(args)
        .output()
        .context("cannot run resolvectl")?;
    anyhow::ensure!(
        out.status.success(),
        "`resolvectl {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn has_resolvectl() -> bool {
    std::process::Command::new("resolvectl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Writes `bytes` to `path` so that it survives a power loss: a temporary
/// file beside it, synced, renamed over it, and the directory synced.
fn write_durably(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("a backup path has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// The backup in `state`, if any (or one an earlier version left in
/// `/run/geowall`).
fn read_backup(state: &Path) -> anyhow::Result<Option<Before>> {
    let p = state.join(BACKUP);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .with_context(|| format!("{} is damaged", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(std::fs::read(LEGACY_BACKUP).ok().map(|b| Before::File {
                content: String::from_utf8_lossy(&b).into_owned(),
            }))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

/// Points the host's resolver at `server` on `link` (the TUN, already up),
/// keeping what was there in `state` first.
pub(crate) fn point_at(state: &Path, link: &str, server: &str) -> anyhow::Result<()> {
    let resolv = Path::new(RESOLV_CONF);
    let kept = read_backup(state)?;
    let resolved = managed_by_resolved(resolv) && has_resolvectl();
    if kept.is_none() {
        let before = if resolved {
            Before::Resolved {
                link: link.to_owned(),
            }
        } else if let Ok(target) = std::fs::read_link(resolv) {
            Before::Symlink { target }
        } else {
            Before::File {
                content: String::from_utf8_lossy(&std::fs::read(resolv).unwrap_or_default())
                    .into_owned(),
            }
        };
        let json = serde_json::to_vec(&before).context("the resolver's backup")?;
        write_durably(&state.join(BACKUP), &json)
            .context("cannot keep the host's resolver settings")?;
    }
    if resolved {
        for args in resolvectl_up(link, server) {
            resolvectl(&args)?;
        }
        return Ok(());
    }
    let text = format!("# geowall run: every query is answered by geowall\nnameserver {server}\n");
    if resolv.is_symlink() {
        // Another manager's link: replaced by a file of geowall's (put back
        // by `down`), not written through into the manager's own file.
        std::fs::remove_file(resolv).context("cannot replace the /etc/resolv.conf link")?;
    }
    std::fs::write(resolv, text).context("cannot point /etc/resolv.conf at geowall")
}

/// Puts the host's resolver back as the backup in `state` says, and
/// removes the backup. `Ok(false)`: there was nothing to put back.
pub(crate) fn restore(state: &Path) -> anyhow::Result<bool> {
    let Some(before) = read_backup(state)? else {
        return Ok(false);
    };
    let resolv = Path::new(RESOLV_CONF);
    match &before {
        Before::Resolved { link } => {
            // Gone with the TUN, unless the TUN is still there.
            if has_resolvectl() {
                let _ = resolvectl(&resolvectl_down(link));
            }
        }
        Before::Symlink { target } => {
            if resolv.exists() || resolv.is_symlink() {
                std::fs::remove_file(resolv).context("cannot remove geowall's /etc/resolv.conf")?;
            }
            std::os::unix::fs::symlink(target, resolv).with_context(|| {
                format!("cannot link /etc/resolv.conf to {} again", target.display())
            })?;
        }
        Before::File { content } => {
            std::fs::write(resolv, content).context("cannot restore /etc/resolv.conf")?;
        }
    }
    let _ = std::fs::remove_file(state.join(BACKUP));
    let _ = std::fs::remove_file(LEGACY_BACKUP);
    Ok(true)
}

/// Where systemd-resolved lists the DNS servers of the host's links (not
/// its own stub).
pub(crate) const RESOLVED_UPLINKS: &str = "/run/systemd/resolve/resolv.conf";

/// The servers `geowall run` asks, as [`run_upstreams`] says for this
/// host: its `/etc/resolv.conf`'s, under systemd-resolved its links'; and
/// when the file names geowall (while it runs, or after an instance died
/// before putting it back), those of the host's own settings kept in
/// `state`. `own` tells geowall's addresses. Read at start and again while
/// running, so a network change reaches geowall.
pub(crate) fn host_run_upstreams(
    state: &Path,
    own: impl Fn(std::net::IpAddr) -> bool,
) -> anyhow::Result<Vec<std::net::IpAddr>> {
    let resolv = Path::new(RESOLV_CONF);
    let mut text = std::fs::read_to_string(resolv)
        .with_context(|| format!("cannot read {}", resolv.display()))?;
    let mut by_resolved = managed_by_resolved(resolv);
    if nameservers(&text).into_iter().any(&own) {
        match read_backup(state)? {
            Some(Before::File { content }) => {
                (text, by_resolved) = (content, false);
            }
            Some(Before::Symlink { target }) => {
                let t = std::fs::read_to_string(&target).with_context(|| {
                    format!("cannot read {} (the host's resolv.conf)", target.display())
                })?;
                by_resolved = target.starts_with("/run/systemd/resolve/");
                text = t;
            }
            Some(Before::Resolved { .. }) | None => {}
        }
    }
    let uplinks = || {
        std::fs::read_to_string(RESOLVED_UPLINKS).with_context(|| {
            format!(
                "{} is systemd-resolved's stub; cannot read its list of the links' servers {RESOLVED_UPLINKS}",
                resolv.display()
            )
        })
    };
    // Read as it is: the file's servers (or the backup's).
    Ok(run_upstreams(&text, by_resolved, uplinks, &own)?.unwrap_or_else(|| nameservers(&text)))
}

/// The `nameserver` addresses of a resolv.conf text (a scoped IPv6
/// link-local one, which an address alone cannot reach, is left out).
pub(crate) fn nameservers(text: &str) -> Vec<std::net::IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// What `geowall run` takes for the `system` DNS upstream, given the text
/// of the host's resolv.conf: `None` to read it as it is, or the servers
/// to use. A server on loopback (systemd-resolved's stub 127.0.0.53, a
/// local dnsmasq) would hand geowall's own queries back to a resolver
/// that, once the host is pointed at geowall, asks geowall again: a loop;
/// so would geowall's own address. So when the text names one, the servers of the host's links are used
/// instead: as systemd-resolved lists them (`uplinks`, read only when
/// `by_resolved`: the text is its stub's), else the text's other servers;
/// loopback servers and geowall's own (`own`) left out. None left is an
/// error that says what to give.
pub(crate) fn run_upstreams(
    resolv: &str,
    by_resolved: bool,
    uplinks: impl FnOnce() -> anyhow::Result<String>,
    own: impl Fn(std::net::IpAddr) -> bool,
) -> anyhow::Result<Option<Vec<std::net::IpAddr>>> {
    let listed = nameservers(resolv);
    if !listed.iter().any(|ip| ip.is_loopback() || own(*ip)) {
        return Ok(None);
    }
    let mut servers = if by_resolved {
        nameservers(&uplinks()?)
    } else {
        listed.clone()
    };
    servers.retain(|ip| !ip.is_loopback() && !own(*ip));
    servers.dedup();
    if servers.is_empty() {
        anyhow::bail!(
            "the host's resolver is a local one ({}) that geowall run would route back to geowall, and no other server is listed; give an upstream with --dns-upstream (udp:IP, tls:IP@NAME, ...)",
            listed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(Some(servers))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host whose resolv.conf names a loopback stub: under resolved its
    /// links' servers are taken (loopback, scoped link-local and geowall's
    /// own left out), a plain file keeps its other servers, a stub alone is
    /// an error saying what to give, and a file without a loopback server
    /// is read as it is (the links' list not even read).
    #[test]
    fn a_loopback_stub_is_not_run_s_upstream() {
        let ip = |s: &str| -> std::net::IpAddr { s.parse().expect("ip") };
        let own = |a: std::net::IpAddr| a.to_string().starts_with("198.18.255.");
        let uplinks = || {
            Ok("# resolved\nnameserver 192.0.2.53\nnameserver 198.18.255.2\nnameserver 2001:db8::53\nnameserver fe80::1%wlan0\nnameserver 127.0.0.1\nsearch lan\n".to_owned())
        };
        let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\n";
        assert_eq!(
            run_upstreams(stub, true, uplinks, own).expect("read"),
            Some(vec![ip("192.0.2.53"), ip("2001:db8::53")])
        );
        let e = run_upstreams(stub, true, || anyhow::bail!("no such file"), own)
            .expect_err("the links' list is needed");
        assert!(format!("{e:#}").contains("no such file"), "{e:#}");
        let plain = "nameserver 127.0.0.1\nnameserver 198.51.100.53\n";
        assert_eq!(
            run_upstreams(plain, false, uplinks, own).expect("read"),
            Some(vec![ip("198.51.100.53")])
        );
        let e = run_upstreams(stub, false, uplinks, own).expect_err("a stub alone");
        assert!(format!("{e}").contains("--dns-upstream"), "{e}");
        assert!(format!("{e}").contains("127.0.0.53"), "{e}");
        let remote = "nameserver 198.51.100.53\n";
        let unread = || anyhow::bail!("not read");
        assert_eq!(
            run_upstreams(remote, true, unread, own).expect("read"),
            None
        );
        // geowall's own address (left by an instance that died) is no
        // upstream either.
        let left = "nameserver 198.18.255.2\nnameserver 198.51.100.53\n";
        assert_eq!(
            run_upstreams(left, false, uplinks, own).expect("read"),
            Some(vec![ip("198.51.100.53")])
        );
    }

    #[test]
    fn resolved_is_told_what_wg_quick_tells_it() {
        // resolvectl(1): dns LINK SERVER..., domain LINK DOMAIN...,
        // default-route LINK BOOL, revert LINK.
        let up = resolvectl_up("geowall0", "198.18.255.2");
        let lines: Vec<String> = up.iter().map(|a| a.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "dns geowall0 198.18.255.2",
                "domain geowall0 ~.",
                "default-route geowall0 yes"
            ]
        );
        assert_eq!(resolvectl_down("geowall0").join(" "), "revert geowall0");
    }

    #[test]
    fn resolved_is_recognised_by_its_link() {
        let d = tempfile::tempdir().expect("dir");
        let link = |name: &str, to: &str| {
            let p = d.path().join(name);
            std::os::unix::fs::symlink(to, &p).expect("link");
            p
        };
        assert!(managed_by_resolved(&link(
            "a",
            "/run/systemd/resolve/stub-resolv.conf"
        )));
        assert!(managed_by_resolved(&link(
            "b",
            "../run/systemd/resolve/resolv.conf"
        )));
        assert!(managed_by_resolved(&link(
            "c",
            "/usr/lib/systemd/resolv.conf"
        )));
        assert!(!managed_by_resolved(&link(
            "d",
            "/run/NetworkManager/resolv.conf"
        )));
        let plain = d.path().join("e");
        std::fs::write(&plain, "nameserver 192.0.2.1\n").expect("write");
        assert!(!managed_by_resolved(&plain));
    }

    #[test]
    fn the_backup_reads_back_and_a_damaged_one_is_an_error() {
        let d = tempfile::tempdir().expect("dir");
        for b in [
            Before::File {
                content: "nameserver 192.0.2.1\n".into(),
            },
            Before::Symlink {
                target: "/run/NetworkManager/resolv.conf".into(),
            },
            Before::Resolved {
                link: "geowall0".into(),
            },
        ] {
            let json = serde_json::to_vec(&b).expect("json");
            write_durably(&d.path().join(BACKUP), &json).expect("write");
            assert_eq!(read_backup(d.path()).expect("read"), Some(b));
        }
        std::fs::write(d.path().join(BACKUP), b"{").expect("write");
        let e = read_backup(d.path()).expect_err("damaged");
        assert!(format!("{e:#}").contains("damaged"), "{e:#}");
    }
}
