//! Observability: `tracing` spans and events, and metrics through the
//! `metrics` facade. The README's "Observability" section lists every span,
//! event and metric with its fields or labels; this file makes them.
//!
//! Spans (`stead.call` and `stead.turn` at `debug`, `stead.commit` at
//! `trace`) cost a level check when no subscriber wants them: the fields are
//! only evaluated, and the clock only read, for a span that is enabled.
//!
//! Metrics are recorded only when the runtime was built with
//! `RuntimeBuilder::record_metrics` (or `metrics_listen`): the `metrics`
//! facade cannot tell whether a recorder is installed, and timing a turn
//! costs two clock reads, a good part of a local call, which a runtime that
//! nobody watches should not pay. The handles (`Counter`, `Histogram`,
//! `Gauge`) are registered once per type, method and label value, the first
//! time they are needed, and kept beside the type's method table: a call
//! allocates no label.
//!
//! This module sits beside `host.rs`, below the other layers: it knows ids
//! and errors, and is handed names.

#[cfg(feature = "prometheus")]
pub(crate) mod prometheus;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};
use tracing::Span;
use tracing::field::{Empty, debug};

use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::sync::lock;

/// Calls handled by this process's objects (`type`, `method`, `outcome`).
pub(crate) const CALLS_TOTAL: &str = "stead_calls_total";
/// How long turns take, from the start of the method (or constructor) to
/// the end of the commit (`type`, `method`).
pub(crate) const TURN_SECONDS: &str = "stead_turn_seconds";
/// Calls waiting in the mailboxes of a type's objects (`type`).
pub(crate) const MAILBOX_DEPTH: &str = "stead_mailbox_depth";
/// The deepest mailbox of a type's objects (`type`).
pub(crate) const MAILBOX_DEPTH_MAX: &str = "stead_mailbox_depth_max";
/// Objects in memory (`type`).
pub(crate) const ACTIVATIONS: &str = "stead_activations";
/// Objects evicted, or databases closed to make room (`type`, `reason`).
pub(crate) const EVICTIONS_TOTAL: &str = "stead_evictions_total";
/// How long a turn's commit takes (`type`).
pub(crate) const COMMIT_SECONDS: &str = "stead_commit_seconds";
/// Calls this process sent to objects on other nodes (`type`, `method`, `outcome`).
pub(crate) const REMOTE_CALLS_TOTAL: &str = "stead_remote_calls_total";
/// How long those calls took, as their callers saw it (`type`, `method`).
pub(crate) const REMOTE_CALL_SECONDS: &str = "stead_remote_call_seconds";
/// Alarms fired, retried and dropped (`type`, `event`).
pub(crate) const ALARMS_TOTAL: &str = "stead_alarms_total";

/// The values of the `outcome` label and field: `ok`, the kind of the
/// error, or `abandoned` (the caller dropped the call's future first).
const OUTCOMES: [&str; 17] = [
    "ok",
    "invalid_id",
    "not_hosted",
    "constructor_failed",
    "panicked",
    "overloaded",
    "disconnected",
    "unavailable",
    "timeout",
    "storage",
    "codec",
    "incompatible",
    "transport",
    "config",
    "error",
    "abandoned",
    "alarm_failed",
];

/// How a call or turn ended: an index in [`OUTCOMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome(usize);

impl Outcome {
    /// The call or turn succeeded.
    pub(crate) const OK: Outcome = Outcome(0);
    /// The method or handler panicked.
    pub(crate) const PANICKED: Outcome = Outcome(4);
    /// An alarm handler returned an error.
    pub(crate) const FAILED: Outcome = Outcome(14);
    /// The caller dropped the call's future before its outcome was known.
    const ABANDONED: Outcome = Outcome(15);

    /// `ok`, or the kind of the error.
    pub(crate) fn of<T>(result: &Result<T>) -> Outcome {
        match result {
            Ok(_) => Outcome::OK,
            Err(err) => Outcome::error(err),
        }
    }

