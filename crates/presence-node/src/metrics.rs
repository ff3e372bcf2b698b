//! Prometheus metrics, rendered at `GET /metrics`.
//!
//! Counters and gauges are recorded through the `metrics` facade; the
//! Prometheus recorder is installed once per process.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once; later calls reuse it). Returns
/// `None` if another recorder was installed first by the embedding program.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let installed = metrics::set_global_recorder(recorder).ok().map(|()| handle);
            if installed.is_some() {
                register();
            }
            installed
        })
        .clone()
}

/// Makes every series that alerts and the dashboard (deploy/) query exist
/// from the start, at zero: a series appears only once it is first
/// touched, and a rule over a missing one says nothing.
fn register() {
    for name in [
        "presence_diffs_total",
        "presence_room_reads_total",
        "presence_snapshots_total",
        "presence_status_changes_total",
        "presence_expired_sessions_total",
        "presence_orphan_members_removed_total",
        "presence_sweep_writes_fenced_total",
        "presence_sweep_skipped_total",
        "presence_sweep_errors_total",
        "presence_webhook_delivered_total",
        "presence_webhook_retried_total",
        "presence_webhook_dropped_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for reason in ["resubscribed", "lagged"] {
        metrics::counter!("presence_resyncs_total", "reason" => reason).absolute(0);
    }
    for reason in ["hello_timeout", "bad_packet"] {
        metrics::counter!("presence_connections_cut_total", "reason" => reason).absolute(0);
    }
    for outcome in ["made", "reachable", "expired", "cancelled"] {
        metrics::counter!("presence_intents_total", "outcome" => outcome).absolute(0);
    }
    for result in ["ok", "status", "timeout", "error"] {
        metrics::counter!("presence_webhook_requests_total", "result" => result).absolute(0);
    }
    metrics::gauge!("presence_connections").set(0.0);
    leader(false);
}

/// One answered client request, by event and result (`ok` or the error code).
pub fn request(event: &'static str, result: &'static str) {
    metrics::counter!("presence_requests_total", "event" => event, "result" => result).increment(1);
}

/// An intent made, or resolved on this node (`reachable`, `expired`,
/// `cancelled`).
pub fn intent(what: &'static str) {
    metrics::counter!("presence_intents_total", "outcome" => what).increment(1);
}

/// A connection the node closed, by reason (`hello_timeout`: no session in
/// time; `bad_packet`: a packet it could not or would not parse, such as
/// binary attachments).
pub fn connection_cut(reason: &'static str) {
    metrics::counter!("presence_connections_cut_total", "reason" => reason).increment(1);
}

/// A Socket.IO connection opened.
pub fn connection_opened() {
    metrics::gauge!("presence_connections").increment(1.0);
}

/// A Socket.IO connection closed.
pub fn connection_closed() {
    metrics::gauge!("presence_connections").decrement(1.0);
}

/// A presence event seen on the event stream, by type.
pub fn event(kind: &'static str) {
    metrics::counter!("presence_events_total", "type" => kind).increment(1);
}

/// A diff broadcast to a room's local sockets.
pub fn diff_sent() {
    metrics::counter!("presence_diffs_total").increment(1);
}

/// A room read whole by a hub (not per change: see fanout.rs).
pub fn room_read() {
    metrics::counter!("presence_room_reads_total").increment(1);
}

/// A snapshot sent to one socket (join ack or resume).
pub fn snapshot_sent() {
    metrics::counter!("presence_snapshots_total").increment(1);
}

/// Lifecycle events a webhook endpoint acknowledged (2xx).
pub fn webhook_delivered(events: u64) {
    metrics::counter!("presence_webhook_delivered_total").increment(events);
}

/// A webhook request that failed and will be sent again.
pub fn webhook_retried() {
    metrics::counter!("presence_webhook_retried_total").increment(1);
}

/// Lifecycle events given up on after `PRESENCE_WEBHOOK_MAX_AGE_S` of
/// failed deliveries.
pub fn webhook_dropped(events: u64) {
    metrics::counter!("presence_webhook_dropped_total").increment(events);
}

/// One webhook request, by result (`ok`, `status`: a non-2xx answer,
/// `timeout`, `error`: no answer).
pub fn webhook_request(result: &'static str) {
    metrics::counter!("presence_webhook_requests_total", "result" => result).increment(1);
}

/// From an event's change to its delivery, in seconds.
pub fn webhook_lag(seconds: f64) {
    metrics::histogram!("presence_webhook_delivery_lag_seconds").record(seconds);
}

/// Whether this node holds the reaper lease (1) or not (0): over the
/// cluster, the sum is 1 while a leader sweeps.
pub fn leader(holds: bool) {
    metrics::gauge!("presence_leader").set(if holds { 1.0 } else { 0.0 });
}

/// Whether the store answered this node's last registration (1) or not (0).
pub fn store_up(up: bool) {
    metrics::gauge!("presence_store_up").set(if up { 1.0 } else { 0.0 });
}

/// Every room re-read at once because events may have been lost: the
/// store's subscription came back (`resubscribed`) or this node fell
/// behind the event stream (`lagged`).
pub fn resync(reason: &'static str) {
    metrics::counter!("presence_resyncs_total", "reason" => reason).increment(1);
}

/// How long one sweep took, in seconds.
pub fn sweep_duration(seconds: f64) {
    metrics::histogram!("presence_sweep_duration_seconds").record(seconds);
}

/// A sweep that failed (the store did not answer).
pub fn sweep_failed() {
    metrics::counter!("presence_sweep_errors_total").increment(1);
}

/// What one sweep did.
pub fn sweep(r: &presence_store::SweepReport) {
    metrics::counter!("presence_status_changes_total").increment(r.status_changes);
    metrics::counter!("presence_expired_sessions_total").increment(r.expired);
    metrics::counter!("presence_orphan_members_removed_total").increment(r.orphans);
    metrics::counter!("presence_sweep_writes_fenced_total").increment(r.fenced);
    metrics::counter!("presence_sweep_skipped_total").increment(r.skipped);
}

/// Renders every metric, after setting the gauges read at scrape time.
pub fn render(local_sessions: i64, local_rooms: usize) -> String {
    metrics::gauge!("presence_sessions_local").set(local_sessions as f64);
    metrics::gauge!("presence_rooms_local").set(local_rooms as f64);
    match install() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => String::new(),
    }
}
