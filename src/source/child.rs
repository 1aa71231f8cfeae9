//! Dump and restore tools run as child processes: finding them on PATH, passing secrets
//! through the environment (never argv), streaming stdout into the pipeline, keeping the
//! tail of stderr for the error message, and judging the exit status only after the
//! stream was fully consumed (the shape of rustic's `ChildStdoutSource::finish`).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

use super::SourceError;

/// How much of a tool's stderr is kept for its error message.
const STDERR_TAIL_BYTES: usize = 16 << 10;

/// The first of `names` found on PATH, or an error saying which package provides it.
pub fn find_tool(names: &[&str], package: &str) -> Result<PathBuf, SourceError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    Err(SourceError::ToolMissing {
        tool: names.join(" or "),
        package: package.into(),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A running tool whose stderr is collected on a thread.
pub struct Running {
    tool: String,
    child: Child,
    stderr: Option<JoinHandle<Vec<u8>>>,
    secret: Option<String>,
}

/// A command for a dump or restore tool with a minimal environment: the basics a program
/// needs (PATH, HOME, locale, time zone, temp dir, user) plus the variables starting with
/// one of `keep_prefixes` (e.g. `PG` for libpq's settings), never another tool's or a
/// target's credentials. The caller adds the tool's own secret.
pub fn command(program: impl AsRef<std::ffi::OsStr>, keep_prefixes: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    for (k, v) in minimal_env(keep_prefixes) {
        cmd.env(k, v);
    }
    cmd
}

/// The variables of this process a child may see (see [`command`]); secrets are dropped
/// even when a prefix would keep them.
pub fn minimal_env(keep_prefixes: &[&str]) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    const BASICS: &[&str] = &[
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "SHELL", "TERM",
    ];
    const SECRETS: &[&str] = &["PGPASSWORD", "MYSQL_PWD", "REDISCLI_AUTH"];
    std::env::vars_os()
        .filter(|(k, _)| {
            let Some(k) = k.to_str() else { return false };
            !SECRETS.contains(&k)
                && (BASICS.contains(&k)
                    || k.starts_with("LC_")
                    || keep_prefixes.iter().any(|p| k.starts_with(p)))
        })
        .collect()
}

/// Starts `cmd` with the given stdin, stdout piped, stderr collected.
pub fn spawn(cmd: Command, stdin: Stdio, secret: Option<&str>) -> Result<Running, SourceError> {
    spawn_with(cmd, stdin, Stdio::piped(), secret)
}

fn spawn_with(
    mut cmd: Command,
    stdin: Stdio,
    stdout: Stdio,
    secret: Option<&str>,
) -> Result<Running, SourceError> {
    let tool = Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut child = cmd
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SourceError::Tool {
            tool: tool.clone(),
            message: format!("cannot start: {e}"),
        })?;
    let mut err = child.stderr.take().expect("stderr piped");
    let stderr = std::thread::spawn(move || {
        let mut tail = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 2 * STDERR_TAIL_BYTES {
                tail.drain(..tail.len() - STDERR_TAIL_BYTES);
            }
        }
        tail
    });
    Ok(Running {
        tool,
        child,
        stderr: Some(stderr),
        secret: secret.map(str::to_string),
    })
}

impl Running {
    /// Copies the tool's stdout into `out`; on a write error the tool is killed.
    pub fn copy_stdout(&mut self, out: &mut dyn Write) -> Result<u64, SourceError> {
        let mut stdout = self.child.stdout.take().expect("stdout piped");
        let copied = io::copy(&mut stdout, out);
        match copied {
            Ok(n) => Ok(n),
            Err(e) => {
                let _ = self.child.kill();
                let _ = self.wait_raw();
                Err(SourceError::Tool {
                    tool: self.tool.clone(),
                    message: format!("streaming its output failed: {e}"),
                })
            }
        }
    }

    fn wait_raw(&mut self) -> (io::Result<std::process::ExitStatus>, String) {
        let status = self.child.wait();
        let tail = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let mut text = String::from_utf8_lossy(&tail).trim().to_string();
        if let Some(secret) = self.secret.as_deref().filter(|s| !s.is_empty()) {
            text = text.replace(secret, "***");
        }
        (status, text)
    }

