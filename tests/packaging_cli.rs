//! Shell completions and the manual page come from the command's own
//! definitions; the systemd unit names commands that exist.

use std::process::Command;

fn geowall(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_geowall"))
        .args(args)
        .output()
        .expect("geowall runs")
}

#[test]
fn completions_and_man_page_cover_every_command() {
    let bash = geowall(&["completions", "bash"]);
    assert!(bash.status.success());
    let bash = String::from_utf8_lossy(&bash.stdout);
    let man = geowall(&["man"]);
    assert!(man.status.success());
    let man = String::from_utf8_lossy(&man.stdout);
    assert!(
        man.starts_with(".ie") || man.contains(".TH geowall"),
        "{}",
        &man[..man.len().min(200)]
    );
    for cmd in [
        "lookup", "audit", "rules", "tunnel", "run", "down", "exec", "demo", "status", "reload",
    ] {
        assert!(bash.contains(cmd), "completions lack {cmd}");
        assert!(man.contains(cmd), "the man page lacks {cmd}");
    }
    let bad = geowall(&["completions", "nosuchshell"]);
    assert_eq!(bad.status.code(), Some(1), "bad input");
    assert_eq!(geowall(&["--help"]).status.code(), Some(0));
    // Every page the manual refers to is one `geowall man --dir` writes.
    let dir = tempfile::tempdir().expect("tempdir");
    let o = geowall(&["man", "--dir", dir.path().to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pages: Vec<String> = std::fs::read_dir(dir.path())
        .expect("pages")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        pages.contains(&"geowall-rules-check.1".to_owned()),
        "{pages:?}"
    );
    let mut named = 0;
    for part in man.split("geowall\\-").skip(1) {
        let Some(end) = part.find("(1)") else {
            continue;
        };
        let page = format!("geowall-{}.1", part[..end].replace("\\-", "-"));
        assert!(
            pages.contains(&page),
            "{page} is named but not written: {pages:?}"
        );
        named += 1;
    }
    assert!(named >= 10, "the manual names its subcommands' pages");
}

#[test]
fn the_systemd_unit_fails_closed_with_real_commands() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/geowall.service"))
            .expect("unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/geowall run --preset default"));
    // Fail-closed: the stop step removes the setup only after a clean stop
    // (systemd runs ExecStopPost after crashes too), nothing else tears it
    // down, restarts never give up, and it starts before the network.
    let stops: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ExecStopPost=") || l.starts_with("ExecStartPre="))
        .collect();
    assert_eq!(
        stops,
        ["ExecStopPost=/usr/local/bin/geowall down --after-stop"],
        "no unconditional teardown"
    );
    for line in [
        "Restart=always",
        "StartLimitIntervalSec=0",
        "Before=network-pre.target",
        "Wants=network-pre.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    assert!(!unit.contains("After=network-online.target"));
    let help = geowall(&["down", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("--after-stop"));
    // The flags it uses parse.
    let help = geowall(&["run", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--preset") && help.contains("--events"));
    // The logrotate rules rotate the file the unit writes, and signal the
    // unit's main process (which opens the file again on SIGHUP).
    let events = unit
        .split_whitespace()
        .skip_while(|w| *w != "--events")
        .nth(1)
        .expect("the unit writes events");
    let rotate = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dist/geowall.logrotate"
    ))
    .expect("logrotate rules");
    assert!(
        rotate.lines().any(|l| l.trim() == format!("{events} {{")),
        "{rotate}"
    );
    assert!(rotate.contains("--signal=SIGHUP --kill-whom=main geowall.service"));
    assert!(
        unit.lines()
            .any(|l| l == "ExecReload=/usr/local/bin/geowall reload")
    );
}

/// Every command that needs root says so the same way, as an unprivileged
/// user: the command, why, how to run it, exit status 2 (as root, the
/// commands run through `setpriv` as `nobody`; nothing is started).
#[test]
fn commands_that_need_root_refuse_alike_with_status_2() {
    use std::os::unix::fs::PermissionsExt;
    let root = nix::unistd::geteuid().is_root();
    // A copy `nobody` can run wherever the checkout lives.
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("geowall");
    if root {
        std::fs::copy(env!("CARGO_BIN_EXE_geowall"), &bin).expect("copy");
        for (p, mode) in [(dir.path(), 0o755), (bin.as_path(), 0o755)] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
    }
    for args in [
        &["run"][..],
        &["exec", "--", "true"],
        &["tunnel"],
        &["demo"],
        &["down"],
    ] {
        let mut c = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
            c.arg(&bin);
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_geowall"))
        };
        let out = c.args(args).output().expect("geowall runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let cmd = args[0];
        assert!(
            err.contains(&format!("geowall {cmd} needs root ("))
                && err.contains(&format!("sudo geowall {cmd}")),
            "{args:?}: {err}"
        );
    }
}
