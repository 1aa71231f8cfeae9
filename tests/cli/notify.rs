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
