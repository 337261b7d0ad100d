//! Restore planning: from a snapshot's `_metadata` and the job about to run, which parts
//! of which old subtasks every new subtask restores. Pure; the composition root reads
//! the files the plan names and hands each subtask its parts.
//!
//! The rules, as Flink's:
//!
//! - State belongs to an operator by its `id` in the job file. State of an operator the
//!   job no longer has is refused, naming it, unless the run allows non-restored state;
//!   an operator the snapshot does not know starts empty.
//! - At the same parallelism every subtask restores its own parts, its channel state
//!   included.
//! - At another parallelism keyed state and timers move by key group: new subtask `i`
//!   takes the key groups of [`KeyGroupRange::for_subtask`] from every old subtask that
//!   held some. Operator state is union state: every new subtask receives every old
//!   subtask's, in old subtask order. Channel state cannot be rescaled (drop it with
//!   `recover-without-channel-state`, or rescale from a savepoint, which is aligned).
//! - `max-parallelism` (the number of key groups) never changes.
//! - A backend's native files restore only into that backend; canonical keyed state
//!   into any.

use crate::checkpoint::metadata::{CheckpointMetadata, SnapshotKind, TaskState};
use crate::checkpoint::snapshot::{GroupSpan, KeyedPart, StateParts};
use crate::runtime::SubtaskIndex;
use crate::runtime::keygroup::KeyGroupRange;
use std::collections::BTreeMap;

/// What the plan needs to know about the job.
#[derive(Clone, Debug)]
pub struct JobShape<'a> {
    /// Every node's id and parallelism.
    pub nodes: Vec<(&'a str, u32)>,
    /// The job's number of key groups.
    pub max_parallelism: u32,
    /// The job's state backend ("heap", "rocksdb").
    pub backend: &'a str,
}

/// How the run was asked to treat what does not fit.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanOptions {
    /// Skip state of operators the job no longer has (`--allow-non-restored-state`).
    pub allow_non_restored_state: bool,
    /// Restore without the channel state (`recover-without-channel-state`).
    pub drop_channel_state: bool,
}

/// Which old keyed state a new subtask restores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyedSource {
    /// These canonical sections of old task `task` (an index into the metadata's tasks).
    Canonical {
        /// The old subtask.
        task: usize,
        /// Its sections of key groups the new subtask owns.
        groups: Vec<GroupSpan>,
    },
    /// The native files of old task `task`; the backend keeps the key groups it owns.
    Native {
        /// The old subtask.
        task: usize,
    },
}

/// What one new subtask restores; old subtasks are indices into the metadata's tasks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatePlan {
    /// The old subtasks whose operator state it receives, in old subtask order.
    pub operator: Vec<usize>,
    /// Its keyed state.
    pub keyed: Vec<KeyedSource>,
    /// Its timers: sections of key groups it owns, per old subtask.
    pub timers: Vec<(usize, Vec<GroupSpan>)>,
    /// The old subtask whose channel state it replays (same parallelism only).
    pub channel_state: Option<usize>,
    /// Records taken in, carried over at the same parallelism.
    pub records_in: u64,
}

/// What one new subtask does on restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubtaskPlan {
    /// It had finished: it is passed through, not run again.
    Finished,
    /// It restores these parts.
    State(StatePlan),
}

/// The plan of a restore.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestorePlan {
    /// Per node id and new subtask; a subtask absent here starts empty.
    pub subtasks: BTreeMap<(String, u32), SubtaskPlan>,
    /// Operators whose state the snapshot holds but the job does not have (skipped).
    pub not_restored: Vec<String>,
    /// Operators of the job the snapshot holds no state for (they start empty).
    pub new_operators: Vec<String>,
    /// Operators restored at another parallelism: id, old and new parallelism.
    pub rescaled: Vec<(String, u32, u32)>,
}

fn what(metadata: &CheckpointMetadata) -> String {
    match metadata.kind {
        SnapshotKind::Checkpoint => format!("checkpoint {}", metadata.checkpoint),
        SnapshotKind::Savepoint => format!("savepoint {}", metadata.checkpoint),
    }
}

