//! The memory budget, the caps per worker and the most workers, derived from the settings
//! and the facts molt measured. [`derive`] is pure (no file, no clock), so every formula is
//! tested below with the numbers of real dynos; the supervisor calls it again whenever a
//! fact changes (molt's own RSS, the footprint of a freshly booted worker).
//!
//! The formulas, in the order they are computed (docs/memory-budget.md says the same):
//!
//! 1. **total** = `MOLT_MEMORY_LIMIT`; else the cgroup limit when it is below physical RAM
//!    (a dyno on a 64 GB host sees the host's `MemTotal`, but may use only its quota);
//!    else physical RAM; else, with nothing known, 512 MB, the smallest common dyno.
//! 2. **usable** = total x `MOLT_MEMORY_TARGET`% - molt's own RSS. What the pool may hold.
//!    Never below 1 MB, so the caps below are never zero; a warning says when it is that small.
//! 3. **max_workers** = `MOLT_MAX_WORKERS` when set. Otherwise a memory bound
//!    - floor(usable / soft cap) when `MOLT_WORKER_MEMORY` is set,
//!    - floor(usable / (1.5 x footprint)) once the footprint of a freshly booted worker
//!      is measured: room for each worker to grow by half its boot size before it is
//!      recycled,
//!
//!    capped by a CPU bound floor((2 x cpus + 1) / `MOLT_WORKER_PROCESSES`) (gunicorn's
//!    rule: for servers that take one request per process, more processes than that only
//!    queue on the CPU), and raised to `MOLT_MIN_WORKERS`. Until a footprint is measured
//!    it is `MOLT_MIN_WORKERS`.
//! 4. **soft_cap** = `MOLT_WORKER_MEMORY` (a percentage is of total); else
//!    usable / max_workers, lowered to hard_cap / 1.5 when `MOLT_WORKER_MEMORY_HARD` is set
//!    so that a worker over its soft cap has room to drain before it reaches the hard cap.
//! 5. **hard_cap** = `MOLT_WORKER_MEMORY_HARD`; else soft_cap x 1.5, but no more than total
//!    while that is still above the soft cap. A hard cap given as a size against a soft
//!    cap given as a percentage (or the other way) can only be compared here: when it is
//!    not above the soft cap it is raised to soft_cap x 1.5, with a warning.
//!
//! Why 1.5 and not 2 for the footprint: the case molt exists for is two Unicorn workers of
//! about 120 MB on a 512 MB dyno, creeping past 250 MB each. With 2 x footprint that dyno
//! gets one worker, half the capacity its owner already ran; with 1.5 it gets two, each
//! recycled at 214.6 MB, before the pair can swap the dyno. The pool guard (in the
//! supervisor) keeps the sum of the workers under usable whatever the caps say.

use std::fmt::Write as _;

use crate::config::{Config, MemoryAmount};
use crate::units::{format_size, percent_of};

/// Budget assumed when no limit is set or found and physical RAM is unknown: the smallest
/// common dyno, so a guess never promises workers more than the smallest container has.
pub(crate) const FALLBACK_TOTAL: u64 = 512 << 20;

/// Floor of the usable budget, so caps are never zero when molt's own memory eats the whole
/// target; such a budget cannot hold a worker, and a warning says so.
const MIN_USABLE: u64 = 1 << 20;

/// Room per worker, as a multiple of its boot footprint, when `max_workers` is derived
/// from the footprint (see the module doc for why 1.5).
const GROWTH_ROOM: Factor = Factor {
    num: 3,
    den: 2,
    shown: "1.5",
};

/// The derived hard cap over the soft cap: a worker past its soft cap keeps serving while it
/// drains (up to `MOLT_DRAIN_TIMEOUT`), and half its cap again is room to do so without
/// being killed, while one runaway request is still stopped well before the budget.
const HARD_OVER_SOFT: Factor = Factor {
    num: 3,
    den: 2,
    shown: "1.5",
};

/// A ratio applied to byte counts in integer arithmetic.
#[derive(Debug, Clone, Copy)]
struct Factor {
    num: u64,
    den: u64,
    /// The ratio as `molt plan` shows it.
    shown: &'static str,
}

impl Factor {
    /// `bytes` x the factor, rounded down, saturating.
    fn of(self, bytes: u64) -> u64 {
        let scaled = u128::from(bytes) * u128::from(self.num) / u128::from(self.den);
        u64::try_from(scaled).unwrap_or(u64::MAX)
    }

    /// `bytes` / the factor, rounded down.
    fn inverse_of(self, bytes: u64) -> u64 {
        let scaled = u128::from(bytes) * u128::from(self.den) / u128::from(self.num);
        u64::try_from(scaled).unwrap_or(u64::MAX)
    }
}

