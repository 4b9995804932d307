//! The commands that move packets start with memory copies that suit the
//! CPU they run on.
//!
//! Every TCP segment geowall relays is copied twice by the C library's
//! `memmove`: into a socket's ring buffer and out of it into a packet,
//! blocks of up to 64 KiB each. glibc (2.36 in Debian 12) copies such
//! blocks with `rep movsb`, and on AMD's Zen cores `rep movsb` is slow when
//! the destination lies a few bytes past the source modulo 4 KiB: measured
//! on this project's AMD EPYC machine, a 65,000-byte copy at 2 GB/s instead
//! of 40. Which copies fall there
//! depends on where the heap happens to place the buffers, so one build
//! downloaded at 4.0 Gbit/s with owners found and 5.5 without
//! (`benches/README.md`). glibc's tunable
//! `glibc.cpu.x86_rep_movsb_threshold` moves these sizes to its vector
//! loops, but the dynamic loader reads it only when a program starts. So on an AMD CPU a packet-moving command starts
//! itself again, once, with that tunable raised past any block it copies.
//!
//! The programs it starts (`geowall exec`'s command, hooks) get the
//! environment it was given: the tunable is taken out again as soon as the
//! second start begins. A `GLIBC_TUNABLES` that already sets the threshold
//! is the user's choice and is left alone, as is a binary that cannot be
//! started again (replaced or removed since it started; the command then
//! goes on as it is).

use std::ffi::{OsStr, OsString};

/// glibc's tunable for the smallest copy done with `rep movsb`.
const TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold";
/// Its value here: larger than any copy of a packet or a socket buffer, so
/// `rep movsb` is never chosen for them.
const THRESHOLD: u32 = 1 << 30;
/// Set for the second start: `GLIBC_TUNABLES` as it was (`set:VALUE`), or
/// `unset`.
const BEFORE: &str = "GEOWALL_GLIBC_TUNABLES_BEFORE";

/// Starts this command again with vector copies when it runs on an AMD CPU
/// with glibc; in the second start, gives the environment back as it was.
/// Call it first thing, while the process has one thread.
pub(crate) fn prefer_vector_copies() {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
    {
        use std::os::unix::process::CommandExt;
        if let Some(before) = std::env::var_os(BEFORE) {
            restore(&before);
            return;
        }
        if !amd_cpu() {
            return;
        }
        let current = std::env::var_os("GLIBC_TUNABLES");
        let Some(tuned) = with_vector_copies(current.as_deref()) else {
            return;
        };
        let mut args = std::env::args_os();
        let Some(arg0) = args.next() else {
            return;
        };
        // The file itself, not `/proc/self/exe`, so that the process keeps
        // its name (`ps`, `top`, `pgrep geowall`). A binary replaced or
        // removed since it started cannot be started again.
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        if !exe.is_file() {
            return;
        }
        // `exec` returns only when it failed: the command goes on as it is.
        let _ = std::process::Command::new(exe)
            .arg0(arg0)
            .args(args)
            .env("GLIBC_TUNABLES", tuned)
            .env(BEFORE, remembered(current.as_deref()))
            .exec();
    }
}

/// `GLIBC_TUNABLES` with the threshold added, or `None` where it is set
/// already.
fn with_vector_copies(current: Option<&OsStr>) -> Option<OsString> {
    let ours = format!("{TUNABLE}={THRESHOLD}");
    match current {
        None => Some(ours.into()),
        Some(c) if c.is_empty() => Some(ours.into()),
        Some(c) => {
            let set = c
                .to_string_lossy()
                .split(':')
                .any(|t| t.split('=').next() == Some(TUNABLE));
            if set {
                return None;
            }
            let mut v = c.to_os_string();
            v.push(":");
            v.push(ours);
            Some(v)
        }
    }
}

/// How `GLIBC_TUNABLES` was, for [`BEFORE`].
fn remembered(current: Option<&OsStr>) -> OsString {
    match current {
        None => "unset".into(),
        Some(c) => {
            let mut v = OsString::from("set:");
            v.push(c);
            v
        }
    }
}

/// What [`remembered`] wrote: `Some(value)` if it was set, `None` if not.
fn recalled(before: &OsStr) -> Option<OsString> {
    use std::os::unix::ffi::OsStrExt;
    before
        .as_bytes()
        .strip_prefix(b"set:")
        .map(|v| OsStr::from_bytes(v).to_os_string())
}

#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
#[expect(
    unsafe_code,
    reason = "the environment is changed at start, before any other thread"
)]
fn restore(before: &OsStr) {
    let was = recalled(before);
    // SAFETY: called first thing in `main`, while the process has one
    // thread, so nothing reads the environment meanwhile.
    unsafe {
        match was {
            Some(v) => std::env::set_var("GLIBC_TUNABLES", v),
            None => std::env::remove_var("GLIBC_TUNABLES"),
        }
        std::env::remove_var(BEFORE);
    }
}

/// Whether the CPU is AMD's (or Hygon's, on the same cores).
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
fn amd_cpu() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .find(|l| l.starts_with("vendor_id"))
            .is_some_and(|l| l.contains("AuthenticAMD") || l.contains("HygonGenuine"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_added_to_what_the_user_set() {
        let ours = format!("{TUNABLE}={THRESHOLD}");
        assert_eq!(with_vector_copies(None), Some(OsString::from(&ours)));
        assert_eq!(
            with_vector_copies(Some(OsStr::new(""))),
            Some(OsString::from(&ours))
        );
        assert_eq!(
            with_vector_copies(Some(OsStr::new("glibc.malloc.check=3"))),
            Some(OsString::from(format!("glibc.malloc.check=3:{ours}")))
        );
    }

    #[test]
    fn a_threshold_the_user_set_is_kept() {
        for set in [
            "glibc.cpu.x86_rep_movsb_threshold=4096",
            "glibc.malloc.check=3:glibc.cpu.x86_rep_movsb_threshold=8192",
        ] {
            assert_eq!(with_vector_copies(Some(OsStr::new(set))), None, "{set}");
        }
        // A longer name that only starts the same is another tunable.
        assert!(
            with_vector_copies(Some(OsStr::new(
                "glibc.cpu.x86_rep_movsb_threshold_other=1"
            )))
            .is_some()
        );
    }

    #[test]
    fn the_environment_comes_back_as_it_was() {
        for was in [None, Some(""), Some("glibc.malloc.check=3"), Some("set:x")] {
            let was = was.map(OsStr::new);
            assert_eq!(recalled(&remembered(was)).as_deref(), was, "{was:?}");
        }
    }
}
