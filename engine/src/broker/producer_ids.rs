//! The broker's side of the idempotent producer: InitProducerId, and well-formed refusals of
//! the transactional APIs.
//!
//! One [`ProducerIdManager`] serves the whole broker. It lives on shard 0 and other shards
//! reach it through the service's peers (`ShardLocal::call`): InitProducerId is rare (once per producer), the manager's
//! persistence is an async io_uring write that must run on a runtime thread anyway, and a
//! single owner needs no lock. Each block of ids is asked of the controller
//! (`MetadataCommand::AllocateProducerIds`, Kafka's AllocateProducerIds), whose metadata log
//! records it, so ids are unique across the cluster and never reused, on a cluster of one as
//! on three brokers.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use tokio::sync::oneshot;
use tracing::{error, info};

use super::shard::{Peers, Shard, ShardGone, ShardLocal};
use crate::idempotence::producer_id::{codes, InitProducerIdResult};
use crate::idempotence::{
    InitProducerId, ProducerIdAction, ProducerIdManager, DEFAULT_PRODUCER_ID_BLOCK_SIZE,
};
use std::sync::Arc;

/// The shard that owns the broker's producer-id manager.
pub const PRODUCER_ID_SHARD: usize = 0;

/// The producer-id service of one shard. Shard 0's holds the manager (loaded on first use)
/// and the requests waiting for an answer, by token; the other shards' forward to it.
pub struct ProducerIds {
    /// The shard core.
    pub shard: Rc<Shard>,
    peers: Arc<Peers<ProducerIds>>,
    manager: RefCell<Option<ProducerIdManager>>,
    waiting: RefCell<HashMap<u64, oneshot::Sender<InitProducerIdResult>>>,
    next_token: Cell<u64>,
}

impl std::fmt::Debug for ProducerIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerIds")
            .field("waiting", &self.waiting.borrow().len())
            .finish()
    }
}

impl ShardLocal for ProducerIds {
    fn shard_id(&self) -> usize {
        self.shard.id
    }

    fn peers(&self) -> &Peers<ProducerIds> {
        &self.peers
    }
}

impl ProducerIds {
    /// The producer-id service of `shard`.
    pub fn new(shard: Rc<Shard>, peers: Arc<Peers<ProducerIds>>) -> ProducerIds {
        ProducerIds {
            shard,
            peers,
            manager: RefCell::new(None),
            waiting: RefCell::new(HashMap::new()),
            next_token: Cell::new(0),
        }
    }

    /// InitProducerId from any shard, answered by the manager on [`PRODUCER_ID_SHARD`].
    pub async fn init_producer_id(
        self: &Rc<Self>,
        req: InitProducerId,
    ) -> Result<InitProducerIdResult, ShardGone> {
        self.call(PRODUCER_ID_SHARD, move |p| init_producer_id_local(p, req))
            .await
    }
}

fn failure(error: i16) -> InitProducerIdResult {
    InitProducerIdResult {
        error,
        producer_id: -1,
        producer_epoch: -1,
    }
}

/// InitProducerId on the owning shard: the answer once the manager has one (after asking
/// the controller for a new block if needed).
async fn init_producer_id_local(
    state: Rc<ProducerIds>,
    req: InitProducerId,
) -> InitProducerIdResult {
    debug_assert_eq!(state.shard.id, PRODUCER_ID_SHARD);
    let actions = {
        let mut manager = state.manager.borrow_mut();
        // No stored mark: every block comes from the controller.
        let manager = manager
            .get_or_insert_with(|| ProducerIdManager::new(None, DEFAULT_PRODUCER_ID_BLOCK_SIZE));
        let token = state.next_token.get();
        state.next_token.set(token + 1);
        let (tx, rx) = oneshot::channel();
        state.waiting.borrow_mut().insert(token, tx);
        (manager.init_producer_id(token, &req), rx)
    };
    let (actions, rx) = actions;
    run_actions(&state, actions);
    rx.await
        .unwrap_or_else(|_| failure(codes::COORDINATOR_NOT_AVAILABLE))
}

fn run_actions(state: &Rc<ProducerIds>, actions: Vec<ProducerIdAction>) {
    for action in actions {
        match action {
            ProducerIdAction::Respond { token, result } => {
                if let Some(tx) = state.waiting.borrow_mut().remove(&token) {
                    let _ = tx.send(result);
                }
            }
            ProducerIdAction::PersistHighWaterMark { high_water_mark } => {
                let state = state.clone();
                let node = state.shard.ctx.metadata.cluster_node().clone();
                crate::io::runtime::spawn(async move {
                    let epoch = node.broker_epoch();
                    let block = if epoch < 0 {
                        Err("this broker is not registered yet".to_string())
                    } else {
                        node.controller
                            .allocate_producer_ids(node.node_id, epoch)
                            .await
                            .map_err(|e| e.to_string())
                    };
                    match &block {
                        Ok(b) => info!(
                            first = b.start,
                            end = b.end,
                            "producer id block from the controller"
                        ),
                        Err(e) => {
                            error!("cannot get a producer id block from the controller: {e}")
                        }
                    }
                    let next = match state.manager.borrow_mut().as_mut() {
                        Some(m) => m.on_block_allocated(high_water_mark, block.map_err(|_| ())),
                        None => Vec::new(),
                    };
                    run_actions(&state, next);
                });
            }
        }
    }
}
