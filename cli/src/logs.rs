//! Where the `forklift` command's logs go, and in what form: the tracing subscriber
//! (`--log-format`), the error log and pid file of `serve` and `run`, and `serve
//! --access-log [PATH]`.

use std::path::PathBuf;

use clap::ValueEnum;
use forklift::{LogFormat, Prefork};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The log settings `serve` and `run` share.
#[derive(Debug, clap::Args)]
pub(crate) struct LogArgs {
    /// The form of the master's and workers' logs, and of the --access-log file: text, or
    /// json (one object a line)
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = Format::Text)]
    pub log_format: Format,

    /// Write the master's and workers' logs (and panics) to this file, appended to, instead
    /// of stderr. Reopened on SIGUSR1 or `forklift reopen-logs`, for logrotate
    #[arg(long, value_name = "PATH")]
    pub error_log: Option<PathBuf>,

    /// Write the master's pid to this file once it serves; removed when it exits. After a
    /// binary upgrade (USR2) it holds the new master's pid
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// tracing's text lines
    Text,
    /// One JSON object a line (timestamp, level, fields, target, span)
    Json,
}

impl LogArgs {
    pub(crate) fn apply(&self, mut server: Prefork) -> Prefork {
        server = server.log_format(match self.log_format {
            Format::Text => LogFormat::Text,
            Format::Json => LogFormat::Json,
        });
        if let Some(path) = &self.error_log {
            server = server.error_log(path);
        }
        if let Some(path) = &self.pid_file {
            server = server.pid_file(path);
        }
        server
    }
}

/// `serve --access-log [PATH]`: alone or with `-`, lines through tracing (stderr, or the
/// error log); with a path, to that file.
pub(crate) fn apply_access_log(server: Prefork, access_log: &Option<Option<PathBuf>>) -> Prefork {
    match access_log {
        None => server,
        Some(Some(path)) if path.as_os_str() != "-" => server.access_log_file(path),
        Some(_) => server.access_log(true),
    }
}

/// Installs the tracing subscriber: RUST_LOG's `target=level,...` (INFO by default), in
/// `format`, on stderr. Colours only for a terminal that stays one (no `--error-log`).
pub(crate) fn init_tracing(format: Format, to_file: bool) {
    // `Targets` reads RUST_LOG's `target=level,...` form without a regex engine, which keeps
    // the master small (it is resident all the time).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        Format::Text => registry
            .with(layer.with_ansi(!to_file && std::io::IsTerminal::is_terminal(&std::io::stderr())))
            .init(),
        Format::Json => registry.with(layer.json()).init(),
    }
}
