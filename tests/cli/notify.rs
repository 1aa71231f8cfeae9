//! Notifications in the receiver's own format (issue 18): a real HTTP receiver on
//! 127.0.0.1 takes each format and the test reads it the way that receiver would.

use std::time::Duration;

use super::daemon_support::{Daemon, Received, receiver};
use super::support::{World, text};

fn policy_with(world: &World, notify: &str) {
    for job in ["good", "bad"] {
        std::fs::create_dir_all(world.path(&format!("src-{job}"))).unwrap();
    }
    std::fs::write(world.path("src-good/data.txt"), "data").unwrap();
    std::fs::remove_dir(world.path("src-bad")).unwrap();
    let body = format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:0\"\ninstance = \"web-1\"\n\n[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"identity.txt\"\n\n[targets.local]\nurl = \"file://{}\"\n\n[jobs.good]\nschedule = \"0 3 1 1 *\"\ntargets = [\"local\"]\n[jobs.good.sources.files]\nkind = \"directory\"\npath = \"{}\"\n\n[jobs.bad]\nschedule = \"0 3 1 1 *\"\ntargets = [\"local\"]\n[jobs.bad.sources.files]\nkind = \"directory\"\npath = \"{}\"\n\n{notify}",
        world.recipient,
        world.target_dir().display(),
        world.path("src-good").display(),
        world.path("src-bad").display(),
    );
    world.write_policy(&body);
}

fn json(r: &Received) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{}: {e}: {}", r.path, r.body))
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

