//! A fleet: what a function in production is, several execution environments at once, each its
//! own extension process with its own log stream (`faas.instance`), coming and going. Every
//! environment serves a number of invocations and is shut down; another cold-starts in its
//! place, until the fleet's invocations are spent (or a stop). All of them export to the same
//! endpoints (the environments' `SimConfig`s say where).
//!
//! ```no_run
//! # async fn demo() -> Result<(), lambda_sim::SimError> {
//! use lambda_sim::fleet::{self, FleetConfig, FleetFunction};
//! use lambda_sim::SimConfig;
//! let report = fleet::run(FleetConfig {
//!     slots: 4,
//!     functions: vec![FleetFunction::new("orders", "1"), FleetFunction::new("billing", "1")],
//!     invocations: 60,
//!     lifetime: 5,
//!     template: Box::new(|_| SimConfig::default()),
//!     ..FleetConfig::default()
//! })
//! .await;
//! assert_eq!(report.invocations(), 60);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{SimConfig, SimError, SimReport};

/// A function (and version) of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FleetFunction {
    /// `AWS_LAMBDA_FUNCTION_NAME`.
    pub name: String,
    /// `AWS_LAMBDA_FUNCTION_VERSION`.
    pub version: String,
}

impl FleetFunction {
    /// A function and version.
    pub fn new(name: &str, version: &str) -> FleetFunction {
        FleetFunction {
            name: name.into(),
            version: version.into(),
        }
    }

    /// `name:version`, or `name` alone (version `$LATEST`).
    pub fn parse(text: &str) -> Option<FleetFunction> {
        let (name, version) = text.split_once(':').unwrap_or((text, "$LATEST"));
        let (name, version) = (name.trim(), version.trim());
        (!name.is_empty() && !version.is_empty()).then(|| FleetFunction::new(name, version))
    }
}

/// Which environment of the fleet a `SimConfig` is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentSpec {
    /// Its slot (0-based): slots run at once, each one environment after the other.
    pub slot: usize,
    /// Its place in the slot's succession (0: the slot's first environment).
    pub generation: usize,
    /// Numbered across the fleet in start order.
    pub index: usize,
    /// Its function and version (slot `i` runs `functions[i % len]`).
    pub function: FleetFunction,
    /// Invocations it serves before it is shut down.
    pub invocations: usize,
}

/// Builds each environment's simulation from the fleet's template (the function, version and
/// invocation count are set by the fleet afterwards).
pub type Template = Box<dyn Fn(&EnvironmentSpec) -> SimConfig + Send + Sync>;

/// Called when an environment has finished (and, without `keep_reports`, before its report is
/// dropped).
pub type FinishedFn = Box<dyn FnMut(&FinishedEnvironment) + Send>;

/// How to run a fleet. Build with `..FleetConfig::default()`.
pub struct FleetConfig {
    /// Environments alive at once (at least 1).
    pub slots: usize,
    /// The functions; slot `i` serves `functions[i % len]` (at least one).
    pub functions: Vec<FleetFunction>,
    /// Invocations across the fleet; 0: until `stop` turns true.
    pub invocations: usize,
    /// Invocations one environment serves before it is shut down and replaced (churn).
    pub lifetime: usize,
    /// Slot `i` starts `i × stagger` after the first, so that environments start and end at
    /// different times.
    pub stagger: Duration,
    /// When this turns `true`, no environment starts and the running ones finish their current
    /// invocation and shut down.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Each environment's simulation.
    pub template: Template,
    /// Keep every environment's report in the fleet's (default true; a run without an end keeps
    /// only the counts).
    pub keep_reports: bool,
    /// Called as each environment finishes.
    pub on_finished: Option<FinishedFn>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            slots: 4,
            functions: vec![FleetFunction::new("sim-function", "$LATEST")],
            invocations: 40,
            lifetime: 5,
            stagger: Duration::from_millis(150),
            stop: None,
            template: Box::new(|_| SimConfig::default()),
            keep_reports: true,
            on_finished: None,
        }
    }
}

