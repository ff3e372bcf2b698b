//! `presence-bench`: drives many Socket.IO sessions against presence-cluster
//! nodes and reports what it measured. `presence-bench --help` lists the
//! options; docs/benchmarks.md shows how the published figures were made.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use presence_bench::report::Report;
use presence_bench::scenario::{drive, Plan, Run, Scenario, View};
use presence_bench::server::Watched;
use presence_bench::sio::Target;

#[derive(Parser, Debug)]
#[command(
    name = "presence-bench",
    version,
    about = "Load tool for presence-cluster nodes"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Command,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug, serde::Serialize)]
struct Common {
    /// Node URL (http://host:port or ws://host:port); repeat for several
    /// nodes, sessions are spread round robin.
    #[arg(long = "url", global = true, default_value = "http://127.0.0.1:3000")]
    urls: Vec<String>,
    /// Sessions to open (joiners, for propagation).
    #[arg(short = 'n', long, global = true, default_value_t = 100)]
    sessions: usize,
    /// Sessions per room (default 10; bigroom and propagation: all in one).
    #[arg(long, global = true)]
    room_size: Option<usize>,
    /// Seconds of the measured phase (for connect: how long the sessions are
    /// held, idle, before the servers are sampled).
    #[arg(short = 'd', long, global = true, default_value_t = 10.0)]
    duration: f64,
    /// Seconds driven before measuring starts.
    #[arg(long, global = true, default_value_t = 0.0)]
    warmup: f64,
    /// Sessions being set up at once.
    #[arg(long, global = true, default_value_t = 500)]
    connect_concurrency: usize,
    /// Deadline of each request, in ms.
    #[arg(long, global = true, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Spread connections over source addresses 127.0.0.1..=N (loopback
    /// targets only): one source address has ~28k ephemeral ports per node.
    #[arg(long, global = true, default_value_t = 1)]
    source_ips: u8,
    /// A server process to watch (RSS, CPU); repeatable.
    #[arg(long = "pid", global = true)]
    pids: Vec<i32>,
    /// Write the figures as JSON to this file.
    #[arg(long, global = true)]
    json: Option<std::path::PathBuf>,
    /// HS256 secret the nodes verify tokens with; each user gets a token
    /// (`sub` = its id, `rooms: ["*"]`).
    #[arg(
        long,
        global = true,
        env = "PRESENCE_JWT_SECRET",
        hide_env_values = true
    )]
    #[serde(skip)]
    jwt_secret: Option<String>,
    /// Prefix of user, session and room ids (default: one per run).
    #[arg(long, global = true)]
    prefix: Option<String>,
    /// What the sessions follow in their rooms (`presence:join`'s `view`).
    #[arg(long, global = true, value_enum, default_value_t = View::Default)]
    view: View,
    /// The first N sessions of each room watch others (`view: { watch }`)
    /// instead of following --view.
    #[arg(long, global = true, default_value_t = 0)]
    watchers: usize,
    /// Users each watcher watches.
    #[arg(long, global = true, default_value_t = 20)]
    watch_size: usize,
    /// Index of the first session: several tool processes (each under its
    /// own open-file limit) share rooms with --prefix and distinct offsets.
    #[arg(long, global = true, default_value_t = 0)]
    offset: usize,
    /// Exit with status 1 if any session was not set up or any error was seen.
    #[arg(long, global = true)]
    strict: bool,
    /// No progress bar.
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connect + hello + join storm, then hold the sessions idle.
    Connect,
    /// Heartbeats, open loop at --rate per session, or --closed loop.
    Heartbeat {
        /// Heartbeats a second per session (open loop).
        #[arg(long, default_value_t = 1.0, conflicts_with = "closed")]
        rate: f64,
        /// Each session sends its next heartbeat as soon as the last is
        /// answered: the most the nodes can take.
        #[arg(long)]
        closed: bool,
    },
    /// Every session in one room, updating its state at --rate.
    Bigroom {
        /// State updates a second per session.
        #[arg(long, default_value_t = 0.1)]
        rate: f64,
    },
    /// Sessions drop their connection and resume on another, at --rate.
    Churn {
        /// Resumes a second per session.
        #[arg(long, default_value_t = 0.1)]
        rate: f64,
    },
    /// Join through the first URL, time the diff seen through the second.
    Propagation {
        /// Milliseconds between joins.
        #[arg(long, default_value_t = 1000)]
        every_ms: u64,
    },
}

