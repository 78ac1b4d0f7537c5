use super::*;
use crate::controller::metadata::tests::{cluster, create, set_isr};
use crate::controller::metadata::{Applied, MetadataCommand};

fn command(allow_rf_change: bool, items: &[(&str, i32, Option<Vec<BrokerId>>)]) -> MetadataCommand {
    MetadataCommand::AlterPartitionReassignments {
        reassignments: items
            .iter()
            .map(|(t, p, target)| PartitionReassignment {
                topic: t.to_string(),
                partition: *p,
                target: target.clone(),
            })
            .collect(),
        allow_replication_factor_change: allow_rf_change,
    }
}

fn reassign(
    image: &mut MetadataImage,
    index: &mut u64,
    allow_rf_change: bool,
    items: &[(&str, i32, Option<Vec<BrokerId>>)],
) -> Vec<(String, i32, i16)> {
    *index += 1;
    match image.apply(*index, &command(allow_rf_change, items)) {
        Ok(Applied::Reassignments(r)) => {
            for x in &r {
                assert_eq!(x.error_code == 0, x.message.is_none(), "{x:?}");
            }
            r.into_iter()
                .map(|x| (x.topic, x.partition, x.error_code))
                .collect()
        }
        other => panic!("expected reassignment results, got {other:?}"),
    }
}

fn ok(topic: &str, partition: i32) -> (String, i32, i16) {
    (topic.to_string(), partition, 0)
}

fn err(topic: &str, partition: i32, code: i16) -> (String, i32, i16) {
    (topic.to_string(), partition, code)
}

/// The leader's AlterPartition to `isr`, as a command (to apply to two images).
fn alter_isr(image: &MetadataImage, epochs: &[i64], isr: Vec<BrokerId>) -> MetadataCommand {
    let p = image.partition("t", 0).unwrap();
    let leader = p.leader.unwrap();
    MetadataCommand::AlterPartition {
        topic: "t".into(),
        partition: 0,
        broker_id: leader,
        broker_epoch: epochs[(leader - 1) as usize],
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        new_isr: isr,
    }
}

