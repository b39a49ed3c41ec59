//! Running the external tools the image tooling needs (apt-get, dpkg-deb, mkfs.ext4 ...).

use std::process::Command;

use crate::ImageError;

/// Runs a command, returning its stdout; a non-zero exit becomes [`ImageError::Command`].
pub(crate) fn run(cmd: &mut Command) -> Result<String, ImageError> {
    let line = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| ImageError::io(format!("running {line}"), e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(ImageError::Command {
            command: line,
            detail: format!("{}: {}", out.status, tail.join(" | ")),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
