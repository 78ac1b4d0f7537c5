//! `sluice check`: is this host ready to run a broker?
//!
//! Each check reads one fact from the kernel (`gather_*`, the IO shell) and judges it with a
//! pure function (`eval_*`, unit-tested) into a [`Check`]: pass, warn (works, but not what
//! production wants) or fail (the broker will not work or will lose data), with the value
//! found and what to change. Only a failure makes the command exit non-zero.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As recommended.
    Pass,
    /// Works, but not recommended for production.
    Warn,
    /// The broker will not work or may lose data.
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short identifier (`io_uring`, `nofile`, ...).
    pub name: &'static str,
    /// Pass, warn or fail.
    pub status: Status,
    /// What was found.
    pub value: String,
    /// What to change (empty when it passes).
    pub remedy: String,
}

fn check(name: &'static str, status: Status, value: impl Into<String>, remedy: &str) -> Check {
    Check {
        name,
        status,
        value: value.into(),
        remedy: if status == Status::Pass {
            String::new()
        } else {
            remedy.to_string()
        },
    }
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// io_uring: `disabled` is `/proc/sys/kernel/io_uring_disabled` (absent on kernels before
/// 6.6), `ring` the result of creating a ring (an errno on failure).
pub fn eval_io_uring(disabled: Option<i64>, ring: Result<(), i32>) -> Check {
    let sysctl = disabled.map_or("absent".to_string(), |d| d.to_string());
    match ring {
        Ok(()) => check(
            "io_uring",
            Status::Pass,
            format!("ring created (kernel.io_uring_disabled={sysctl})"),
            "",
        ),
        Err(errno) => {
            let remedy = match (errno, disabled) {
                (_, Some(2)) => "io_uring is disabled: `sysctl -w kernel.io_uring_disabled=0` (and in /etc/sysctl.d)",
                (_, Some(1)) => "io_uring is restricted to kernel.io_uring_group: set kernel.io_uring_disabled=0 or add the sluice user to that group",
                (libc::ENOSYS, _) => "the kernel has no io_uring: use Linux 5.11 or newer (5.19+ recommended)",
                (libc::ENOMEM, _) => "not enough locked memory for a ring: LimitMEMLOCK=infinity (systemd) or `ulimit -l unlimited`",
                (libc::EPERM, _) => "io_uring is blocked (seccomp or container policy): allow io_uring_setup/enter/register",
                _ => "io_uring is unusable: see the error and docs/deployment.md",
            };
            check(
                "io_uring",
                Status::Fail,
                format!(
                    "cannot create a ring: {} (kernel.io_uring_disabled={sysctl})",
                    std::io::Error::from_raw_os_error(errno)
                ),
                remedy,
            )
        }
    }
}

/// RLIMIT_MEMLOCK soft limit in bytes (`None` = unlimited).
pub fn eval_memlock(soft: Option<u64>) -> Check {
    let remedy = "LimitMEMLOCK=infinity in the unit (kernels before 5.12 charge io_uring rings to locked memory)";
    match soft {
        None => check("memlock", Status::Pass, "unlimited", remedy),
        Some(b) if b >= 64 * MIB => {
            check("memlock", Status::Pass, format!("{} MiB", b / MIB), remedy)
        }
        Some(b) => check("memlock", Status::Warn, format!("{} KiB", b / 1024), remedy),
    }
}

/// RLIMIT_NOFILE soft and hard limits.
pub fn eval_nofile(soft: u64, hard: u64) -> Check {
    let value = format!("soft {soft}, hard {hard}");
    let remedy = "LimitNOFILE=1048576 in the unit, or `ulimit -n 1048576` (each segment, index and connection is a descriptor)";
    let status = if soft >= 100_000 {
        Status::Pass
    } else if soft >= 4096 {
        Status::Warn
    } else {
        Status::Fail
    };
    check("nofile", status, value, remedy)
}

/// Free and total bytes of the data directory's file system.
pub fn eval_disk_free(path: &Path, free: u64, total: u64) -> Check {
    let pct = if total == 0 {
        0.0
    } else {
        free as f64 * 100.0 / total as f64
    };
    let value = format!(
        "{:.1} GiB free of {:.1} GiB ({pct:.0}%) at {}",
        free as f64 / GIB as f64,
        total as f64 / GIB as f64,
        path.display()
    );
    let status = if free < GIB || pct < 5.0 {
        Status::Fail
    } else if pct < 15.0 {
        Status::Warn
    } else {
        Status::Pass
    };
    check(
        "disk_free",
        status,
        value,
        "free space or lower retention (log.retention.bytes / log.retention.ms); a full disk takes the log offline",
    )
}

/// The data directory's file-system type name.
pub fn eval_fs_type(name: &str) -> Check {
    let (status, remedy) = match name {
        "xfs" | "ext4" => (Status::Pass, ""),
        "tmpfs" | "ramfs" => (
            Status::Warn,
            "tmpfs loses every message on reboot: put log.dirs on XFS or ext4",
        ),
        "nfs" | "cifs" | "smb2" | "fuse" => (
            Status::Fail,
            "network file systems break fsync and mmap semantics: use a local XFS or ext4 disk",
        ),
        _ => (
            Status::Warn,
            "XFS (recommended) or ext4 are the tested file systems",
        ),
    };
    check("fs_type", status, name, remedy)
}

/// Whether the data directory (or the directory that will hold it) is writable.
pub fn eval_writable(path: &Path, result: Result<(), String>) -> Check {
    match result {
        Ok(()) => check("data_dir", Status::Pass, format!("{} writable", path.display()), ""),
        Err(e) => check(
            "data_dir",
            Status::Fail,
            format!("{}: {e}", path.display()),
            "create log.dirs and give it to the broker's user (install.sh: /var/lib/sluice owned by sluice)",
        ),
    }
}

/// Clock state from `adjtimex`: its return value and the `status` bits.
pub fn eval_clock(state: i32, status_bits: i32) -> Check {
    let synced = state != libc::TIME_ERROR && status_bits & libc::STA_UNSYNC == 0;
    check(
        "clock_sync",
        if synced { Status::Pass } else { Status::Warn },
        if synced { "synchronised" } else { "not synchronised" },
        "run chrony, ntpd or systemd-timesyncd: record timestamps drive time retention and offset-by-time lookups",
    )
}

/// `vm.swappiness`.
pub fn eval_swappiness(v: i64) -> Check {
    check(
        "swappiness",
        if v <= 1 { Status::Pass } else { Status::Warn },
        v.to_string(),
        "`sysctl -w vm.swappiness=1`: the page cache holds the log; swapping the broker's heap stalls a shard",
    )
}

/// Contents of `/sys/kernel/mm/transparent_hugepage/enabled`.
pub fn eval_thp(enabled: &str) -> Check {
    let mode = enabled
        .split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(['[', ']']).to_string())
        .unwrap_or_else(|| enabled.trim().to_string());
    check(
        "transparent_hugepages",
        if mode == "always" { Status::Warn } else { Status::Pass },
        mode,
        "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled: `always` causes compaction stalls",
    )
}

