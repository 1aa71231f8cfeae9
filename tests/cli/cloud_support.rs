//! The object-storage servers of the tests: the shared ones `tests/services` started
//! (s3s-fs, moto, Azurite), and private s3s-fs instances a test can stop and start.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::support::World;

/// An environment variable `tests/services` exports; missing means the suite was not
/// started through tests/run, which is a failure, not a skip.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the tests through tests/run, which starts the S3/Azure servers"
        )
    })
}

/// A prefix of its own for each test, so tests share servers without seeing each other.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Writes the S3 secret for `tests/services`' s3s-fs (0600) and returns its path.
pub fn s3_secret_file(world: &World, secret: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = world.path(&format!("s3-secret-{}", unique("k")));
    std::fs::write(&path, secret).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `[targets.NAME]` for an S3 server at `endpoint`.
pub fn s3_target(
    name: &str,
    endpoint: &str,
    bucket_and_prefix: &str,
    secret_file: &Path,
    extra: &str,
) -> String {
    format!(
        "[targets.{name}]\nurl = \"s3://{bucket_and_prefix}\"\nendpoint = \"{endpoint}\"\nallow_http = true\nregion = \"us-east-1\"\naccess_key_id = \"{}\"\nsecret_access_key_file = \"{}\"\n{extra}\n",
        env("BACKUPD_TEST_S3_KEY"),
        secret_file.display()
    )
}

pub fn azure_target(name: &str, container_and_prefix: &str) -> String {
    format!(
        "[targets.{name}]\nurl = \"az://{container_and_prefix}\"\nuse_emulator = true\nendpoint = \"{}\"\n\n",
        env("BACKUPD_TEST_AZURITE")
    )
}

/// A private s3s-fs on its own port and directory, for tests that stop the server.
pub struct S3s {
    pub root: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl S3s {
    /// Picks a free port and a root with bucket `bkt`, without starting the server.
    pub fn new(world: &World) -> S3s {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let root = world.path(&format!("s3s-{port}"));
        std::fs::create_dir_all(root.join("bkt")).unwrap();
        S3s {
            root,
            port,
            child: None,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) {
        let child = Command::new(env("BACKUPD_TEST_S3S_FS_BIN"))
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", &env("BACKUPD_TEST_S3_KEY")])
            .args(["--secret-key", &env("BACKUPD_TEST_S3_SECRET")])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not come up on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Multipart uploads the server still holds open (s3s-fs keeps `.upload-<id>.json`).
    pub fn open_uploads(&self) -> Vec<String> {
        std::fs::read_dir(&self.root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".upload-"))
            .collect()
    }
}

impl Drop for S3s {
    fn drop(&mut self) {
        self.stop();
    }
}