    /// The kind of `err`.
    pub(crate) fn error(err: &Error) -> Outcome {
        Outcome(match err {
            Error::InvalidId(_) => 1,
            Error::NotHosted(_) => 2,
            Error::ConstructorFailed(_) => 3,
            Error::Panicked(_) => 4,
            Error::Overloaded(_) => 5,
            Error::Disconnected(_) => 6,
            Error::Unavailable(_) => 7,
            Error::Timeout(_) => 8,
            Error::Storage(_) => 9,
            Error::Codec(_) => 10,
            Error::Incompatible(_) => 11,
            Error::Transport(_) => 12,
            Error::Config(_) => 13,
            Error::AlarmFailed(_) => 16,
        })
    }

    /// The label: `ok`, `panicked`, `timeout`, ...
    pub(crate) fn label(self) -> &'static str {
        OUTCOMES[self.0]
    }
}

/// The metric handle in `cell`, registered by `make` the first time.
fn handle<H>(cell: &OnceLock<H>, make: impl FnOnce() -> H) -> &H {
    cell.get_or_init(make)
}

/// What a runtime records, shared by its layers through the `Host`.
pub(crate) struct Observe {
    /// This process in the `node` field of spans: its node's name, `client`
    /// for a client, `local` outside a cluster.
    node: String,
    /// Recorded metrics: the caller's side of remote calls, by type (made
    /// when a namespace is). `None` when metrics are not recorded.
    remote: Option<Mutex<HashMap<&'static str, Arc<RemoteMetrics>>>>,
}

impl Observe {
    pub(crate) fn new(node: String, record_metrics: bool) -> Self {
        Observe { node, remote: record_metrics.then(Mutex::default) }
    }

    /// Whether metrics are recorded.
    pub(crate) fn metrics(&self) -> bool {
        self.remote.is_some()
    }

    /// This process's name in spans.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// What is recorded of the objects of a hosted type.
    pub(crate) fn hosted_type(&self, type_name: &'static str, methods: Vec<&'static str>) -> TypeObserver {
        let metrics = self.metrics().then(|| TypeMetrics::new(methods.len()));
        TypeObserver { type_name, methods: methods.into(), metrics }
    }

    /// The metrics of calls to objects of `type_name` on other nodes, when
    /// metrics are recorded.
    pub(crate) fn remote(
        &self,
        type_name: &'static str,
        methods: impl FnOnce() -> Vec<&'static str>,
    ) -> Option<Arc<RemoteMetrics>> {
        let mut types = lock(self.remote.as_ref()?);
        let remote = types.entry(type_name).or_insert_with(|| {
            let methods: Box<[&'static str]> = methods().into();
            let calls = methods.iter().map(|_| RemoteMethod::default()).collect();
            Arc::new(RemoteMetrics { type_name, methods, calls })
        });
        Some(remote.clone())
    }
}

/// Why an object left memory, or its database was closed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Eviction {
    /// Idle for `idle_timeout`.
    Idle,
    /// The runtime shut down.
    Shutdown,
    /// Its database was closed to stay within `max_open_databases` (the
    /// object stays in memory).
    Pressure,
}

impl Eviction {
    const ALL: usize = 3;

    fn label(self) -> &'static str {
        match self {
            Eviction::Idle => "idle",
            Eviction::Shutdown => "shutdown",
            Eviction::Pressure => "pressure",
        }
    }
}

/// What became of an alarm.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AlarmEvent {
    /// Its handler ran (first try or retry).
    Fired,
    /// It failed, and a retry was scheduled.
    Retried,
    /// It failed its last retry and was dropped.
    Dropped,
}

impl AlarmEvent {
    const ALL: usize = 3;

    fn label(self) -> &'static str {
        match self {
            AlarmEvent::Fired => "fired",
            AlarmEvent::Retried => "retried",
            AlarmEvent::Dropped => "dropped",
        }
    }
}

