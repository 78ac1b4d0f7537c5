//! The consumer-group coordinator (Kafka classic group protocol), as a sans-IO state machine.
