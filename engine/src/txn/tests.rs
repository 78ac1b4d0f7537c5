//! The coordinator's decisions, without IO.

use super::coordinator::codes::*;
use super::*;

const NOW: i64 = 1_000_000;
const EXPIRATION: i64 = 60_000;

fn coordinator() -> TxnCoordinator {
    let mut c = TxnCoordinator::new(TxnConfig {
        max_timeout_ms: 60_000,
        partitions: 1,
        id_expiration_ms: EXPIRATION,
    });
    c.begin_loading(0);
    let (jobs, fences) = c.finish_loading(0, 7, NOW);
    assert!(jobs.is_empty() && fences.is_empty());
    c
}

/// InitProducerId for a new id, its record written: (pid, epoch).
fn init(c: &mut TxnCoordinator, id: &str, pid: i64) -> (i64, i16) {
    match c.init_producer_id(id, 10_000, None, NOW) {
        InitPlan::NeedProducerId => {
            let t = c.init_with_producer_id(id, pid, 10_000, NOW).unwrap();
            assert!(c.finish(&t, true));
            (t.target.producer_id, t.target.producer_epoch)
        }
        InitPlan::Write(t) => {
            assert!(c.finish(&t, true));
            (t.target.producer_id, t.target.producer_epoch)
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn parts(ps: &[(&str, i32)]) -> Vec<(String, i32)> {
    ps.iter().map(|(t, p)| (t.to_string(), *p)).collect()
}

fn add(c: &mut TxnCoordinator, id: &str, pe: (i64, i16), ps: &[(&str, i32)]) {
    if let Some(t) = c.add_partitions(id, pe.0, pe.1, &parts(ps), NOW).unwrap() {
        assert!(c.finish(&t, true));
    }
}

#[test]
fn init_gives_epoch_zero_then_bumps_the_epoch() {
    let mut c = coordinator();
    assert_eq!(init(&mut c, "tx", 100), (100, 0));
    assert_eq!(init(&mut c, "tx", 999), (100, 1), "same id, epoch bumped");
    assert_eq!(
        c.init_producer_id("tx", 10_000, Some((100, 0)), NOW),
        InitPlan::Fail(PRODUCER_FENCED),
        "KIP-360: a stale producer naming its old epoch is fenced"
    );
    assert_eq!(
        c.init_producer_id("tx", 60_001, None, NOW),
        InitPlan::Fail(INVALID_TRANSACTION_TIMEOUT)
    );
    assert_eq!(
        c.init_producer_id("", 1000, None, NOW),
        InitPlan::Fail(INVALID_REQUEST)
    );
}

#[test]
fn a_failed_first_write_leaves_nothing() {
    let mut c = coordinator();
    assert_eq!(
        c.init_producer_id("tx", 1000, None, NOW),
        InitPlan::NeedProducerId
    );
    let t = c.init_with_producer_id("tx", 5, 1000, NOW).unwrap();
    assert_eq!(
        c.init_with_producer_id("tx", 6, 1000, NOW),
        Err(CONCURRENT_TRANSACTIONS),
        "one transition at a time"
    );
    assert!(!c.finish(&t, false));
    assert_eq!(c.describe("tx").err(), Some(TRANSACTIONAL_ID_NOT_FOUND));
    assert_eq!(
        c.init_producer_id("tx", 1000, None, NOW),
        InitPlan::NeedProducerId
    );
}

#[test]
fn commit_goes_through_prepare_markers_and_complete() {
    let mut c = coordinator();
    let pe = init(&mut c, "tx", 100);
    add(&mut c, "tx", pe, &[("a", 0), ("a", 1)]);
    // Adding a partition already in the transaction writes nothing.
    assert_eq!(
        c.add_partitions("tx", pe.0, pe.1, &parts(&[("a", 1)]), NOW),
        Ok(None)
    );
    add(&mut c, "tx", pe, &[("__consumer_offsets", 3)]);
    let EndPlan::Write(t) = c.end_txn("tx", pe.0, pe.1, true, NOW) else {
        panic!("prepare expected")
    };
    assert_eq!(t.target.status, TxnStatus::PrepareCommit);
    assert_eq!(
        c.end_txn("tx", pe.0, pe.1, true, NOW),
        EndPlan::Answer(CONCURRENT_TRANSACTIONS),
        "while the prepare record is written"
    );
    assert!(c.finish(&t, true));
    let job = c.markers_for(&t).unwrap();
    assert!(job.commit);
    assert_eq!(job.coordinator_epoch, 7);
    assert_eq!(job.partitions.len(), 3);
    assert!(c.job_current(&job));
    assert_eq!(
        c.add_partitions("tx", pe.0, pe.1, &parts(&[("b", 0)]), NOW),
        Err(CONCURRENT_TRANSACTIONS),
        "no new transaction before the markers are written"
    );
    let done = c.complete(&job, NOW + 1).unwrap();
    assert_eq!(done.target.status, TxnStatus::CompleteCommit);
    assert!(done.target.partitions.is_empty());
    assert!(c.finish(&done, true));
    assert!(!c.job_current(&job));
    // A retried EndTxn(commit) succeeds; an abort now is the wrong state.
    assert_eq!(
        c.end_txn("tx", pe.0, pe.1, true, NOW),
        EndPlan::Answer(NONE)
    );
    assert_eq!(
        c.end_txn("tx", pe.0, pe.1, false, NOW),
        EndPlan::Answer(INVALID_TXN_STATE)
    );
    // The next transaction starts afresh.
    add(&mut c, "tx", pe, &[("b", 0)]);
    let meta = c.describe("tx").unwrap();
    assert_eq!(meta.value.status, TxnStatus::Ongoing);
    assert_eq!(meta.value.partitions.len(), 1);
}

#[test]
fn producer_checks() {
    let mut c = coordinator();
    let pe = init(&mut c, "tx", 100);
    assert_eq!(
        c.add_partitions("tx", 101, pe.1, &parts(&[("a", 0)]), NOW),
        Err(INVALID_PRODUCER_ID_MAPPING)
    );
    assert_eq!(
        c.add_partitions("nope", 100, 0, &parts(&[("a", 0)]), NOW),
        Err(INVALID_PRODUCER_ID_MAPPING)
    );
    assert_eq!(
        c.end_txn("tx", pe.0, pe.1, true, NOW),
        EndPlan::Answer(INVALID_TXN_STATE),
        "nothing to end"
    );
    let newer = init(&mut c, "tx", 0);
    assert_eq!(
        c.add_partitions("tx", pe.0, pe.1, &parts(&[("a", 0)]), NOW),
        Err(PRODUCER_FENCED),
        "the old incarnation is fenced"
    );
    assert_eq!(
        c.end_txn("tx", pe.0, pe.1, false, NOW),
        EndPlan::Answer(PRODUCER_FENCED)
    );
    add(&mut c, "tx", newer, &[("a", 0)]);
}

#[test]
fn a_new_incarnation_aborts_the_open_transaction_under_a_bumped_epoch() {
    let mut c = coordinator();
    let pe = init(&mut c, "tx", 100);
    add(&mut c, "tx", pe, &[("a", 0)]);
    let InitPlan::FenceAndAbort(t) = c.init_producer_id("tx", 10_000, None, NOW) else {
        panic!("fence expected")
    };
    assert_eq!(t.target.status, TxnStatus::PrepareAbort);
    assert_eq!(t.target.producer_epoch, pe.1 + 1);
    assert!(c.finish(&t, true));
    assert_eq!(
        c.init_producer_id("tx", 10_000, None, NOW),
        InitPlan::Fail(CONCURRENT_TRANSACTIONS),
        "the client retries until the abort completed"
    );
    let job = c.markers_for(&t).unwrap();
    assert!(!job.commit);
    assert_eq!(job.producer_epoch, pe.1 + 1);
    // The old producer can neither add nor end.
    assert_eq!(
        c.end_txn("tx", pe.0, pe.1, true, NOW),
        EndPlan::Answer(PRODUCER_FENCED)
    );
    let done = c.complete(&job, NOW).unwrap();
    assert!(c.finish(&done, true));
    assert_eq!(init(&mut c, "tx", 0), (100, pe.1 + 2));
}

#[test]
fn open_transactions_time_out_and_are_aborted_fenced() {
    let mut c = coordinator();
    let pe = init(&mut c, "tx", 100);
    add(&mut c, "tx", pe, &[("a", 0)]);
    assert_eq!(c.next_expiry(), Some(NOW + 10_000));
    assert!(c.expired(NOW + 9_999).is_empty());
    let ts = c.expired(NOW + 10_000);
    assert_eq!(ts.len(), 1);
    assert_eq!(ts[0].target.status, TxnStatus::PrepareAbort);
    assert_eq!(ts[0].target.producer_epoch, pe.1 + 1);
    assert!(c.expired(NOW + 20_000).is_empty(), "pending: not twice");
    assert!(c.finish(&ts[0], true));
    assert_eq!(c.next_expiry(), None);
}

#[test]
fn a_new_coordinator_resumes_prepared_transactions() {
    let mut c = coordinator();
    let pe = init(&mut c, "tx", 100);
    add(&mut c, "tx", pe, &[("a", 0)]);
    let EndPlan::Write(t) = c.end_txn("tx", pe.0, pe.1, false, NOW) else {
        panic!()
    };
    assert!(c.finish(&t, true));
    let stored = c.describe("tx").unwrap().value.clone();
    // Another shard (or broker) loads the partition from the log.
    let mut d = TxnCoordinator::new(c.config().clone());
    d.begin_loading(0);
    assert_eq!(d.serving("tx"), Err(COORDINATOR_LOAD_IN_PROGRESS));
    d.load(0, "tx".into(), Some(stored));
    d.load(
        0,
        "gone".into(),
        Some(c.describe("tx").unwrap().value.clone()),
    );
    d.load(0, "gone".into(), None);
    let (jobs, fences) = d.finish_loading(0, 8, NOW);
    assert!(fences.is_empty());
    assert_eq!(jobs.len(), 1);
    assert!(!jobs[0].commit);
    assert_eq!(jobs[0].coordinator_epoch, 8);
    assert_eq!(d.describe("gone").err(), Some(TRANSACTIONAL_ID_NOT_FOUND));
    // The old coordinator lost the partition: its job is stale.
    c.unload(0);
    assert!(!c.job_current(&c_job(&jobs[0], 7)));
    assert_eq!(c.serving("tx"), Err(NOT_COORDINATOR));
    assert!(d.complete(&jobs[0], NOW).is_some());
}

fn c_job(j: &MarkerJob, epoch: i32) -> MarkerJob {
    MarkerJob {
        coordinator_epoch: epoch,
        ..j.clone()
    }
}

#[test]
fn a_transition_decided_under_an_old_epoch_does_not_apply() {
    let mut c = coordinator();
    let pe = init(&mut c, "tx", 100);
    let t = c
        .add_partitions("tx", pe.0, pe.1, &parts(&[("a", 0)]), NOW)
        .unwrap()
        .unwrap();
    // Leadership moved and came back while the record was written.
    let stored = c.describe("tx").unwrap().value.clone();
    c.begin_loading(0);
    c.load(0, "tx".into(), Some(stored));
    c.finish_loading(0, 9, NOW);
    assert!(!c.finish(&t, true));
    assert_eq!(c.describe("tx").unwrap().value.status, TxnStatus::Empty);
}

#[test]
fn verify_and_list() {
    let mut c = coordinator();
    let pe = init(&mut c, "tx", 100);
    init(&mut c, "other", 200);
    add(&mut c, "tx", pe, &[("a", 0)]);
    let v = c.verify_partitions("tx", pe.0, pe.1, &parts(&[("a", 0), ("a", 1)]));
    assert_eq!(v[0].1, NONE);
    assert_eq!(v[1].1, INVALID_TXN_STATE);
    assert_eq!(
        c.verify_partitions("tx", pe.0, pe.1 + 1, &parts(&[("a", 0)]))[0].1,
        PRODUCER_FENCED
    );
    let all: Vec<&str> = c
        .list(&[], &[])
        .iter()
        .map(|m| m.transactional_id.as_str())
        .collect();
    assert_eq!(all, vec!["other", "tx"]);
    assert_eq!(c.list(&[TxnStatus::Ongoing], &[]).len(), 1);
    assert_eq!(c.list(&[], &[200]).len(), 1);
}

#[test]
fn partition_for_matches_kafkas_hash() {
    assert_eq!(txn_partition_for("polygenelubricants", 50), 0);
    assert_eq!(txn_partition_for("hello", 50), 99_162_322 % 50);
}

#[test]
fn idle_ids_expire_and_open_ones_do_not() {
    let mut c = coordinator();
    init(&mut c, "idle", 100);
    let open = init(&mut c, "open", 101);
    add(&mut c, "open", open, &[("t", 0)]);
    let done = init(&mut c, "done", 102);
    add(&mut c, "done", done, &[("t", 1)]);
    let EndPlan::Write(t) = c.end_txn("done", done.0, done.1, true, NOW) else {
        panic!("end");
    };
    assert!(c.finish(&t, true));
    let job = c.markers_for(&t).unwrap();
    let completed = c.complete(&job, NOW + 10).unwrap();
    assert!(c.finish(&completed, true));

    assert!(
        c.expired_ids(NOW + EXPIRATION - 1).is_empty(),
        "not idle long enough"
    );
    let dead = c.expired_ids(NOW + EXPIRATION);
    let ids: Vec<&str> = dead.iter().map(|t| t.transactional_id.as_str()).collect();
    assert_eq!(ids, ["idle"], "Ongoing and recently completed ids stay");
    assert!(dead.iter().all(|t| t.target.status == TxnStatus::Dead));
    assert!(
        c.expired_ids(NOW + EXPIRATION).is_empty(),
        "a pending removal is not proposed twice"
    );
    assert!(c.finish(&dead[0], true));
    assert_eq!(c.describe("idle"), Err(TRANSACTIONAL_ID_NOT_FOUND));

    // Much later: the completed id goes too; the open one stays (its timeout aborts it).
    let later = c.expired_ids(NOW + 10 + EXPIRATION);
    let ids: Vec<&str> = later.iter().map(|t| t.transactional_id.as_str()).collect();
    assert_eq!(ids, ["done"]);
    // A removal that was not written leaves the id as it was.
    assert!(!c.finish(&later[0], false));
    assert_eq!(
        c.describe("done").unwrap().value.status,
        TxnStatus::CompleteCommit
    );
    assert!(c.describe("open").is_ok());

    // An expired id starts again with a new producer id, as a new one does.
    assert_eq!(
        c.init_producer_id("idle", 10_000, None, NOW),
        InitPlan::NeedProducerId
    );
}
