//! What each phase measured, and the markdown table.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tower_redis_layers::rate_limit::DecisionSource;

use crate::fleet::{LIMIT, PERIOD};
use crate::load::{Decision, Phase};

/// Time from Redis answering again to the first decision from the store.
pub enum Recovery {
    /// No fault in this phase.
    NoFault,
    /// The fault made no rate-limit decision fail.
    NoFailures,
    /// The slowest (instance, client) pair whose decisions had failed.
    After(Duration),
    /// Some pair got no decision from the store before the phase ended.
    NotWithinPhase,
}

pub struct Row {
    pub name: String,
    pub secs: f64,
    pub requests: u64,
    pub hung: u64,
    pub slowest: Duration,
    pub fail_open: usize,
    pub over_limit: u64,
    pub keys: u64,
    pub hang_ups: u64,
    pub double_runs: usize,
    pub double_after_hang_up: usize,
    pub reads: u64,
    pub stale: u64,
    pub recovery: Recovery,
    pub statuses: String,
}

/// The fault's timing in a phase: when it began, when Redis answered again.
pub struct Fault {
    pub began: Instant,
    pub answered: Instant,
}

impl Row {
    pub fn of(name: &str, phase: &Phase, started: Instant, fault: Option<Fault>) -> Self {
        let log = &phase.log;
        let (double_runs, double_after_hang_up) = phase.world.double_runs(phase.number);
        let decisions = log.decisions.lock().unwrap();
        let statuses = log
            .routes
            .lock()
            .unwrap()
            .iter()
            .map(|(name, route)| {
                let counts: Vec<String> = route
                    .statuses
                    .iter()
                    .map(|(status, n)| match status {
                        0 => format!("no answer×{n}"),
                        s => format!("{s}×{n}"),
                    })
                    .collect();
                format!(
                    "{name} {} (slowest {})",
                    counts.join(" "),
                    ms(route.slowest)
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            name: name.to_owned(),
            secs: started.elapsed().as_secs_f64(),
            requests: log.requests.load(Ordering::Relaxed),
            hung: log.hung.load(Ordering::Relaxed),
            slowest: Duration::from_micros(log.slowest_us.load(Ordering::Relaxed)),
            fail_open: decisions
                .iter()
                .filter(|d| d.source == DecisionSource::FailOpen)
                .count(),
            over_limit: over_limit(&decisions),
            keys: log.keys.load(Ordering::Relaxed),
            hang_ups: log.hang_ups.load(Ordering::Relaxed),
            double_runs,
            double_after_hang_up,
            reads: log.reads.load(Ordering::Relaxed),
            stale: log.stale.load(Ordering::Relaxed),
            recovery: fault.map_or(Recovery::NoFault, |f| recovery(&decisions, &f)),
            statuses,
        }
    }

    /// What must be zero (or within a second) and is not.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut zero = |what: &str, n: u64| {
            if n > 0 {
                v.push(format!("{}: {n} {what}", self.name));
            }
        };
        zero("hung requests", self.hung);
        zero("admissions over the limit", self.over_limit);
        zero("double executions", self.double_runs as u64);
        zero("stale reads", self.stale);
        match self.recovery {
            Recovery::After(d) if d > Duration::from_secs(1) => v.push(format!(
                "{}: decisions came back {:.2} s after Redis did",
                self.name,
                d.as_secs_f64()
            )),
            Recovery::NotWithinPhase => v.push(format!(
                "{}: decisions did not come back within the phase",
                self.name
            )),
            _ => {}
        }
        v
    }
}

/// Admissions decided by the store beyond what GCRA can admit per client:
/// the burst plus one emission interval per elapsed interval, over the
/// span from the client's first request sent to its last answer received
/// (which holds the span of the store's decisions). Fail-open admissions
/// are counted apart and consume nothing.
fn over_limit(decisions: &[Decision]) -> u64 {
    let mut clients: HashMap<usize, (Instant, Instant, u64)> = HashMap::new();
    for d in decisions {
        let c = clients.entry(d.client).or_insert((d.sent, d.received, 0));
        c.0 = c.0.min(d.sent);
        c.1 = c.1.max(d.received);
        c.2 += u64::from(d.source == DecisionSource::Store && d.allowed);
    }
    let interval = PERIOD / LIMIT as u32;
    clients
        .values()
        .map(|(first, last, admitted)| {
            let span = last.duration_since(*first);
            // +1: the store's clock rounds.
            let bound = LIMIT + (span.as_micros() / interval.as_micros()) as u64 + 1;
            admitted.saturating_sub(bound)
        })
        .sum()
}

fn recovery(decisions: &[Decision], fault: &Fault) -> Recovery {
    let failed: HashSet<(usize, usize)> = decisions
        .iter()
        .filter(|d| d.received >= fault.began)
        .filter(|d| !matches!(d.source, DecisionSource::Store | DecisionSource::Remembered))
        .map(|d| (d.instance, d.client))
        .collect();
    if failed.is_empty() {
        return Recovery::NoFailures;
    }
    let mut slowest = Duration::ZERO;
    for pair in failed {
        let back = decisions
            .iter()
            .filter(|d| (d.instance, d.client) == pair && d.received >= fault.answered)
            .filter(|d| d.source == DecisionSource::Store)
            .map(|d| d.received.duration_since(fault.answered))
            .min();
        match back {
            Some(d) => slowest = slowest.max(d),
            None => return Recovery::NotWithinPhase,
        }
    }
    Recovery::After(slowest)
}

fn ms(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// The markdown table, one row per phase, and each phase's answers.
pub fn table(header: &str, rows: &[Row], skipped: &[String]) -> String {
    let mut out = format!("{header}\n\n");
    out.push_str(
        "| fault | requests | hung (> 2 s) | slowest | rate limit: fail-open / over limit | \
         idempotency: keys / hang-ups / double runs (after a hang-up) | cache: reads / stale | decisions back after |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let back = match r.recovery {
            Recovery::NoFault => "-".to_owned(),
            Recovery::NoFailures => "no failures".to_owned(),
            Recovery::After(d) => ms(d),
            Recovery::NotWithinPhase => "not within phase".to_owned(),
        };
        out.push_str(&format!(
            "| {} ({:.0} s) | {} | {} | {} | {} / {} | {} / {} / {} ({}) | {} / {} | {} |\n",
            r.name,
            r.secs,
            r.requests,
            r.hung,
            ms(r.slowest),
            r.fail_open,
            r.over_limit,
            r.keys,
            r.hang_ups,
            r.double_runs,
            r.double_after_hang_up,
            r.reads,
            r.stale,
            back
        ));
    }
    for s in skipped {
        out.push_str(&format!("| {s} | | | | | | | |\n"));
    }
    out.push('\n');
    for r in rows {
        out.push_str(&format!("- {}: {}\n", r.name, r.statuses));
    }
    out
}
