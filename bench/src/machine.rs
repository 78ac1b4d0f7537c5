//! Where a figure came from: machine, kernel, commit and command line.

use serde::{Deserialize, Serialize};
use std::process::Command;

/// The machine a run was measured on.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Machine {
    /// Online CPUs.
    pub nproc: usize,
    /// `uname -r`.
    pub kernel: String,
    /// CPU model from /proc/cpuinfo.
    pub cpu_model: String,
    /// Total memory in MiB from /proc/meminfo.
    pub mem_mib: u64,
    /// 1-minute load average when probed: other work sharing the machine during the run.
    #[serde(default)]
    pub load_avg_1m: f64,
}

impl Machine {
    /// Probes the current machine (fields it cannot read stay empty).
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let mem_mib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024);
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            cpu_model,
            mem_mib,
            load_avg_1m: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
                .unwrap_or(0.0),
        }
    }
}

/// `git rev-parse HEAD` (with "-dirty" if the tree has changes), or "unknown".
pub fn git_commit() -> String {
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let Some(head) = head else {
        return "unknown".to_string();
    };
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    if dirty {
        format!("{head}-dirty")
    } else {
        head
    }
}

/// The command line, shell-quoted where needed, with secrets (`-X sasl.password=...`,
/// `-X sasl.jaas.config=...`) replaced by `***`: it is stamped on every result.
pub fn command_line() -> String {
    std::env::args()
        .map(|a| redact(&a))
        .map(|a| {
            if a.is_empty()
                || a.contains(|c: char| c.is_whitespace() || "'\"$*?;&|<>()".contains(c))
            {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `arg` with the value of a secret client property hidden.
fn redact(arg: &str) -> String {
    for key in ["sasl.password=", "sasl.jaas.config="] {
        if let Some(i) = arg.find(key) {
            return format!("{}***", &arg[..i + key.len()]);
        }
    }
    arg.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_not_stamped() {
        assert_eq!(super::redact("sasl.password=hunter2"), "sasl.password=***");
        assert_eq!(
            super::redact("--property=sasl.password=x y"),
            "--property=sasl.password=***"
        );
        assert_eq!(super::redact("sasl.username=alice"), "sasl.username=alice");
    }
}
