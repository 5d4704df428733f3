//! The checker: reads every log after a run and lists the broken promises.
//!
//! Per lock name:
//! - **exclusion** — no two holds overlap, unless the earlier holder was told its lock was
//!   lost before the overlap began. A hold counts from `start` to the first of `end`,
//!   `lost_at` and its guard's last vouched-for local `deadline`: the library promises that
//!   deadline lies before the lease can expire, so a frozen holder is "told" at its deadline
//!   even if it only wakes up later. Overlaps where a holder's process had its lock clock
//!   stepped are counted apart (`step_overlaps`): leases follow the store clock, and the
//!   design says fencing — not leases — is the answer to clock steps;
//! - **fences** — never repeated, and increasing in grant order: of two disjoint holds, the
//!   later one has the higher fence;
//! - **fenced resource** — no read or write with a fence below the highest seen was
//!   accepted; every accepted write stored the previous accepted value + 1, and the final
//!   counter equals the number of accepted writes (no lost update);
//! - **takeover after SIGKILL** — no grant of a killed holder's lock started before the
//!   lease the store reported just before the kill ran out;
//! - **nothing stuck** — after the run every lock is free or expires within its TTL.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::record::{Fault, Hold};
use super::resource::Op;

/// Tolerance for comparing the store's wall clock (µs) with `CLOCK_MONOTONIC`.
pub(crate) const SLACK_NS: u64 = 10_000_000;

/// A grant as the checker sees it.
#[derive(Clone, Debug)]
pub(crate) struct Span {
    pub(crate) worker: u32,
    pub(crate) fence: u64,
    pub(crate) start: u64,
    /// The last moment the holder may have believed it held the lock.
    pub(crate) end: u64,
    pub(crate) stepped: bool,
    pub(crate) finished: bool,
    /// A library guard that was never held as far as its holder knew: lost before
    /// `acquire` returned (e.g. frozen between the grant and the return).
    pub(crate) empty: bool,
}

/// A lock's state after the run.
#[derive(Clone, Debug)]
pub(crate) struct Final {
    pub(crate) name: String,
    /// `None`: free (or no row); `Some(None)`: held without expiry; `Some(Some(ns))`.
    pub(crate) expires_in: Option<Option<u64>>,
}

/// Everything a run left behind.
#[derive(Default, Debug)]
pub(crate) struct Input {
    pub(crate) grants: Vec<(u32, String, u64, u64)>,
    pub(crate) holds: Vec<Hold>,
    /// `(name, fence, at)`: a library worker called `release` at `at`.
    pub(crate) releasing: Vec<(String, u64, u64)>,
    pub(crate) ops: Vec<Op>,
    pub(crate) counters: Vec<(String, i64)>,
    pub(crate) faults: Vec<Fault>,
    pub(crate) finals: Vec<Final>,
    /// The TTL workers used (ns).
    pub(crate) ttl_ns: u64,
    /// The last time any worker wrote anything (ns).
    pub(crate) last_activity: u64,
}

/// What the checker found.
#[derive(Default, Debug, Clone)]
pub(crate) struct Report {
    pub(crate) holds: usize,
    pub(crate) lost: usize,
    pub(crate) unfinished: usize,
    pub(crate) accepted_writes: usize,
    pub(crate) rejected: usize,
    pub(crate) step_overlaps: usize,
    pub(crate) takeovers_checked: usize,
    pub(crate) violations: Vec<String>,
    pub(crate) notes: Vec<String>,
}

