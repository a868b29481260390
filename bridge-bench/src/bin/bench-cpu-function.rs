//! A CPU-bound function for `lambda-sim`'s `SimConfig::cpu_function`: reads one decimal number of
//! microseconds per line on stdin, burns that much of its own CPU time (measured with
//! `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`, not wall time: under a CPU quota the burn takes
//! longer, as a real function's work does), then answers `ok <µs burned>` on stdout. Exits 0 at
//! the end of its input; a line that is not a number is answered `error …` and skipped.
//!
//! `bridge-bench` runs it as the function of its CPU-bound scenario, in the same cgroup as the
//! extension.

use std::io::{BufRead, Write};
use std::process::ExitCode;

/// This thread's CPU time, in ns (the process has only this one thread).
fn thread_cpu_ns() -> Result<u64, String> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Err(format!(
            "clock_gettime(CLOCK_THREAD_CPUTIME_ID): {}",
            std::io::Error::last_os_error()
        ));
    }
    let secs = u64::try_from(ts.tv_sec).map_err(|_| "negative CPU time")?;
    let nanos = u64::try_from(ts.tv_nsec).map_err(|_| "negative CPU time")?;
    Ok(secs * 1_000_000_000 + nanos)
}

/// Burns `micros` µs of this thread's CPU time; returns what it burned, in µs.
fn burn(micros: u64) -> Result<u64, String> {
    let start = thread_cpu_ns()?;
    let until = start.saturating_add(micros.saturating_mul(1_000));
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    loop {
        // A few µs of arithmetic between two looks at the clock.
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        std::hint::black_box(x);
        let now = thread_cpu_ns()?;
        if now >= until {
            return Ok((now - start) / 1_000);
        }
    }
}

fn run() -> Result<(), String> {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| format!("cannot read stdin: {e}"))?;
        let answer = match line.trim().parse::<u64>() {
            Ok(micros) => format!("ok {}", burn(micros)?),
            Err(e) => format!("error: {:?} is not a number of µs: {e}", line.trim()),
        };
        writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write stdout: {e}"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-cpu-function: {e}");
            ExitCode::from(1)
        }
    }
}