/// What is recorded of a hosted type's objects: kept in its `TypeInfo`.
pub(crate) struct TypeObserver {
    type_name: &'static str,
    /// The method names, by method id.
    methods: Box<[&'static str]>,
    metrics: Option<TypeMetrics>,
}

/// The metric handles of a hosted type, each registered on first use.
struct TypeMetrics {
    /// By method id, then one more for method ids the type does not have.
    methods: Box<[MethodMetrics]>,
    alarm_turn: OnceLock<Histogram>,
    commit: OnceLock<Histogram>,
    activations: OnceLock<Gauge>,
    mailbox_depth: OnceLock<Gauge>,
    mailbox_depth_max: OnceLock<Gauge>,
    evictions: [OnceLock<Counter>; Eviction::ALL],
    alarms: [OnceLock<Counter>; AlarmEvent::ALL],
}

#[derive(Default)]
struct MethodMetrics {
    calls: [OnceLock<Counter>; OUTCOMES.len()],
    turn: OnceLock<Histogram>,
}

impl TypeMetrics {
    fn new(methods: usize) -> Self {
        TypeMetrics {
            methods: (0..=methods).map(|_| MethodMetrics::default()).collect(),
            alarm_turn: OnceLock::new(),
            commit: OnceLock::new(),
            activations: OnceLock::new(),
            mailbox_depth: OnceLock::new(),
            mailbox_depth_max: OnceLock::new(),
            evictions: Default::default(),
            alarms: Default::default(),
        }
    }
}

/// The `method` of a span or label for method id `method` (`None`: an alarm).
fn method_name(methods: &[&'static str], method: Option<u32>) -> &'static str {
    match method {
        None => "alarm",
        Some(method) => methods.get(method as usize).copied().unwrap_or("unknown"),
    }
}

impl TypeObserver {
    fn method_metrics<'m>(&self, metrics: &'m TypeMetrics, method: u32) -> (&'static str, &'m MethodMetrics) {
        // The last entry is for ids the type does not have.
        let entry = &metrics.methods[(method as usize).min(self.methods.len())];
        (method_name(&self.methods, Some(method)), entry)
    }

    fn count_call(&self, metrics: &TypeMetrics, method: u32, outcome: Outcome) {
        let (name, entry) = self.method_metrics(metrics, method);
        let type_name = self.type_name;
        handle(&entry.calls[outcome.0], || {
            metrics::counter!(CALLS_TOTAL, "type" => type_name, "method" => name, "outcome" => outcome.label())
        })
        .increment(1);
    }

    /// Starts watching a turn: of a call of `method`, or an alarm (`None`).
    pub(crate) fn turn(&self, id: &ObjectId, method: Option<u32>) -> TurnWatch {
        let span = tracing::debug_span!(
            "stead.turn",
            r#type = self.type_name,
            id = %id,
            method = method_name(&self.methods, method),
            outcome = Empty,
            duration = Empty,
        );
        let timed = self.metrics.is_some() || !span.is_disabled();
        TurnWatch { span, started: timed.then(Instant::now), method }
    }

    /// A turn that is neither counted nor traced (a visit of
    /// `stead::testing`).
    pub(crate) fn unwatched(&self) -> TurnWatch {
        TurnWatch { span: Span::none(), started: None, method: None }
    }

    /// A call of `method` that was refused before its turn (a full
    /// mailbox, a closed runtime, an id that does not verify).
    pub(crate) fn refused(&self, method: u32, err: &Error) {
        if let Some(metrics) = &self.metrics {
            self.count_call(metrics, method, Outcome::error(err));
        }
    }

    /// An object came into memory.
    pub(crate) fn activated(&self) {
        if let Some(metrics) = &self.metrics {
            let type_name = self.type_name;
            handle(&metrics.activations, || metrics::gauge!(ACTIVATIONS, "type" => type_name)).increment(1);
        }
    }

    /// An object left memory.
    pub(crate) fn evicted(&self, reason: Eviction) {
        if let Some(metrics) = &self.metrics {
            let type_name = self.type_name;
            handle(&metrics.activations, || metrics::gauge!(ACTIVATIONS, "type" => type_name)).decrement(1);
            handle(
                &metrics.evictions[reason as usize],
                || metrics::counter!(EVICTIONS_TOTAL, "type" => type_name, "reason" => reason.label()),
            )
            .increment(1);
        }
    }

    /// What became of an alarm.
    pub(crate) fn alarm(&self, event: AlarmEvent) {
        if let Some(metrics) = &self.metrics {
            let type_name = self.type_name;
            handle(
                &metrics.alarms[event as usize],
                || metrics::counter!(ALARMS_TOTAL, "type" => type_name, "event" => event.label()),
            )
            .increment(1);
        }
    }

    /// The calls waiting in the mailboxes of this type's objects, as an
    /// eviction sweep found them: in all, and in the deepest.
    pub(crate) fn mailbox_depth(&self, total: usize, deepest: usize) {
        if let Some(metrics) = &self.metrics {
            let type_name = self.type_name;
            handle(&metrics.mailbox_depth, || metrics::gauge!(MAILBOX_DEPTH, "type" => type_name))
                .set(total as f64);
            handle(&metrics.mailbox_depth_max, || metrics::gauge!(MAILBOX_DEPTH_MAX, "type" => type_name))
                .set(deepest as f64);
        }
    }
}

/// A turn being watched: its span, and when it started (when timed).
pub(crate) struct TurnWatch {
    span: Span,
    started: Option<Instant>,
    method: Option<u32>,
}

impl TurnWatch {
    /// The turn's span (to enter while the turn runs).
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Starts watching the turn's commit, if it has one: `written` tells
    /// the bytes the turn wrote, or `None` when it opened no transaction
    /// (asked only when someone watches).
    pub(crate) fn commit(
        &self,
        observer: &TypeObserver,
        written: impl FnOnce() -> Option<u64>,
    ) -> CommitWatch {
        let unwatched = CommitWatch { span: Span::none(), started: None };
        if self.started.is_none() || (observer.metrics.is_none() && !tracing::enabled!(tracing::Level::TRACE))
        {
            return unwatched;
        }
        let Some(bytes) = written() else { return unwatched };
        // A child of the turn's span, which is entered.
        let span = tracing::trace_span!("stead.commit", r#type = observer.type_name, bytes, duration = Empty);
        CommitWatch { span, started: Some(Instant::now()) }
    }

    /// The turn ended with `outcome`.
    pub(crate) fn end(self, observer: &TypeObserver, outcome: Outcome) {
        let Some(started) = self.started else { return };
        let elapsed = started.elapsed();
        if !self.span.is_disabled() {
            self.span.record("outcome", outcome.label());
            self.span.record("duration", debug(elapsed));
        }
        let Some(metrics) = &observer.metrics else { return };
        let type_name = observer.type_name;
        match self.method {
            Some(method) => {
                let (name, entry) = observer.method_metrics(metrics, method);
                handle(
                    &entry.turn,
                    || metrics::histogram!(TURN_SECONDS, "type" => type_name, "method" => name),
                )
                .record(elapsed);
                observer.count_call(metrics, method, outcome);
            }
            None => {
                handle(
                    &metrics.alarm_turn,
                    || metrics::histogram!(TURN_SECONDS, "type" => type_name, "method" => "alarm"),
                )
                .record(elapsed);
            }
        }
    }
}

/// A commit being watched.
pub(crate) struct CommitWatch {
    span: Span,
    started: Option<Instant>,
}

impl CommitWatch {
    /// The commit is done (whether it succeeded or not).
    pub(crate) fn end(self, observer: &TypeObserver) {
        let Some(started) = self.started else { return };
        let elapsed = started.elapsed();
        self.span.record("duration", debug(elapsed));
        if let Some(metrics) = &observer.metrics {
            let type_name = observer.type_name;
            handle(&metrics.commit, || metrics::histogram!(COMMIT_SECONDS, "type" => type_name))
                .record(elapsed);
        }
    }
}

/// The caller's side of remote calls to one type: by method id.
pub(crate) struct RemoteMetrics {
    type_name: &'static str,
    methods: Box<[&'static str]>,
    calls: Box<[RemoteMethod]>,
}

#[derive(Default)]
struct RemoteMethod {
    outcomes: [OnceLock<Counter>; OUTCOMES.len()],
    seconds: OnceLock<Histogram>,
}

impl RemoteMetrics {
    fn record(&self, method: u32, outcome: Outcome, elapsed: Duration) {
        // A method id the table does not have was refused before it was sent.
        let Some(entry) = self.calls.get(method as usize) else { return };
        let (type_name, name) = (self.type_name, method_name(&self.methods, Some(method)));
        handle(&entry.outcomes[outcome.0], || {
            metrics::counter!(REMOTE_CALLS_TOTAL, "type" => type_name, "method" => name, "outcome" => outcome.label())
        })
        .increment(1);
        handle(
            &entry.seconds,
            || metrics::histogram!(REMOTE_CALL_SECONDS, "type" => type_name, "method" => name),
        )
        .record(elapsed);
    }
}

/// A call being watched from its caller's side: the `stead.call` span, and
/// the remote-call metrics when it goes through the cluster.
pub(crate) struct CallWatch {
    span: Span,
    started: Option<Instant>,
    remote: Option<Arc<RemoteMetrics>>,
    method: u32,
}

impl CallWatch {
    /// Starts watching a call of method `method` (named `name`) of object
    /// `id`; `remote` when it goes through the cluster and metrics are
    /// recorded.
    pub(crate) fn start(
        type_name: &'static str,
        id: &ObjectId,
        method: u32,
        name: &'static str,
        remote: Option<&Arc<RemoteMetrics>>,
    ) -> Self {
        let span = tracing::debug_span!(
            "stead.call",
            r#type = type_name,
            id = %id,
            method = name,
            node = Empty,
            outcome = Empty,
            duration = Empty,
        );
        let timed = remote.is_some() || !span.is_disabled();
        CallWatch { span, started: timed.then(Instant::now), remote: remote.cloned(), method }
    }

    /// The call's span (entered while the caller polls, so that a turn run
    /// in the caller's task is its child).
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// The caller dropped the call's future before its outcome was known.
    pub(crate) fn abandon<'a>(&mut self, place: impl FnOnce() -> Place<'a>) {
        self.end(Outcome::ABANDONED, place);
    }

    /// The call ended with `outcome`; `place` tells where it went. Only the
    /// first end counts.
    pub(crate) fn end<'a>(&mut self, outcome: Outcome, place: impl FnOnce() -> Place<'a>) {
        let Some(started) = self.started.take() else { return };
        let elapsed = started.elapsed();
        let place = place();
        if !self.span.is_disabled() {
            self.span.record("node", place.node);
            self.span.record("outcome", outcome.label());
            self.span.record("duration", debug(elapsed));
        }
        if let Some(remote) = &self.remote
            && place.remote
        {
            remote.record(self.method, outcome, elapsed);
        }
    }
}

/// Where a call went.
pub(crate) struct Place<'a> {
    /// The node's name (`local` outside a cluster; empty when not known).
    pub(crate) node: &'a str,
    /// Whether that is another process.
    pub(crate) remote: bool,
}

/// A warning that may come in floods (one per database closed under
/// pressure), logged at most once a minute with the count since the last.
pub(crate) struct Throttled {
    /// Milliseconds since `start` of the last warning (0: none yet).
    last: AtomicU64,
    /// Occurrences since the last warning.
    since: AtomicU64,
    start: Instant,
}

impl Default for Throttled {
    fn default() -> Self {
        Throttled { last: AtomicU64::new(0), since: AtomicU64::new(0), start: Instant::now() }
    }
}

impl Throttled {
    /// How often the warning is logged at most.
    const EVERY: Duration = Duration::from_secs(60);

