use std::time::{Duration, Instant};

/// What one check run observed, before hysteresis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Degraded,
    Down,
}

impl Outcome {
    fn passed(self) -> bool {
        !matches!(self, Outcome::Down)
    }

    fn as_state(self) -> State {
        match self {
            Outcome::Ok => State::Ok,
            Outcome::Degraded => State::Degraded,
            Outcome::Down => State::Down,
        }
    }
}

/// The reported state of a dependency. Also the CRD status field, so the schema lists the values.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Never checked, or the last result is older than the policy's maxStaleness.
    #[default]
    Unknown,
    Ok,
    Degraded,
    Down,
}

impl State {
    pub const ALL: [State; 4] = [State::Unknown, State::Ok, State::Degraded, State::Down];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Ok => "ok",
            State::Degraded => "degraded",
            State::Down => "down",
        }
    }
}

/// Why a check ended the way it did. A closed set, so it can label metrics without unbounded
/// cardinality; the free-text detail goes to /ready and logs instead.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The check passed.
    Ok,
    /// Succeeded, but slower than degradedLatency.
    Slow,
    /// Queue depth above degradedAbove or downAbove.
    QueueDepth,
    /// The check did not finish within its timeout.
    Timeout,
    /// Could not connect (refused, unreachable, DNS).
    Connect,
    /// The dependency refused the credentials (wrong or missing password).
    Auth,
    /// Connected, but the dependency answered with an error.
    Error,
    /// HTTP status outside expectStatus.
    Status,
    /// HTTP body did not contain bodyContains.
    Body,
    /// gRPC health service answered something other than SERVING.
    NotServing,
    /// The dependency's configuration could not be used (e.g. an unresolved secret).
    Config,
    /// The target guard refused the resolved address; nothing was sent to it.
    Blocked,
    /// Failing inside a maintenance window: reported degraded, not down. Never a check result.
    Maintenance,
    /// The HealthPolicy this dependency names is down (or degraded).
    Upstream,
    /// The TLS handshake failed: untrusted chain, a certificate that does not name the host, or
    /// no common protocol.
    Tls,
    /// The certificate expires within degradedBefore (degraded) or downBefore (down).
    CertExpiry,
    /// The DNS lookup failed: NXDOMAIN, no records of the type, or a server error.
    Dns,
    /// The DNS answers differ from the expected set.
    UnexpectedAnswer,
    /// An HTTP response failed a condition of `assert` or `bodyMatches`.
    Assertion,
}

impl Reason {
    pub const ALL: [Reason; 19] = [
        Reason::Ok,
        Reason::Slow,
        Reason::QueueDepth,
        Reason::Timeout,
        Reason::Connect,
        Reason::Auth,
        Reason::Error,
        Reason::Status,
        Reason::Body,
        Reason::NotServing,
        Reason::Config,
        Reason::Blocked,
        Reason::Maintenance,
        Reason::Upstream,
        Reason::Tls,
        Reason::CertExpiry,
        Reason::Dns,
        Reason::UnexpectedAnswer,
        Reason::Assertion,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ok => "ok",
            Reason::Slow => "slow",
            Reason::QueueDepth => "queue_depth",
            Reason::Timeout => "timeout",
            Reason::Connect => "connect",
            Reason::Auth => "auth",
            Reason::Error => "error",
            Reason::Status => "status",
            Reason::Body => "body",
            Reason::NotServing => "not_serving",
            Reason::Config => "config",
            Reason::Blocked => "blocked",
            Reason::Maintenance => "maintenance",
            Reason::Upstream => "upstream",
            Reason::Tls => "tls",
            Reason::CertExpiry => "cert_expiry",
            Reason::Dns => "dns",
            Reason::UnexpectedAnswer => "unexpected_answer",
            Reason::Assertion => "assertion",
        }
    }
}

/// "`count` of the last `of` checks": when a dependency's reported state flips. A consecutive
/// threshold N is the window N of N, so both kinds of rule are one mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub count: u32,
    pub of: u32,
}

impl Window {
    /// The longest window a policy may ask for: the history is one machine word.
    pub const MAX_OF: u32 = 64;

    pub const fn consecutive(count: u32) -> Self {
        Self { count, of: count }
    }

    /// Clamped to 1 ≤ count ≤ of ≤ [`Window::MAX_OF`]; validation reports anything outside.
    fn clamped(self) -> Self {
        let of = self.of.clamp(1, Self::MAX_OF);
        Self {
            count: self.count.clamp(1, of),
            of,
        }
    }
}

/// Kubernetes-probe-style hysteresis, generalised to windows: a healthy dependency is reported
/// down once `failing.count` of its last `failing.of` checks failed, and a down one healthy again
/// once `recovering.count` of its last `recovering.of` checks passed. With consecutive windows
/// (N of N) this is exactly failureThreshold/successThreshold.
///
/// The first observation is taken as is (there is no earlier evidence to protect), and within
/// "healthy" the reported state follows the latest observation, so ok ↔ degraded is immediate.
#[derive(Clone, Debug)]
pub struct Hysteresis {
    failing: Window,
    recovering: Window,
    state: State,
    /// Bit i set: the check i runs ago failed (bit 0 is the latest).
    failed: u64,
    /// How many bits of `failed` are real observations.
    seen: u32,
}