/// One environment that ran.
#[derive(Debug)]
pub struct FinishedEnvironment {
    /// Which it was.
    pub spec: EnvironmentSpec,
    /// What happened (`Err` when its init failed; the error carries its report).
    pub outcome: Result<SimReport, SimError>,
}

impl FinishedEnvironment {
    /// Its report, whether init failed or not.
    pub fn report(&self) -> Option<&SimReport> {
        match &self.outcome {
            Ok(report) => Some(report),
            Err(SimError::InitFailed { report, .. }) => Some(report),
            Err(_) => None,
        }
    }
}

/// Counts per function over the fleet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FunctionTotals {
    /// Environments started (each one cold start).
    pub environments: usize,
    /// Invocations.
    pub invocations: usize,
    /// Invocations per status.
    pub by_status: BTreeMap<String, usize>,
    /// Invocations per error type (status `error` or `failure`).
    pub by_error_type: BTreeMap<String, usize>,
    /// Events the Telemetry API emitted.
    pub events_sent: usize,
}

/// What a fleet did.
#[derive(Debug, Default)]
pub struct FleetReport {
    /// Every environment, in the order they finished (reports only with `keep_reports`).
    pub environments: Vec<FinishedEnvironment>,
    /// Counts per function, over every environment (kept or not).
    pub totals: BTreeMap<FleetFunction, FunctionTotals>,
    /// Environments whose run was not clean (init failed, exit code, undelivered events).
    pub unclean: Vec<String>,
    /// The most environments alive at once.
    pub max_alive: usize,
}

impl FleetReport {
    /// Invocations across the fleet.
    pub fn invocations(&self) -> usize {
        self.totals.values().map(|t| t.invocations).sum()
    }

    /// Environments started across the fleet.
    pub fn environments_started(&self) -> usize {
        self.totals.values().map(|t| t.environments).sum()
    }

    /// Events emitted across the fleet.
    pub fn events_sent(&self) -> usize {
        self.totals.values().map(|t| t.events_sent).sum()
    }

    /// Whether every environment went through init, its invocations and shutdown cleanly.
    pub fn clean(&self) -> bool {
        self.unclean.is_empty()
    }

    fn tally(&mut self, finished: &FinishedEnvironment) {
        let totals = self
            .totals
            .entry(finished.spec.function.clone())
            .or_default();
        totals.environments += 1;
        let Some(report) = finished.report() else {
            self.unclean
                .push(format!("environment {}: did not run", finished.spec.index));
            return;
        };
        totals.invocations += report.totals.invocations;
        for (status, n) in &report.totals.invocations_by_status {
            *totals.by_status.entry(status.clone()).or_insert(0) += n;
        }
        for invocation in &report.invocations {
            if let (Some(error_type), "error" | "failure") =
                (&invocation.error_type, invocation.status.as_str())
            {
                *totals.by_error_type.entry(error_type.clone()).or_insert(0) += 1;
            }
        }
        totals.events_sent += report.totals.events_sent;
        if finished.outcome.is_err() || !report.clean() {
            self.unclean.push(format!(
                "environment {} ({} {}): exit {:?}, killed {}, undelivered {}, errors {:?}",
                finished.spec.index,
                finished.spec.function.name,
                finished.spec.function.version,
                report.exit_code,
                report.killed,
                report.undelivered_events,
                report.errors
            ));
        }
    }
}

/// The fleet's shared state while it runs.
struct Shared {
    budget: Option<AtomicUsize>,
    started: AtomicUsize,
    alive: AtomicUsize,
    max_alive: AtomicUsize,
    report: Mutex<FleetReport>,
    on_finished: Mutex<Option<FinishedFn>>,
}