fn unknown(name: &'static str, what: &str) -> Check {
    check(
        name,
        Status::Warn,
        format!("unknown ({what})"),
        "could not be read; check by hand (docs/deployment.md)",
    )
}

fn read_int(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The nearest existing directory at or above `path` (the data dir may not exist yet).
fn existing_ancestor(path: &Path) -> PathBuf {
    let mut p = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    while !p.is_dir() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

fn gather_writable(dir: &Path) -> Result<(), String> {
    let probe = dir.join(format!(".sluice-check-{}", std::process::id()));
    std::fs::write(&probe, b"x").map_err(|e| e.to_string())?;
    std::fs::remove_file(&probe).map_err(|e| e.to_string())
}

/// Runs every check for a broker whose `log.dirs` is `data_dir`.
pub fn run(data_dir: &Path) -> Vec<Check> {
    use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
    let mut out = Vec::new();

    let disabled = read_int("/proc/sys/kernel/io_uring_disabled");
    let ring = crate::io::runtime::probe_io_uring().map_err(|e| e.raw_os_error().unwrap_or(0));
    out.push(eval_io_uring(disabled, ring));

    match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) => out.push(eval_memlock((soft != RLIM_INFINITY).then_some(soft))),
        Err(e) => out.push(unknown("memlock", &e.to_string())),
    }
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => out.push(eval_nofile(soft, hard)),
        Err(e) => out.push(unknown("nofile", &e.to_string())),
    }

    let dir = existing_ancestor(data_dir);
    out.push(eval_writable(&dir, gather_writable(&dir)));
    match nix::sys::statvfs::statvfs(&dir) {
        Ok(s) => {
            let frag = s.fragment_size();
            out.push(eval_disk_free(
                &dir,
                s.blocks_available().saturating_mul(frag),
                s.blocks().saturating_mul(frag),
            ))
        }
        Err(e) => out.push(unknown("disk_free", &e.to_string())),
    }
    match nix::sys::statfs::statfs(&dir) {
        Ok(s) => out.push(eval_fs_type(fs_name(s.filesystem_type().0))),
        Err(e) => out.push(unknown("fs_type", &e.to_string())),
    }

    // SAFETY: a zeroed timex with modes = 0 asks adjtimex to only read the clock state; the
    // pointer is to a live, properly aligned local.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: see above; adjtimex writes only into `tx`.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        out.push(unknown(
            "clock_sync",
            &std::io::Error::last_os_error().to_string(),
        ));
    } else {
        out.push(eval_clock(state, tx.status));
    }

    match read_int("/proc/sys/vm/swappiness") {
        Some(v) => out.push(eval_swappiness(v)),
        None => out.push(unknown("swappiness", "/proc/sys/vm/swappiness")),
    }
    match std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled") {
        Ok(t) => out.push(eval_thp(&t)),
        // No THP support at all: nothing can stall on it.
        Err(_) => out.push(check(
            "transparent_hugepages",
            Status::Pass,
            "not supported",
            "",
        )),
    }
    out
}