    /// Waits for the tool; anything but exit status 0 is an error carrying its stderr.
    /// Returns the stderr text for tools that report on it.
    pub fn finish(mut self) -> Result<String, SourceError> {
        let (status, stderr) = self.wait_raw();
        let status = status.map_err(|e| SourceError::Tool {
            tool: self.tool.clone(),
            message: format!("cannot wait for it: {e}"),
        })?;
        if status.success() {
            return Ok(stderr);
        }
        let how = match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_string(),
        };
        Err(SourceError::Tool {
            tool: self.tool.clone(),
            message: if stderr.is_empty() {
                how
            } else {
                format!("{how}: {stderr}")
            },
        })
    }
}

/// Runs a dump tool with its stdout streamed into `out`; its exit status is judged after
/// the stream was consumed, and a dump of zero bytes is an error too.
pub fn stream_to(
    cmd: Command,
    out: &mut dyn Write,
    secret: Option<&str>,
) -> Result<u64, SourceError> {
    let mut running = spawn(cmd, Stdio::null(), secret)?;
    let tool = running.tool.clone();
    let bytes = running.copy_stdout(out)?;
    running.finish()?;
    if bytes == 0 {
        return Err(SourceError::Tool {
            tool,
            message: "produced no output".into(),
        });
    }
    Ok(bytes)
}

/// The password: from the password file when one is set, else from `env_var` in
/// backupd's own environment (how systemd credentials or a container secret arrive).
pub fn password(file: Option<&Path>, env_var: &str) -> Result<Option<String>, SourceError> {
    match file {
        Some(f) => read_password_file(f).map(Some),
        None => Ok(std::env::var(env_var).ok().filter(|p| !p.is_empty())),
    }
}

/// `url` with its path replaced by `/database`.
pub fn with_database(url: &str, database: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            u.set_path(&format!("/{database}"));
            u.to_string()
        }
        Err(_) => url.to_string(),
    }
}

/// Runs a restore tool with `input` on its stdin (its stdout discarded, so it can never
/// block on a full pipe), checking its exit status. Returns the bytes fed.
pub fn feed(cmd: Command, input: &mut dyn Read, secret: Option<&str>) -> Result<u64, SourceError> {
    let mut running = spawn_with(cmd, Stdio::piped(), Stdio::null(), secret)?;
    let mut stdin = running.child.stdin.take().expect("stdin piped");
    let copied = io::copy(input, &mut stdin);
    drop(stdin);
    // The tool's own error (e.g. pg_restore stopping at the first error) explains a
    // broken pipe better than the pipe does.
    running.finish()?;
    copied.map_err(|e| SourceError::Tool {
        tool: "restore".into(),
        message: format!("feeding the dump failed: {e}"),
    })
}

/// Runs a tool to completion and returns its stdout (for small queries and version checks).
pub fn output(cmd: Command, secret: Option<&str>) -> Result<String, SourceError> {
    let mut running = spawn(cmd, Stdio::null(), secret)?;
    let mut out = Vec::new();
    running.copy_stdout(&mut out)?;
    running.finish()?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The major version in a `--version` line such as `pg_dump (PostgreSQL) 15.18 (Debian …)`.
pub fn major_version(version_line: &str) -> Option<u32> {
    version_line.split_whitespace().find_map(|w| {
        w.split('.')
            .next()?
            .parse::<u32>()
            .ok()
            .filter(|_| w.contains('.'))
    })
}

/// Reads a password file (first line), refusing one that group or others can read.
pub fn read_password_file(path: &Path) -> Result<String, SourceError> {
    crate::secret::read_password_file(path).map_err(|e| match e {
        crate::secret::SecretError::Io { path, source } => SourceError::Io { path, source },
        exposed @ crate::secret::SecretError::Exposed { .. } => SourceError::Invalid {
            path: path.into(),
            what: exposed.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_versions_are_read_from_tool_banners() {
        assert_eq!(
            major_version("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(major_version("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(major_version("no version here"), None);
    }

    #[test]
    fn a_failing_tool_reports_status_and_stderr_without_the_secret() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo partial; echo \"auth failed for s3cret\" >&2; exit 3",
        ]);
        let mut r = spawn(cmd, Stdio::null(), Some("s3cret")).unwrap();
        let mut out = Vec::new();
        assert_eq!(r.copy_stdout(&mut out).unwrap(), 8);
        let err = r.finish().unwrap_err().to_string();
        assert!(
            err.contains("status 3") && err.contains("auth failed"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn missing_tools_name_their_package() {
        let err = find_tool(&["surely-not-installed-xyz"], "some-package").unwrap_err();
        assert!(err.to_string().contains("some-package"), "{err}");
    }
}