impl Shared {
    /// Takes up to `lifetime` invocations from the fleet's budget; 0 when it is spent.
    fn take(&self, lifetime: usize) -> usize {
        let Some(budget) = &self.budget else {
            return lifetime;
        };
        let mut left = budget.load(Ordering::Relaxed);
        loop {
            let take = left.min(lifetime);
            if take == 0 {
                return 0;
            }
            match budget.compare_exchange(left, left - take, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return take,
                Err(now) => left = now,
            }
        }
    }
}

/// Runs the fleet: its slots at once, each slot's environments one after the other, each
/// environment a whole simulation (init, its invocations, SHUTDOWN) of its own extension process.
pub async fn run(mut cfg: FleetConfig) -> FleetReport {
    let slots = cfg.slots.max(1);
    let functions = if cfg.functions.is_empty() {
        vec![FleetFunction::new("sim-function", "$LATEST")]
    } else {
        cfg.functions.clone()
    };
    let lifetime = cfg.lifetime.max(1);
    let shared = Arc::new(Shared {
        budget: (cfg.invocations > 0).then(|| AtomicUsize::new(cfg.invocations)),
        started: AtomicUsize::new(0),
        alive: AtomicUsize::new(0),
        max_alive: AtomicUsize::new(0),
        report: Mutex::new(FleetReport::default()),
        on_finished: Mutex::new(cfg.on_finished.take()),
    });
    let template = Arc::new(cfg.template);
    let mut tasks = tokio::task::JoinSet::new();
    for slot in 0..slots {
        let shared = shared.clone();
        let template = template.clone();
        let function = functions[slot % functions.len()].clone();
        let stop = cfg.stop.clone();
        let delay = cfg.stagger * slot as u32;
        let keep = cfg.keep_reports;
        tasks.spawn(async move {
            tokio::time::sleep(delay).await;
            for generation in 0.. {
                if stop.as_ref().is_some_and(|s| *s.borrow()) {
                    return;
                }
                let invocations = shared.take(lifetime);
                if invocations == 0 {
                    return;
                }
                let spec = EnvironmentSpec {
                    slot,
                    generation,
                    index: shared.started.fetch_add(1, Ordering::Relaxed),
                    function: function.clone(),
                    invocations,
                };
                let mut sim = template(&spec);
                sim.function_name = spec.function.name.clone();
                sim.function_version = spec.function.version.clone();
                sim.invocations = invocations;
                sim.stop = stop.clone();
                let alive = shared.alive.fetch_add(1, Ordering::Relaxed) + 1;
                shared.max_alive.fetch_max(alive, Ordering::Relaxed);
                let outcome = super::run(sim).await;
                shared.alive.fetch_sub(1, Ordering::Relaxed);
                let finished = FinishedEnvironment { spec, outcome };
                if let Some(callback) = lock(&shared.on_finished).as_mut() {
                    callback(&finished);
                }
                let mut report = lock(&shared.report);
                report.tally(&finished);
                if keep {
                    report.environments.push(finished);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut report = std::mem::take(&mut *lock(&shared.report));
    report.max_alive = shared.max_alive.load(Ordering::Relaxed);
    report
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_parse_with_or_without_a_version() {
        assert_eq!(
            FleetFunction::parse("orders:2"),
            Some(FleetFunction::new("orders", "2"))
        );
        assert_eq!(
            FleetFunction::parse("orders"),
            Some(FleetFunction::new("orders", "$LATEST"))
        );
        assert_eq!(FleetFunction::parse(":2"), None);
        assert_eq!(FleetFunction::parse("orders:"), None);
    }

    #[test]
    fn the_budget_is_shared_out_in_lifetimes() {
        let shared = Shared {
            budget: Some(AtomicUsize::new(12)),
            started: AtomicUsize::new(0),
            alive: AtomicUsize::new(0),
            max_alive: AtomicUsize::new(0),
            report: Mutex::new(FleetReport::default()),
            on_finished: Mutex::new(None),
        };
        assert_eq!(
            [5, 5, 5, 5].map(|l| shared.take(l)),
            [5, 5, 2, 0],
            "the last environment gets what is left"
        );
    }
}
