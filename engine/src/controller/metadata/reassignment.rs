//! Partition reassignment (Kafka's AlterPartitionReassignments, as KRaft records it): a
//! partition being moved carries its target and the replicas it adds and removes; its
//! replicas are the original ones followed by the adding ones until every target replica is
//! in the ISR, when the controller completes the move in the same command that grew the ISR:
//! replicas := target (the target's order is the new preferred order), ISR := ISR ∩ target,
//! and a leader outside the target hands over to the first live target replica (all of them
//! are in sync by then, so nothing committed is lost). A cancellation reverts to the original
//! replicas.
//!
//! Quorum-mode partitions are refused: a majority quorum changing membership needs joint
//! majorities (old and new set) for commits and elections, which the replication policy does
//! not implement yet.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{MetadataImage, PartitionImage, UNKNOWN_TOPIC_OR_PARTITION};
use crate::replication::{BrokerId, ReplicationMode};

/// Kafka error code INVALID_REPLICATION_FACTOR.
pub const INVALID_REPLICATION_FACTOR: i16 = 38;
/// Kafka error code INVALID_REPLICA_ASSIGNMENT.
pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
/// Kafka error code INVALID_REQUEST.
pub const INVALID_REQUEST: i16 = 42;
/// Kafka error code NO_REASSIGNMENT_IN_PROGRESS.
pub const NO_REASSIGNMENT_IN_PROGRESS: i16 = 85;

/// One partition of a [`super::MetadataCommand::AlterPartitionReassignments`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionReassignment {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// The target replicas, preferred leader first; `None` cancels the reassignment in
    /// progress.
    pub target: Option<Vec<BrokerId>>,
}

/// One partition's answer to [`super::MetadataCommand::AlterPartitionReassignments`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReassignmentResult {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// Kafka error code, 0 when the reassignment was started, completed or cancelled.
    pub error_code: i16,
    /// Why, when `error_code` is not 0.
    pub message: Option<String>,
}

impl MetadataImage {
    /// Applies each partition's reassignment or cancellation, one answer per partition in
    /// request order (a partition named twice is answered twice, the second time against
    /// the first's result).
    pub(super) fn alter_reassignments(
        &mut self,
        reassignments: &[PartitionReassignment],
        allow_rf_change: bool,
    ) -> Vec<ReassignmentResult> {
        reassignments
            .iter()
            .map(|r| {
                let outcome = match &r.target {
                    Some(target) => self.reassign(&r.topic, r.partition, target, allow_rf_change),
                    None => self.cancel_reassignment(&r.topic, r.partition),
                };
                let (error_code, message) = match outcome {
                    Ok(()) => (0, None),
                    Err((code, message)) => (code, Some(message)),
                };
                ReassignmentResult {
                    topic: r.topic.clone(),
                    partition: r.partition,
                    error_code,
                    message,
                }
            })
            .collect()
    }

