//! The end of a run: a summary table on the terminal and the `--json` file.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;
use serde_json::Value;

use crate::server::ServerSummary;
use crate::stats::PhaseSummary;

/// Everything a run measured; written as is by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `connect`, `heartbeat`, `bigroom`, `churn` or `propagation`.
    pub scenario: String,
    /// The options the run was given.
    pub params: Value,
    /// Sessions asked for.
    pub sessions_target: u64,
    /// Sessions that were set up (connected, said hello, joined).
    pub sessions_reached: u64,
    /// Connect, hello and join of every session.
    pub setup: PhaseSummary,
    /// The measured phase (after warmup).
    pub run: PhaseSummary,
    /// Server events received by all sessions (diffs, snapshots...).
    pub events_in: u64,
    /// Bytes received by all sessions.
    pub bytes_in: u64,
    /// Bytes sent by all sessions.
    pub bytes_out: u64,
    /// Bytes received by all sessions in the measured phase.
    pub run_bytes_in: u64,
    /// Server events received by all sessions in the measured phase.
    pub run_events_in: u64,
    /// The processes given by `--pid`.
    pub servers: Vec<ServerSummary>,
    /// This tool's own process (RSS, CPU).
    pub client: Option<ServerSummary>,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

impl Report {
    /// The human summary: one row per ack kind and phase, then errors and
    /// servers.
    pub fn table(&self) -> String {
        let mut out = format!(
            "scenario {}: {} of {} sessions set up in {:.2} s; measured {:.1} s\n",
            self.scenario,
            self.sessions_reached,
            self.sessions_target,
            self.setup.seconds,
            self.run.seconds
        );
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header(vec![
            "phase", "ack", "count", "per s", "mean ms", "p50 ms", "p90 ms", "p99 ms", "max ms",
        ]);
        for (phase, p) in [("setup", &self.setup), ("run", &self.run)] {
            for (kind, a) in &p.acks {
                t.add_row(vec![
                    phase.to_owned(),
                    kind.clone(),
                    a.count.to_string(),
                    format!("{:.0}", a.per_second),
                    format!("{:.2}", a.mean_ms),
                    format!("{:.2}", a.p50_ms),
                    format!("{:.2}", a.p90_ms),
                    format!("{:.2}", a.p99_ms),
                    format!("{:.2}", a.max_ms),
                ]);
            }
        }
        out.push_str(&t.to_string());
        out.push('\n');
        for (phase, p) in [("setup", &self.setup), ("run", &self.run)] {
            if !p.errors.is_empty() {
                let list: Vec<String> = p.errors.iter().map(|(c, n)| format!("{c} {n}")).collect();
                out.push_str(&format!("errors ({phase}): {}\n", list.join(", ")));
            }
        }
        out.push_str(&format!(
            "received {} server events, {} in, {} out\n",
            self.events_in,
            mib(self.bytes_in),
            mib(self.bytes_out)
        ));
        let all = self.servers.iter().map(|s| ("server", s));
        for (what, s) in all.chain(self.client.iter().map(|c| ("presence-bench", c))) {
            out.push_str(&format!(
                "{what} pid {}: RSS {} -> {} (peak {}){}{}{}{}\n",
                s.pid,
                mib(s.rss_before_bytes),
                mib(s.rss_after_bytes),
                mib(s.rss_peak_bytes),
                s.rss_per_session_bytes
                    .map(|b| format!(", {:.1} KiB per session", b as f64 / 1024.0))
                    .unwrap_or_default(),
                s.setup_cpu_seconds
                    .map(|c| format!(", setup CPU {c:.2} s"))
                    .unwrap_or_default(),
                s.cpu_percent
                    .map(|c| format!(", CPU {c:.0}% of a core"))
                    .unwrap_or_default(),
                s.cpu_us_per_ack
                    .map(|u| format!(", {u:.1} µs CPU per run ack"))
                    .unwrap_or_default(),
            ));
        }
        out
    }

    /// Errors of both phases together.
    pub fn error_count(&self) -> u64 {
        self.setup
            .errors
            .values()
            .chain(self.run.errors.values())
            .sum()
    }
}