#[test]
fn each_format_reaches_its_receiver_in_its_own_shape() {
    let world = World::new();
    let (url, rx) = receiver();
    let link = "http://backup-host.example:9897/";
    let mut notify = String::new();
    for format in ["json", "slack", "teams", "discord", "ntfy"] {
        notify.push_str(&format!(
            "[[notify]]\nurl = \"{url}/{format}/token-abc\"\nformat = \"{format}\"\nlink = \"{link}\"\n\n"
        ));
    }
    notify.push_str(&format!(
        "[[notify]]\nurl = \"{url}/only-failures\"\non = [\"failure\"]\n"
    ));
    policy_with(&world, &notify);
    let out = world.backupd(&["run-now", "good"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = world.backupd(&["run-now", "bad"]);
    assert!(!out.status.success(), "the bad job fails: {}", text(&out));

    let mut got: Vec<Received> = Vec::new();
    while got.len() < 11 {
        got.push(
            rx.recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("only {} requests", got.len())),
        );
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "`on` kept the success from /only-failures"
    );
    let of = |format: &str, job: &str| -> &Received {
        got.iter()
            .find(|r| r.path.starts_with(&format!("/{format}")) && r.body.contains(job))
            .unwrap_or_else(|| panic!("no {format} message about {job}"))
    };

    // backupd's JSON event, with the added facts.
    let ok = json(of("json", "good"));
    assert_eq!(ok["event"], "success");
    assert_eq!(ok["instance"], "web-1");
    assert!(ok["stored_bytes"].as_u64().unwrap() > 0, "{ok}");
    assert!(ok["duration_seconds"].as_f64().is_some(), "{ok}");
    assert_eq!(ok["link"], link);
    assert_eq!(json(of("json", "bad"))["event"], "failure");

    // Slack: `text` for previews, blocks with a header, fields and the error.
    let s = json(of("slack", "good"));
    assert!(s["text"].as_str().unwrap().contains("good"), "{s}");
    assert_eq!(s["blocks"][0]["type"], "header");
    assert_eq!(s["blocks"][1]["type"], "section");
    let s = json(of("slack", "bad"));
    assert!(s["text"].as_str().unwrap().contains("FAILED"), "{s}");
    assert!(s.to_string().contains("src-bad"), "the error is shown: {s}");

    // Teams: an Adaptive Card in a message, facts as a FactSet, the link as an action.
    let t = json(of("teams", "good"));
    assert_eq!(t["type"], "message");
    let card = &t["attachments"][0];
    assert_eq!(
        card["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(card["content"]["type"], "AdaptiveCard");
    let facts = card["content"]["body"][1]["facts"].as_array().unwrap();
    assert!(
        facts
            .iter()
            .any(|f| f["title"] == "Job" && f["value"] == "good")
    );
    assert!(
        facts
            .iter()
            .any(|f| f["title"] == "Instance" && f["value"] == "web-1")
    );
    assert_eq!(card["content"]["actions"][0]["url"], link);

    // Discord: content plus one embed, red for a failure.
    let d = json(of("discord", "bad"));
    assert!(d["content"].as_str().unwrap().contains("bad"));
    assert_eq!(d["embeds"][0]["color"], 0xd32f2f);
    assert!(
        d["embeds"][0]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "Job")
    );
    assert_eq!(json(of("discord", "good"))["embeds"][0]["color"], 0x2e7d32);

    // ntfy: plain text, title/priority/tags/click as headers.
    let n = of("ntfy", "bad");
    assert!(n.body.contains("Job: bad"), "{}", n.body);
    assert!(header(n, "title").contains("backupd"), "{:?}", n.headers);
    assert_eq!(header(n, "priority"), "high");
    assert_eq!(header(n, "click"), link);
    assert!(header(n, "content-type").starts_with("text/plain"));
    assert_eq!(header(of("ntfy", "good"), "priority"), "default");

    let only: Vec<_> = got.iter().filter(|r| r.path == "/only-failures").collect();
    assert_eq!(only.len(), 1);
    assert_eq!(json(only[0])["job"], "bad");
    // The token in the URLs never reaches the output.
    assert!(!text(&out).contains("token-abc"));
}

#[test]
fn a_failing_notifier_is_counted_and_never_fails_the_backup() {
    let world = World::new();
    // A port nobody listens on: every delivery is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    policy_with(
        &world,
        &format!("[[notify]]\nurl = \"{dead}\"\nname = \"pager\"\nformat = \"slack\"\n"),
    );
    let body = std::fs::read_to_string(world.path("policy.toml"))
        .unwrap()
        .replacen("schedule = \"0 3 1 1 *\"", "schedule = \"* * * * * *\"", 1);
    world.write_policy(&body);
    let mut daemon = Daemon::start(&world, &[]);
    daemon.wait_status(60, "a run and a counted notification failure", |s| {
        s["jobs"]["good"]["runs_succeeded"].as_u64() >= Some(1)
            && s["notify_failures"]["pager"].as_u64() >= Some(1)
    });
    let (code, metrics) = daemon.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("backupd_notify_failures_total{notifier=\"pager\"}")),
        "{metrics}"
    );
    assert_eq!(daemon.status()["jobs"]["good"]["runs_failed"], 0);
    assert!(daemon.stop().success());
}

/// A real SMTP server (aiosmtpd, tests/tools/smtp_sink.py) on 127.0.0.1 in `mode`
/// (`starttls` or `tls`), accepting only `backupd` / `PASSWORD`; killed on drop.
struct SmtpSink {
    child: std::process::Child,
    dir: std::path::PathBuf,
    port: u16,
}

const PASSWORD: &str = "smtp-pw-9f3a1c";

impl SmtpSink {
    fn start(world: &World, mode: &str) -> SmtpSink {
        use std::io::BufRead;
        let python = std::env::var("BACKUPD_TEST_PYTHON")
            .expect("BACKUPD_TEST_PYTHON is not set: run the tests with tests/run (tests/services installs aiosmtpd)");
        let dir = world.path(&format!("smtp-{mode}"));
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/smtp_sink.py");
        let mut child = std::process::Command::new(python)
            .arg(script)
            .args([dir.to_str().unwrap(), mode, "backupd", PASSWORD])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start the SMTP sink");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("the SMTP sink said {line:?}"))
            .parse()
            .unwrap();
        SmtpSink { child, dir, port }
    }

