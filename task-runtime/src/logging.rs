//! Installing a `tracing` subscriber for binaries: pretty or JSON lines on stderr, filtered
//! by `RUST_LOG` (default `info`). Library code never installs one itself.

use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// Output format of [`init`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, with span context.
    #[default]
    Pretty,
    /// One JSON object per line, with the current span and its parents.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pretty" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format '{other}' (expected pretty or json)"
            )),
        }
    }
}

/// Where the CLI attaches its store's log layer once the store is open.
#[derive(Debug, Clone)]
pub(crate) struct StoreSlot {
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    layer: crate::store::StoreLogLayer,
}

impl StoreSlot {
    /// Starts keeping runs' events in `store`.
    pub(crate) fn attach(&self, store: &crate::Store) {
        #[cfg(any(feature = "sqlite", feature = "postgres"))]
        self.layer.attach(store);
        #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
        let _ = store;
    }
}

/// [`init`], plus a layer that keeps runs' events in the store the CLI opens later, and the
/// layer of `telemetry`'s span exporter when it has one. `None` when a subscriber was already
/// set.
pub(crate) fn init_with_store(
    format: LogFormat,
    telemetry: &crate::telemetry::Exporter,
) -> Option<StoreSlot> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let slot = StoreSlot {
        #[cfg(any(feature = "sqlite", feature = "postgres"))]
        layer: crate::store::StoreLogLayer::unattached(),
    };
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    let store = Some(slot.layer.clone());
    #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
    let store: Option<tracing_subscriber::layer::Identity> = None;
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(store)
        .with(telemetry.layer());
    let installed = match format {
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_writer(std::io::stderr)
                    .with_ansi(false),
            )
            .try_init(),
    };
    telemetry.report();
    installed.is_ok().then_some(slot)
}

/// Installs a global subscriber writing to stderr. Returns `false` when one was already set
/// (it is left in place).
pub fn init(format: LogFormat) -> bool {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Pretty => builder.try_init().is_ok(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init()
            .is_ok(),
    }
}
