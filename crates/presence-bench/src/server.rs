//! The servers' side of a run: RSS and CPU of the processes given by `--pid`,
//! read from `/proc` (Linux only; elsewhere the figures are left out).

use std::time::Instant;

use serde::Serialize;

/// One process being watched over a run.
pub struct Watched {
    pid: i32,
    ticks_per_s: f64,
    page: u64,
    rss_before: u64,
    rss_peak: u64,
    /// CPU ticks when watching began (the setup phase starts then).
    cpu_at_start: Option<u64>,
    /// CPU spent in the setup phase, in seconds, once it ended.
    setup_cpu: Option<f64>,
    cpu_from: Option<(Instant, u64)>,
}

/// RSS in bytes and CPU time in clock ticks of `pid`, if it can be read.
fn read(pid: i32, page: u64) -> Option<(u64, u64)> {
    let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    Some((stat.rss * page, stat.utime + stat.stime))
}

impl Watched {
    /// Starts watching `pid`; fails if the process cannot be read.
    pub fn new(pid: i32) -> Result<Watched, String> {
        let page = procfs::page_size();
        let ticks_per_s = procfs::ticks_per_second() as f64;
        let (rss, ticks) =
            read(pid, page).ok_or_else(|| format!("cannot read /proc/{pid}/stat"))?;
        Ok(Watched {
            pid,
            ticks_per_s,
            page,
            rss_before: rss,
            rss_peak: rss,
            cpu_at_start: Some(ticks),
            setup_cpu: None,
            cpu_from: None,
        })
    }

    /// Takes a sample (called every second or so): keeps the peak RSS.
    pub fn sample(&mut self) {
        if let Some((rss, _)) = read(self.pid, self.page) {
            self.rss_peak = self.rss_peak.max(rss);
        }
    }

    /// Marks the start of the measured phase: CPU is counted from here, and
    /// what was spent before it is the setup's (a connect storm's cost).
    pub fn start_cpu(&mut self) {
        if let Some((_, ticks)) = read(self.pid, self.page) {
            self.cpu_from = Some((Instant::now(), ticks));
            self.setup_cpu = self
                .cpu_at_start
                .map(|from| ticks.saturating_sub(from) as f64 / self.ticks_per_s);
        }
    }

    /// The figures at the end of the run. `sessions` is what the RSS growth
    /// is divided by.
    pub fn finish(&mut self, sessions: u64) -> ServerSummary {
        self.sample();
        let now = read(self.pid, self.page);
        let rss_after = now.map(|(r, _)| r).unwrap_or(0);
        let cpu = match (self.cpu_from, now) {
            (Some((at, from)), Some((_, to))) => {
                let wall = at.elapsed().as_secs_f64();
                let seconds = (to.saturating_sub(from)) as f64 / self.ticks_per_s;
                (wall > 0.0).then_some((seconds, seconds / wall * 100.0))
            }
            _ => None,
        };
        let growth = rss_after.saturating_sub(self.rss_before);
        ServerSummary {
            pid: self.pid,
            rss_before_bytes: self.rss_before,
            rss_after_bytes: rss_after,
            rss_peak_bytes: self.rss_peak,
            rss_per_session_bytes: growth.checked_div(sessions),
            setup_cpu_seconds: self.setup_cpu,
            cpu_seconds: cpu.map(|(s, _)| s),
            cpu_percent: cpu.map(|(_, p)| p),
            cpu_us_per_ack: None,
        }
    }
}

/// What a watched server used.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSummary {
    /// The process.
    pub pid: i32,
    /// RSS when the tool started, before any session.
    pub rss_before_bytes: u64,
    /// RSS at the end, sessions still connected.
    pub rss_after_bytes: u64,
    /// Highest RSS seen (sampled once a second).
    pub rss_peak_bytes: u64,
    /// (after - before) / sessions reached.
    pub rss_per_session_bytes: Option<u64>,
    /// CPU time (user + system) over the setup phase, in seconds.
    pub setup_cpu_seconds: Option<f64>,
    /// CPU time (user + system) over the measured phase, in seconds.
    pub cpu_seconds: Option<f64>,
    /// CPU over the measured phase, in % of one core.
    pub cpu_percent: Option<f64>,
    /// CPU time over the measured phase divided by the acks answered in it,
    /// in µs: what one request costs this process (for Redis, the Redis CPU
    /// per heartbeat that `INFO cpu` would show).
    pub cpu_us_per_ack: Option<f64>,
}

impl ServerSummary {
    /// Sets [`ServerSummary::cpu_us_per_ack`] from the acks of the measured phase.
    pub fn per_ack(mut self, acks: u64) -> Self {
        self.cpu_us_per_ack = match (self.cpu_seconds, acks) {
            (Some(s), n) if n > 0 => Some(s * 1e6 / n as f64),
            _ => None,
        };
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_its_own_process() {
        let me = std::process::id() as i32;
        let mut w = Watched::new(me).unwrap();
        w.start_cpu();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let s = w.finish(1);
        assert_eq!(s.pid, me);
        assert!(s.rss_after_bytes > 0);
        assert!(s.rss_peak_bytes >= s.rss_before_bytes);
        assert!(s.cpu_percent.is_some());
        let spent = s.cpu_seconds.unwrap();
        let per = s.clone().per_ack(4).cpu_us_per_ack.unwrap();
        assert!((per - spent * 1e6 / 4.0).abs() < 1e-6);
        assert_eq!(s.per_ack(0).cpu_us_per_ack, None);
        assert!(Watched::new(i32::MAX).is_err());
    }
}
