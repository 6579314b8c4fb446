use super::*;
use crate::engine::{CheckRecord, DependencyView};
use crate::health::Reason;
use crate::policy::StatusCodes;

fn dep(name: &str, critical: bool, state: Option<State>) -> DependencyView {
    DependencyView {
        name: name.to_string(),
        critical,
        state: state.unwrap_or(State::Unknown),
        protected: false,
        maintenance_until: None,
        held_for_maintenance: false,
        last: state.map(CheckRecord::fixed),
    }
}

fn snapshot(overall: Overall, dependencies: Vec<DependencyView>) -> PolicySnapshot {
    PolicySnapshot {
        overall,
        codes: StatusCodes::default(),
        cascade_protection: false,
        maintenance: false,
        dependencies,
    }
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

fn pod(name: &str, current: Option<PodCondition>) -> PodView {
    PodView {
        namespace: "shop".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        gated: true,
        deleting: false,
        current,
    }
}

fn gate(ready: bool) -> Gate {
    let snap = if ready {
        snapshot(Overall::Ok, vec![dep("db", true, Some(State::Ok))])
    } else {
        snapshot(Overall::Down, vec![dep("db", true, Some(State::Down))])
    };
    for_policy("shop/p", &snap).unwrap()
}

#[test]
fn the_gate_follows_the_policy() {
    let cases: &[(Overall, Vec<DependencyView>, bool, &str, &str)] = &[
        (
            Overall::Ok,
            vec![dep("db", true, Some(State::Ok))],
            true,
            "PolicyOk",
            "HealthPolicy shop/p is ok",
        ),
        (
            Overall::Degraded,
            vec![
                dep("db", true, Some(State::Ok)),
                dep("search", false, Some(State::Down)),
            ],
            true,
            "PolicyDegraded",
            "HealthPolicy shop/p is degraded: search (connect)",
        ),
        (
            Overall::Down,
            vec![
                dep("cache", false, Some(State::Down)),
                dep("db", true, Some(State::Down)),
                dep("queue", true, Some(State::Ok)),
            ],
            false,
            "DependencyDown",
            "HealthPolicy shop/p is down: critical db (connect)",
        ),
    ];
    for (overall, deps, ready, reason, message) in cases {
        let gate = for_policy("shop/p", &snapshot(*overall, deps.clone())).expect("decided");
        assert_eq!(
            (gate.ready, gate.reason, gate.message.as_str()),
            (*ready, *reason, *message)
        );
    }
}

#[test]
fn nothing_is_decided_before_every_first_result() {
    // A new leader or a restarted healthgate: the unchecked dependency would read as down.
    let snap = snapshot(
        Overall::Down,
        vec![dep("db", true, None), dep("cache", false, Some(State::Ok))],
    );
    assert_eq!(for_policy("shop/p", &snap), None);
}

#[test]
fn a_stale_critical_result_is_named_as_stale() {
    let mut stale = dep("db", true, Some(State::Ok));
    stale.state = State::Unknown;
    let gate = for_policy("shop/p", &snapshot(Overall::Down, vec![stale])).unwrap();
    assert_eq!(
        gate.message,
        "HealthPolicy shop/p is down: critical db (stale)"
    );
}

#[test]
fn cascade_protection_keeps_the_gate_true_and_says_so() {
    // The engine already counts a protected dependency as non-critical (overall degraded);
    // the gate only names why.
    let mut db = dep("db", true, Some(State::Down));
    db.protected = true;
    let gate = for_policy("shop/p", &snapshot(Overall::Degraded, vec![db])).unwrap();
    assert!(gate.ready);
    assert_eq!(gate.reason, "CascadeProtected");
    assert!(
        gate.message.contains("db down on every healthgate replica"),
        "{}",
        gate.message
    );
}

#[test]
fn messages_name_at_most_three_dependencies_and_never_an_error_text() {
    let deps: Vec<DependencyView> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| dep(n, true, Some(State::Down)))
        .collect();
    let gate = for_policy("shop/p", &snapshot(Overall::Down, deps)).unwrap();
    assert_eq!(
        gate.message,
        "HealthPolicy shop/p is down: critical a (connect), b (connect), c (connect) and 2 more"
    );
    // CheckRecord::fixed carries the error text "connection refused": it stays out.
    assert!(!gate.message.contains("refused"));
    assert_eq!(Reason::Connect.as_str(), "connect");
}

#[test]
fn a_pod_of_several_policies_is_ready_only_if_all_agree() {
    let up = gate(true);
    let down = gate(false);
    assert_eq!(combine([Some(&up), Some(&down)]), Some(down.clone()));
    assert_eq!(
        combine([None, Some(&down)]),
        Some(down.clone()),
        "down needs no wait"
    );
    assert_eq!(
        combine([Some(&up), None]),
        None,
        "wait for the undecided one"
    );
    assert_eq!(combine([Some(&up), Some(&up)]), Some(up.clone()));
    assert_eq!(combine(std::iter::empty()), None);
}

