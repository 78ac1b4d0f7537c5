//! The consumer-group coordinator (Kafka classic group protocol), as a sans-IO state machine.
//!
//! - [`coordinator`]: [`GroupCoordinator`], the state machine for every group of the
//!   `__consumer_offsets` partitions this broker leads (inputs in, [`CoordinatorAction`]s out).
//! - [`api`]: the requests and responses it speaks, independent of wire versions.
//! - [`records`]: `__consumer_offsets` keys and values in Kafka's own schemas.
//! - [`assignor`]: the client-side `range` / `roundrobin` assignors and ConsumerProtocol codec.
//! - [`wire`]: kafka-protocol messages to and from [`api`] types, for every version.

pub mod api;
pub mod assignor;
pub mod coordinator;
pub mod records;
pub mod wire;

#[cfg(test)]
mod tests;

pub use api::{codes, ErrorCode, GroupRequest, GroupResponse, RequestToken};
pub use coordinator::{
    AnyTopic, AppendError, AppendId, CoordinatorAction, CoordinatorConfig, GroupCoordinator,
    GroupState, OffsetsRecord, TopicCatalog, TxnProducer,
};
pub use records::{offsets_partition_for, OFFSETS_TOPIC};
