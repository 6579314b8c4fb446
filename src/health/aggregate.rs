use super::State;

/// The state of a whole policy (or of everything an instance serves).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overall {
    Ok,
    Degraded,
    Down,
}

impl Overall {
    pub fn as_str(self) -> &'static str {
        match self {
            Overall::Ok => "ok",
            Overall::Degraded => "degraded",
            Overall::Down => "down",
        }
    }
}

/// Combines `(critical, state)` pairs: a critical dependency that is down or unknown downs the
/// whole; anything else short of ok (a degraded dependency, a non-critical one that is down or
/// unknown) degrades it. No dependencies at all is ok.
pub fn aggregate(states: impl IntoIterator<Item = (bool, State)>) -> Overall {
    states
        .into_iter()
        .map(|(critical, state)| match (critical, state) {
            (_, State::Ok) => Overall::Ok,
            (true, State::Down | State::Unknown) => Overall::Down,
            _ => Overall::Degraded,
        })
        .max()
        .unwrap_or(Overall::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::{Degraded as Dg, Down as Dn, Ok as Ok_, Unknown as Un};

    #[test]
    fn aggregation_table() {
        let cases: &[(&[(bool, State)], Overall)] = &[
            (&[], Overall::Ok),
            (&[(true, Ok_), (false, Ok_)], Overall::Ok),
            (&[(true, Dn)], Overall::Down),
            (&[(true, Un)], Overall::Down),
            (&[(true, Dg)], Overall::Degraded),
            (&[(false, Dn)], Overall::Degraded),
            (&[(false, Un)], Overall::Degraded),
            (&[(false, Dg)], Overall::Degraded),
            (&[(true, Ok_), (false, Dn), (true, Dg)], Overall::Degraded),
            (&[(false, Dn), (true, Dn)], Overall::Down),
            (&[(true, Ok_), (true, Un), (false, Ok_)], Overall::Down),
        ];
        for (states, expected) in cases {
            assert_eq!(aggregate(states.iter().copied()), *expected, "{states:?}");
        }
    }
}