/// Builds the spans per name from grants and holds.
pub(crate) fn spans(input: &Input) -> BTreeMap<String, Vec<Span>> {
    let mut by_key: HashMap<(String, u64, u32), Span> = HashMap::new();
    for (worker, name, fence, start) in &input.grants {
        by_key
            .entry((name.clone(), *fence, *worker))
            .or_insert(Span {
                worker: *worker,
                fence: *fence,
                start: *start,
                end: *start,
                stepped: false,
                finished: false,
                empty: false,
            });
    }
    for h in &input.holds {
        let mut end = h.end;
        if let Some(l) = h.lost_at {
            end = end.min(l);
        }
        if let Some(d) = h.deadline {
            end = end.min(d);
        }
        let span = by_key
            .entry((h.name.clone(), h.fence, h.worker))
            .or_insert(Span {
                worker: h.worker,
                fence: h.fence,
                start: h.start,
                end,
                stepped: h.stepped,
                finished: true,
                empty: false,
            });
        span.start = span.start.min(h.start);
        span.end = end.max(span.start);
        span.stepped = h.stepped;
        span.finished = true;
        span.empty = h.mode != "cli" && h.deadline.is_none() && h.lost_at.is_some();
    }
    // A holder killed mid-hold believed it held the lock until it died.
    for f in input.faults.iter().filter(|f| f.kind == "sigkill") {
        if let (Some(name), Some(fence)) = (&f.name, f.fence) {
            for (key, span) in by_key.iter_mut() {
                if &key.0 == name && key.1 == fence && !span.finished {
                    span.end = span.end.max(f.at);
                }
            }
        }
    }
    // A holder frozen by the harness (SIGSTOP) cannot be told anything until it thaws; its
    // guard's deadline is what tells it. `locksmith run`'s command does not know that
    // deadline, so a frozen hold counts until the later of the freeze and the lease the
    // store reported just before it (a renewal in between only makes this more lenient).
    for f in input.faults.iter().filter(|f| f.kind == "sigstop") {
        if let (Some(name), Some(fence), Some(exp), Some(at)) =
            (&f.name, f.fence, f.expires_in, f.inspected_at)
        {
            let told = f.at.max(at + exp);
            for (key, span) in by_key.iter_mut() {
                if &key.0 == name && key.1 == fence {
                    // Frozen between the store's grant and the moment the holder recorded
                    // its start (a `locksmith run` whose command had not begun): the start
                    // it wrote after the thaw lies past the lease the store reported, so the
                    // holder never held the lock while it was valid. Its late resource ops,
                    // if any, are the fence's to reject (checked below); it is not a grant
                    // to order against later ones.
                    if told <= span.start {
                        span.empty = true;
                    }
                    span.end = span.end.min(told).max(span.start);
                }
            }
        }
    }
    let mut out: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    for ((name, _, _), span) in by_key {
        out.entry(name).or_default().push(span);
    }
    for v in out.values_mut() {
        v.sort_by_key(|s| (s.start, s.fence));
    }
    out
}