/// Name of a `statfs` magic number (its width differs between architectures).
fn fs_name(magic: impl Into<i64>) -> &'static str {
    match magic.into() {
        0x5846_5342 => "xfs",
        0xEF53 => "ext4",
        0x0102_1994 => "tmpfs",
        0x8584_58f6 => "ramfs",
        0x9123_683E => "btrfs",
        0x2FC1_2FC1 => "zfs",
        0x794C_7630 => "overlay",
        0x6969 => "nfs",
        0xFF53_4D42 => "cifs",
        0xFE53_4D42 => "smb2",
        0x6573_5546 => "fuse",
        0x5346_414F => "afs",
        0x0102_1997 => "9p",
        _ => "unknown",
    }
}

/// Whether every check passed or only warned.
pub fn all_ok(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}

/// The checks as JSON: `{"ok": bool, "checks": [{name, status, value, remedy}]}`.
pub fn to_json(checks: &[Check]) -> String {
    let doc = serde_json::json!({ "ok": all_ok(checks), "checks": checks });
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".to_string())
}

/// The checks as an aligned table, remedies under the rows that need them.
pub fn to_table(checks: &[Check]) -> String {
    let w = checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!("{:<w$}  {:<6}  VALUE\n", "CHECK", "STATUS");
    for c in checks {
        out.push_str(&format!(
            "{:<w$}  {:<6}  {}\n",
            c.name,
            c.status.as_str(),
            c.value
        ));
        if !c.remedy.is_empty() {
            out.push_str(&format!("{:<w$}  {:<6}  -> {}\n", "", "", c.remedy));
        }
    }
    let fails = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warns = checks.iter().filter(|c| c.status == Status::Warn).count();
    out.push_str(&format!(
        "\n{} checks: {} failed, {} warnings\n",
        checks.len(),
        fails,
        warns
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_uring_judgement() {
        assert_eq!(eval_io_uring(Some(0), Ok(())).status, Status::Pass);
        let c = eval_io_uring(Some(2), Err(libc::EPERM));
        assert_eq!(c.status, Status::Fail);
        assert!(c.remedy.contains("io_uring_disabled=0"));
        assert!(eval_io_uring(None, Err(libc::ENOSYS))
            .remedy
            .contains("5.11"));
        assert!(eval_io_uring(None, Err(libc::ENOMEM))
            .remedy
            .contains("MEMLOCK"));
    }

    #[test]
    fn limits() {
        assert_eq!(eval_memlock(None).status, Status::Pass);
        assert_eq!(eval_memlock(Some(8 << 20)).status, Status::Warn);
        assert_eq!(eval_memlock(Some(1 << 30)).status, Status::Pass);
        assert_eq!(eval_nofile(1024, 4096).status, Status::Fail);
        assert_eq!(eval_nofile(65536, 65536).status, Status::Warn);
        assert_eq!(eval_nofile(1 << 20, 1 << 20).status, Status::Pass);
        assert!(eval_nofile(1024, 4096).remedy.contains("LimitNOFILE"));
    }

    #[test]
    fn disk_and_fs() {
        let p = Path::new("/d");
        assert_eq!(eval_disk_free(p, 100 * GIB, 200 * GIB).status, Status::Pass);
        assert_eq!(eval_disk_free(p, 20 * GIB, 200 * GIB).status, Status::Warn);
        assert_eq!(eval_disk_free(p, 5 * GIB, 200 * GIB).status, Status::Fail);
        assert_eq!(eval_disk_free(p, GIB / 2, 2 * GIB).status, Status::Fail);
        assert_eq!(eval_fs_type("xfs").status, Status::Pass);
        assert_eq!(eval_fs_type("tmpfs").status, Status::Warn);
        assert_eq!(eval_fs_type("nfs").status, Status::Fail);
        assert_eq!(fs_name(0x5846_5342i64), "xfs");
        assert_eq!(fs_name(0xEF53i64), "ext4");
    }

    #[test]
    fn sysctls() {
        assert_eq!(eval_clock(libc::TIME_OK, 0).status, Status::Pass);
        assert_eq!(
            eval_clock(libc::TIME_ERROR, libc::STA_UNSYNC).status,
            Status::Warn
        );
        assert_eq!(eval_swappiness(1).status, Status::Pass);
        assert_eq!(eval_swappiness(60).status, Status::Warn);
        let thp = eval_thp("[always] madvise never\n");
        assert_eq!((thp.status, thp.value.as_str()), (Status::Warn, "always"));
        assert_eq!(eval_thp("always [madvise] never").status, Status::Pass);
    }

    #[test]
    fn output_formats() {
        let checks = vec![eval_swappiness(1), eval_nofile(10, 10)];
        assert!(!all_ok(&checks));
        let v: serde_json::Value = serde_json::from_str(&to_json(&checks)).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["checks"][1]["status"], "fail");
        assert_eq!(v["checks"][0]["remedy"], "");
        let t = to_table(&checks);
        assert!(t.contains("FAIL"));
        assert!(t.contains("1 failed, 0 warnings"));
    }

    #[test]
    fn run_reports_every_check_on_this_host() {
        let dir = tempfile::tempdir().unwrap();
        let checks = run(&dir.path().join("not-yet-created"));
        let names: Vec<_> = checks.iter().map(|c| c.name).collect();
        for n in [
            "io_uring",
            "memlock",
            "nofile",
            "data_dir",
            "disk_free",
            "fs_type",
            "clock_sync",
            "swappiness",
            "transparent_hugepages",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        let writable = checks.iter().find(|c| c.name == "data_dir").unwrap();
        assert_eq!(writable.status, Status::Pass, "{writable:?}");
    }
}