    /// The first message received, as (envelope JSON, raw mail), waiting up to 30 s.
    fn first(&self) -> Option<(serde_json::Value, String)> {
        for _ in 0..300 {
            if let Ok(meta) = std::fs::read_to_string(self.dir.join("1.json")) {
                let mail = std::fs::read_to_string(self.dir.join("1.eml")).unwrap();
                return Some((serde_json::from_str(&meta).unwrap(), mail));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn email_notifier(sink: &SmtpSink, scheme: &str, password_file: &str) -> String {
    format!(
        "[[notify]]\nformat = \"email\"\nurl = \"{scheme}://127.0.0.1:{}\"\nfrom = \"backupd@example.com\"\nto = [\"ops@example.com\", \"oncall@example.com\"]\nusername = \"backupd\"\npassword_file = \"{password_file}\"\nca_file = \"{}\"\nlink = \"http://backup-host.example:9897/\"\non = [\"failure\"]\n",
        sink.port,
        sink.dir.join("cert.pem").display(),
    )
}

#[test]
fn a_failure_is_mailed_over_starttls_and_over_tls_with_the_password_from_a_file() {
    use std::os::unix::fs::PermissionsExt;
    let world = World::new();
    let pw = world.path("smtp-password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    for (mode, scheme) in [("starttls", "smtp"), ("tls", "smtps")] {
        let sink = SmtpSink::start(&world, mode);
        policy_with(&world, &email_notifier(&sink, scheme, pw.to_str().unwrap()));
        let out = world.backupd(&["run-now", "bad"]);
        assert!(!out.status.success());
        let said = text(&out);
        assert!(
            !said.contains(PASSWORD),
            "{mode}: the password is never printed"
        );
        let (envelope, mail) = sink
            .first()
            .unwrap_or_else(|| panic!("{mode}: no mail arrived; backupd said:\n{said}"));
        assert_eq!(envelope["user"], "backupd", "{mode}: {envelope}");
        assert_eq!(envelope["authenticated"], true);
        assert_eq!(envelope["encrypted"], true, "{mode}: {envelope}");
        assert_eq!(envelope["mail_from"], "backupd@example.com");
        assert_eq!(
            envelope["rcpt_tos"],
            serde_json::json!(["ops@example.com", "oncall@example.com"])
        );
        assert!(mail.contains("Subject: "), "{mail}");
        assert!(mail.contains("Job: bad"), "{mail}");
        assert!(mail.contains("Instance: web-1"), "{mail}");
        assert!(mail.contains("src-bad"), "the error is in the mail: {mail}");
        assert!(
            mail.contains("Status page: http://backup-host.example:9897/"),
            "{mail}"
        );
        // `on = ["failure"]`: a success sends nothing.
        std::fs::remove_file(sink.dir.join("1.json")).unwrap();
        let out = world.backupd(&["run-now", "good"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(!sink.dir.join("2.json").exists() && !sink.dir.join("1.json").exists());
    }
}

#[test]
fn a_wrong_smtp_password_or_an_exposed_password_file_fails_the_mail_not_the_backup() {
    use std::os::unix::fs::PermissionsExt;
    let world = World::new();
    let sink = SmtpSink::start(&world, "starttls");
    let wrong = world.path("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let exposed = world.path("exposed-password");
    std::fs::write(&exposed, format!("{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (file, says) in [(&wrong, "refused"), (&exposed, "readable")] {
        let notifier = email_notifier(&sink, "smtp", file.to_str().unwrap())
            .replace("on = [\"failure\"]", "on = [\"success\"]");
        policy_with(&world, &notifier);
        let out = world.backupd(&["run-now", "good"]);
        let said = text(&out);
        assert!(out.status.success(), "the backup itself succeeds: {said}");
        assert!(said.contains("notification to smtp://127.0.0.1"), "{said}");
        assert!(said.contains(says), "{says}: {said}");
        assert!(
            !said.contains(PASSWORD) && !said.contains("not-the-password"),
            "{said}"
        );
    }
    assert!(!sink.dir.join("1.json").exists(), "nothing was delivered");
}
