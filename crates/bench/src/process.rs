//! Child processes for the runners: run one with a time limit, and say briefly why it failed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// What a child process did.
pub struct ChildOutput {
    /// Exit status, None when killed (timeout) or by a signal.
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// Runs `cmd` with stdin closed, capturing output, killing it after `limit`.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> anyhow::Result<ChildOutput> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let mut bytes = Vec::new();
                let _ = p.read_to_end(&mut bytes);
                s = String::from_utf8_lossy(&bytes).into_owned();
            }
            s
        })
    };
    let t_out = reader(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let t_err = reader(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + limit;
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            timed_out = true;
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    if timed_out {
        bail!(
            "{program} did not finish within {:.0} s: {}",
            limit.as_secs_f64(),
            last_lines(&stderr, &stdout)
        );
    }
    Ok(ChildOutput {
        code: status.code(),
        stdout,
        stderr,
    })
}

/// The last few lines of stderr (or stdout), on one line, for error messages.
pub fn last_lines(stderr: &str, stdout: &str) -> String {
    let text = if stderr.trim().is_empty() { stdout } else { stderr };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}