    /// Counts one occurrence; returns how many to report when a warning is
    /// due now, `None` otherwise.
    pub(crate) fn due(&self) -> Option<u64> {
        self.since.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        let last = self.last.load(Ordering::Relaxed);
        let every = Self::EVERY.as_millis() as u64;
        if last != 0 && now.saturating_sub(last) < every {
            return None;
        }
        // One thread wins the right to warn.
        self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).ok()?;
        Some(self.since.swap(0, Ordering::Relaxed).max(1))
    }
}

/// The pressure evictions of a runtime's databases: counted by type (the
/// handles made for the hosted types when the runtime is built) and warned
/// about, throttled.
#[derive(Default)]
pub(crate) struct PressureEvictions {
    counters: HashMap<&'static str, Counter>,
    warning: Throttled,
}

impl PressureEvictions {
    /// Counts the pressure evictions of `types` when `record` (metrics are
    /// recorded), warns either way.
    pub(crate) fn new(record: bool, types: impl Iterator<Item = &'static str>) -> Self {
        let counters = if record {
            types
                .map(|type_name| {
                    let counter = metrics::counter!(
                        EVICTIONS_TOTAL, "type" => type_name, "reason" => Eviction::Pressure.label()
                    );
                    (type_name, counter)
                })
                .collect()
        } else {
            HashMap::new()
        };
        PressureEvictions { counters, warning: Throttled::default() }
    }