    /// The partition record of a reassignment request, refused for quorum-mode topics.
    fn reassignable(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<&mut PartitionImage, (i16, String)> {
        let unknown = || {
            (
                UNKNOWN_TOPIC_OR_PARTITION,
                format!("no such partition {topic}-{partition}"),
            )
        };
        let t = self.topics.get_mut(topic).ok_or_else(unknown)?;
        if t.replication_mode() == ReplicationMode::Quorum {
            return Err((
                INVALID_REQUEST,
                "quorum-mode partitions cannot be reassigned yet: changing a majority quorum's \
                 membership safely needs joint majorities of the old and new replica sets, \
                 which is not served"
                    .into(),
            ));
        }
        usize::try_from(partition)
            .ok()
            .and_then(|i| t.partitions.get_mut(i))
            .ok_or_else(unknown)
    }

    fn reassign(
        &mut self,
        topic: &str,
        partition: i32,
        target: &[BrokerId],
        allow_rf_change: bool,
    ) -> Result<(), (i16, String)> {
        if target.is_empty() {
            return Err((
                INVALID_REPLICA_ASSIGNMENT,
                "the target replica list is empty".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        if let Some(dup) = target.iter().find(|b| !seen.insert(**b)) {
            return Err((
                INVALID_REPLICA_ASSIGNMENT,
                format!("broker {dup} appears twice in the target replicas"),
            ));
        }
        if let Some(unknown) = target.iter().find(|b| !self.brokers.contains_key(b)) {
            return Err((
                INVALID_REPLICA_ASSIGNMENT,
                format!("broker {unknown} is not registered"),
            ));
        }
        let live = self.live_brokers();
        let p = self.reassignable(topic, partition)?;
        let original = original_replicas(p);
        if !allow_rf_change && target.len() != original.len() {
            return Err((
                INVALID_REPLICATION_FACTOR,
                format!(
                    "the target has {} replicas, the partition {}, and the request does not \
                     allow a replication factor change",
                    target.len(),
                    original.len()
                ),
            ));
        }
        if !p.is_reassigning() && p.replicas == target {
            return Ok(());
        }
        let adding: Vec<BrokerId> = target
            .iter()
            .copied()
            .filter(|b| !original.contains(b))
            .collect();
        let removing: Vec<BrokerId> = original
            .iter()
            .copied()
            .filter(|b| !target.contains(b))
            .collect();
        let merged: Vec<BrokerId> = original.iter().chain(&adding).copied().collect();
        let isr: Vec<BrokerId> = merged
            .iter()
            .copied()
            .filter(|b| p.isr.contains(b))
            .collect();
        if isr.is_empty() {
            // Only a replaced reassignment's adding replicas were in sync.
            return Err((
                INVALID_REQUEST,
                format!("no replica of {topic}-{partition} kept by this change is in sync"),
            ));
        }
        p.replicas = merged;
        p.isr = isr;
        p.target_replicas = target.to_vec();
        p.adding_replicas = adding;
        p.removing_replicas = removing;
        p.partition_epoch += 1;
        if p.leader.is_some_and(|l| !p.replicas.contains(&l)) {
            // The leader was an adding replica of the reassignment this one replaces.
            hand_over_leadership(p, &live);
        }
        tracing::info!(
            topic,
            partition,
            target = ?p.target_replicas,
            adding = ?p.adding_replicas,
            removing = ?p.removing_replicas,
            "reassignment started"
        );
        maybe_complete(topic, p, &live);
        let index = partition as usize;
        if self
            .partition(topic, partition)
            .is_some_and(|p| p.leader.is_none())
        {
            self.try_elect(topic, index);
        }
        Ok(())
    }

    fn cancel_reassignment(&mut self, topic: &str, partition: i32) -> Result<(), (i16, String)> {
        let live = self.live_brokers();
        let p = self.reassignable(topic, partition)?;
        if !p.is_reassigning() {
            return Err((
                NO_REASSIGNMENT_IN_PROGRESS,
                format!("no reassignment of {topic}-{partition} is in progress"),
            ));
        }
        let original = original_replicas(p);
        if !p.isr.iter().any(|b| original.contains(b)) {
            return Err((
                INVALID_REQUEST,
                format!(
                    "no original replica of {topic}-{partition} is in sync; cancelling would \
                     lose committed records"
                ),
            ));
        }
        settle(p, original, &live);
        tracing::info!(topic, partition, replicas = ?p.replicas, "reassignment cancelled");
        if p.leader.is_none() {
            self.try_elect(topic, partition as usize);
        }
        Ok(())
    }

    /// The partitions with a reassignment in progress: `(topic, partition record)` in name
    /// and index order.
    pub fn reassignments(&self) -> Vec<(&str, &PartitionImage)> {
        self.topics
            .values()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .filter(|p| p.is_reassigning())
                    .map(move |p| (t.name.as_str(), p))
            })
            .collect()
    }
}

/// The replicas before the reassignment in progress, in their order.
fn original_replicas(p: &PartitionImage) -> Vec<BrokerId> {
    p.replicas
        .iter()
        .copied()
        .filter(|b| !p.adding_replicas.contains(b))
        .collect()
}

/// Completes `p`'s reassignment if every target replica is in the ISR. Returns whether it
/// did.
pub(super) fn maybe_complete(topic: &str, p: &mut PartitionImage, live: &[BrokerId]) -> bool {
    if !p.is_reassigning() || !p.target_replicas.iter().all(|b| p.isr.contains(b)) {
        return false;
    }
    let target = std::mem::take(&mut p.target_replicas);
    settle(p, target, live);
    tracing::info!(
        topic,
        partition = p.partition,
        replicas = ?p.replicas,
        leader = ?p.leader,
        leader_epoch = p.leader_epoch,
        "reassignment completed"
    );
    true
}

/// Ends a reassignment with `replicas` as the partition's replicas: the ISR keeps its
/// members among them (at least one, checked by the callers), and a leader outside them
/// hands over.
fn settle(p: &mut PartitionImage, replicas: Vec<BrokerId>, live: &[BrokerId]) {
    let isr: Vec<BrokerId> = replicas
        .iter()
        .copied()
        .filter(|b| p.isr.contains(b))
        .collect();
    assert!(
        !isr.is_empty(),
        "a reassignment would leave partition {} without an in-sync replica",
        p.partition
    );
    p.replicas = replicas;
    p.isr = isr;
    p.target_replicas.clear();
    p.adding_replicas.clear();
    p.removing_replicas.clear();
    p.partition_epoch += 1;
    if p.leader.is_some_and(|l| !p.replicas.contains(&l)) {
        hand_over_leadership(p, live);
    }
}

/// The leader is no longer a replica: the first live in-sync replica (in replica order)
/// leads in a new epoch, or nobody until one comes back. Every ISR member has every
/// committed record, so this loses nothing (isr mode).
fn hand_over_leadership(p: &mut PartitionImage, live: &[BrokerId]) {
    let next = p
        .replicas
        .iter()
        .copied()
        .find(|b| p.isr.contains(b) && live.contains(b));
    p.leader = next;
    p.leader_epoch += 1;
    p.election_reports.clear();
    debug_assert!(p.leader.is_none_or(|l| p.isr.contains(&l)));
}

#[cfg(test)]
mod tests;
