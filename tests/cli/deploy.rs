//! The shipped deployment files, checked as far as this machine can without a Docker
//! engine or a running systemd: units pass `systemd-analyze verify`, sysusers/tmpfiles
//! apply to a scratch root, every YAML parses and says what the README claims, and the
//! policies embedded in them load.

use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

use super::support::{BIN, require_tool};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml(rel: &str) -> Yaml {
    let docs = YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(docs.len(), 1, "{rel}: one document");
    docs.into_iter().next().unwrap()
}

/// Loads a policy text the way backupd does, failing with every problem.
fn assert_policy_loads(what: &str, toml: &str) -> backupd::policy::Policy {
    let figment = figment::Figment::from(
        <figment::providers::Toml as figment::providers::Format>::string(toml),
    );
    backupd::policy::from_figment(figment, Path::new("/etc/backupd")).unwrap_or_else(|problems| {
        panic!(
            "{what} does not load:\n{}",
            problems
                .iter()
                .map(|p| format!("  {p}\n"))
                .collect::<String>()
        )
    })
}

#[test]
fn systemd_units_verify_and_sysusers_tmpfiles_apply() {
    require_tool("systemd-analyze");
    require_tool("systemd-sysusers");
    require_tool("systemd-tmpfiles");
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at the binary under test.
    for unit in [
        "backupd.service",
        "backupd-run-now.service",
        "backupd-run-now.timer",
    ] {
        let text = read(&format!("systemd/{unit}")).replace("/usr/local/bin/backupd", BIN);
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(
            [
                "backupd.service",
                "backupd-run-now.service",
                "backupd-run-now.timer",
            ]
            .map(|u| dir.path().join(u)),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let daemon = read("systemd/backupd.service");
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=backupd",
        "StateDirectory=backupd",
        "ConfigurationDirectory=backupd",
        "LoadCredential=identity:",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_DAC_READ_SEARCH",
        "ExecStart=/usr/local/bin/backupd run",
    ] {
        assert!(
            daemon.lines().any(|l| l.starts_with(line)),
            "backupd.service lacks {line}"
        );
    }

    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let sysusers = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.display()))
        .arg(repo("systemd/backupd.sysusers"))
        .output()
        .unwrap();
    assert!(
        sysusers.status.success(),
        "{}",
        String::from_utf8_lossy(&sysusers.stderr)
    );
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.starts_with("backupd:"), "{passwd}");
    let tmpfiles = Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", root.display()))
        .arg("--create")
        .arg(repo("systemd/backupd.tmpfiles"))
        .output()
        .unwrap();
    assert!(
        tmpfiles.status.success(),
        "{}",
        String::from_utf8_lossy(&tmpfiles.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root.join("var/lib/backupd"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn kubernetes_manifests_parse_and_share_one_loadable_policy() {
    let cm = yaml("deploy/kubernetes/configmap.yaml");
    assert_eq!(cm["kind"].as_str(), Some("ConfigMap"));
    let policy_text = cm["data"]["policy.toml"]
        .as_str()
        .expect("data.policy.toml");
    let policy = assert_policy_loads("configmap.yaml's policy.toml", policy_text);
    assert!(policy.jobs["app"].schedule.is_some());

    let secret = yaml("deploy/kubernetes/secret.yaml");
    assert_eq!(secret["kind"].as_str(), Some("Secret"));
    let cronjob = yaml("deploy/kubernetes/cronjob.yaml");
    assert_eq!(cronjob["kind"].as_str(), Some("CronJob"));
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    assert_eq!(deployment["kind"].as_str(), Some("Deployment"));
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(1));

    let pod_of = |y: &Yaml| -> Yaml {
        let spec = &y["spec"];
        if y["kind"].as_str() == Some("CronJob") {
            spec["jobTemplate"]["spec"]["template"]["spec"].clone()
        } else {
            spec["template"]["spec"].clone()
        }
    };
    for (what, doc, command) in [
        ("cronjob", &cronjob, "run-now"),
        ("deployment", &deployment, "run"),
    ] {
        let pod = pod_of(doc);
        let c = &pod["containers"][0];
        let args: Vec<&str> = c["args"]
            .as_vec()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(args.contains(&command), "{what} args {args:?}");
        let config = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
        let mounts = c["volumeMounts"].as_vec().unwrap();
        let mount_of = |path: &str| {
            mounts
                .iter()
                .find(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
                .unwrap_or_else(|| panic!("{what}: nothing mounted at {path}"))
                .clone()
        };
        assert_eq!(mount_of(config)["name"].as_str(), Some("policy"));
        // Every path the policy names is mounted.
        let identity = policy.encryption.identity_file.clone().unwrap();
        assert_eq!(
            mount_of(identity.to_str().unwrap())["name"].as_str(),
            Some("secrets")
        );
        assert_eq!(
            mount_of(policy.daemon.state_dir.to_str().unwrap())["name"].as_str(),
            Some("state")
        );
        assert_eq!(
            mount_of("/var/backups/backupd/x")["name"].as_str(),
            Some("backups")
        );
        assert_eq!(mount_of("/srv/app/x")["name"].as_str(), Some("data"));
        let volumes = pod["volumes"].as_vec().unwrap();
        let secret_vol = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some("secrets"))
            .unwrap();
        // backupd refuses secrets others can read: 0400 (256 decimal).
        assert_eq!(secret_vol["secret"]["defaultMode"].as_i64(), Some(0o400));
    }
    let probe = &pod_of(&deployment)["containers"][0]["livenessProbe"]["httpGet"];
    assert_eq!(probe["path"].as_str(), Some("/healthz"));
    let env = pod_of(&deployment)["containers"][0]["env"].clone();
    let listen = env
        .as_vec()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("BACKUPD_DAEMON__LISTEN"))
        .expect("the probe needs the listener on the pod IP");
    assert!(listen["value"].as_str().unwrap().ends_with(":9897"));
}

/// The two-replica example: its policy coordinates every scheduled job on an object
/// store, the replicas share one fixed instance, and everything the policy reads is
/// mounted.
#[test]
fn the_two_replica_deployment_coordinates_every_job_as_one_instance() {
    let cm = yaml("deploy/kubernetes/replicas-configmap.yaml");
    let policy = assert_policy_loads(
        "replicas-configmap.yaml's policy.toml",
        cm["data"]["policy.toml"]
            .as_str()
            .expect("data.policy.toml"),
    );
    for (name, job) in &policy.jobs {
        assert!(job.schedule.is_some(), "{name}");
        assert_eq!(
            job.coordination,
            backupd::policy::Coordination::Lease,
            "{name}: replicas would both run it"
        );
        let first = &policy.targets[&job.targets[0]];
        assert!(
            first
                .url
                .as_deref()
                .is_some_and(|u| !u.starts_with("file:")),
            "{name}: the first target must renew claims (an object store)"
        );
    }
    let d = yaml("deploy/kubernetes/replicas-deployment.yaml");
    assert_eq!(d["kind"].as_str(), Some("Deployment"));
    assert_eq!(d["spec"]["replicas"].as_i64(), Some(2));
    let pod = &d["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_vec().unwrap();
    let policy_volume = volumes
        .iter()
        .find(|v| v["name"].as_str() == Some("policy"))
        .unwrap();
    assert_eq!(
        policy_volume["configMap"]["name"].as_str(),
        cm["metadata"]["name"].as_str()
    );
    let c = &pod["containers"][0];
    let env = c["env"].as_vec().unwrap();
    let instance = env
        .iter()
        .find(|e| e["name"].as_str() == Some("BACKUPD_DAEMON__INSTANCE"))
        .expect("a fixed instance: pod names differ per replica");
    assert!(instance["value"].as_str().is_some_and(|v| !v.is_empty()));
    let mounts = c["volumeMounts"].as_vec().unwrap();
    let mounted = |path: &str| {
        mounts
            .iter()
            .any(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
    };
    let identity = policy.encryption.identity_file.clone().unwrap();
    assert!(mounted(identity.to_str().unwrap()));
    assert!(mounted(policy.daemon.state_dir.to_str().unwrap()));
    for target in policy.targets.values() {
        if let Some(file) = &target.secret_access_key_file {
            assert!(mounted(file.to_str().unwrap()), "{}", file.display());
        }
    }
}

#[test]
fn compose_file_and_dockerfile_hang_together() {
    let compose = yaml("deploy/docker-compose.yml");
    let backupd = &compose["services"]["backupd"];
    assert_eq!(
        backupd["build"]["dockerfile"].as_str(),
        Some("deploy/Dockerfile")
    );
    assert_eq!(backupd["command"][0].as_str(), Some("run"));
    assert!(compose["services"]["db"].as_hash().is_some());
    let policy_mount = backupd["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .find(|v| v.ends_with(":/etc/backupd/policy.toml:ro"))
        .expect("the policy is mounted");
    let host = policy_mount
        .split(':')
        .next()
        .unwrap()
        .trim_start_matches("./");
    let policy = assert_policy_loads(host, &read(&format!("deploy/{host}")));
    // The database the policy dumps is the compose service's.
    let url = postgres_url(&policy);
    assert!(url.contains("@db:5432/app"), "{url}");

    let dockerfile = read("deploy/Dockerfile");
    // The client tools backupd looks for on PATH, by the package that provides them.
    for package in [
        "postgresql-client",
        "mariadb-client",
        "redis-tools",
        "sqlite3",
        "age",
        "zstd",
    ] {
        assert!(
            dockerfile.contains(package),
            "Dockerfile does not install {package}"
        );
    }
    assert!(dockerfile.contains("CMD [\"run\"]"));
    assert!(dockerfile.contains("COPY --from=build /src/target/release/backupd"));
    assert!(
        repo("Cargo.lock").exists(),
        "the image builds with --locked"
    );
    // The binary the image runs knows the commands the manifests use.
    for cmd in ["run", "run-now", "status"] {
        let out = Command::new(BIN).args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success(), "backupd {cmd} --help");
    }
}

fn postgres_url(policy: &backupd::policy::Policy) -> String {
    policy
        .jobs
        .values()
        .flat_map(|job| job.source_specs.values())
        .find_map(|spec| match spec {
            backupd::policy::SourceSpec::Postgres(pg) => Some(pg.url.clone()),
            _ => None,
        })
        .expect("a postgres source")
}

/// Every `backupd_…` metric name in `text` (the shipped rules or dashboard).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("backupd_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        // `backupd_` also starts words that are not metrics: the rules' own group name.
        if name.len() > "backupd_".len() {
            out.insert(name.to_string());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    require_tool("promtool");
    let dir = repo("deploy/prometheus");
    for (verb, file) in [
        ("check", "backupd-alerts.yaml"),
        ("test", "backupd-alerts.test.yaml"),
    ] {
        let out = Command::new("promtool")
            .args([verb, "rules", file])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {verb} rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Each alert has at least one unit test that expects it to fire.
    let rules = read("deploy/prometheus/backupd-alerts.yaml");
    let tests = read("deploy/prometheus/backupd-alerts.test.yaml");
    for line in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {line}")),
            "{line} has no unit test"
        );
    }
}

#[test]
fn every_metric_the_rules_and_the_dashboard_use_is_one_the_daemon_exports() {
    let world = super::support::World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/a"), "a").unwrap();
    let body = std::fs::read_to_string(world.policy(&format!(
        "[jobs.app]\nschedule = \"0 3 1 1 *\"\nverify = {{ schedule = \"0 4 1 1 *\" }}\nalert_if_older_than = \"1d\"\ntargets = [\"local\"]\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display()
    )))
    .unwrap()
    .replacen("[daemon]\n", "[daemon]\nlisten = \"127.0.0.1:0\"\n", 1);
    world.write_policy(&body);
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", super::support::text(&out));
    let mut daemon = super::daemon_support::Daemon::start(&world, &[]);
    daemon.wait_status(60, "the inventory", |s| {
        s["jobs"]["app"]["snapshots"]["local"] == 1
    });
    let (code, metrics) = daemon.get("/metrics");
    assert_eq!(code, 200);
    assert!(daemon.stop().success());
    let exported: std::collections::BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/backupd-dashboard.json"))
            .expect("the dashboard is JSON");
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    );
    for (file, text) in [
        (
            "deploy/prometheus/backupd-alerts.yaml",
            read("deploy/prometheus/backupd-alerts.yaml"),
        ),
        (
            "deploy/grafana/backupd-dashboard.json",
            dashboard.to_string(),
        ),
    ] {
        let used = metric_names(&text);
        assert!(used.len() >= 8, "{file} uses {used:?}");
        for name in &used {
            assert!(
                exported.contains(name),
                "{file} uses {name}, which the daemon does not export (it exports {exported:?})"
            );
        }
    }
}