/// What molt knows about the machine, as read by `sys` and measured by the supervisor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    /// The cgroup's memory limit; `None` when there is none or it means unlimited.
    pub cgroup_limit: Option<u64>,
    /// `v1` or `v2`, for messages.
    pub cgroup_version: Option<&'static str>,
    /// Physical memory (`MemTotal`).
    pub physical: Option<u64>,
    /// molt's own resident memory.
    pub molt_rss: u64,
    /// CPUs molt may use (available parallelism); 0 counts as 1.
    pub cpus: usize,
    /// Typical memory of a freshly booted worker, once measured.
    pub worker_footprint: Option<u64>,
}

/// Where the total budget came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BudgetSource {
    /// `MOLT_MEMORY_LIMIT`.
    Setting,
    /// The cgroup limit, with the cgroup version (`v1`, `v2`, or empty when unknown).
    Cgroup(&'static str),
    /// Physical RAM.
    Physical,
    /// Nothing known: [`FALLBACK_TOTAL`].
    Fallback,
}

/// The budget, caps and worker bound for one set of settings and facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Budget {
    /// The whole memory budget.
    pub total: u64,
    pub source: BudgetSource,
    /// What the pool may hold: total x target% - molt's RSS.
    pub usable: u64,
    /// Over it a worker is recycled gracefully.
    pub soft_cap: u64,
    /// Over it a worker's group is killed at once; always above `soft_cap`.
    pub hard_cap: u64,
    /// Most live workers; at least `min_workers`.
    pub max_workers: usize,
    /// How each number was reached, in `molt plan` order: `budget`, `usable`,
    /// `max_workers`, `soft_cap`, `hard_cap`, each with the setting it came from or the
    /// formula with its numbers.
    pub derivation: Vec<(&'static str, String)>,
    /// Settings or facts that make the pool misbehave (a cap below a worker's boot size),
    /// for `molt plan` and the log.
    pub warnings: Vec<String>,
}

/// Derives the budget from the settings and the facts; see the module doc for the formulas.
pub(crate) fn derive(config: &Config, facts: &Facts) -> Budget {
    let mut warnings = Vec::new();
    let (total, source, budget_why) = total(config, facts, &mut warnings);

    let target = percent_of(total, config.memory_target);
    let left = target.saturating_sub(facts.molt_rss);
    let usable = left.max(MIN_USABLE);
    let mut usable_why = format!(
        "{}% of {} - molt {}",
        config.memory_target,
        format_size(total),
        format_size(facts.molt_rss)
    );
    if left < MIN_USABLE {
        write!(usable_why, " = {}, raised to 1MB", format_size(left))
            .expect("writing to a String cannot fail");
        warnings.push(format!(
            "{}% of the {} budget leaves {} after molt's own {}, too little for any worker; \
             raise MOLT_MEMORY_LIMIT or MOLT_MEMORY_TARGET",
            config.memory_target,
            format_size(total),
            format_size(left),
            format_size(facts.molt_rss)
        ));
    }

    let footprint = facts.worker_footprint.filter(|&bytes| bytes > 0);
    let (max_workers, max_why) = max_workers(config, facts, total, usable, footprint);
    let caps = caps(config, total, usable, max_workers, &mut warnings);

    if let Some(footprint) = footprint {
        if caps.soft < footprint {
            warnings.push(format!(
                "soft_cap {} is below the {} footprint of a freshly booted worker, so workers \
                 would be recycled as soon as they boot; give workers more memory \
                 (MOLT_MEMORY_LIMIT, MOLT_WORKER_MEMORY) or run fewer \
                 (MOLT_MIN_WORKERS, MOLT_MAX_WORKERS)",
                format_size(caps.soft),
                format_size(footprint)
            ));
        }
    }

    Budget {
        total,
        source,
        usable,
        soft_cap: caps.soft,
        hard_cap: caps.hard,
        max_workers,
        derivation: vec![
            ("budget", budget_why),
            ("usable", usable_why),
            ("max_workers", max_why),
            ("soft_cap", caps.soft_why),
            ("hard_cap", caps.hard_why),
        ],
        warnings,
    }
}

/// The caps per worker and how they were reached.
struct Caps {
    soft: u64,
    soft_why: String,
    hard: u64,
    hard_why: String,
}

