//! Which completed checkpoints to keep, which to delete, which shared files can go,
//! and which checkpoints a restore may use.
//!
//! Pure functions over lists the storage layer produces: storage lists and deletes,
//! this module decides. A checkpoint is `chk-<n>/` with its own files and a `_metadata`
//! written last; incremental backends (RocksDB) also reference files under `shared/`
//! that several checkpoints have in common, so a shared file goes only when no retained
//! checkpoint (and no checkpoint in flight) references it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::job::Retention;
use crate::runtime::CheckpointId;

/// The name of a file under the job's `shared/` directory.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SharedFile(pub String);

/// A completed checkpoint and the shared files its `_metadata` references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointFiles {
    /// The checkpoint.
    pub id: CheckpointId,
    /// The shared files it references; empty for a backend that writes none.
    pub shared: BTreeSet<SharedFile>,
}

/// What retention decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// The checkpoints kept, newest first.
    pub retain: Vec<CheckpointId>,
    /// The checkpoints to delete (their `chk-<n>/` directories), oldest first. Delete
    /// the `_metadata` first, so that a crash halfway leaves a checkpoint that is
    /// never restored rather than one that is restored without its files.
    pub delete: Vec<CheckpointId>,
    /// Shared files referenced by a deleted checkpoint and by nothing kept.
    pub delete_shared: BTreeSet<SharedFile>,
}

/// Keeps the newest `num_retained` of `completed` (at least one, whatever
/// `num_retained` says: the latest checkpoint is never deleted) and plans the deletion
/// of the rest. `in_flight` are shared files that checkpoints in progress may
/// reference (an incremental backend reuses files of checkpoints it last saw
/// completed); they are never deleted. Duplicate ids are treated as one checkpoint
/// referencing the union of their files.
pub fn plan_retention(
    completed: &[CheckpointFiles],
    num_retained: u32,
    in_flight: &BTreeSet<SharedFile>,
) -> RetentionPlan {
    let mut ids: Vec<CheckpointId> = completed.iter().map(|c| c.id).collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids.dedup();
    let keep = usize::try_from(num_retained.max(1)).unwrap_or(usize::MAX);
    let split = keep.min(ids.len());
    let (retain, delete) = ids.split_at(split);
    let retain = retain.to_vec();
    let mut delete = delete.to_vec();
    delete.reverse();

    let shared_of = |ids: &[CheckpointId]| -> BTreeSet<SharedFile> {
        completed
            .iter()
            .filter(|c| ids.contains(&c.id))
            .flat_map(|c| c.shared.iter().cloned())
            .collect()
    };
    let referenced = shared_of(&retain);
    let delete_shared = shared_of(&delete)
        .into_iter()
        .filter(|file| !referenced.contains(file) && !in_flight.contains(file))
        .collect();
    RetentionPlan {
        retain,
        delete,
        delete_shared,
    }
}

/// How the job ended, for what its checkpoints should become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobEnd {
    /// The user cancelled it.
    Cancelled,
    /// Its input ended and it finished.
    Finished,
    /// It failed and the restart strategy gave up (or the process is going down).
    Failed,
}

/// What to do with the job's checkpoints when it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndAction {
    /// Delete every checkpoint of the job.
    DeleteAll,
    /// Leave the retained checkpoints for a later `--from-checkpoint`.
    Keep,
}

/// The files of `shared/` that no checkpoint in `retained` references: uploaded by
/// checkpoints that never completed (a killed process, a checkpoint declined for a full
/// disk) or left by retention that was interrupted. Call it only while no checkpoint is
/// in flight (at start, before the first is triggered; at the end, after the last), and
/// only when the metadata of every retained checkpoint was read: an unread one might
/// reference any of them.
pub fn orphans(shared: &[String], retained: &[CheckpointFiles]) -> Vec<SharedFile> {
    let referenced: BTreeSet<&SharedFile> = retained.iter().flat_map(|c| &c.shared).collect();
    let mut orphans: Vec<SharedFile> = shared
        .iter()
        .map(|name| SharedFile(name.clone()))
        .filter(|file| !referenced.contains(file))
        .collect();
    orphans.sort();
    orphans
}

/// What `retention` keeps when the job ends as `end`, as Flink's externalized
/// checkpoints: a failed job always keeps its checkpoints (they are how it resumes);
/// `delete-on-cancellation` deletes them when the job is cancelled or finishes;
/// `retain-on-cancellation` always keeps them.
pub fn on_job_end(retention: Retention, end: JobEnd) -> EndAction {
    match (retention, end) {
        (_, JobEnd::Failed) | (Retention::RetainOnCancellation, _) => EndAction::Keep,
        (Retention::DeleteOnCancellation, JobEnd::Cancelled | JobEnd::Finished) => {
            EndAction::DeleteAll
        }
    }
}

/// A checkpoint directory as storage lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedCheckpoint {
    /// Its id, from the directory's name.
    pub id: CheckpointId,
    /// Whether its `_metadata` exists (the commit point).
    pub has_metadata: bool,
}