#[test]
fn reassignment_completes_once_every_target_replica_is_in_sync_and_moves_the_leader_off() {
    let (mut image, mut index, epochs) = cluster(4);
    create(&mut image, &mut index, "t", 1, 3, "isr", 0).unwrap();
    let before = image.partition("t", 0).unwrap().clone();
    assert_eq!(before.replicas, vec![1, 2, 3]);
    assert_eq!(before.leader, Some(1));
    let codes = reassign(
        &mut image,
        &mut index,
        true,
        &[("t", 0, Some(vec![2, 3, 4]))],
    );
    assert_eq!(codes, vec![ok("t", 0)]);
    let p = image.partition("t", 0).unwrap().clone();
    // The union while moving: the original replicas, then the adding one.
    assert_eq!(p.replicas, vec![1, 2, 3, 4]);
    assert_eq!(p.adding_replicas, vec![4]);
    assert_eq!(p.removing_replicas, vec![1]);
    assert_eq!(p.target_replicas, vec![2, 3, 4]);
    assert_eq!(p.isr, vec![1, 2, 3]);
    assert_eq!(p.leader, Some(1));
    assert_eq!(p.leader_epoch, before.leader_epoch);
    assert_eq!(p.partition_epoch, before.partition_epoch + 1);
    assert_eq!(image.reassignments().len(), 1);

    // A mid-move snapshot loads, and replaying the rest of the log on it gives the same image.
    let snap = image.to_snapshot().unwrap();
    let mut restored = MetadataImage::from_snapshot(&snap).unwrap();
    assert_eq!(restored, image);
    // An image written before these fields existed loads, without a reassignment.
    let mut json: serde_json::Value = serde_json::from_slice(&snap).unwrap();
    let rec = json["topics"]["t"]["partitions"][0]
        .as_object_mut()
        .unwrap();
    for key in ["target_replicas", "adding_replicas", "removing_replicas"] {
        assert!(rec.remove(key).is_some(), "{key}");
    }
    let old = MetadataImage::from_snapshot(&serde_json::to_vec(&json).unwrap()).unwrap();
    assert!(!old.partition("t", 0).unwrap().is_reassigning());
    // The command survives the log's encoding.
    let cmd = command(false, &[("t", 0, Some(vec![2, 3, 4])), ("t", 1, None)]);
    let bytes = serde_json::to_vec(&cmd).unwrap();
    assert_eq!(
        serde_json::from_slice::<MetadataCommand>(&bytes).unwrap(),
        cmd
    );

    let mut step = |image: &mut MetadataImage, restored: &mut MetadataImage, isr: Vec<i32>| {
        index += 1;
        let cmd = alter_isr(image, &epochs, isr);
        let a = image.apply(index, &cmd);
        let b = restored.apply(index, &cmd);
        assert_eq!(a, b);
        assert!(a.is_ok(), "{a:?}");
        assert_eq!(image, restored);
    };
    // Broker 4 in sync but broker 3 lagging: the move waits for every target replica.
    step(&mut image, &mut restored, vec![1, 2, 4]);
    let p = image.partition("t", 0).unwrap().clone();
    assert!(p.is_reassigning());
    assert_eq!(p.isr, vec![1, 2, 4]);
    // Broker 3 back: the move completes in the same command.
    step(&mut image, &mut restored, vec![1, 2, 3, 4]);
    let done = image.partition("t", 0).unwrap().clone();
    assert!(!done.is_reassigning());
    assert_eq!(done.replicas, vec![2, 3, 4]);
    assert_eq!(done.isr, vec![2, 3, 4]);
    assert!(done.adding_replicas.is_empty() && done.removing_replicas.is_empty());
    // Broker 1 is no replica any more: the first in-sync target replica leads, new epoch.
    assert_eq!(done.leader, Some(2));
    assert_eq!(done.leader_epoch, before.leader_epoch + 1);
    assert!(done.partition_epoch > p.partition_epoch);
    assert!(image.reassignments().is_empty());
    assert_eq!(restored, image);
}

#[test]
fn target_order_is_the_new_preferred_order_and_a_leader_in_the_target_stays() {
    let (mut image, mut index, epochs) = cluster(4);
    create(&mut image, &mut index, "t", 1, 3, "isr", 0).unwrap();
    let epoch = image.partition("t", 0).unwrap().leader_epoch;
    // Only a new order, every replica in sync: done at once, the leader stays.
    assert_eq!(
        reassign(
            &mut image,
            &mut index,
            false,
            &[("t", 0, Some(vec![3, 1, 2]))]
        ),
        vec![ok("t", 0)]
    );
    let p = image.partition("t", 0).unwrap().clone();
    assert_eq!(p.replicas, vec![3, 1, 2]);
    assert!(!p.is_reassigning());
    assert_eq!((p.leader, p.leader_epoch), (Some(1), epoch));
    // The same assignment again changes nothing.
    assert_eq!(
        reassign(
            &mut image,
            &mut index,
            false,
            &[("t", 0, Some(vec![3, 1, 2]))]
        ),
        vec![ok("t", 0)]
    );
    assert_eq!(image.partition("t", 0).unwrap(), &p);
    // Moving to {4, 1, 2}: the leader (1) is in the target and keeps leading.
    reassign(
        &mut image,
        &mut index,
        false,
        &[("t", 0, Some(vec![4, 1, 2]))],
    );
    set_isr(&mut image, &mut index, &epochs, "t", 0, vec![1, 2, 3, 4]);
    let p = image.partition("t", 0).unwrap().clone();
    assert_eq!(p.replicas, vec![4, 1, 2]);
    assert_eq!(p.isr, vec![4, 1, 2]);
    assert_eq!((p.leader, p.leader_epoch), (Some(1), epoch));
}