/// Runs every check.
pub(crate) fn check(input: &Input) -> Report {
    let mut r = Report {
        holds: input.holds.len(),
        lost: input.holds.iter().filter(|h| h.outcome == "lost").count(),
        ..Report::default()
    };
    let spans = spans(input);
    for (name, list) in &spans {
        r.unfinished += list.iter().filter(|s| !s.finished).count();
        // Fences never repeat.
        let mut seen = HashSet::new();
        for s in list {
            if !seen.insert(s.fence) {
                r.violations
                    .push(format!("{name:?}: fence {} was granted twice", s.fence));
            }
        }
        // Exclusion and fence order: sweep in start order, remembering the hold that
        // reaches furthest.
        let mut reach: Option<&Span> = None;
        // Holds whose lease a stepped client broke: the overlaps that follow from it (the
        // holder was not told, a later unstepped holder got the free row) are the step's.
        let mut broken: HashSet<(u32, u64)> = HashSet::new();
        for s in list {
            if s.empty {
                r.notes.push(format!(
                    "{name:?}: worker {}'s hold (fence {}) was lost before its holder began it",
                    s.worker, s.fence
                ));
                continue;
            }
            if let Some(a) = reach {
                if s.start < a.end {
                    if a.stepped || s.stepped || broken.contains(&(a.worker, a.fence)) {
                        r.step_overlaps += 1;
                        // Both leases are the step's now, whichever of the two began first
                        // (a `locksmith run` hold begins when its command starts, so the
                        // stepped grant may sort before the unstepped hold it broke).
                        broken.insert((a.worker, a.fence));
                        broken.insert((s.worker, s.fence));
                    } else {
                        r.violations.push(format!(
                            "{name:?}: worker {} (fence {}) held from {} while worker {} (fence {}) held until {} and was not told it was lost ({} ms overlap)",
                            s.worker, s.fence, s.start, a.worker, a.fence, a.end, (a.end - s.start) / 1_000_000
                        ));
                    }
                } else if s.fence <= a.fence
                    && !(a.stepped || s.stepped || broken.contains(&(a.worker, a.fence)))
                {
                    r.violations.push(format!(
                        "{name:?}: fence went backwards: worker {} got fence {} after worker {} held fence {}",
                        s.worker, s.fence, a.worker, a.fence
                    ));
                }
            }
            if reach.is_none_or(|a| s.end >= a.end) {
                reach = Some(s);
            }
        }
    }
    // The fenced resource.
    let mut per_name: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in &input.ops {
        per_name.entry(&op.name).or_default().push(op);
    }
    let counters: HashMap<&str, i64> = input
        .counters
        .iter()
        .map(|(n, v)| (n.as_str(), *v))
        .collect();
    for (name, ops) in &per_name {
        let mut max = 0u64;
        let mut last = 0i64;
        let mut writes = 0i64;
        for op in ops {
            if !op.accepted {
                r.rejected += 1;
                continue;
            }
            if op.fence < max {
                r.violations.push(format!(
                    "{name:?}: the resource accepted a {} with stale fence {} after fence {} (seq {})",
                    op.op, op.fence, max, op.seq
                ));
            }
            max = max.max(op.fence);
            if op.op == "write" {
                writes += 1;
                if op.value != last + 1 {
                    r.violations.push(format!(
                        "{name:?}: lost update: worker {} wrote {} over {} (seq {})",
                        op.worker, op.value, last, op.seq
                    ));
                }
                last = op.value;
            }
        }
        r.accepted_writes += writes as usize;
        let counter = counters.get(name).copied().unwrap_or(0);
        if counter != writes {
            r.violations.push(format!(
                "{name:?}: lost update: the counter is {counter} but {writes} writes were accepted"
            ));
        }
    }
    for (name, v) in &counters {
        if !per_name.contains_key(name) && *v != 0 {
            r.violations
                .push(format!("{name:?}: counter {v} without any recorded write"));
        }
    }
    // Takeover after SIGKILL: never before the lease the store reported.
    for f in input.faults.iter().filter(|f| f.kind == "sigkill") {
        let (Some(name), Some(fence), Some(exp), Some(at)) =
            (&f.name, f.fence, f.expires_in, f.inspected_at)
        else {
            continue;
        };
        // The harness inspects, then kills: if the holder released in between (its hold
        // record exists: a library worker writes it after `release` returned; `run` exited
        // on its own, or was killed after its command finished, maybe mid-release), the
        // lock was free before the kill and an early grant is no violation.
        if let Some(h) = input
            .holds
            .iter()
            .find(|h| &h.name == name && h.fence == fence)
            && (h.outcome != "killed" || h.end < f.at)
        {
            r.notes.push(format!(
                "{name:?}: the holder of fence {fence} had released it ({}) before the kill landed",
                h.outcome
            ));
            continue;
        }
        // Killed while its release was on its way: the store may have freed the lock.
        if let Some((_, _, began)) = input
            .releasing
            .iter()
            .find(|(n, fe, began)| n == name && *fe == fence && *began < f.at)
        {
            r.notes.push(format!(
                "{name:?}: the holder of fence {fence} was killed {} ms after it called release",
                (f.at - began) / 1_000_000
            ));
            continue;
        }
        let earliest = at + exp;
        let next = spans
            .get(name)
            .and_then(|l| l.iter().filter(|s| s.fence > fence).min_by_key(|s| s.fence));
        match next {
            Some(s) => {
                r.takeovers_checked += 1;
                if s.start + SLACK_NS < earliest {
                    r.violations.push(format!(
                        "{name:?}: killed holder's lock (fence {fence}) was taken over {} ms before its lease ran out",
                        (earliest - s.start) / 1_000_000
                    ));
                } else {
                    r.notes.push(format!(
                        "{name:?}: killed holder (fence {fence}) taken over {} ms after the kill, lease had {} ms left",
                        s.start.saturating_sub(f.at) / 1_000_000,
                        exp / 1_000_000
                    ));
                }
            }
            None => r.notes.push(format!(
                "{name:?}: killed holder (fence {fence}) not taken over before the run ended"
            )),
        }
    }
    // Nothing stuck.
    for f in &input.finals {
        match f.expires_in {
            None => {}
            Some(None) => r
                .violations
                .push(format!("{:?}: held without expiry after the run", f.name)),
            Some(Some(ns)) if ns > input.ttl_ns + SLACK_NS => r.violations.push(format!(
                "{:?}: still held {} ms after the run (TTL {} ms)",
                f.name,
                ns / 1_000_000,
                input.ttl_ns / 1_000_000
            )),
            Some(Some(_)) => {}
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn hold(worker: u32, fence: u64, start: u64, end: u64) -> Hold {
        Hold {
            worker,
            mode: "async".into(),
            name: "a".into(),
            fence,
            start: start * MS,
            end: end * MS,
            deadline: Some(end * MS + 500 * MS),
            lost_at: None,
            outcome: "released".into(),
            stepped: false,
            write: None,
            error: None,
        }
    }

    fn op(seq: i64, fence: u64, op: &str, value: i64, accepted: bool) -> Op {
        Op {
            seq,
            name: "a".into(),
            fence,
            worker: 1,
            op: op.into(),
            value,
            accepted,
            at: seq as u64,
        }
    }

    /// Two clean holds, two writes, counter 2.
    /// The harness's SIGKILL of worker 1, holder of fence 10 on "a", inspected at 1 ms with
    /// `expires_in` left.
    fn sigkill(at: u64, expires_in: u64) -> Fault {
        Fault {
            kind: "sigkill".into(),
            at,
            until: None,
            name: Some("a".into()),
            fence: Some(10),
            expires_in: Some(expires_in),
            inspected_at: Some(MS),
            pid: Some(1),
            note: String::new(),
        }
    }

    fn clean() -> Input {
        Input {
            holds: vec![hold(1, 10, 0, 10), hold(2, 11, 11, 20)],
            ops: vec![
                op(1, 10, "read", 0, true),
                op(2, 10, "write", 1, true),
                op(3, 11, "read", 1, true),
                op(4, 11, "write", 2, true),
            ],
            counters: vec![("a".into(), 2)],
            ttl_ns: 1000 * MS,
            ..Input::default()
        }
    }

    #[test]
    fn a_clean_log_passes() {
        let r = check(&clean());
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.accepted_writes, 2);
    }

    #[test]
    fn an_overlap_fails() {
        let mut input = clean();
        input.holds[1].start = 5 * MS;
        let r = check(&input);
        assert!(
            r.violations.iter().any(|v| v.contains("not told")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn an_overlap_after_the_holder_was_told_passes() {
        let mut input = clean();
        input.holds[0].lost_at = Some(4 * MS);
        input.holds[0].outcome = "lost".into();
        input.holds[1].start = 5 * MS;
        let r = check(&input);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
    }

    #[test]
    fn a_frozen_holder_counts_until_its_deadline() {
        let mut input = clean();
        // Frozen: woke up at 30 ms and learnt it was lost, but its deadline was 8 ms.
        input.holds[0].end = 30 * MS;
        input.holds[0].lost_at = Some(30 * MS);
        input.holds[0].deadline = Some(8 * MS);
        let r = check(&input);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        // A deadline past the next grant is a double holder.
        input.holds[0].deadline = Some(12 * MS);
        assert!(!check(&input).violations.is_empty());
    }

    #[test]
    fn a_guard_lost_before_acquire_returned_holds_nothing() {
        let mut input = clean();
        // Worker 1 was frozen between grant and return: by the time it looked, lost.
        input.holds[0].start = 15 * MS;
        input.holds[0].end = 16 * MS;
        input.holds[0].deadline = None;
        input.holds[0].lost_at = Some(15 * MS);
        input.holds[1].start = 11 * MS;
        input.holds[1].end = 30 * MS;
        let r = check(&input);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        // Had it believed it held the lock, it is a double holder.
        input.holds[0].deadline = Some(900 * MS);
        input.holds[0].lost_at = None;
        assert!(!check(&input).violations.is_empty());
    }

    #[test]
    fn a_repeated_fence_fails() {
        let mut input = clean();
        input.holds[1].fence = 10;
        input.holds[1].worker = 3;
        let r = check(&input);
        assert!(
            r.violations.iter().any(|v| v.contains("granted twice")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_fence_going_backwards_fails() {
        let mut input = clean();
        input.holds[1].fence = 9;
        let r = check(&input);
        assert!(
            r.violations.iter().any(|v| v.contains("backwards")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_lost_update_fails() {
        let mut input = clean();
        // Both read 0 and both wrote 1.
        input.ops[2].value = 0;
        input.ops[3].value = 1;
        input.counters = vec![("a".into(), 1)];
        let r = check(&input);
        assert!(
            r.violations.iter().any(|v| v.contains("lost update")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_counter_that_disagrees_fails() {
        let mut input = clean();
        input.counters = vec![("a".into(), 3)];
        let r = check(&input);
        assert!(
            r.violations.iter().any(|v| v.contains("counter is 3")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_stale_fence_accepted_fails() {
        let mut input = clean();
        input.ops.push(op(5, 10, "write", 3, true));
        input.counters = vec![("a".into(), 3)];
        let r = check(&input);
        assert!(
            r.violations.iter().any(|v| v.contains("stale fence")),
            "{:?}",
            r.violations
        );
        // Rejected, it is fine.
        let mut input = clean();
        input.ops.push(op(5, 10, "write", 3, false));
        let r = check(&input);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.rejected, 1);
    }

    #[test]
    fn a_hold_recorded_after_its_frozen_lease_ended_is_not_ordered() {
        // Worker 1 (a `locksmith run`) was granted fence 10 and frozen before its command
        // recorded the start; the lease ran out, worker 2 held fence 11, and worker 1's
        // start was recorded after the thaw.
        let mut input = clean();
        input.holds[0].mode = "cli".into();
        input.holds[0].deadline = None;
        input.holds[0].start = 3000 * MS;
        input.holds[0].end = 3001 * MS;
        input.holds[0].lost_at = Some(3001 * MS);
        input.holds[1].start = 1100 * MS;
        input.holds[1].end = 1200 * MS;
        input.ops.clear();
        input.counters.clear();
        assert!(
            check(&input)
                .violations
                .iter()
                .any(|v| v.contains("backwards")),
            "unexplained, the late start looks like a fence going backwards"
        );
        input.faults.push(Fault {
            kind: "sigstop".into(),
            at: 6 * MS,
            until: Some(2600 * MS),
            name: Some("a".into()),
            fence: Some(10),
            expires_in: Some(1000 * MS),
            inspected_at: Some(5 * MS),
            pid: Some(1),
            note: String::new(),
        });
        let r = check(&input);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        // A start recorded inside the reported lease is still ordered (and fails).
        input.holds[0].start = 500 * MS;
        input.holds[0].end = 700 * MS;
        input.holds[0].lost_at = Some(700 * MS);
        input.holds[1].start = 800 * MS;
        input.holds[1].fence = 9;
        assert!(!check(&input).violations.is_empty());
    }

    #[test]
    fn a_frozen_holder_counts_until_its_reported_lease() {
        let mut input = clean();
        input.holds[0].mode = "cli".into();
        input.holds[0].deadline = None;
        input.holds[0].end = 3000 * MS;
        input.holds[0].lost_at = Some(3000 * MS);
        input.holds[1].start = 1100 * MS;
        input.holds[1].end = 1200 * MS;
        // Unexplained, it is an overlap.
        assert!(!check(&input).violations.is_empty());
        let freeze = Fault {
            kind: "sigstop".into(),
            at: 6 * MS,
            until: Some(2600 * MS),
            name: Some("a".into()),
            fence: Some(10),
            expires_in: Some(1000 * MS),
            inspected_at: Some(5 * MS),
            pid: Some(1),
            note: String::new(),
        };
        input.faults.push(freeze.clone());
        let r = check(&input);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        // A grant before the reported lease ran out is still a violation.
        input.holds[1].start = 900 * MS;
        assert!(!check(&input).violations.is_empty());
    }

    #[test]
    fn an_early_takeover_after_sigkill_fails() {
        let mut input = clean();
        // Worker 1 was killed holding fence 10: a grant, no hold record.
        input.holds.remove(0);
        input.grants.push((1, "a".into(), 10, 0));
        input.faults.push(sigkill(2 * MS, 30 * MS));
        let r = check(&input);
        assert!(
            r.violations.iter().any(|v| v.contains("before its lease")),
            "{:?}",
            r.violations
        );
        input.holds[0].start = 40 * MS;
        input.holds[0].end = 50 * MS;
        let r = check(&input);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.takeovers_checked, 1);
    }

    #[test]
    fn a_holder_that_released_before_the_kill_may_be_followed_at_once() {
        let mut input = clean();
        input.faults.push(sigkill(10 * MS, 900 * MS));
        // Worker 1 wrote its hold record (released) before it was killed.
        let r = check(&input);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.takeovers_checked, 0);
        // Killed while holding (no hold record): the early grant is a violation.
        input.holds.remove(0);
        input.grants.push((1, "a".into(), 10, 0));
        let r = check(&input);
        assert!(
            r.violations.iter().any(|v| v.contains("before its lease")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_holder_killed_mid_release_may_be_followed_at_once() {
        let mut input = clean();
        input.faults.push(sigkill(10 * MS, 900 * MS));
        // Killed with no hold record: the early grant of fence 11 is a violation...
        input.holds.remove(0);
        input.grants.push((1, "a".into(), 10, 0));
        assert!(!check(&input).violations.is_empty());
        // ...unless the holder had called release before the kill was sent.
        input.releasing.push(("a".into(), 10, 9 * MS));
        let r = check(&input);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("after it called release"))
        );
        // A release begun after the kill (impossible, but a wrong log) excuses nothing.
        input.releasing[0].2 = 11 * MS;
        assert!(!check(&input).violations.is_empty());
    }

    #[test]
    fn a_stuck_lock_fails() {
        let mut input = clean();
        input.finals.push(Final {
            name: "a".into(),
            expires_in: Some(None),
        });
        input.finals.push(Final {
            name: "b".into(),
            expires_in: Some(Some(5000 * MS)),
        });
        input.finals.push(Final {
            name: "c".into(),
            expires_in: Some(Some(500 * MS)),
        });
        let r = check(&input);
        assert_eq!(r.violations.len(), 2, "{:?}", r.violations);
    }

    #[test]
    fn an_overlap_with_a_hold_a_step_broke_is_the_steps() {
        let mut input = clean();
        // Worker 2 (stepped) took worker 1's lease early; worker 3 then got the free row
        // while worker 1 still worked.
        input.holds[0].end = 30 * MS;
        input.holds[0].deadline = Some(40 * MS);
        input.holds[1].start = 5 * MS;
        input.holds[1].end = 8 * MS;
        input.holds[1].stepped = true;
        let mut third = hold(3, 12, 10, 20);
        third.deadline = Some(500 * MS);
        input.holds.push(third);
        let r = check(&input);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.step_overlaps, 2);
        // Without the step, both are violations.
        input.holds[1].stepped = false;
        assert_eq!(
            check(&input).violations.len(),
            2,
            "{:?}",
            check(&input).violations
        );
    }

    #[test]
    fn a_hold_broken_by_a_stepped_grant_that_sorts_first_is_the_steps() {
        let mut input = clean();
        // Worker 1's command started at 5 ms (its grant came a little earlier); the stepped
        // worker 2 took the lease at 2 ms and let it go at 8 ms; worker 3 then got the free
        // row at 10 ms while worker 1's command still ran.
        input.holds[0].start = 5 * MS;
        input.holds[0].end = 30 * MS;
        input.holds[0].deadline = None;
        input.holds[1].start = 2 * MS;
        input.holds[1].end = 8 * MS;
        input.holds[1].stepped = true;
        input.holds.push(hold(3, 12, 10, 20));
        let r = check(&input);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.step_overlaps, 2);
        // Without the step, worker 3's overlap with worker 1 is a violation.
        input.holds[1].stepped = false;
        assert!(!check(&input).violations.is_empty());
    }

    #[test]
    fn a_stepped_overlap_is_counted_not_failed() {
        let mut input = clean();
        input.holds[1].start = 5 * MS;
        input.holds[1].stepped = true;
        let r = check(&input);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.step_overlaps, 1);
    }
}