impl Hysteresis {
    pub fn new(failing: Window, recovering: Window) -> Self {
        Self {
            failing: failing.clamped(),
            recovering: recovering.clamped(),
            state: State::Unknown,
            failed: 0,
            seen: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// True while the latest check failed or the dependency is reported down: the time to check
    /// at `retryInterval`, so a failure is confirmed (or dismissed) and a recovery seen sooner.
    pub fn unsettled(&self) -> bool {
        self.state == State::Down || (self.seen > 0 && self.failed & 1 == 1)
    }

    pub fn observe(&mut self, outcome: Outcome) -> State {
        self.failed = (self.failed << 1) | u64::from(!outcome.passed());
        self.seen = (self.seen + 1).min(Window::MAX_OF);
        if outcome.passed() {
            let passed = self.recent(self.recovering.of) - self.failures_in(self.recovering.of);
            if self.state != State::Down || passed >= self.recovering.count {
                self.state = outcome.as_state();
            }
        } else if matches!(self.state, State::Unknown | State::Down)
            || self.failures_in(self.failing.of) >= self.failing.count
        {
            self.state = State::Down;
        }
        self.state
    }

    /// Observations among the last `of` (fewer at the start).
    fn recent(&self, of: u32) -> u32 {
        self.seen.min(of)
    }

    fn failures_in(&self, of: u32) -> u32 {
        let mask = if of >= 64 { u64::MAX } else { (1u64 << of) - 1 };
        (self.failed & mask).count_ones()
    }
}

/// The state to report for a dependency whose latest result was recorded at `checked_at`.
pub fn effective_state(
    state: State,
    checked_at: Option<Instant>,
    now: Instant,
    max_staleness: Duration,
) -> State {
    match checked_at {
        Some(at) if now.saturating_duration_since(at) <= max_staleness => state,
        _ => State::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::{Degraded as D, Down as X, Ok as O};

    fn run(failure: u32, success: u32, outcomes: &[Outcome]) -> Vec<State> {
        run_windows(
            Window::consecutive(failure),
            Window::consecutive(success),
            outcomes,
        )
    }

    fn run_windows(failing: Window, recovering: Window, outcomes: &[Outcome]) -> Vec<State> {
        let mut h = Hysteresis::new(failing, recovering);
        outcomes.iter().map(|&o| h.observe(o)).collect()
    }

    fn w(count: u32, of: u32) -> Window {
        Window { count, of }
    }

    #[test]
    fn thresholds_behave_like_kubernetes_probes() {
        use State::{Degraded as Dg, Down as Dn, Ok as Ok_};
        let cases: &[(u32, u32, &[Outcome], &[State])] = &[
            (1, 1, &[O, X, O], &[Ok_, Dn, Ok_]),
            // The first observation is taken as is, whatever the thresholds.
            (3, 3, &[X], &[Dn]),
            (3, 3, &[O], &[Ok_]),
            // Two failures are tolerated with failureThreshold 3; the third flips.
            (3, 1, &[O, X, X, X], &[Ok_, Ok_, Ok_, Dn]),
            // A success in between resets the failure count.
            (3, 1, &[O, X, X, O, X, X], &[Ok_, Ok_, Ok_, Ok_, Ok_, Ok_]),
            // Recovery needs successThreshold consecutive successes.
            (1, 2, &[X, O, O], &[Dn, Dn, Ok_]),
            (1, 3, &[X, O, O, X, O, O, O], &[Dn, Dn, Dn, Dn, Dn, Dn, Ok_]),
            // Degraded counts as a success for the thresholds and is reported as soon as seen.
            (2, 1, &[O, D, O], &[Ok_, Dg, Ok_]),
            (2, 2, &[X, D, D], &[Dn, Dn, Dg]),
            (2, 1, &[D, X, D], &[Dg, Dg, Dg]),
        ];
        for (failure, success, outcomes, expected) in cases {
            assert_eq!(
                run(*failure, *success, outcomes),
                *expected,
                "failure={failure} success={success} outcomes={outcomes:?}"
            );
        }
    }

    /// The same outcome sequences under consecutive thresholds and under windows, side by side:
    /// windows tolerate scattered failures that never run in a row, and count them when they do
    /// not recover in between.
    #[test]
    fn windows_count_failures_that_are_not_consecutive() {
        use State::{Down as Dn, Ok as Ok_};
        let flaky = &[O, X, O, X, O, X, O][..];
        let cases: &[(Window, Window, &[Outcome], &[State])] = &[
            // failureThreshold 3 never fires on alternating failures...
            (w(3, 3), w(1, 1), flaky, &[Ok_; 7]),
            // ...3 of 5 does, at the third failure within five checks.
            (w(3, 5), w(1, 1), flaky, &[Ok_, Ok_, Ok_, Ok_, Ok_, Dn, Ok_]),
            // 3 of 7 counts across the gaps too; 3 of 4 never sees three at once.
            (w(3, 7), w(1, 1), flaky, &[Ok_, Ok_, Ok_, Ok_, Ok_, Dn, Ok_]),
            (w(3, 4), w(1, 1), flaky, &[Ok_; 7]),
            // Recovery by window: 2 of 3 passes, so one failure during recovery is tolerated,
            // where successThreshold 2 starts over.
            (w(1, 1), w(2, 3), &[X, O, X, O], &[Dn, Dn, Dn, Ok_]),
            (w(1, 1), w(2, 2), &[X, O, X, O], &[Dn, Dn, Dn, Dn]),
            // The first observation is taken as is, with windows too.
            (w(3, 5), w(3, 5), &[X], &[Dn]),
        ];
        for (failing, recovering, outcomes, expected) in cases {
            assert_eq!(
                run_windows(*failing, *recovering, outcomes),
                *expected,
                "failing={failing:?} recovering={recovering:?} outcomes={outcomes:?}"
            );
        }
    }

    #[test]
    fn a_consecutive_threshold_is_the_window_n_of_n() {
        // Every sequence of 8 outcomes (3^8), thresholds 1-4: the window rule with of = count
        // reproduces the consecutive rule exactly.
        for code in 0..3usize.pow(8) {
            let outcomes: Vec<Outcome> = (0..8)
                .map(|i| [O, D, X][(code / 3usize.pow(i)) % 3])
                .collect();
            for failure in 1..=4 {
                for success in 1..=4 {
                    let windows = run_windows(w(failure, failure), w(success, success), &outcomes);
                    assert_eq!(
                        windows,
                        consecutive_reference(failure, success, &outcomes),
                        "{failure}/{success} {outcomes:?}"
                    );
                }
            }
        }
    }

    /// The consecutive-count implementation this project had before windows, kept as the
    /// reference the window rule must reproduce.
    fn consecutive_reference(failure: u32, success: u32, outcomes: &[Outcome]) -> Vec<State> {
        let (mut state, mut failures, mut successes) = (State::Unknown, 0, 0);
        outcomes
            .iter()
            .map(|&o| {
                if o.passed() {
                    successes += 1;
                    failures = 0;
                    if state != State::Down || successes >= success {
                        state = o.as_state();
                    }
                } else {
                    failures += 1;
                    successes = 0;
                    if matches!(state, State::Unknown | State::Down) || failures >= failure {
                        state = State::Down;
                    }
                }
                state
            })
            .collect()
    }

    #[test]
    fn a_failing_or_down_dependency_is_unsettled_until_it_passes_and_is_up() {
        let mut h = Hysteresis::new(w(3, 3), w(2, 2));
        assert!(!h.unsettled(), "nothing seen yet");
        h.observe(O);
        assert!(!h.unsettled());
        h.observe(X);
        assert!(h.unsettled(), "a failure not yet confirmed");
        h.observe(O);
        assert!(!h.unsettled(), "dismissed");
        for _ in 0..3 {
            h.observe(X);
        }
        assert_eq!(h.state(), State::Down);
        h.observe(O);
        assert!(h.unsettled(), "down, recovering: one pass of two");
        h.observe(O);
        assert_eq!(h.state(), State::Ok);
        assert!(!h.unsettled());
    }

    #[test]
    fn windows_longer_than_the_history_are_clamped() {
        let mut h = Hysteresis::new(w(200, 500), w(0, 0));
        for _ in 0..63 {
            h.observe(O);
        }
        for _ in 0..63 {
            assert_eq!(h.observe(X), State::Ok);
        }
        assert_eq!(h.observe(X), State::Down, "64 of 64");
        assert_eq!(h.observe(O), State::Ok, "recovering 0 of 0 is 1 of 1");
    }

    #[test]
    fn serde_names_are_the_label_values() {
        for reason in Reason::ALL {
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::Value::from(reason.as_str())
            );
        }
        for state in State::ALL {
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::Value::from(state.as_str())
            );
        }
    }

    #[test]
    fn zero_thresholds_are_treated_as_one() {
        assert_eq!(run(0, 0, &[O, X, O]), [State::Ok, State::Down, State::Ok]);
    }

    #[test]
    fn stale_or_missing_results_are_unknown() {
        let now = Instant::now();
        let max = Duration::from_secs(30);
        let fresh = now - Duration::from_secs(29);
        let stale = now - Duration::from_secs(31);
        assert_eq!(effective_state(State::Ok, Some(fresh), now, max), State::Ok);
        assert_eq!(
            effective_state(State::Ok, Some(stale), now, max),
            State::Unknown
        );
        assert_eq!(
            effective_state(State::Down, Some(stale), now, max),
            State::Unknown
        );
        assert_eq!(effective_state(State::Ok, None, now, max), State::Unknown);
    }
}
