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
    pub const ALL: [Reason; 17] = [
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
            Reason::Tls => "tls",
            Reason::CertExpiry => "cert_expiry",
            Reason::Dns => "dns",
            Reason::UnexpectedAnswer => "unexpected_answer",
            Reason::Assertion => "assertion",
        }
    }
}

/// Kubernetes-probe-style hysteresis: a healthy dependency is reported down only after
/// `failure_threshold` consecutive failures, and a down one healthy again only after
/// `success_threshold` consecutive successes.
///
/// The first observation is taken as is (there is no earlier evidence to protect), and within
/// "healthy" the reported state follows the latest observation, so ok ↔ degraded is immediate.
#[derive(Clone, Debug)]
pub struct Hysteresis {
    failure_threshold: u32,
    success_threshold: u32,
    state: State,
    failures: u32,
    successes: u32,
}

impl Hysteresis {
    pub fn new(failure_threshold: u32, success_threshold: u32) -> Self {
        Self {
            failure_threshold: failure_threshold.max(1),
            success_threshold: success_threshold.max(1),
            state: State::Unknown,
            failures: 0,
            successes: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn observe(&mut self, outcome: Outcome) -> State {
        if outcome.passed() {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            if self.state != State::Down || self.successes >= self.success_threshold {
                self.state = outcome.as_state();
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            if matches!(self.state, State::Unknown | State::Down)
                || self.failures >= self.failure_threshold
            {
                self.state = State::Down;
            }
        }
        self.state
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
        let mut h = Hysteresis::new(failure, success);
        outcomes.iter().map(|&o| h.observe(o)).collect()
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
