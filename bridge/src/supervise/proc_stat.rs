//! One process's line of `/proc/PID/stat`: what the manager samples (memory, CPU time), the
//! orphan reaper asks (parent, session, state), a template's worker is checked by (parent)
//! and `stop --wait` tells the daemon by (state, start time).

use std::time::Duration;

/// Every process's pid, from the entries of /proc (None: /proc cannot be read).
pub(crate) fn all_pids() -> Option<Vec<i32>> {
    let dir = std::fs::read_dir("/proc").ok()?;
    Some(dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// `R`, `S`, `Z`, …
    pub state: u8,
    pub parent: i32,
    /// The process group.
    pub group: i32,
    pub session: i32,
    /// User and system time, in clock ticks.
    pub cpu_ticks: u64,
    /// When it started, in clock ticks after boot: with the pid, which process it is.
    pub start_ticks: u64,
    pub rss_pages: u64,
}

impl ProcStat {
    /// None: the process is gone (or the line is not what the kernel writes).
    pub(crate) fn of(pid: impl std::fmt::Display) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        // The command name may hold spaces and parentheses: the fields start after the last ')'.
        let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
        // fields[0] is the line's field 3 (state); see proc(5) for the numbers below.
        let number = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
        let pid_field = |field: usize| fields.get(field - 3)?.parse::<i32>().ok();
        Some(Self {
            state: *fields.first()?.as_bytes().first()?,
            parent: pid_field(4)?,
            group: pid_field(5)?,
            session: pid_field(6)?,
            cpu_ticks: number(14)? + number(15)?,
            start_ticks: number(22)?,
            rss_pages: number(24)?,
        })
    }

    pub(crate) fn cpu_time(&self, clock_ticks: u64) -> Duration {
        Duration::from_millis(self.cpu_ticks * 1000 / clock_ticks.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_after_the_last_parenthesis() {
        let line = "1234 (py (x) y) S 1 1234 1200 0 -1 4194560 5000 0 0 0 250 50 0 0 20 0 5 0 100 500000000 2560 18446744073709551615 1 1 0 0 0 0 0 16781312 16386 0 0 0 17 1 0 0 0 0 0";
        let stat = ProcStat::parse(line).expect("parsed");
        assert_eq!(
            stat,
            ProcStat {
                state: b'S',
                parent: 1,
                group: 1234,
                session: 1200,
                cpu_ticks: 300,
                start_ticks: 100,
                rss_pages: 2560
            }
        );
        assert_eq!(stat.cpu_time(100), Duration::from_secs(3));
        assert_eq!(ProcStat::parse("garbage"), None);
        assert_eq!(ProcStat::parse("1 (short) S 1 1 1"), None);
    }

    #[test]
    fn the_own_process_is_read() {
        let me = ProcStat::of(std::process::id()).expect("/proc/self/stat");
        assert_eq!(me.parent, nix::unistd::getppid().as_raw());
        assert_eq!(me.group, nix::unistd::getpgrp().as_raw());
        assert_eq!(me.session, nix::unistd::getsid(None).expect("getsid").as_raw());
        assert!(me.rss_pages > 0);
    }
}
