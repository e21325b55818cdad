//! Giving freed heap memory back to the system after a burst.
//!
//! glibc's malloc returns a freed chunk's pages to the kernel only when they are at the
//! top of the heap. After a burst (many connections, large bodies in flight) the chunks
//! freed below one still in use stay resident, so the daemon's RSS would stay near its
//! peak for good. Once a second [`trim_task`] compares the daemon's anonymous resident
//! memory with what malloc has in use; when the difference — resident but free — has grown
//! by [`SLACK`] since the last trim, or by [`QUIET_SLACK`] and has stopped changing (the
//! daemon is quiet again), `malloc_trim(0)` hands those pages back.
//! With another C library this does nothing.
use std::time::Duration;

/// How often the heap is looked at: the manager's round already wakes the daemon as often.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Growth of the free resident memory worth a trim at once, also under load.
const SLACK: u64 = 4 << 20;
/// Growth worth a trim once it holds still between two looks: after a burst, not during one.
const QUIET_SLACK: u64 = 1 << 20;
/// Less change than this between two looks is holding still.
const QUIET_DELTA: u64 = 128 << 10;

/// Trim the heap whenever enough of it is resident but free; runs until the runtime ends.
pub(crate) async fn trim_task() {
    let mut trimmer = Trimmer::default();
    let mut every = tokio::time::interval(CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        // mallinfo2 and malloc_trim walk the heap under malloc's locks (milliseconds for a
        // large fragmented one): off the runtime's thread, so requests do not wait on them.
        // slack None: not measurable this time (e.g. no descriptor left for /proc).
        let mut t = trimmer;
        let look = tokio::task::spawn_blocking(move || {
            let trimmed =
                glibc::slack().filter(|&slack| t.due(slack)).map(|slack| (slack, glibc::trim().unwrap_or(slack)));
            (t, trimmed)
        });
        let Ok((t, trimmed)) = look.await else { continue };
        trimmer = t;
        if let Some((slack, after)) = trimmed {
            tracing::debug!(
                "returned {} KiB of freed heap to the system (malloc_trim): {} KiB resident but free left",
                slack.saturating_sub(after) >> 10,
                after >> 10
            );
            trimmer.trimmed(after);
        }
    }
}

/// When to trim, from the resident-but-free bytes ("slack") seen once a second.
#[derive(Debug, Default, Clone, Copy)]
struct Trimmer {
    /// The slack a trim could not give back (pages partly in use): only growth beyond it
    /// calls for another trim, so a fragmented heap is not trimmed in vain every second.
    floor: u64,
    /// The slack at the previous look.
    last: Option<u64>,
}

impl Trimmer {
    /// Whether to trim now.
    fn due(&mut self, slack: u64) -> bool {
        // What was left has since been reused: measure growth from here.
        self.floor = self.floor.min(slack);
        let quiet = self.last.is_some_and(|last| last.abs_diff(slack) < QUIET_DELTA);
        self.last = Some(slack);
        slack >= self.floor + SLACK || (quiet && slack >= self.floor + QUIET_SLACK)
    }

    /// A trim left `after` bytes of slack.
    fn trimmed(&mut self, after: u64) {
        self.floor = after;
        self.last = Some(after);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    /// Anonymous resident bytes not in use by malloc (None: not measurable).
    pub(super) fn slack() -> Option<u64> {
        let anon = anon_resident()?;
        // SAFETY: mallinfo2 only reads malloc's own bookkeeping (under its locks).
        let info = unsafe { libc::mallinfo2() };
        let in_use = (info.uordblks as u64).saturating_add(info.hblkhd as u64);
        Some(anon.saturating_sub(in_use))
    }

    /// Trim every arena; the slack left afterwards.
    pub(super) fn trim() -> Option<u64> {
        // SAFETY: malloc_trim takes malloc's locks itself; 0 keeps no extra pad at the top.
        unsafe { libc::malloc_trim(0) };
        slack()
    }

    /// Resident pages that belong to no file (heap, stacks), from /proc/self/statm.
    fn anon_resident() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let mut fields = statm.split_ascii_whitespace().skip(1).map(|f| f.parse::<u64>().ok());
        let (resident, shared) = (fields.next()??, fields.next()??);
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??;
        Some(resident.saturating_sub(shared) * u64::try_from(page).ok()?)
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    pub(super) fn slack() -> Option<u64> {
        None
    }
    pub(super) fn trim() -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_when_free_memory_grew_and_not_again_in_vain() {
        let mut t = Trimmer::default();
        assert!(!t.due(1 << 19));
        assert!(t.due(40 << 20));
        // The trim left 6 MiB it could not give back: no trim every second for those.
        t.trimmed(6 << 20);
        assert!(!t.due(6 << 20));
        assert!(!t.due(9 << 20));
        assert!(t.due(10 << 20));
        // The leftovers were reused, then freed again: growth counts from the lowest point.
        t.trimmed(6 << 20);
        assert!(!t.due(2 << 20));
        assert!(t.due(6 << 20));
    }

    #[test]
    fn a_smaller_growth_is_trimmed_once_it_holds_still() {
        let mut t = Trimmer::default();
        t.trimmed(1 << 20);
        // 2 MiB more, still moving (a burst going on): not yet.
        assert!(!t.due(3 << 20));
        assert!(!t.due(4 << 20));
        // The same a second later: the burst is over.
        assert!(t.due(4 << 20));
        t.trimmed(1 << 20);
        // Holding still, but less than QUIET_SLACK above what a trim leaves: nothing to gain.
        assert!(!t.due((1 << 20) + (512 << 10)));
        assert!(!t.due((1 << 20) + (512 << 10)));
    }
}
