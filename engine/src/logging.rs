//! Log output: `tracing` to stderr, filtered by `RUST_LOG` (wins) or `log.level`, as text or
//! one JSON object per line (`log.format = json`) for log shippers.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The logger could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `log.level` is not a valid filter.
    #[error("invalid value {0:?} for config key `log.level`: {1}")]
    Level(String, String),
    /// A global subscriber was already set.
    #[error("cannot install the logger: {0}")]
    Init(String),
}

/// Installs the global subscriber. `level` is used when `RUST_LOG` is unset or invalid.
pub fn init(level: &str, json: bool) -> Result<(), LogError> {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(f) => f,
        // openraft narrates every election and membership step at INFO; its warnings are
        // what an operator needs (RUST_LOG=openraft=info brings the rest back).
        Err(_) if !level.contains("openraft") => {
            EnvFilter::try_new(format!("{level},openraft=warn"))
                .map_err(|e| LogError::Level(level.to_string(), e.to_string()))?
        }
        Err(_) => EnvFilter::try_new(level)
            .map_err(|e| LogError::Level(level.to_string(), e.to_string()))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder.event_format(JsonLines).try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| LogError::Init(e.to_string()))
}

/// Formats each event as one JSON object: `timestamp`, `level`, `target`, `thread`, `spans`,
/// `message` and the event's fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

struct Fields(serde_json::Map<String, serde_json::Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), value.into());
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        let mut fields = Fields(serde_json::Map::new());
        event.record(&mut fields);
        let mut obj = serde_json::Map::new();
        obj.insert("timestamp".into(), ts.into());
        obj.insert("level".into(), meta.level().as_str().into());
        obj.insert("target".into(), meta.target().into());
        if let Some(name) = std::thread::current().name() {
            obj.insert("thread".into(), name.into());
        }
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<serde_json::Value> =
                scope.from_root().map(|s| s.name().into()).collect();
            obj.insert("spans".into(), spans.into());
        }
        if let Some(m) = fields.0.remove("message") {
            obj.insert("message".into(), m);
        }
        obj.insert("fields".into(), fields.0.into());
        writeln!(writer, "{}", serde_json::Value::Object(obj))
    }
}