/// The soft and hard caps per worker (formulas 4 and 5 of the module doc).
fn caps(
    config: &Config,
    total: u64,
    usable: u64,
    max_workers: usize,
    warnings: &mut Vec<String>,
) -> Caps {
    let (soft, soft_why) = match config.worker_memory {
        Some(MemoryAmount::Bytes(bytes)) => (bytes, "MOLT_WORKER_MEMORY".to_owned()),
        Some(amount @ MemoryAmount::Percent(_)) => (
            amount.resolve(total),
            setting_shown(amount, total, "MOLT_WORKER_MEMORY"),
        ),
        None => (
            usable / u64::try_from(max_workers).unwrap_or(u64::MAX),
            "usable / max_workers".to_owned(),
        ),
    };
    let mut caps = Caps {
        soft: soft.max(1),
        soft_why,
        hard: 0,
        hard_why: String::new(),
    };

    let Some(amount) = config.worker_memory_hard else {
        let scaled = above(caps.soft);
        // No more than the budget, while that is still above the soft cap: a hard cap past
        // the whole budget would never fire before the platform acts.
        (caps.hard, caps.hard_why) = if scaled > total && total > caps.soft {
            (
                total,
                format!("budget (soft_cap x {} is above it)", HARD_OVER_SOFT.shown),
            )
        } else {
            (scaled, format!("soft_cap x {}", HARD_OVER_SOFT.shown))
        };
        return caps;
    };

    let hard = amount.resolve(total).max(1);
    let shown = setting_shown(amount, total, "MOLT_WORKER_MEMORY_HARD");
    if config.worker_memory.is_none() {
        // The derived soft cap gives way to the hard cap that was set, keeping the room
        // between them that a draining worker needs.
        let ceiling = HARD_OVER_SOFT.inverse_of(hard).max(1);
        if caps.soft > ceiling {
            caps.soft = ceiling;
            caps.soft_why = format!(
                "hard_cap / {}, below usable / max_workers",
                HARD_OVER_SOFT.shown
            );
        }
    }
    if hard > caps.soft {
        (caps.hard, caps.hard_why) = (hard, shown);
        return caps;
    }
    // Only a size against a percentage gets here: two sizes or two percentages are
    // compared, and rejected, when the settings are loaded.
    caps.hard = above(caps.soft);
    caps.hard_why = format!(
        "{shown} {} is not above soft_cap; raised to soft_cap x {}",
        format_size(hard),
        HARD_OVER_SOFT.shown
    );
    warnings.push(format!(
        "MOLT_WORKER_MEMORY_HARD {} is not above the soft cap {}; \
         using soft_cap x {} = {} as the hard cap",
        format_size(hard),
        format_size(caps.soft),
        HARD_OVER_SOFT.shown,
        format_size(caps.hard)
    ));
    caps
}

/// The total budget, where it came from, and how to say so.
fn total(
    config: &Config,
    facts: &Facts,
    warnings: &mut Vec<String>,
) -> (u64, BudgetSource, String) {
    let version = facts.cgroup_version.unwrap_or("");
    let cgroup = cgroup_file(facts.cgroup_version);
    // What the machine enforces: the cgroup limit when it is the tighter one. A dyno on a
    // 64 GB host reads the host's MemTotal but may use only its quota.
    let detected = match (facts.cgroup_limit, facts.physical) {
        (Some(limit), None) => Some((limit, BudgetSource::Cgroup(version), cgroup.clone())),
        (Some(limit), Some(physical)) if limit < physical => {
            Some((limit, BudgetSource::Cgroup(version), cgroup.clone()))
        }
        (Some(limit), Some(physical)) => Some((
            physical,
            BudgetSource::Physical,
            format!(
                "physical RAM; the {cgroup} {} is not below it",
                format_size(limit)
            ),
        )),
        (None, Some(physical)) => {
            Some((physical, BudgetSource::Physical, "physical RAM".to_owned()))
        }
        (None, None) => None,
    };
    if let Some(limit) = config.memory_limit {
        // A limit above what the platform enforces only lets the platform act before molt.
        if let Some((enforced, source, _)) = &detected {
            if limit > *enforced {
                let what = match source {
                    BudgetSource::Cgroup(_) => cgroup,
                    _ => "physical RAM".to_owned(),
                };
                warnings.push(format!(
                    "MOLT_MEMORY_LIMIT {} is above the {what} {}, so the platform would run \
                     out of memory before molt acts; lower MOLT_MEMORY_LIMIT",
                    format_size(limit),
                    format_size(*enforced)
                ));
            }
        }
        return (limit, BudgetSource::Setting, "MOLT_MEMORY_LIMIT".to_owned());
    }
    detected.unwrap_or_else(|| {
        warnings.push(format!(
            "no memory limit is set or found (no MOLT_MEMORY_LIMIT, cgroup limit or \
             MemTotal); assuming {}; set MOLT_MEMORY_LIMIT",
            format_size(FALLBACK_TOTAL)
        ));
        (
            FALLBACK_TOTAL,
            BudgetSource::Fallback,
            "fallback: no limit set or found".to_owned(),
        )
    })
}

