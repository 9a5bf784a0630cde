//! The sticky assignor: which member of a group should own each partition. Pure: members,
//! their subscriptions, partition counts and the current target in; the new target out.
//!
//! Per topic, the partitions are spread over the members subscribed to it as evenly as
//! possible (each gets ⌊n/k⌋ or ⌈n/k⌉), and a rebalance moves as few partitions as it can: a
//! member keeps what it had up to its quota (its lowest-numbered partitions first), the
//! larger quotas go to the members that already hold the most, and only what is left over is
//! handed out, to the members furthest below their quota.

use std::collections::{BTreeMap, BTreeSet};

/// A topic and a partition number.
pub type TopicPartition = (String, u32);

/// The new target assignment, partition → member id. `members` maps each member id to the
/// topics it subscribes to; `partitions` gives each topic's partition count (topics missing
/// from it do not exist, and are not assigned); `current` is the target until now.
pub fn assign(
    members: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    current: &BTreeMap<TopicPartition, String>,
) -> BTreeMap<TopicPartition, String> {
    let mut target = BTreeMap::new();
    let topics: BTreeSet<&String> = members.values().flatten().collect();
    for topic in topics {
        let Some(&count) = partitions.get(topic) else {
            continue;
        };
        let subscribers: Vec<&String> = members
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(id, _)| id)
            .collect();
        assign_topic(topic, count, &subscribers, current, &mut target);
    }
    target
}

fn assign_topic(
    topic: &str,
    count: u32,
    subscribers: &[&String],
    current: &BTreeMap<TopicPartition, String>,
    target: &mut BTreeMap<TopicPartition, String>,
) {
    if subscribers.is_empty() || count == 0 {
        return;
    }
    // What each subscriber holds of this topic now, lowest partitions first.
    let mut held: BTreeMap<&String, Vec<u32>> =
        subscribers.iter().map(|m| (*m, Vec::new())).collect();
    for partition in 0..count {
        if let Some(owner) = current.get(&(topic.to_owned(), partition))
            && let Some(list) = held.get_mut(owner)
        {
            list.push(partition);
        }
    }
    // Quotas: ⌊n/k⌋ each, one more for the first n mod k members by what they hold now.
    let k = subscribers.len() as u32;
    let (base, extra) = (count / k, count % k);
    let mut by_holding: Vec<&String> = subscribers.to_vec();
    by_holding.sort_by(|a, b| held[b].len().cmp(&held[a].len()).then(a.cmp(b)));
    let quota: BTreeMap<&String, usize> = by_holding
        .iter()
        .enumerate()
        .map(|(i, m)| (*m, (base + u32::from((i as u32) < extra)) as usize))
        .collect();
    let mut assigned: BTreeMap<&String, usize> = BTreeMap::new();
    let mut free = Vec::new();
    let mut taken = BTreeSet::new();
    for (member, partitions) in &held {
        let keep = quota[member].min(partitions.len());
        for &partition in &partitions[..keep] {
            target.insert((topic.to_owned(), partition), (*member).clone());
            taken.insert(partition);
        }
        assigned.insert(*member, keep);
    }
    for partition in 0..count {
        if !taken.contains(&partition) {
            free.push(partition);
        }
    }
    // Hand out the rest, each to the member furthest below its quota (ties by id).
    for partition in free {
        let needy = subscribers
            .iter()
            .filter(|m| assigned[*m] < quota[*m])
            .min_by(|a, b| {
                let gap = |m: &&&String| quota[**m] - assigned[**m];
                gap(b).cmp(&gap(a)).then(a.cmp(b))
            });
        let Some(member) = needy else { break };
        target.insert((topic.to_owned(), partition), (*member).clone());
        if let Some(n) = assigned.get_mut(*member) {
            *n += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        list.iter()
            .map(|(id, topics)| {
                (
                    (*id).to_owned(),
                    topics.iter().map(|t| (*t).to_owned()).collect(),
                )
            })
            .collect()
    }

    fn counts(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
        list.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
    }

    fn per_member(target: &BTreeMap<TopicPartition, String>) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for member in target.values() {
            *out.entry(member.clone()).or_insert(0) += 1;
        }
        out
    }

    #[test]
    fn spreads_evenly_and_assigns_every_partition_once() {
        let m = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let target = assign(&m, &counts(&[("t", 7)]), &BTreeMap::new());
        assert_eq!(target.len(), 7);
        let mut sizes: Vec<usize> = per_member(&target).into_values().collect();
        sizes.sort_unstable();
        assert_eq!(sizes, [2, 2, 3]);
    }

    #[test]
    fn a_rebalance_moves_as_few_partitions_as_it_can() {
        let m3 = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let partitions = counts(&[("t", 6)]);
        let before = assign(&m3, &partitions, &BTreeMap::new());
        // c leaves: only its two partitions move.
        let m2 = members(&[("a", &["t"]), ("b", &["t"])]);
        let after = assign(&m2, &partitions, &before);
        let moved = before
            .iter()
            .filter(|(tp, owner)| after.get(*tp) != Some(*owner))
            .count();
        assert_eq!(moved, 2);
        assert_eq!(per_member(&after).into_values().collect::<Vec<_>>(), [3, 3]);
        // c comes back: two partitions move to it, one from each.
        let again = assign(&m3, &partitions, &after);
        let moved = after
            .iter()
            .filter(|(tp, owner)| again.get(*tp) != Some(*owner))
            .count();
        assert_eq!(moved, 2);
        assert_eq!(per_member(&again)["c"], 2);
    }

    #[test]
    fn members_get_only_topics_they_subscribe_to_and_missing_topics_are_skipped() {
        let m = members(&[("a", &["t", "u"]), ("b", &["u"]), ("c", &["gone"])]);
        let target = assign(&m, &counts(&[("t", 2), ("u", 2)]), &BTreeMap::new());
        for ((topic, _), member) in &target {
            assert!(m[member].contains(topic));
        }
        assert_eq!(target.len(), 4);
        assert!(!target.values().any(|m| m == "c"));
    }

    #[test]
    fn more_members_than_partitions_leaves_some_idle() {
        let m = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let target = assign(&m, &counts(&[("t", 2)]), &BTreeMap::new());
        assert_eq!(target.len(), 2);
        assert_eq!(per_member(&target).len(), 2);
    }
}