#[test]
fn cancellation_reverts_to_the_original_replicas() {
    let (mut image, mut index, epochs) = cluster(4);
    create(&mut image, &mut index, "t", 1, 3, "isr", 0).unwrap();
    let before = image.partition("t", 0).unwrap().clone();
    assert_eq!(
        reassign(&mut image, &mut index, true, &[("t", 0, None)]),
        vec![err("t", 0, NO_REASSIGNMENT_IN_PROGRESS)]
    );
    reassign(
        &mut image,
        &mut index,
        true,
        &[("t", 0, Some(vec![4, 3, 2]))],
    );
    // Broker 4 joined the ISR, broker 3 (kept by the target) fell out: the move stays open.
    set_isr(&mut image, &mut index, &epochs, "t", 0, vec![1, 2, 4]);
    assert!(image.partition("t", 0).unwrap().is_reassigning());
    assert_eq!(
        reassign(&mut image, &mut index, true, &[("t", 0, None)]),
        vec![ok("t", 0)]
    );
    let p = image.partition("t", 0).unwrap().clone();
    assert!(!p.is_reassigning());
    assert_eq!(p.replicas, before.replicas);
    assert_eq!(p.isr, vec![1, 2]);
    assert_eq!(
        (p.leader, p.leader_epoch),
        (before.leader, before.leader_epoch)
    );
    assert_eq!(
        reassign(&mut image, &mut index, true, &[("t", 0, None)]),
        vec![err("t", 0, NO_REASSIGNMENT_IN_PROGRESS)]
    );
}

#[test]
fn a_new_target_replaces_the_reassignment_in_progress() {
    let (mut image, mut index, epochs) = cluster(5);
    create(&mut image, &mut index, "t", 1, 3, "isr", 0).unwrap();
    reassign(
        &mut image,
        &mut index,
        true,
        &[("t", 0, Some(vec![2, 3, 4]))],
    );
    reassign(
        &mut image,
        &mut index,
        true,
        &[("t", 0, Some(vec![2, 3, 5]))],
    );
    let p = image.partition("t", 0).unwrap().clone();
    assert_eq!(p.replicas, vec![1, 2, 3, 5]);
    assert_eq!(p.adding_replicas, vec![5]);
    assert_eq!(p.removing_replicas, vec![1]);
    set_isr(&mut image, &mut index, &epochs, "t", 0, vec![1, 2, 3, 5]);
    let p = image.partition("t", 0).unwrap().clone();
    assert_eq!(p.replicas, vec![2, 3, 5]);
    assert_eq!(p.leader, Some(2));
}

#[test]
fn replication_factor_changes_both_ways() {
    let (mut image, mut index, epochs) = cluster(4);
    create(&mut image, &mut index, "t", 2, 3, "isr", 0).unwrap();
    let leader = image.partition("t", 0).unwrap().leader;
    // KIP-860: refused unless the request allows it.
    assert_eq!(
        reassign(&mut image, &mut index, false, &[("t", 0, Some(vec![1, 2]))]),
        vec![err("t", 0, INVALID_REPLICATION_FACTOR)]
    );
    // Down to two: every target replica is in sync already, so it completes at once.
    assert_eq!(
        reassign(&mut image, &mut index, true, &[("t", 0, Some(vec![1, 2]))]),
        vec![ok("t", 0)]
    );
    let p = image.partition("t", 0).unwrap().clone();
    assert_eq!(
        (p.replicas.clone(), p.isr.clone()),
        (vec![1, 2], vec![1, 2])
    );
    assert_eq!(p.leader, leader);
    // Up to four: two adding replicas, done when both are in sync.
    assert_eq!(
        reassign(
            &mut image,
            &mut index,
            true,
            &[("t", 0, Some(vec![1, 2, 3, 4]))]
        ),
        vec![ok("t", 0)]
    );
    let p = image.partition("t", 0).unwrap().clone();
    assert_eq!(p.adding_replicas, vec![3, 4]);
    assert!(p.removing_replicas.is_empty());
    set_isr(&mut image, &mut index, &epochs, "t", 0, vec![1, 2, 3]);
    assert!(image.partition("t", 0).unwrap().is_reassigning());
    set_isr(&mut image, &mut index, &epochs, "t", 0, vec![1, 2, 3, 4]);
    let p = image.partition("t", 0).unwrap().clone();
    assert!(!p.is_reassigning());
    assert_eq!(p.replicas, vec![1, 2, 3, 4]);
    // The other partition was not touched.
    assert_eq!(image.partition("t", 1).unwrap().replicas.len(), 3);
}

