//! Replication core: one pipeline with pluggable commit and election rules (ISR, majority quorum).
