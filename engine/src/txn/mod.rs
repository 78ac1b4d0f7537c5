//! Kafka transactions (KIP-98): the transaction coordinator's state machine and the
//! `__transaction_state` records, sans-IO. The broker's `broker::transactions` drives it:
//! it writes the records through replication, follows the leadership of the
//! `__transaction_state` partitions, and writes the COMMIT/ABORT markers through the
//! partition leaders (`storage::log::transactions` holds the log half).

pub mod coordinator;
pub mod records;

#[cfg(test)]
mod tests;

pub use coordinator::{
    codes, txn_partition_for, EndPlan, InitPlan, MarkerJob, Transition, TxnConfig, TxnCoordinator,
    TxnMeta, TXN_TOPIC,
};
pub use records::{TxnLogValue, TxnStatus};