#[test]
fn invalid_reassignments_are_refused_per_partition() {
    let (mut image, mut index, _) = cluster(4);
    create(&mut image, &mut index, "t", 1, 3, "isr", 0).unwrap();
    create(&mut image, &mut index, "q", 1, 3, "quorum", 0).unwrap();
    let before = image.clone();
    let codes = reassign(
        &mut image,
        &mut index,
        true,
        &[
            ("t", 0, Some(vec![])),
            ("t", 0, Some(vec![2, 3, 2])),
            ("t", 0, Some(vec![2, 3, 9])),
            ("t", 0, Some(vec![2, 3, -1])),
            ("t", 1, Some(vec![2, 3, 4])),
            ("t", -1, Some(vec![2, 3, 4])),
            ("nope", 0, Some(vec![2, 3, 4])),
            ("nope", 0, None),
            ("q", 0, Some(vec![2, 3, 4])),
            ("q", 0, None),
        ],
    );
    assert_eq!(
        codes,
        vec![
            err("t", 0, INVALID_REPLICA_ASSIGNMENT),
            err("t", 0, INVALID_REPLICA_ASSIGNMENT),
            err("t", 0, INVALID_REPLICA_ASSIGNMENT),
            err("t", 0, INVALID_REPLICA_ASSIGNMENT),
            err("t", 1, UNKNOWN_TOPIC_OR_PARTITION),
            err("t", -1, UNKNOWN_TOPIC_OR_PARTITION),
            err("nope", 0, UNKNOWN_TOPIC_OR_PARTITION),
            err("nope", 0, UNKNOWN_TOPIC_OR_PARTITION),
            err("q", 0, INVALID_REQUEST),
            err("q", 0, INVALID_REQUEST),
        ]
    );
    // Nothing changed but the metadata offset.
    let mut after = image.clone();
    after.metadata_offset = before.metadata_offset;
    assert_eq!(after, before);
}

#[test]
fn a_fenced_leader_outside_the_target_hands_over_on_completion() {
    let (mut image, mut index, epochs) = cluster(4);
    create(&mut image, &mut index, "t", 1, 3, "isr", 0).unwrap();
    reassign(&mut image, &mut index, true, &[("t", 0, Some(vec![3, 4]))]);
    set_isr(&mut image, &mut index, &epochs, "t", 0, vec![1, 2, 3]);
    // Broker 3 is fenced before broker 4 catches up: it leaves the ISR, so the move waits.
    index += 1;
    image
        .apply(
            index,
            &MetadataCommand::FenceBroker {
                broker_id: 3,
                broker_epoch: epochs[2],
            },
        )
        .unwrap();
    set_isr(&mut image, &mut index, &epochs, "t", 0, vec![1, 2, 4]);
    let p = image.partition("t", 0).unwrap().clone();
    assert!(p.is_reassigning(), "{p:?}");
    // Broker 3 back and in sync: complete; leader 1 is not in the target, 3 leads.
    index += 1;
    image
        .apply(
            index,
            &MetadataCommand::UnfenceBroker {
                broker_id: 3,
                broker_epoch: epochs[2],
            },
        )
        .unwrap();
    let epoch = image.partition("t", 0).unwrap().leader_epoch;
    set_isr(&mut image, &mut index, &epochs, "t", 0, vec![1, 2, 3, 4]);
    let p = image.partition("t", 0).unwrap().clone();
    assert_eq!(p.replicas, vec![3, 4]);
    assert_eq!(p.isr, vec![3, 4]);
    assert_eq!((p.leader, p.leader_epoch), (Some(3), epoch + 1));
}
