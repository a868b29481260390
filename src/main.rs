//! The extension binary Lambda launches from `/opt/extensions`.

use std::path::Path;
use std::process::ExitCode;

use lambda_telemetry_bridge::app;
use lambda_telemetry_bridge::settings::Settings;

fn main() -> ExitCode {
    // Lambda-Extension-Name must be the file name Lambda launched.
    let extension_name = std::env::args_os()
        .next()
        .and_then(|arg0| {
            Path::new(&arg0)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "lambda-telemetry-bridge".to_string());

    let (settings, issues) = match Settings::from_env() {
        Ok(loaded) => loaded,
        Err(e) => {
            println!("ERROR lambda-telemetry-bridge: {e}");
            return ExitCode::from(1);
        }
    };
    // The configuration validated the filter (a bad one is an issue, reported once logging runs).
    let filter = settings
        .core
        .log_filter
        .parse::<tracing_subscriber::filter::Targets>()
        .unwrap_or_else(|_| {
            tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
        });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_target(false)
                .without_time()
                .with_writer(std::io::stdout),
        )
        .with(filter)
        .init();

    // One thread: a 128 MB function has ~7% of a vCPU; a second worker only adds start-up cost.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(app::run(settings, issues, extension_name))
}
