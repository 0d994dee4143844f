//! The process' own figures, read from `/proc/self` at scrape time: CPU time, resident
//! memory, open files. Zero where `/proc` cannot be read.

use std::time::Duration;

/// Linux reports CPU time in clock ticks of `USER_HZ`, which is 100 on every architecture
/// the kernel supports today.
const USER_HZ: f64 = 100.0;

/// One reading.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit of open file descriptors.
    pub max_fds: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_secs: f64,
}

impl ProcessStats {
    /// Reads `/proc/self`; `uptime` dates the start.
    pub fn read(uptime: Duration) -> ProcessStats {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        ProcessStats {
            cpu_seconds: cpu_seconds(&stat),
            resident_bytes: vm_rss_bytes(&status),
            open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
            max_fds: max_open_files(&limits),
            start_time_secs: super::exposition::epoch_secs_ago(uptime),
        }
    }
}

/// utime + stime from `/proc/PID/stat` (fields 14 and 15, counted after the command name,
/// which may hold spaces and parentheses).
pub fn cpu_seconds(stat: &str) -> f64 {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (tick(11) + tick(12)) as f64 / USER_HZ
}

/// `VmRSS` from `/proc/PID/status`, in bytes.
pub fn vm_rss_bytes(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The soft limit on the "Max open files" line of `/proc/PID/limits`.
pub fn max_open_files(limits: &str) -> u64 {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat =
            "1234 (rookery broker) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 150 0 0 20 0 3 0";
        assert!((cpu_seconds(stat) - 4.0).abs() < 1e-9);
        let status = "Name:\trookery\nVmPeak:\t  10000 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(vm_rss_bytes(status), 2 * 1024 * 1024);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            20000                524288               files\n";
        assert_eq!(max_open_files(limits), 20000);
        assert_eq!(cpu_seconds("garbage"), 0.0);
    }

    #[test]
    fn this_process_reads() {
        let p = ProcessStats::read(Duration::from_secs(1));
        assert!(p.resident_bytes > 0);
        assert!(p.open_fds > 0);
        assert!(p.max_fds > 0);
        assert!(p.start_time_secs > 1.6e9);
    }
}
