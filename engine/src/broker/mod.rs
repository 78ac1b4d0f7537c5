//! The Kafka-protocol broker: configuration, shards, connections and request handlers.