/// The tool shares the machine with what it measures, and a storm of events
/// is many small allocations: with glibc's allocator `_int_malloc`,
/// `malloc_consolidate` and `free` were two fifths of the tool's CPU in a
/// connect storm (perf). mimalloc leaves more of the cores to the node.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => std::process::exit(rt.block_on(real_main(cli))),
        Err(e) => {
            eprintln!("presence-bench: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    }
}

fn scenario(c: &Command) -> Result<Scenario, String> {
    let hz = |r: f64| {
        if r.is_finite() && r > 0.0 {
            Ok(r)
        } else {
            Err(format!("--rate must be above 0 (got {r})"))
        }
    };
    Ok(match c {
        Command::Connect => Scenario::Connect,
        Command::Heartbeat { closed: true, .. } => Scenario::Heartbeat(None),
        Command::Heartbeat { rate, .. } => Scenario::Heartbeat(Some(hz(*rate)?)),
        Command::Bigroom { rate } => Scenario::Bigroom(hz(*rate)?),
        Command::Churn { rate } => Scenario::Churn(hz(*rate)?),
        Command::Propagation { every_ms } => {
            Scenario::Propagation(Duration::from_millis((*every_ms).max(1)))
        }
    })
}

async fn real_main(cli: Cli) -> i32 {
    let c = &cli.common;
    let fail = |msg: String| {
        eprintln!("presence-bench: {msg}");
        2
    };
    let scenario = match scenario(&cli.scenario) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let mut targets = Vec::new();
    for u in &c.urls {
        match Target::parse(u) {
            Ok(t) => targets.push(t),
            Err(e) => return fail(e.to_string()),
        }
    }
    if !(c.duration.is_finite() && c.duration >= 0.0 && c.warmup.is_finite() && c.warmup >= 0.0) {
        return fail("--duration and --warmup must be 0 or more seconds".into());
    }
    let mut watched = Vec::new();
    for pid in &c.pids {
        match Watched::new(*pid) {
            Ok(w) => watched.push(w),
            Err(e) => return fail(e),
        }
    }
    // The tool itself, last: on a shared machine its CPU is part of the story.
    if let Ok(me) = Watched::new(std::process::id() as i32) {
        watched.push(me);
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let plan = Plan {
        scenario: scenario.clone(),
        targets,
        sessions: c.sessions,
        room_size: c.room_size.unwrap_or(match scenario {
            Scenario::Bigroom(_) | Scenario::Propagation(_) => usize::MAX,
            _ => 10,
        }),
        duration: Duration::from_secs_f64(c.duration),
        warmup: Duration::from_secs_f64(c.warmup),
        connect_concurrency: c.connect_concurrency,
        timeout: Duration::from_millis(c.timeout_ms.max(1)),
        source_ips: c.source_ips.max(1),
        prefix: c
            .prefix
            .clone()
            .unwrap_or_else(|| format!("bench{}", stamp % 1_000_000_000)),
        jwt_secret: c.jwt_secret.clone(),
        view: c.view,
        watchers: (c.watchers, c.watch_size),
        offset: c.offset,
    };
    let run = Run::new(plan);

    // Sampling the servers once a second keeps their peak RSS.
    let watched = Arc::new(Mutex::new(watched));
    let sampler = {
        let watched = watched.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                for w in watched.lock().expect("watched").iter_mut() {
                    w.sample();
                }
            }
        })
    };

    let bar = if c.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(c.sessions as u64)
    };
    let setup_style = ProgressStyle::with_template(
        "setup {bar:30} {pos}/{len} sessions  {msg}  [{elapsed_precise}]",
    )
    .expect("template");
    let run_style = ProgressStyle::with_template("{prefix} {bar:30} {msg}  [{elapsed_precise}]")
        .expect("template");
    bar.set_style(setup_style);
    let progress = {
        let run = run.clone();
        let bar = bar.clone();
        let kind = match scenario {
            Scenario::Bigroom(_) => "state",
            Scenario::Churn(_) => "resume",
            Scenario::Propagation(_) => "propagation",
            _ => "heartbeat",
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut last = (Instant::now(), 0u64);
            loop {
                tick.tick().await;
                if !run.measuring.load(Ordering::Relaxed) {
                    let done = run.reached.load(Ordering::Relaxed)
                        + run.setup_failed.load(Ordering::Relaxed);
                    bar.set_position(done);
                    bar.set_message(format!(
                        "{} failed, {} errors",
                        run.setup_failed.load(Ordering::Relaxed),
                        run.setup.failed.load(Ordering::Relaxed)
                    ));
                    continue;
                }
                let answers = run.run.answers.load(Ordering::Relaxed);
                let now = Instant::now();
                let rate = (answers.saturating_sub(last.1)) as f64
                    / now.duration_since(last.0).as_secs_f64().max(1e-3);
                last = (now, answers);
                let elapsed = run.run.started().elapsed().as_secs_f64();
                bar.set_position((elapsed * 10.0) as u64);
                bar.set_message(format!(
                    "{:.0} answers/s  {kind} p99 {}  errors {}",
                    rate,
                    run.run
                        .p99_ms(kind)
                        .map(|p| format!("{p:.2} ms"))
                        .unwrap_or_else(|| "-".into()),
                    run.run.failed.load(Ordering::Relaxed)
                ));
            }
        })
    };

    let started = Instant::now();
    let mut servers = Vec::new();
    // Bytes and events received, when the measured phase starts and ends.
    let wire_at_start = Mutex::new((0, 0));
    let wire_at_end = Mutex::new((0, 0));
    let wire_now = |run: &Run| {
        (
            run.wire.bytes_in.load(Ordering::Relaxed),
            run.wire.events_in.load(Ordering::Relaxed),
        )
    };
    let setup = drive(
        run.clone(),
        || {
            bar.set_style(run_style.clone());
            bar.set_prefix(if c.warmup > 0.0 { "warmup" } else { "run" });
            bar.set_length((c.duration * 10.0).max(1.0) as u64);
            bar.set_position(0);
        },
        || {
            bar.set_prefix("run");
            for w in watched.lock().expect("watched").iter_mut() {
                w.start_cpu();
            }
            *wire_at_start.lock().expect("wire") = wire_now(&run);
        },
        || {
            *wire_at_end.lock().expect("wire") = wire_now(&run);
            let reached = run.reached.load(Ordering::Relaxed);
            let mut ws = watched.lock().expect("watched");
            servers = ws.iter_mut().map(|w| w.finish(reached)).collect();
        },
    )
    .await;
    progress.abort();
    sampler.abort();
    bar.finish_and_clear();
    let run_seconds = (started.elapsed() - setup)
        .min(run.plan.duration)
        .as_secs_f64();
    let run_seconds = match scenario {
        Scenario::Propagation(_) => run_seconds,
        _ => run.plan.duration.as_secs_f64(),
    };

    let run_summary = run.run.summary(run_seconds);
    let run_acks: u64 = run_summary.acks.values().map(|a| a.count).sum();
    let client = servers.pop().map(|mut c| {
        c.rss_per_session_bytes = None;
        c.per_ack(run_acks)
    });
    let servers = servers.into_iter().map(|s| s.per_ack(run_acks)).collect();
    let report = Report {
        scenario: scenario.name().to_owned(),
        params: serde_json::json!({
            "common": c,
            "scenario": format!("{:?}", cli.scenario),
        }),
        sessions_target: c.sessions as u64,
        sessions_reached: run.reached.load(Ordering::Relaxed),
        setup: run.setup.summary(setup.as_secs_f64()),
        run: run_summary,
        events_in: run.wire.events_in.load(Ordering::Relaxed),
        bytes_in: run.wire.bytes_in.load(Ordering::Relaxed),
        bytes_out: run.wire.bytes_out.load(Ordering::Relaxed),
        run_bytes_in: {
            let (a, b) = (
                *wire_at_start.lock().expect("wire"),
                *wire_at_end.lock().expect("wire"),
            );
            b.0.saturating_sub(a.0)
        },
        run_events_in: {
            let (a, b) = (
                *wire_at_start.lock().expect("wire"),
                *wire_at_end.lock().expect("wire"),
            );
            b.1.saturating_sub(a.1)
        },
        servers,
        client,
    };
    print!("{}", report.table());
    if let Some(path) = &c.json {
        let text = serde_json::to_string_pretty(&report).expect("report serializes");
        if let Err(e) = std::fs::write(path, text) {
            return fail(format!("cannot write {}: {e}", path.display()));
        }
    }
    if c.strict && (report.sessions_reached < report.sessions_target || report.error_count() > 0) {
        eprintln!(
            "presence-bench: --strict: {} of {} sessions set up, {} errors",
            report.sessions_reached,
            report.sessions_target,
            report.error_count()
        );
        return 1;
    }
    0
}