/// The file a cgroup limit is read from, by version, for messages.
fn cgroup_file(version: Option<&str>) -> String {
    match version {
        Some("v2") => "cgroup v2 memory.max".to_owned(),
        Some("v1") => "cgroup v1 memory.limit_in_bytes".to_owned(),
        Some(version) => format!("cgroup {version} memory limit"),
        None => "cgroup memory limit".to_owned(),
    }
}

/// The most workers and how it was reached.
fn max_workers(
    config: &Config,
    facts: &Facts,
    total: u64,
    usable: u64,
    footprint: Option<u64>,
) -> (usize, String) {
    let min = config.min_workers.max(1);
    if let Some(max) = config.max_workers {
        // Config rejects a max below the min; a Config built in code could still have one.
        if max < min {
            return (
                min,
                format!("MOLT_MAX_WORKERS {max}, raised to min_workers {min}"),
            );
        }
        return (max, "MOLT_MAX_WORKERS".to_owned());
    }
    let per_worker = match (config.worker_memory, footprint) {
        (Some(amount), _) => {
            let soft = amount.resolve(total).max(1);
            Some((soft, format!("{} soft cap", format_size(soft))))
        }
        (None, Some(footprint)) => Some((
            GROWTH_ROOM.of(footprint).max(1),
            format!(
                "({} x {} footprint)",
                GROWTH_ROOM.shown,
                format_size(footprint)
            ),
        )),
        (None, None) => None,
    };
    let Some((per_worker, per_worker_shown)) = per_worker else {
        return (
            min,
            "min_workers, until a worker's footprint is measured".to_owned(),
        );
    };
    let memory_bound = usize::try_from(usable / per_worker).unwrap_or(usize::MAX);
    let cpus = facts.cpus.max(1);
    let processes = config.worker_processes.max(1);
    let cpu_bound = (cpus.saturating_mul(2).saturating_add(1) / processes).max(1);
    let cpu_shown = if processes == 1 {
        format!("2 x {cpus} cpus + 1 = {cpu_bound}")
    } else {
        format!("(2 x {cpus} cpus + 1) / {processes} processes = {cpu_bound}")
    };
    let mut why = format!(
        "floor({} / {per_worker_shown}) = {memory_bound}; cpu bound {cpu_shown}",
        format_size(usable)
    );
    let bound = memory_bound.min(cpu_bound);
    if bound < min {
        write!(why, "; raised to min_workers {min}").expect("writing to a String cannot fail");
        return (min, why);
    }
    (bound, why)
}

/// `soft_cap` x 1.5, and at least one byte above it.
fn above(soft_cap: u64) -> u64 {
    HARD_OVER_SOFT.of(soft_cap).max(soft_cap.saturating_add(1))
}

/// A setting's name, with the percentage it resolves from when it is one.
fn setting_shown(amount: MemoryAmount, total: u64, name: &str) -> String {
    match amount {
        MemoryAmount::Bytes(_) => name.to_owned(),
        MemoryAmount::Percent(percent) => {
            format!("{percent}% of {} ({name})", format_size(total))
        }
    }
}

impl Budget {
    /// The value of one derivation item, as `molt plan` shows it.
    fn shown(&self, item: &str) -> String {
        match item {
            "budget" => format_size(self.total),
            "usable" => format_size(self.usable),
            "max_workers" => self.max_workers.to_string(),
            "soft_cap" => format_size(self.soft_cap),
            "hard_cap" => format_size(self.hard_cap),
            _ => String::new(),
        }
    }
}

