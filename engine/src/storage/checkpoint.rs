//! Single-offset checkpoint files kept in each partition directory.
//!
//! Kafka keeps `recovery-point-offset-checkpoint` and `log-start-offset-checkpoint` per log
//! dir, listing every partition; Sluice keeps one of each per partition directory because each
//! shard owns its partitions and must not coordinate with other shards to write a shared file.
//! Format: a version line `0` followed by the offset.

/// Recovery point: every segment below the segment holding it was flushed with its indexes.
pub const RECOVERY_POINT_FILE: &str = "recovery-point-offset-checkpoint";
/// Log start offset (moved by retention and DeleteRecords).
pub const LOG_START_FILE: &str = "log-start-offset-checkpoint";
/// Replication high watermark (Kafka's `replication-offset-checkpoint`): a restarted replica
/// starts from it instead of from the log start.
pub const HIGH_WATERMARK_FILE: &str = "replication-offset-checkpoint";
/// Leader-epoch cache.
pub const LEADER_EPOCH_FILE: &str = "leader-epoch-checkpoint";
/// Present only after a clean close; its presence skips the recovery scan.
pub const CLEAN_SHUTDOWN_FILE: &str = ".sluice_cleanshutdown";

/// Encodes an offset checkpoint.
pub fn encode_offset(offset: i64) -> Vec<u8> {
    format!("0\n{offset}\n").into_bytes()
}

/// Decodes an offset checkpoint; `None` if malformed.
pub fn decode_offset(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.lines();
    if lines.next()?.trim() != "0" {
        return None;
    }
    let v: i64 = lines.next()?.trim().parse().ok()?;
    (v >= 0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        assert_eq!(decode_offset(&encode_offset(12345)), Some(12345));
        assert_eq!(decode_offset(b"0\n-4\n"), None);
        assert_eq!(decode_offset(b"1\n4\n"), None);
        assert_eq!(decode_offset(b""), None);
    }
}