#[test]
fn a_condition_is_rewritten_only_when_it_changes() {
    let up = gate(true);
    let down = gate(false);
    let first = change(None, &up, at(0)).expect("never set: written");
    assert_eq!(first.type_, CONDITION);
    assert_eq!(first.status, "True");
    assert_eq!(first.last_transition_time, Some(Time(at(0))));
    assert_eq!(
        change(Some(&first), &up, at(5)),
        None,
        "same gate: no write"
    );

    let flipped = change(Some(&first), &down, at(10)).expect("status changed");
    assert_eq!(flipped.status, "False");
    assert_eq!(flipped.last_transition_time, Some(Time(at(10))));

    // Same status, new message (another dependency): written, transition time kept.
    let other = Gate {
        message: "HealthPolicy shop/p is down: critical cache (timeout)".into(),
        ..down.clone()
    };
    let reworded = change(Some(&flipped), &other, at(20)).expect("message changed");
    assert_eq!(reworded.last_transition_time, Some(Time(at(10))));
    assert_eq!(reworded.last_probe_time, Some(Time(at(20))));
}

#[test]
fn our_own_write_counts_until_the_cache_catches_up() {
    let now = Instant::now();
    let old = change(None, &gate(true), at(0)).unwrap();
    let ours = (change(Some(&old), &gate(false), at(1)).unwrap(), now);
    // The watch has not delivered our write yet: ours is what the pod says.
    assert_eq!(current(Some(&old), Some(&ours), now), Some(&ours.0));
    // It has: the cache again.
    assert_eq!(
        current(Some(&ours.0), Some(&ours), now).unwrap().status,
        "False"
    );
    // Long after, someone else's view in the cache wins.
    let later = now + OWN_WRITE_MEMORY;
    assert_eq!(current(Some(&old), Some(&ours), later), Some(&old));
}

#[test]
fn the_plan_writes_new_pods_first_and_skips_pods_without_the_gate() {
    let up = gate(true);
    let set = change(None, &gate(false), at(0)).unwrap();
    let mut ungated = pod("c-ungated", None);
    ungated.gated = false;
    let mut leaving = pod("d-leaving", None);
    leaving.deleting = true;
    let pods = vec![
        (pod("a-set", Some(set)), Some(up.clone())),
        (pod("b-new", None), Some(up.clone())),
        (ungated, Some(up.clone())),
        (leaving, Some(up.clone())),
        (pod("e-undecided", None), None),
    ];
    let names: Vec<String> = plan(&pods, at(1)).into_iter().map(|w| w.name).collect();
    assert_eq!(names, ["b-new", "a-set"]);
}

#[test]
fn the_pace_allows_a_burst_then_qps() {
    let start = Instant::now();
    let mut pace = Pace::new(10.0, 5, start);
    assert_eq!((0..8).filter(|_| pace.take(start)).count(), 5, "the burst");
    assert_eq!(pace.wait(start), Duration::from_millis(100));
    let later = start + Duration::from_millis(350);
    assert_eq!(
        (0..8).filter(|_| pace.take(later)).count(),
        3,
        "3.5 tokens refilled"
    );
    // Refill never exceeds the burst.
    let much_later = start + Duration::from_secs(60);
    assert_eq!((0..100).filter(|_| pace.take(much_later)).count(), 5);
}

/// A flap across 1,000 pods: the policy goes down and comes back 2 s later, passes run every
/// 100 ms and writes are paced at 50/s after a burst of 100. Writes stay within the budget,
/// pods whose turn came after recovery are never written False, and every pod ends True.
#[test]
fn a_flap_across_a_thousand_pods_is_paced_and_coalesced() {
    let up = gate(true);
    let down = gate(false);
    let start = Instant::now();
    let mut pace = Pace::new(50.0, 100, start);
    let initial = change(None, &up, at(0)).unwrap();
    let mut pods: Vec<PodView> = (0..1000)
        .map(|i| pod(&format!("p{i:04}"), Some(initial.clone())))
        .collect();
    let mut writes = 0usize;
    let mut written_false = 0usize;
    for tick in 0..200u64 {
        let elapsed = Duration::from_millis(100 * tick);
        let now = start + elapsed;
        let desired = if elapsed < Duration::from_secs(2) {
            &down
        } else {
            &up
        };
        let input: Vec<(PodView, Option<Gate>)> = pods
            .iter()
            .map(|p| (p.clone(), Some(desired.clone())))
            .collect();
        for write in plan(&input, at(tick as i64)) {
            if !pace.take(now) {
                break;
            }
            writes += 1;
            if write.condition.status == "False" {
                written_false += 1;
            }
            let pod = pods.iter_mut().find(|p| p.name == write.name).unwrap();
            pod.current = Some(write.condition);
        }
    }
    // 20 s: a burst of 100 plus 50 per second.
    assert!(writes <= 100 + 50 * 20, "{writes} writes");
    // During the 2 s outage only burst + 2 s × qps pods could be taken out; each is put back.
    assert!(
        written_false <= 100 + 50 * 2,
        "{written_false} pods written False"
    );
    assert_eq!(
        writes,
        written_false * 2,
        "only the flapped pods were written, twice each"
    );
    assert!(
        pods.iter()
            .all(|p| p.current.as_ref().unwrap().status == "True")
    );
}