/// The lines `molt plan` prints after the settings table: each derived number, aligned,
/// with how it was reached, then the warnings.
pub(crate) fn plan_text(budget: &Budget) -> String {
    let rows: Vec<(&str, String, &str)> = budget
        .derivation
        .iter()
        .map(|(item, why)| (*item, budget.shown(item), why.as_str()))
        .collect();
    let item_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let value_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (item, value, why) in &rows {
        writeln!(out, "{item:<item_width$}  {value:<value_width$}  {why}")
            .expect("writing to a String cannot fail");
    }
    for warning in &budget.warnings {
        writeln!(out, "warning: {warning}").expect("writing to a String cannot fail");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;
    const GB: u64 = 1 << 30;

    /// A Heroku dyno: a cgroup v2 limit on a 64 GB host showing 8 CPUs, molt at 6 MB, and
    /// the footprint of a freshly booted worker once measured.
    fn dyno(limit: u64, cpus: usize, footprint: Option<u64>) -> Facts {
        Facts {
            cgroup_limit: Some(limit),
            cgroup_version: Some("v2"),
            physical: Some(64 * GB),
            molt_rss: 6 * MB,
            cpus,
            worker_footprint: footprint,
        }
    }

    /// The numbers of a budget, for one-line comparisons.
    fn numbers(budget: &Budget) -> (u64, u64, usize, u64, u64) {
        (
            budget.total,
            budget.usable,
            budget.max_workers,
            budget.soft_cap,
            budget.hard_cap,
        )
    }

    fn why<'a>(budget: &'a Budget, item: &str) -> &'a str {
        &budget
            .derivation
            .iter()
            .find(|(i, _)| *i == item)
            .unwrap()
            .1
    }

    #[test]
    fn heroku_512mb_dyno_with_120mb_unicorns_runs_two_workers() {
        // The case molt exists for: two Unicorn workers of about 120 MB on a 512 MB dyno,
        // which crept past 250 MB each and swapped the dyno.
        let budget = derive(&Config::default(), &dyno(512 * MB, 8, Some(120 * MB)));
        // usable = 536870912 x 85 / 100 - 6 MB = 456340275 - 6291456
        // max = floor(450048819 / 188743680) = 2 (cpu bound 17)
        // soft = 450048819 / 2; hard = soft x 1.5
        assert_eq!(
            numbers(&budget),
            (536_870_912, 450_048_819, 2, 225_024_409, 337_536_613)
        );
        assert_eq!(budget.source, BudgetSource::Cgroup("v2"));
        assert!(budget.warnings.is_empty(), "{:?}", budget.warnings);
        assert_eq!(
            plan_text(&budget),
            "\
budget       512MB    cgroup v2 memory.max
usable       429.2MB  85% of 512MB - molt 6MB
max_workers  2        floor(429.2MB / (1.5 x 120MB footprint)) = 2; cpu bound 2 x 8 cpus + 1 = 17
soft_cap     214.6MB  usable / max_workers
hard_cap     321.9MB  soft_cap x 1.5
"
        );
    }

    #[test]
    fn standard_2x_1gb_dyno_runs_four_workers() {
        let budget = derive(&Config::default(), &dyno(GB, 8, Some(120 * MB)));
        // usable = 912680550 - 6291456 = 906389094 (864.4MB); floor(906389094 / 188743680) = 4.
        assert_eq!(
            numbers(&budget),
            (GB, 906_389_094, 4, 226_597_273, 339_895_909)
        );
        assert_eq!(
            why(&budget, "max_workers"),
            "floor(864.4MB / (1.5 x 120MB footprint)) = 4; cpu bound 2 x 8 cpus + 1 = 17"
        );
    }

    #[test]
    fn performance_m_dyno_is_bound_by_its_two_cpus() {
        // Performance-M: 2.5 GB and 2 dedicated CPUs. Memory alone would allow 12 workers.
        let budget = derive(&Config::default(), &dyno(2560 * MB, 2, Some(120 * MB)));
        assert_eq!(
            numbers(&budget),
            (2_684_354_560, 2_275_409_920, 5, 455_081_984, 682_622_976)
        );
        assert_eq!(
            why(&budget, "max_workers"),
            "floor(2.12GB / (1.5 x 120MB footprint)) = 12; cpu bound 2 x 2 cpus + 1 = 5"
        );
        assert_eq!(format_size(budget.soft_cap), "434MB");
    }

    #[test]
    fn no_limit_on_a_24gb_machine_with_2_cpus() {
        // A VM or a laptop: no cgroup limit, so the budget is physical RAM.
        let facts = Facts {
            cgroup_limit: None,
            cgroup_version: Some("v2"),
            physical: Some(24 * GB),
            molt_rss: 6 * MB,
            cpus: 2,
            worker_footprint: Some(120 * MB),
        };
        let budget = derive(&Config::default(), &facts);
        assert_eq!(
            numbers(&budget),
            (24 * GB, 21_898_041_753, 5, 4_379_608_350, 6_569_412_525)
        );
        assert_eq!(budget.source, BudgetSource::Physical);
        assert_eq!(why(&budget, "budget"), "physical RAM");
        assert_eq!(format_size(budget.soft_cap), "4.08GB");
    }

    #[test]
    fn cgroup_limit_not_below_physical_ram_means_physical_ram() {
        // cgroup v1 without a limit reports about 8 EiB; sys may pass it on as a limit.
        let facts = Facts {
            cgroup_limit: Some(9_223_372_036_854_771_712),
            cgroup_version: Some("v1"),
            physical: Some(16 * GB),
            cpus: 4,
            ..Facts::default()
        };
        let budget = derive(&Config::default(), &facts);
        assert_eq!(
            (budget.total, budget.source),
            (16 * GB, BudgetSource::Physical)
        );
        assert_eq!(
            why(&budget, "budget"),
            "physical RAM; the cgroup v1 memory.limit_in_bytes 8388608TB is not below it"
        );
        // A cgroup limit with no MemTotal is still a limit.
        let facts = Facts {
            cgroup_limit: Some(GB),
            cgroup_version: Some("v1"),
            ..Facts::default()
        };
        let budget = derive(&Config::default(), &facts);
        assert_eq!(
            (budget.total, budget.source),
            (GB, BudgetSource::Cgroup("v1"))
        );
        assert_eq!(why(&budget, "budget"), "cgroup v1 memory.limit_in_bytes");
    }

    #[test]
    fn memory_limit_setting_wins_and_warns_when_above_the_cgroup() {
        let config = Config {
            memory_limit: Some(256 * MB),
            ..Config::default()
        };
        let budget = derive(&config, &dyno(512 * MB, 8, None));
        assert_eq!(
            (budget.total, budget.source),
            (256 * MB, BudgetSource::Setting)
        );
        assert_eq!(why(&budget, "budget"), "MOLT_MEMORY_LIMIT");
        assert!(budget.warnings.is_empty());
        let config = Config {
            memory_limit: Some(GB),
            ..Config::default()
        };
        let budget = derive(&config, &dyno(512 * MB, 8, None));
        assert_eq!(budget.total, GB);
        assert_eq!(
            budget.warnings,
            [
                "MOLT_MEMORY_LIMIT 1GB is above the cgroup v2 memory.max 512MB, so the platform \
                 would run out of memory before molt acts; lower MOLT_MEMORY_LIMIT"
            ]
        );
    }

    #[test]
    fn before_a_footprint_is_measured_max_is_min_workers() {
        let config = Config {
            min_workers: 2,
            ..Config::default()
        };
        let budget = derive(&config, &dyno(512 * MB, 8, None));
        assert_eq!(
            numbers(&budget),
            (536_870_912, 450_048_819, 2, 225_024_409, 337_536_613)
        );
        assert_eq!(
            why(&budget, "max_workers"),
            "min_workers, until a worker's footprint is measured"
        );
        // With the default one worker, it may use all of usable, and the hard cap is the
        // whole budget, since usable x 1.5 is above it.
        let budget = derive(&Config::default(), &dyno(512 * MB, 8, Some(0)));
        assert_eq!(
            numbers(&budget),
            (536_870_912, 450_048_819, 1, 450_048_819, 536_870_912)
        );
        assert_eq!(
            why(&budget, "hard_cap"),
            "budget (soft_cap x 1.5 is above it)"
        );
    }

    #[test]
    fn min_workers_above_the_memory_bound_wins_and_warns() {
        let config = Config {
            min_workers: 4,
            ..Config::default()
        };
        let budget = derive(&config, &dyno(512 * MB, 8, Some(120 * MB)));
        assert_eq!(
            numbers(&budget),
            (536_870_912, 450_048_819, 4, 112_512_204, 168_768_306)
        );
        assert_eq!(
            why(&budget, "max_workers"),
            "floor(429.2MB / (1.5 x 120MB footprint)) = 2; cpu bound 2 x 8 cpus + 1 = 17; \
             raised to min_workers 4"
        );
        assert_eq!(
            budget.warnings,
            [
                "soft_cap 107.3MB is below the 120MB footprint of a freshly booted worker, so \
                 workers would be recycled as soon as they boot; give workers more memory \
                 (MOLT_MEMORY_LIMIT, MOLT_WORKER_MEMORY) or run fewer \
                 (MOLT_MIN_WORKERS, MOLT_MAX_WORKERS)"
            ]
        );
    }

    #[test]
    fn worker_memory_as_a_percentage_of_the_budget() {
        let config = Config {
            worker_memory: Some(MemoryAmount::Percent(40)),
            ..Config::default()
        };
        // 40% of 512MB = 214748364 bytes; floor(450048819 / 214748364) = 2. The footprint
        // does not matter once the soft cap is set.
        let budget = derive(&config, &dyno(512 * MB, 8, Some(120 * MB)));
        assert_eq!(
            numbers(&budget),
            (536_870_912, 450_048_819, 2, 214_748_364, 322_122_546)
        );
        assert_eq!(
            why(&budget, "max_workers"),
            "floor(429.2MB / 204.8MB soft cap) = 2; cpu bound 2 x 8 cpus + 1 = 17"
        );
        assert_eq!(
            why(&budget, "soft_cap"),
            "40% of 512MB (MOLT_WORKER_MEMORY)"
        );
        // Known before any footprint: the memory bound needs none.
        let budget = derive(&config, &dyno(512 * MB, 8, None));
        assert_eq!(budget.max_workers, 2);
        // As a size.
        let config = Config {
            worker_memory: Some(MemoryAmount::Bytes(230 * MB)),
            ..Config::default()
        };
        let budget = derive(&config, &dyno(GB, 8, None));
        assert_eq!((budget.max_workers, budget.soft_cap), (3, 230 * MB));
        assert_eq!(why(&budget, "soft_cap"), "MOLT_WORKER_MEMORY");
        assert_eq!(budget.hard_cap, 345 * MB);
    }

    #[test]
    fn explicit_max_workers_is_taken_as_is() {
        let config = Config {
            max_workers: Some(6),
            ..Config::default()
        };
        // Above both bounds: the user knows the app (threads, or small workers).
        let budget = derive(&config, &dyno(512 * MB, 1, Some(120 * MB)));
        assert_eq!((budget.max_workers, budget.soft_cap), (6, 75_008_136));
        assert_eq!(why(&budget, "max_workers"), "MOLT_MAX_WORKERS");
        assert_eq!(budget.warnings.len(), 1, "{:?}", budget.warnings);
        assert!(budget.warnings[0].starts_with("soft_cap 71.53MB is below the 120MB footprint"));
        // A Config built in code with max below min still keeps min workers.
        let config = Config {
            min_workers: 3,
            max_workers: Some(2),
            ..Config::default()
        };
        let budget = derive(&config, &dyno(512 * MB, 8, None));
        assert_eq!(budget.max_workers, 3);
        assert_eq!(
            why(&budget, "max_workers"),
            "MOLT_MAX_WORKERS 2, raised to min_workers 3"
        );
    }

    #[test]
    fn hard_cap_below_a_percentage_soft_cap_is_raised() {
        // 60% of 512MB is 307.2MB; a 300MB hard cap is below it, which config cannot see.
        let config = Config {
            worker_memory: Some(MemoryAmount::Percent(60)),
            worker_memory_hard: Some(MemoryAmount::Bytes(300 * MB)),
            ..Config::default()
        };
        let budget = derive(&config, &dyno(512 * MB, 8, None));
        assert_eq!(
            (budget.soft_cap, budget.hard_cap),
            (322_122_547, 483_183_820)
        );
        assert_eq!(
            why(&budget, "hard_cap"),
            "MOLT_WORKER_MEMORY_HARD 300MB is not above soft_cap; raised to soft_cap x 1.5"
        );
        assert_eq!(
            budget.warnings,
            [
                "MOLT_WORKER_MEMORY_HARD 300MB is not above the soft cap 307.2MB; \
                 using soft_cap x 1.5 = 460.8MB as the hard cap"
            ]
        );
        // Above it, it is taken as is.
        let config = Config {
            worker_memory: Some(MemoryAmount::Bytes(200 * MB)),
            worker_memory_hard: Some(MemoryAmount::Percent(50)),
            ..Config::default()
        };
        let budget = derive(&config, &dyno(512 * MB, 8, None));
        assert_eq!((budget.soft_cap, budget.hard_cap), (200 * MB, 256 * MB));
        assert_eq!(
            why(&budget, "hard_cap"),
            "50% of 512MB (MOLT_WORKER_MEMORY_HARD)"
        );
        assert!(budget.warnings.is_empty());
    }

    #[test]
    fn explicit_hard_cap_lowers_the_derived_soft_cap() {
        let config = Config {
            worker_memory_hard: Some(MemoryAmount::Bytes(300 * MB)),
            ..Config::default()
        };
        let budget = derive(&config, &dyno(512 * MB, 8, Some(120 * MB)));
        // usable / max_workers would be 214.6MB; 300MB / 1.5 = 200MB keeps the gap.
        assert_eq!(
            (budget.max_workers, budget.soft_cap, budget.hard_cap),
            (2, 200 * MB, 300 * MB)
        );
        assert_eq!(
            why(&budget, "soft_cap"),
            "hard_cap / 1.5, below usable / max_workers"
        );
        assert_eq!(why(&budget, "hard_cap"), "MOLT_WORKER_MEMORY_HARD");
        // A hard cap far above leaves the derived soft cap alone.
        let config = Config {
            worker_memory_hard: Some(MemoryAmount::Bytes(400 * MB)),
            ..Config::default()
        };
        let budget = derive(&config, &dyno(512 * MB, 8, Some(120 * MB)));
        assert_eq!((budget.soft_cap, budget.hard_cap), (225_024_409, 400 * MB));
        assert_eq!(why(&budget, "soft_cap"), "usable / max_workers");
    }

    #[test]
    fn no_facts_at_all_falls_back_to_512mb_and_says_so() {
        let budget = derive(&Config::default(), &Facts::default());
        // usable = 85% of 512MB with molt's RSS unknown (0); one worker; cpus 0 count as 1.
        assert_eq!(
            numbers(&budget),
            (536_870_912, 456_340_275, 1, 456_340_275, 536_870_912)
        );
        assert_eq!(budget.source, BudgetSource::Fallback);
        assert_eq!(
            budget.warnings,
            [
                "no memory limit is set or found (no MOLT_MEMORY_LIMIT, cgroup limit or \
                 MemTotal); assuming 512MB; set MOLT_MEMORY_LIMIT"
            ]
        );
        let text = plan_text(&budget);
        assert!(
            text.starts_with("budget       512MB    fallback: no limit set or found\n"),
            "{text}"
        );
        assert!(text.ends_with("; set MOLT_MEMORY_LIMIT\n"), "{text}");
        // A footprint with no CPU count: the CPU bound is 2 x 1 + 1 = 3.
        let facts = Facts {
            worker_footprint: Some(10 * MB),
            ..Facts::default()
        };
        let budget = derive(&Config::default(), &facts);
        assert_eq!(budget.max_workers, 3);
    }

    #[test]
    fn usable_too_small_for_any_worker_is_floored_and_warned() {
        let config = Config {
            memory_limit: Some(4 * MB),
            ..Config::default()
        };
        let facts = Facts {
            molt_rss: 6 * MB,
            cpus: 2,
            worker_footprint: Some(120 * MB),
            ..Facts::default()
        };
        let budget = derive(&config, &facts);
        assert_eq!(numbers(&budget), (4 * MB, MB, 1, MB, 1_572_864));
        assert_eq!(
            why(&budget, "usable"),
            "85% of 4MB - molt 6MB = 0B, raised to 1MB"
        );
        assert_eq!(
            budget.warnings[0],
            "85% of the 4MB budget leaves 0B after molt's own 6MB, too little for any \
             worker; raise MOLT_MEMORY_LIMIT or MOLT_MEMORY_TARGET"
        );
        assert!(budget.warnings[1].starts_with("soft_cap 1MB is below the 120MB footprint"));
        assert!(budget.hard_cap > budget.soft_cap);
    }

    #[test]
    fn footprint_larger_than_usable_keeps_one_worker_and_warns() {
        let budget = derive(&Config::default(), &dyno(512 * MB, 8, Some(600 * MB)));
        assert_eq!(
            numbers(&budget),
            (536_870_912, 450_048_819, 1, 450_048_819, 536_870_912)
        );
        assert_eq!(
            why(&budget, "max_workers"),
            "floor(429.2MB / (1.5 x 600MB footprint)) = 0; cpu bound 2 x 8 cpus + 1 = 17; \
             raised to min_workers 1"
        );
        assert_eq!(budget.warnings.len(), 1);
        assert!(budget.warnings[0].starts_with("soft_cap 429.2MB is below the 600MB footprint"));
    }

    #[test]
    fn worker_processes_divide_the_cpu_bound() {
        // Each worker runs 2 server processes, so 17 processes make 8 workers.
        let config = Config {
            worker_processes: 2,
            ..Config::default()
        };
        let budget = derive(&config, &dyno(14 * GB, 8, Some(120 * MB)));
        assert_eq!(budget.max_workers, 8);
        assert!(
            why(&budget, "max_workers").ends_with("cpu bound (2 x 8 cpus + 1) / 2 processes = 8"),
            "{}",
            why(&budget, "max_workers")
        );
    }

    #[test]
    fn derived_hard_cap_is_above_soft_cap_and_monotonic() {
        // Every soft cap, from a byte to beyond the budget, gets a hard cap above it, and a
        // larger soft cap never gets a smaller hard cap.
        let mut softs: Vec<u64> = (0..40).map(|i| 1u64 << i).collect();
        softs.extend([
            341 * MB,
            342 * MB,
            511 * MB,
            512 * MB - 1,
            513 * MB,
            800 * MB,
        ]);
        softs.sort_unstable();
        let mut previous = 0;
        for soft in softs {
            let config = Config {
                worker_memory: Some(MemoryAmount::Bytes(soft)),
                ..Config::default()
            };
            let budget = derive(&config, &dyno(512 * MB, 8, None));
            assert!(budget.hard_cap > budget.soft_cap, "{soft}");
            assert!(budget.hard_cap >= previous, "{soft}");
            previous = budget.hard_cap;
        }
    }
}
