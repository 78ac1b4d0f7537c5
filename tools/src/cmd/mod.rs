//! The cluster subcommands, one module each.

pub mod acls;
pub mod cluster;
pub mod configs;
pub mod consume;
pub mod groups;
pub mod leaders;
pub mod logdirs;
pub mod produce;
pub mod producers;
pub mod quotas;
pub mod records;
pub mod topics;
pub mod transactions;
pub mod users;

use crate::UsageError;

/// Splits `k=v` (the value may contain `=`).
pub fn parse_kv(s: &str) -> Result<(String, String), UsageError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(UsageError(format!("expected key=value, got '{s}'"))),
    }
}

/// Parses an RFC 3339 date-time (`2026-01-01T00:00:00Z`) or epoch milliseconds into epoch ms.
pub fn parse_time_ms(s: &str) -> Result<i64, UsageError> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            UsageError(format!(
                "invalid time '{s}' ({e}): use RFC 3339 like 2026-01-01T00:00:00Z or epoch milliseconds"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_and_times() {
        assert_eq!(
            parse_kv("retention.ms=1=2").unwrap(),
            ("retention.ms".into(), "1=2".into())
        );
        assert!(parse_kv("=x").is_err());
        assert!(parse_kv("novalue").is_err());
        assert_eq!(parse_time_ms("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert_eq!(
            parse_time_ms("2026-01-01T01:00:00+01:00").unwrap(),
            1_767_225_600_000
        );
        assert_eq!(parse_time_ms("42").unwrap(), 42);
        assert!(parse_time_ms("yesterday").is_err());
    }
}
