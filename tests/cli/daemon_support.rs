//! Driving `backupd run` as a real process: start it, find its listener through
//! `state/daemon.json`, speak plain HTTP to it, send it signals, and receive webhooks.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::support::{BIN, World};

pub struct Daemon {
    pub child: Child,
    log: PathBuf,
    state: PathBuf,
}

impl Daemon {
    /// Starts `backupd run` on the world's policy, with extra environment.
    pub fn start(world: &World, env: &[(&str, &str)]) -> Daemon {
        Self::start_cmd(world, env, Command::new(BIN))
    }

    /// Starts `backupd run` with at most `nofile` open descriptors (systemd's default is
    /// 1024), as `ulimit -n` in a shell that then execs it.
    pub fn start_with_nofile(world: &World, nofile: u32) -> Daemon {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            &format!("ulimit -n {nofile} && exec \"$0\" \"$@\""),
            BIN,
        ]);
        Self::start_cmd(world, &[], cmd)
    }

    fn start_cmd(world: &World, env: &[(&str, &str)], mut cmd: Command) -> Daemon {
        let log = world.path(&format!("daemon-{}.log", rand_suffix()));
        cmd.arg("--config")
            .arg(world.path("policy.toml"))
            .arg("run")
            .env("BACKUPD_LOG", "info")
            .env_remove("BACKUPD_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let _ = std::fs::remove_file(world.path("state/daemon.json"));
        Daemon {
            child: cmd.spawn().expect("start backupd run"),
            log,
            state: world.path("state"),
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The listener's address, once the daemon has written it.
    pub fn addr(&self) -> String {
        let path = self.state.join("daemon.json");
        let info = wait_for(Duration::from_secs(30), "daemon.json", || {
            let text = std::fs::read_to_string(&path).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            v["listen"].as_str().map(String::from)
        });
        info.unwrap_or_else(|| panic!("the daemon never wrote {}: {}", path.display(), self.logs()))
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.addr(), path)
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until `/status` satisfies `pred`, failing with the logs after `secs`.
    pub fn wait_status(
        &self,
        secs: u64,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(Duration::from_secs(secs), what, || {
            let s = self.status();
            pred(&s).then_some(s)
        })
        .unwrap_or_else(|| {
            panic!(
                "timed out waiting for {what}; status {}\nlogs:\n{}",
                self.status(),
                self.logs()
            )
        })
    }

    pub fn wait_log(&self, secs: u64, needle: &str) {
        wait_for(Duration::from_secs(secs), needle, || {
            self.logs().contains(needle).then_some(())
        })
        .unwrap_or_else(|| panic!("the daemon never logged {needle:?}:\n{}", self.logs()));
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits for the process to exit (failing after `secs`).
    pub fn wait_exit(&mut self, secs: u64) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit within {secs} s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(60)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

pub fn wait_for<T>(limit: Duration, _what: &str, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A minimal HTTP/1.1 GET: status code and body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    // axum answers with a length; no chunked bodies here.
    (code, body.to_string())
}

/// One request a receiver got.
#[derive(Debug)]
pub struct Received {
    pub path: String,
    pub body: String,
    /// Header names in lower case, in the order sent.
    pub headers: Vec<(String, String)>,
}

/// An HTTP server on 127.0.0.1 that answers 200 to everything and hands each request over.
pub fn receiver() -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut len = 0usize;
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let mut stream = stream;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = tx.send(Received {
                path,
                body: String::from_utf8_lossy(&body).into_owned(),
                headers,
            });
        }
    });
    (url, rx)
}