/// Plans the restore of `metadata` into `job`, or says in a sentence why it cannot be.
pub fn plan(
    metadata: &CheckpointMetadata,
    job: &JobShape<'_>,
    options: PlanOptions,
) -> Result<RestorePlan, String> {
    let what = what(metadata);
    if metadata.max_parallelism != job.max_parallelism {
        return Err(format!(
            "{what} was taken with max-parallelism {} and the job has max-parallelism {}: the number of key groups cannot change, since every key's state lives in its key group. Set max-parallelism = {} in the job file",
            metadata.max_parallelism, job.max_parallelism, metadata.max_parallelism
        ));
    }
    let mut out = RestorePlan::default();
    let mut by_node: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, task) in metadata.tasks.iter().enumerate() {
        by_node.entry(task.node.as_str()).or_default().push(i);
    }
    for node in by_node.keys() {
        if !job.nodes.iter().any(|(id, _)| id == node) {
            if !options.allow_non_restored_state {
                return Err(format!(
                    "{what} holds state of operator `{node}`, which the job does not have. Run with --allow-non-restored-state to skip that state, or add the operator back under the same id"
                ));
            }
            out.not_restored.push((*node).to_owned());
        }
    }
    for &(node, parallelism) in &job.nodes {
        let Some(old) = by_node.get_mut(node) else {
            out.new_operators.push(node.to_owned());
            continue;
        };
        old.sort_by_key(|&i| metadata.tasks[i].subtask);
        let old_parallelism = metadata.tasks[old[0]].parallelism;
        let complete = old.len() == old_parallelism as usize
            && old
                .iter()
                .enumerate()
                .all(|(k, &i)| metadata.tasks[i].subtask as usize == k);
        if !complete {
            return Err(format!(
                "{what} is incomplete: it holds {} subtasks of `{node}`, whose parallelism it records as {old_parallelism}",
                old.len()
            ));
        }
        plan_node(
            metadata,
            job,
            options,
            &what,
            node,
            parallelism,
            old,
            &mut out,
        )?;
        if old_parallelism != parallelism {
            out.rescaled
                .push((node.to_owned(), old_parallelism, parallelism));
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn plan_node(
    metadata: &CheckpointMetadata,
    job: &JobShape<'_>,
    options: PlanOptions,
    what: &str,
    node: &str,
    parallelism: u32,
    old: &[usize],
    out: &mut RestorePlan,
) -> Result<(), String> {
    let old_parallelism = metadata.tasks[old[0]].parallelism;
    let same = old_parallelism == parallelism;
    let finished = old
        .iter()
        .filter(|&&i| metadata.tasks[i].state == TaskState::Finished)
        .count();
    if finished == old.len() {
        for s in 0..parallelism {
            out.subtasks
                .insert((node.to_owned(), s), SubtaskPlan::Finished);
        }
        return Ok(());
    }
    if finished > 0 && !same {
        return Err(format!(
            "{what} holds `{node}` with {finished} of its {old_parallelism} subtasks finished: a node partly finished cannot change its parallelism. Restore it with parallelism {old_parallelism}"
        ));
    }
    let parts = |i: usize| match &metadata.tasks[i].state {
        TaskState::Parts(p) => Some(p),
        TaskState::Finished => None,
    };
    for &i in old {
        if let Some(StateParts {
            keyed: Some(KeyedPart::Native { backend, .. }),
            ..
        }) = parts(i)
            && backend != job.backend
        {
            return Err(format!(
                "{what} holds the keyed state of `{node}` in {backend}'s native format, and the job uses the {} state backend. Switch backends through a canonical savepoint (`weir savepoint`, the default type), or set [state] backend = \"{backend}\"",
                job.backend
            ));
        }
        if !same && metadata.tasks[i].channel_state.is_some() && !options.drop_channel_state {
            return Err(format!(
                "{what} holds in-flight data of `{node}` (it was unaligned), which cannot be spread over another parallelism. Rescale from a savepoint (always aligned), or restore with recover-without-channel-state = {} to drop that data",
                metadata.checkpoint
            ));
        }
    }
    for s in 0..parallelism {
        let key = (node.to_owned(), s);
        if same {
            let i = old[s as usize];
            let Some(p) = parts(i) else {
                out.subtasks.insert(key, SubtaskPlan::Finished);
                continue;
            };
            let plan = StatePlan {
                operator: p.operator.map(|_| vec![i]).unwrap_or_default(),
                keyed: p
                    .keyed
                    .as_ref()
                    .map(|k| match k {
                        KeyedPart::Canonical { part, .. } => vec![KeyedSource::Canonical {
                            task: i,
                            groups: part.groups.clone(),
                        }],
                        KeyedPart::Native { .. } => vec![KeyedSource::Native { task: i }],
                    })
                    .unwrap_or_default(),
                timers: p
                    .timers
                    .as_ref()
                    .map(|t| vec![(i, t.groups.clone())])
                    .unwrap_or_default(),
                channel_state: (!options.drop_channel_state
                    && metadata.tasks[i].channel_state.is_some())
                .then_some(i),
                records_in: p.records_in,
            };
            out.subtasks.insert(key, SubtaskPlan::State(plan));
            continue;
        }
        let range = KeyGroupRange::for_subtask(SubtaskIndex(s), parallelism, job.max_parallelism);
        let mut plan = StatePlan::default();
        for &i in old {
            let Some(p) = parts(i) else { continue };
            if p.operator.is_some() {
                plan.operator.push(i);
            }
            let within = |groups: &[GroupSpan]| -> Vec<GroupSpan> {
                groups
                    .iter()
                    .filter(|g| (range.start..range.end).contains(&g.group))
                    .copied()
                    .collect()
            };
            match &p.keyed {
                Some(KeyedPart::Canonical { part, .. }) => {
                    let groups = within(&part.groups);
                    if !groups.is_empty() {
                        plan.keyed.push(KeyedSource::Canonical { task: i, groups });
                    }
                }
                Some(KeyedPart::Native { key_groups, .. })
                    if key_groups.start < range.end && range.start < key_groups.end =>
                {
                    plan.keyed.push(KeyedSource::Native { task: i });
                }
                Some(KeyedPart::Native { .. }) | None => {}
            }
            if let Some(t) = &p.timers {
                let groups = within(&t.groups);
                if !groups.is_empty() {
                    plan.timers.push((i, groups));
                }
            }
        }
        out.subtasks.insert(key, SubtaskPlan::State(plan));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::coordinator::SubtaskStats;
    use crate::checkpoint::metadata::{FORMAT_VERSION, TaskEntry};
    use crate::checkpoint::snapshot::{GroupRange, GroupedPart, Span, StateDecl};
    use crate::storage::FileHandle;
    use proptest::prelude::*;

    /// A keyed node at `parallelism` with one section per key group it owns.
    fn keyed_tasks(node: &str, parallelism: u32, max: u32) -> Vec<TaskEntry> {
        (0..parallelism)
            .map(|s| {
                let range = KeyGroupRange::for_subtask(SubtaskIndex(s), parallelism, max);
                let groups: Vec<GroupSpan> = (range.start..range.end)
                    .map(|g| GroupSpan {
                        group: g,
                        offset: u64::from(g - range.start) * 10,
                        len: 10,
                    })
                    .collect();
                TaskEntry {
                    node: node.into(),
                    subtask: s,
                    parallelism,
                    state: TaskState::Parts(StateParts {
                        file: Some(FileHandle {
                            path: format!("chk-1/{node}-{s}"),
                            size: 1,
                            checksum: 0,
                        }),
                        operator: Some(Span { offset: 0, len: 1 }),
                        keyed: Some(KeyedPart::Canonical {
                            states: vec![StateDecl {
                                name: "count".into(),
                                kind: crate::checkpoint::snapshot::EntryKind::Value,
                            }],
                            part: GroupedPart {
                                key_groups: GroupRange::from(range),
                                groups: groups.clone(),
                            },
                        }),
                        timers: Some(GroupedPart {
                            key_groups: GroupRange::from(range),
                            groups,
                        }),
                        records_in: 7,
                    }),
                    channel_state: None,
                    stats: SubtaskStats::default(),
                }
            })
            .collect()
    }

    fn metadata(tasks: Vec<TaskEntry>, max: u32) -> CheckpointMetadata {
        CheckpointMetadata {
            version: FORMAT_VERSION,
            job: "wc".into(),
            checkpoint: 4,
            kind: SnapshotKind::Savepoint,
            max_parallelism: max,
            backend: "heap".into(),
            mode: "exactly-once".into(),
            triggered_at_ms: 0,
            completed_at_ms: 0,
            tasks,
        }
    }

    fn shape(nodes: Vec<(&str, u32)>, max: u32) -> JobShape<'_> {
        JobShape {
            nodes,
            max_parallelism: max,
            backend: "heap",
        }
    }

    fn state(plan: &RestorePlan, node: &str, s: u32) -> StatePlan {
        match plan.subtasks.get(&(node.to_owned(), s)) {
            Some(SubtaskPlan::State(p)) => p.clone(),
            other => panic!("{node} {s}: {other:?}"),
        }
    }

    /// The key groups a plan gives subtask `s` of `node`, from every keyed source.
    fn groups_of(plan: &RestorePlan, node: &str, s: u32) -> Vec<u16> {
        state(plan, node, s)
            .keyed
            .iter()
            .flat_map(|k| match k {
                KeyedSource::Canonical { groups, .. } => groups.iter().map(|g| g.group).collect(),
                KeyedSource::Native { .. } => Vec::new(),
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn rescaling_gives_every_key_group_to_exactly_the_subtask_that_owns_it(
            old in 1u32..=12, new in 1u32..=12, max in 12u32..=200,
        ) {
            let m = metadata(keyed_tasks("count", old, max), max);
            let p = plan(&m, &shape(vec![("count", new)], max), PlanOptions::default())
                .map_err(TestCaseError::fail)?;
            let mut seen = vec![0u32; max as usize];
            for s in 0..new {
                let range = KeyGroupRange::for_subtask(SubtaskIndex(s), new, max);
                for g in groups_of(&p, "count", s) {
                    prop_assert!(range.contains(crate::runtime::KeyGroup(g)));
                    seen[g as usize] += 1;
                }
                let timers: usize = state(&p, "count", s).timers.iter().map(|(_, g)| g.len()).sum();
                prop_assert_eq!(timers, range.len());
            }
            prop_assert!(seen.iter().all(|&n| n == 1), "{:?}", seen);
        }
    }

    #[test]
    fn at_the_same_parallelism_each_subtask_restores_its_own_parts() -> Result<(), String> {
        let m = metadata(keyed_tasks("count", 3, 128), 128);
        let p = plan(&m, &shape(vec![("count", 3)], 128), PlanOptions::default())?;
        for s in 0..3 {
            let own = state(&p, "count", s);
            assert_eq!(own.operator, [s as usize]);
            assert_eq!(own.records_in, 7);
        }
        assert!(p.rescaled.is_empty());
        Ok(())
    }

    #[test]
    fn after_a_rescale_every_subtask_receives_every_old_operator_state() -> Result<(), String> {
        let m = metadata(keyed_tasks("count", 2, 128), 128);
        let p = plan(&m, &shape(vec![("count", 3)], 128), PlanOptions::default())?;
        for s in 0..3 {
            assert_eq!(state(&p, "count", s).operator, [0, 1]);
            assert_eq!(state(&p, "count", s).records_in, 0);
        }
        assert_eq!(p.rescaled, [("count".to_owned(), 2, 3)]);
        Ok(())
    }

    #[test]
    fn a_changed_max_parallelism_is_refused_saying_it_cannot_change() {
        let m = metadata(keyed_tasks("count", 2, 128), 128);
        let err = plan(&m, &shape(vec![("count", 2)], 256), PlanOptions::default())
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("max-parallelism 128") && err.contains("cannot change"),
            "{err}"
        );
    }

    #[test]
    fn state_of_a_removed_operator_is_refused_unless_allowed() -> Result<(), String> {
        let mut tasks = keyed_tasks("count", 1, 128);
        tasks.extend(keyed_tasks("old", 1, 128));
        let m = metadata(tasks, 128);
        let job = shape(vec![("count", 1), ("new", 2)], 128);
        let err = plan(&m, &job, PlanOptions::default())
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("`old`") && err.contains("--allow-non-restored-state"),
            "{err}"
        );
        let p = plan(
            &m,
            &job,
            PlanOptions {
                allow_non_restored_state: true,
                ..PlanOptions::default()
            },
        )?;
        assert_eq!(p.not_restored, ["old"]);
        assert_eq!(p.new_operators, ["new"]);
        assert!(!p.subtasks.contains_key(&("new".to_owned(), 0)));
        Ok(())
    }

    #[test]
    fn native_state_into_another_backend_is_refused_with_the_way_out() {
        let mut tasks = keyed_tasks("count", 1, 128);
        if let TaskState::Parts(p) = &mut tasks[0].state {
            p.keyed = Some(KeyedPart::Native {
                backend: "rocksdb".into(),
                key_groups: GroupRange { start: 0, end: 128 },
                files: Vec::new(),
            });
        }
        let err = plan(
            &metadata(tasks, 128),
            &shape(vec![("count", 1)], 128),
            PlanOptions::default(),
        )
        .err()
        .unwrap_or_default();
        assert!(
            err.contains("native") && err.contains("canonical savepoint"),
            "{err}"
        );
    }

    #[test]
    fn native_state_is_read_from_every_old_subtask_whose_range_overlaps() -> Result<(), String> {
        let mut tasks = keyed_tasks("count", 2, 128);
        for t in &mut tasks {
            if let TaskState::Parts(p) = &mut t.state {
                let range = p.keyed.as_ref().map(KeyedPart::key_groups);
                p.keyed = range.map(|key_groups| KeyedPart::Native {
                    backend: "rocksdb".into(),
                    key_groups,
                    files: Vec::new(),
                });
            }
        }
        let mut job = shape(vec![("count", 3)], 128);
        job.backend = "rocksdb";
        let p = plan(&metadata(tasks, 128), &job, PlanOptions::default())?;
        // 0..43, 43..86, 86..128 against 0..64, 64..128.
        assert_eq!(
            state(&p, "count", 0).keyed,
            [KeyedSource::Native { task: 0 }]
        );
        assert_eq!(
            state(&p, "count", 1).keyed,
            [
                KeyedSource::Native { task: 0 },
                KeyedSource::Native { task: 1 }
            ]
        );
        assert_eq!(
            state(&p, "count", 2).keyed,
            [KeyedSource::Native { task: 1 }]
        );
        Ok(())
    }

    #[test]
    fn channel_state_restores_at_the_same_parallelism_and_refuses_a_rescale() -> Result<(), String>
    {
        let mut tasks = keyed_tasks("count", 2, 128);
        tasks[1].channel_state = Some(FileHandle {
            path: "chk-4/count-1-channels".into(),
            size: 1,
            checksum: 0,
        });
        let m = metadata(tasks, 128);
        let same = plan(&m, &shape(vec![("count", 2)], 128), PlanOptions::default())?;
        assert_eq!(state(&same, "count", 1).channel_state, Some(1));
        let err = plan(&m, &shape(vec![("count", 4)], 128), PlanOptions::default())
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("in-flight") && err.contains("recover-without-channel-state"),
            "{err}"
        );
        let dropped = plan(
            &m,
            &shape(vec![("count", 4)], 128),
            PlanOptions {
                drop_channel_state: true,
                ..PlanOptions::default()
            },
        )?;
        assert!(dropped.subtasks.values().all(|s| match s {
            SubtaskPlan::State(p) => p.channel_state.is_none(),
            SubtaskPlan::Finished => false,
        }));
        Ok(())
    }

    #[test]
    fn a_finished_node_stays_finished_and_a_partly_finished_one_cannot_rescale() {
        let mut tasks = keyed_tasks("count", 2, 128);
        tasks[0].state = TaskState::Finished;
        let m = metadata(tasks.clone(), 128);
        let err = plan(&m, &shape(vec![("count", 3)], 128), PlanOptions::default())
            .err()
            .unwrap_or_default();
        assert!(err.contains("partly finished"), "{err}");
        tasks[1].state = TaskState::Finished;
        let all = plan(
            &metadata(tasks, 128),
            &shape(vec![("count", 3)], 128),
            PlanOptions::default(),
        );
        assert!(all.is_ok_and(|p| p.subtasks.values().all(|s| *s == SubtaskPlan::Finished)));
    }

    #[test]
    fn a_snapshot_missing_a_subtask_is_refused_as_incomplete() {
        let mut tasks = keyed_tasks("count", 3, 128);
        tasks.remove(1);
        let err = plan(
            &metadata(tasks, 128),
            &shape(vec![("count", 3)], 128),
            PlanOptions::default(),
        )
        .err()
        .unwrap_or_default();
        assert!(err.contains("incomplete"), "{err}");
    }
}
