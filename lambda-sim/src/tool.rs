//! What the command-line tools of this workspace (`lambda-sim`, `raw-json-mock`, `bridge-bench`)
//! share.

use std::process::ExitCode;

/// The single-threaded runtime a tool runs on; on failure, an error line naming `tool` and the
/// exit code to return.
pub fn runtime(tool: &str) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("{tool}: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}
