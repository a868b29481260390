//! The process of a CPU-bound function ([`SimConfig::cpu_function`](crate::SimConfig)): spawned
//! once at init, asked over its stdin to burn CPU time, answering over its stdout.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::{CpuFunction, SimError};

/// A running CPU-bound function.
pub(crate) struct CpuProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    line: String,
    pid: Option<u32>,
}

impl CpuProcess {
    /// Starts `f.program` with its stdin and stdout piped (stderr inherited: its complaints show).
    pub(crate) fn spawn(f: &CpuFunction) -> Result<CpuProcess, SimError> {
        let spawn_error = |source| SimError::Spawn {
            path: f.program.clone(),
            source,
        };
        let mut child = Command::new(&f.program)
            .args(&f.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error)?;
        let missing = || spawn_error(std::io::Error::other("no pipe to the process"));
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        Ok(CpuProcess {
            pid: child.id(),
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            line: String::new(),
        })
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Asks the process to burn `micros` µs of its CPU time and waits (up to `limit`) for its
    /// answer.
    pub(crate) async fn burn(&mut self, micros: u64, limit: Duration) -> Result<(), String> {
        let exchange = async {
            let stdin = self.stdin.as_mut().ok_or("its stdin is closed")?;
            stdin
                .write_all(format!("{micros}\n").as_bytes())
                .await
                .map_err(|e| format!("cannot write to it: {e}"))?;
            stdin
                .flush()
                .await
                .map_err(|e| format!("cannot write to it: {e}"))?;
            self.line.clear();
            let n = self
                .stdout
                .read_line(&mut self.line)
                .await
                .map_err(|e| format!("cannot read its answer: {e}"))?;
            if n == 0 {
                return Err("it closed its stdout (exited?)".to_string());
            }
            if !self.line.starts_with("ok") {
                return Err(format!("it answered {:?}", self.line.trim_end()));
            }
            Ok(())
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer within {} ms to a {micros} µs burn",
                limit.as_millis()
            )),
        }
    }

    /// Stops the process (closes its stdin, then kills it) and returns its CPU time in ns,
    /// read right before.
    pub(crate) async fn stop(mut self) -> Option<u64> {
        let cpu = self.pid.and_then(super::procfs::cpu_ns);
        drop(self.stdin.take());
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        cpu
    }
}