    /// The database of a `type_name` object was closed to make room.
    pub(crate) fn evicted(&self, type_name: &str, open: usize, limit: usize) {
        if let Some(counter) = self.counters.get(type_name) {
            counter.increment(1);
        }
        if let Some(count) = self.warning.due() {
            tracing::warn!(
                closed = count,
                open,
                limit,
                r#type = type_name,
                "closed object databases to stay within `max_open_databases` (this warning comes at most \
                 once a minute, `closed` counts since the last); the objects stay in memory and reopen \
                 their databases on their next turn, at a cost: raise `RuntimeBuilder::max_open_databases` \
                 (and the process's file limit) if this repeats"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_names_the_kind_of_error() {
        assert_eq!(Outcome::of(&Ok::<(), Error>(())).label(), "ok");
        assert_eq!(Outcome::of::<()>(&Err(Error::Panicked("boom".into()))).label(), "panicked");
        assert_eq!(Outcome::of::<()>(&Err(Error::Overloaded("full".into()))).label(), "overloaded");
        assert_eq!(Outcome::of::<()>(&Err(Error::Config("x".into()))).label(), "config");
        assert_eq!(Outcome::FAILED.label(), "error");
        assert_eq!(Outcome::ABANDONED.label(), "abandoned");
    }

    #[test]
    fn a_throttled_warning_comes_once_and_then_counts_what_it_held_back() {
        let throttled = Throttled::default();
        assert_eq!(throttled.due(), Some(1));
        assert_eq!(throttled.due(), None);
        assert_eq!(throttled.due(), None);
        // A minute later the next one reports the two held back and itself.
        let later = Throttled { start: Instant::now() - Duration::from_secs(120), ..Throttled::default() };
        later.last.store(1, Ordering::Relaxed);
        later.since.store(2, Ordering::Relaxed);
        assert_eq!(later.due(), Some(3));
    }

    #[test]
    fn method_ids_outside_the_table_are_named_unknown() {
        assert_eq!(method_name(&["get"], Some(0)), "get");
        assert_eq!(method_name(&["get"], Some(7)), "unknown");
        assert_eq!(method_name(&["get"], None), "alarm");
    }
}