/// The checkpoints a restore may try, newest first: only those whose `_metadata`
/// exists, since a checkpoint without it never completed. The caller tries each in
/// turn and moves to the next when one fails its checksums.
pub fn restore_candidates(listing: &[ListedCheckpoint]) -> Vec<CheckpointId> {
    let committed: BTreeSet<CheckpointId> = listing
        .iter()
        .filter(|c| c.has_metadata)
        .map(|c| c.id)
        .collect();
    committed.into_iter().rev().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u64) -> CheckpointId {
        CheckpointId(n)
    }

    fn files(names: &[&str]) -> BTreeSet<SharedFile> {
        names.iter().map(|n| SharedFile((*n).to_owned())).collect()
    }

    fn checkpoint(n: u64, shared: &[&str]) -> CheckpointFiles {
        CheckpointFiles {
            id: id(n),
            shared: files(shared),
        }
    }

    fn none() -> BTreeSet<SharedFile> {
        BTreeSet::new()
    }

    #[test]
    fn retention_keeps_the_newest_and_deletes_the_rest_oldest_first() {
        let completed: Vec<_> = (1..=5).map(|n| checkpoint(n, &[])).collect();
        let plan = plan_retention(&completed, 2, &none());
        assert_eq!(plan.retain, [id(5), id(4)]);
        assert_eq!(plan.delete, [id(1), id(2), id(3)]);
    }

    #[test]
    fn retention_does_not_depend_on_the_listing_order() {
        let completed = [checkpoint(3, &[]), checkpoint(1, &[]), checkpoint(2, &[])];
        let plan = plan_retention(&completed, 1, &none());
        assert_eq!(plan.retain, [id(3)]);
        assert_eq!(plan.delete, [id(1), id(2)]);
    }

    #[test]
    fn fewer_checkpoints_than_num_retained_are_all_kept() {
        let completed = [checkpoint(1, &["a"]), checkpoint(2, &["b"])];
        let plan = plan_retention(&completed, 3, &none());
        assert_eq!(plan.retain, [id(2), id(1)]);
        assert!(plan.delete.is_empty());
        assert!(plan.delete_shared.is_empty());
    }

    #[test]
    fn num_retained_zero_still_keeps_the_latest_checkpoint() {
        let completed = [checkpoint(1, &[]), checkpoint(2, &[])];
        let plan = plan_retention(&completed, 0, &none());
        assert_eq!(plan.retain, [id(2)]);
    }

    #[test]
    fn a_shared_file_only_deleted_checkpoints_reference_is_deleted() {
        let completed = [
            checkpoint(1, &["old", "both"]),
            checkpoint(2, &["both", "new"]),
        ];
        let plan = plan_retention(&completed, 1, &none());
        assert_eq!(plan.delete_shared, files(&["old"]));
    }

    #[test]
    fn a_shared_file_a_checkpoint_in_flight_may_reference_is_kept() {
        let completed = [checkpoint(1, &["old", "base"]), checkpoint(2, &["new"])];
        let plan = plan_retention(&completed, 1, &files(&["base"]));
        assert_eq!(plan.delete_shared, files(&["old"]));
    }

    #[test]
    fn duplicate_ids_count_as_one_checkpoint() {
        let completed = [
            checkpoint(2, &["a"]),
            checkpoint(2, &["b"]),
            checkpoint(1, &["a", "c"]),
        ];
        let plan = plan_retention(&completed, 1, &none());
        assert_eq!(plan.retain, [id(2)]);
        assert_eq!(plan.delete, [id(1)]);
        assert_eq!(plan.delete_shared, files(&["c"]));
    }

    #[test]
    fn no_checkpoints_plan_nothing() {
        assert_eq!(plan_retention(&[], 3, &none()), RetentionPlan::default());
    }

    #[test]
    fn a_cancelled_job_deletes_its_checkpoints_only_with_delete_on_cancellation() {
        assert_eq!(
            on_job_end(Retention::DeleteOnCancellation, JobEnd::Cancelled),
            EndAction::DeleteAll
        );
        assert_eq!(
            on_job_end(Retention::RetainOnCancellation, JobEnd::Cancelled),
            EndAction::Keep
        );
    }

    #[test]
    fn a_failed_job_always_keeps_its_checkpoints() {
        for retention in [
            Retention::DeleteOnCancellation,
            Retention::RetainOnCancellation,
        ] {
            assert_eq!(on_job_end(retention, JobEnd::Failed), EndAction::Keep);
        }
    }

    #[test]
    fn a_finished_job_keeps_its_checkpoints_only_with_retain_on_cancellation() {
        assert_eq!(
            on_job_end(Retention::DeleteOnCancellation, JobEnd::Finished),
            EndAction::DeleteAll
        );
        assert_eq!(
            on_job_end(Retention::RetainOnCancellation, JobEnd::Finished),
            EndAction::Keep
        );
    }

    #[test]
    fn restore_candidates_are_newest_first() {
        let listing = [3, 1, 2].map(|n| ListedCheckpoint {
            id: id(n),
            has_metadata: true,
        });
        assert_eq!(restore_candidates(&listing), [id(3), id(2), id(1)]);
    }

    #[test]
    fn a_checkpoint_without_metadata_is_never_restored() {
        let listing = [
            ListedCheckpoint {
                id: id(1),
                has_metadata: true,
            },
            ListedCheckpoint {
                id: id(2),
                has_metadata: false,
            },
        ];
        assert_eq!(restore_candidates(&listing), [id(1)]);
    }

    #[test]
    fn an_empty_listing_has_no_restore_candidates() {
        assert!(restore_candidates(&[]).is_empty());
    }

    /// A history of completed checkpoints as an incremental backend writes them: each
    /// references some of the files its predecessor did, plus new ones.
    fn history() -> impl Strategy<Value = (Vec<CheckpointFiles>, u32, BTreeSet<SharedFile>)> {
        let step = (proptest::collection::vec(any::<bool>(), 0..8), 0usize..4);
        (
            proptest::collection::vec(step, 0..12),
            0u32..5,
            proptest::collection::btree_set(0usize..40, 0..4),
        )
            .prop_map(|(steps, num_retained, in_flight)| {
                let mut next_file = 0;
                let mut previous: Vec<usize> = Vec::new();
                let mut completed = Vec::new();
                for (n, (keeps, new)) in steps.into_iter().enumerate() {
                    let mut current: Vec<usize> = previous
                        .iter()
                        .zip(keeps.iter().chain(std::iter::repeat(&true)))
                        .filter(|(_, keep)| **keep)
                        .map(|(f, _)| *f)
                        .collect();
                    current.extend(next_file..next_file + new);
                    next_file += new;
                    completed.push(CheckpointFiles {
                        id: CheckpointId(n as u64 + 1),
                        shared: current
                            .iter()
                            .map(|f| SharedFile(format!("{f}.sst")))
                            .collect(),
                    });
                    previous = current;
                }
                let in_flight = in_flight
                    .into_iter()
                    .map(|f| SharedFile(format!("{f}.sst")))
                    .collect();
                (completed, num_retained, in_flight)
            })
    }

    proptest! {
        #[test]
        fn retention_never_deletes_a_file_a_retained_checkpoint_references(
            (completed, num_retained, in_flight) in history()
        ) {
            let plan = plan_retention(&completed, num_retained, &in_flight);
            for c in completed.iter().filter(|c| plan.retain.contains(&c.id)) {
                prop_assert!(c.shared.is_disjoint(&plan.delete_shared));
            }
            prop_assert!(in_flight.is_disjoint(&plan.delete_shared));
        }

        #[test]
        fn retention_deletes_every_file_only_deleted_checkpoints_reference(
            (completed, num_retained, in_flight) in history()
        ) {
            let plan = plan_retention(&completed, num_retained, &in_flight);
            let kept: BTreeSet<&SharedFile> = completed
                .iter()
                .filter(|c| plan.retain.contains(&c.id))
                .flat_map(|c| &c.shared)
                .chain(&in_flight)
                .collect();
            for c in completed.iter().filter(|c| plan.delete.contains(&c.id)) {
                for file in &c.shared {
                    prop_assert_eq!(plan.delete_shared.contains(file), !kept.contains(file));
                }
            }
        }

        #[test]
        fn retention_keeps_the_newest_and_splits_every_checkpoint_once(
            (completed, num_retained, in_flight) in history()
        ) {
            let plan = plan_retention(&completed, num_retained, &in_flight);
            let want = completed.len().min(num_retained.max(1) as usize);
            prop_assert_eq!(plan.retain.len(), want);
            prop_assert_eq!(plan.retain.len() + plan.delete.len(), completed.len());
            if let (Some(oldest_kept), Some(newest_deleted)) = (plan.retain.last(), plan.delete.last()) {
                prop_assert!(newest_deleted < oldest_kept);
            }
        }
    }

    #[test]
    fn shared_files_no_retained_checkpoint_references_are_orphans() {
        let retained = vec![
            CheckpointFiles {
                id: CheckpointId(4),
                shared: [SharedFile("a".into()), SharedFile("b".into())].into(),
            },
            CheckpointFiles {
                id: CheckpointId(5),
                shared: [SharedFile("b".into()), SharedFile("c".into())].into(),
            },
        ];
        let listed: Vec<String> = ["d", "c", "a", "e", "b"].map(String::from).into();
        assert_eq!(
            orphans(&listed, &retained),
            vec![SharedFile("d".into()), SharedFile("e".into())]
        );
    }

    #[test]
    fn without_retained_checkpoints_every_shared_file_is_an_orphan() {
        let listed: Vec<String> = ["x", "y"].map(String::from).into();
        assert_eq!(orphans(&listed, &[]).len(), 2);
    }
}
