//! Where the command's logs go: stderr, as text for a terminal or as one
//! JSON object per line for a log shipper (`--log-format json`,
//! tracing-subscriber's JSON), filtered by `RUST_LOG` (default `warn`);
//! with `--features otel`, the spans also go to an OpenTelemetry collector
//! over OTLP.
//!
//! The lines the command writes itself (the stats line, the shutdown
//! line, a fatal error) follow the same format: [`line`].

use std::io::Write;
use std::sync::OnceLock;

use clap::ValueEnum;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colour on a terminal).
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields, spans).
    Json,
}

/// The format chosen at start, for the lines the command writes itself.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Installs the subscriber: stderr in `format`, `RUST_LOG` or `warn`.
/// With the `otel` feature and `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans
/// are exported too; the returned guard flushes them at exit.
pub fn init(format: LogFormat) -> Guard {
    let _ = FORMAT.set(format);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let (otel, guard) = otel::layer();
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    guard
}

/// Writes one line of the command's own to stderr, in the chosen format:
/// as text, `TIMESTAMP what {json}` (the JSON is `fields`); as JSON, one
/// object like tracing's (`timestamp`, `level`, `target`, `fields` with
/// `message`). Never fails the caller: a closed stderr loses the line.
pub fn line(level: &str, what: &str, fields: serde_json::Value) {
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
    let text = match FORMAT.get().copied().unwrap_or_default() {
        LogFormat::Text => format!("{now} {what} {fields}"),
        LogFormat::Json => {
            let mut all = serde_json::json!({ "message": what });
            if let (Some(all), Some(fields)) = (all.as_object_mut(), fields.as_object()) {
                all.extend(fields.clone());
            }
            serde_json::json!({
                "timestamp": now.to_string(),
                "level": level,
                "target": "messenger",
                "fields": all,
            })
            .to_string()
        }
    };
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}").and_then(|_| err.flush());
}

/// The chosen format.
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}

/// Flushes exported spans when dropped (at the end of `main`).
pub struct Guard {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

#[cfg(not(feature = "otel"))]
mod otel {
    /// Without the `otel` feature: no layer.
    pub(super) fn layer() -> (Option<tracing_subscriber::layer::Identity>, super::Guard) {
        (None, super::Guard {})
    }
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::TracerProvider as _;

    /// With `OTEL_EXPORTER_OTLP_ENDPOINT` set: a layer exporting spans over
    /// OTLP/HTTP in batches (a thread of its own: the exporter's client
    /// blocks), under the service name `messenger`.
    pub(super) fn layer<S>() -> (
        Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>,
        super::Guard,
    )
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let none = || (None, super::Guard { provider: None });
        if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
            return none();
        }
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(e) => e,
            Err(e) => {
                eprintln!("messenger: cannot export spans over OTLP: {e}");
                return none();
            }
        };
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("messenger")
            .build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("messenger");
        (
            Some(tracing_opentelemetry::layer().with_tracer(tracer)),
            super::Guard {
                provider: Some(provider),
            },
        )
    }
}
