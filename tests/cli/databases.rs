//! PostgreSQL, MariaDB and Redis sources against the real throwaway servers that
//! `tests/services` starts (tests/run does it). A missing server fails the test loudly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Connection facts exported by `tests/services start`.
struct Servers {
    password: String,
    pg: String,
    mysql: String,
    redis: String,
}

fn servers() -> Servers {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: the database tests need the servers that `tests/run` starts (tests/services start)")
        })
    };
    Servers {
        password: var("BACKUPD_TEST_PASSWORD"),
        pg: var("BACKUPD_TEST_PG"),
        mysql: var("BACKUPD_TEST_MYSQL"),
        redis: var("BACKUPD_TEST_REDIS"),
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{:x}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ rand_u64()
    )
}

fn rand_u64() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        & 0xffff_ffff
}

fn host_port(addr: &str) -> (&str, &str) {
    addr.split_once(':').unwrap()
}

/// psql as the superuser against `db`; returns trimmed stdout.
fn psql(s: &Servers, db: &str, sql: &str) -> String {
    let (h, p) = host_port(&s.pg);
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            h,
            "-p",
            p,
            "-U",
            "postgres",
            "-d",
            db,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", &s.password)
        .output();
    checked_stdout(out, "psql", sql)
}

/// The trimmed stdout of a client run that must succeed.
fn checked_stdout(out: std::io::Result<std::process::Output>, tool: &str, sql: &str) -> String {
    let out = out.unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn mariadb(s: &Servers, db: &str, sql: &str) -> String {
    let (h, p) = host_port(&s.mysql);
    let out = Command::new("mariadb")
        .args([
            "--no-defaults",
            "--protocol=tcp",
            "-h",
            h,
            "-P",
            p,
            "-u",
            "backupd",
            "--batch",
            "--skip-column-names",
            "--raw",
            "--default-character-set=utf8mb4",
        ])
        .args(if db.is_empty() { vec![] } else { vec![db] })
        .args(["-e", sql])
        .env("MYSQL_PWD", &s.password)
        .output();
    checked_stdout(out, "mariadb", sql)
}

fn redis_cli(addr: &str, password: &str, args: &[&str]) -> String {
    let (h, p) = host_port(addr);
    let out = Command::new("redis-cli")
        .args(["-h", h, "-p", p])
        .args(args)
        .envs((!password.is_empty()).then_some(("REDISCLI_AUTH", password)))
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn password_file(world: &World, password: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = world.path("db.pass");
    std::fs::write(&path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Per-table content checksums and object counts of a PostgreSQL database.
fn pg_fingerprint(s: &Servers, db: &str) -> String {
    let tables = psql(
        s,
        db,
        "select string_agg(format('%I.%I', schemaname, tablename), ' ' order by tablename) from pg_tables where schemaname = 'public'",
    );
    let mut out = Vec::new();
    for t in tables.split_whitespace() {
        out.push(format!(
            "{t}={}",
            psql(s, db, &format!("select count(*) || ':' || coalesce(md5(string_agg(x::text, ',' order by x::text)), '-') from {t} x"))
        ));
    }
    out.push(psql(
        s,
        db,
        "select 'views=' || count(*) from pg_views where schemaname = 'public'",
    ));
    out.push(psql(s, db, "select 'functions=' || string_agg(proname, ',' order by proname) from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'public'"));
    out.push(psql(
        s,
        db,
        "select 'seq=' || last_value from public.ticket_seq",
    ));
    out.push(psql(s, db, "select 'fn=' || public.shout('abc')"));
    out.join("\n")
}

fn pg_fixture(s: &Servers, db: &str) {
    psql(s, "postgres", &format!("create database {db}"));
    let mut sql = String::from(
        "create table awkward(id serial primary key, blob bytea, txt text, n numeric, j jsonb, nothing text);
         insert into awkward(blob, txt, n, j, nothing) values
           ('\\x00ff10'::bytea, 'ünïcödé 日本語 🎉', 1.5, '{\"a\": [1, null]}', null),
           (decode(repeat('ab', 600000), 'hex'), repeat('large row ', 100000), null, null, null),
           (null, E'tab\\tnewline\\nquote''', -0.000001, 'null', 'x');
         create view awkward_view as select id, txt from awkward where nothing is null;
         create function shout(t text) returns text language sql as $$ select upper(t) || '!' $$;
         create sequence ticket_seq; select setval('ticket_seq', 1000);",
    );
    for i in 0..25 {
        sql.push_str(&format!(
            "create table t{i}(id int primary key, v text); insert into t{i} select g, md5(g::text) from generate_series(1, {}) g;",
            i * 40
        ));
    }
    psql(s, db, &sql);
}

#[test]
fn postgres_round_trips_exactly_into_a_new_database() {
    let s = servers();
    let world = World::new();
    let db = unique("fx");
    pg_fixture(&s, &db);
    let pw = password_file(&world, &s.password);
    world.policy(&format!(
        "[jobs.db]\ntargets = [\"local\"]\n\n[jobs.db.sources.main]\nkind = \"postgres\"\nurl = \"postgres://postgres@{}/{db}\"\npassword_file = \"{}\"\n",
        s.pg,
        pw.display()
    ));
    let out = world.backupd(&["run-now"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !text(&out).contains(&s.password),
        "the password must not be printed"
    );

    let listed = list_json(&world, &["db"]);
    let stats = &listed[0]["sources"]["main"]["stats"];
    assert_eq!(stats["engine"], "postgres");
    assert_eq!(stats["tables"]["public.awkward"], 3);
    assert_eq!(stats["tables"]["public.t24"], 960);
    assert!(
        stats["server_version"]
            .as_str()
            .unwrap()
            .starts_with(char::is_numeric)
    );

    let copy = format!("{db}_restored");
    let out = world.backupd(&[
        "restore",
        "db",
        "--only",
        "main",
        "--into-url",
        &format!("postgres://postgres@{}/{copy}", s.pg),
        "--create",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(pg_fingerprint(&s, &db), pg_fingerprint(&s, &copy));

    // Without --into-url the dump file lands under DIR, restorable with pg_restore by hand.
    let dir = world.path("files");
    let out = world.backupd(&["restore", "db", "--to", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let dump = dir.join(format!("main/{db}.pgdump"));
    let listing = sh(&format!("pg_restore --list '{}'", dump.display()));
    assert!(listing.contains("TABLE public awkward"), "{listing}");
    psql(&s, "postgres", &format!("drop database {db}"));
    psql(&s, "postgres", &format!("drop database {copy}"));
}

fn my_fingerprint(s: &Servers, db: &str) -> String {
    let tables = mariadb(
        s,
        db,
        &format!(
            "select group_concat(table_name order by table_name separator ' ') from information_schema.tables where table_schema = '{db}' and table_type = 'BASE TABLE'"
        ),
    );
    let mut out = Vec::new();
    for t in tables.split_whitespace() {
        out.push(mariadb(s, db, &format!("select concat('{t}=', count(*), ':', coalesce(md5(group_concat(md5(concat_ws('|', id, hex(v), coalesce(hex(w), 'NULL'))) order by id)), '-')) from `{t}`")));
    }
    out.push(mariadb(s, db, &format!("select concat('views=', count(*)) from information_schema.views where table_schema = '{db}'")));
    out.push(mariadb(s, db, &format!("select concat('routines=', count(*)) from information_schema.routines where routine_schema = '{db}'")));
    out.join("\n")
}

#[test]
fn mysql_round_trips_exactly_into_a_new_database() {
    let s = servers();
    let world = World::new();
    let db = unique("fx");
    mariadb(
        &s,
        "",
        &format!("create database {db} character set utf8mb4"),
    );
    let mut sql = String::from(
        "create table awkward(id int primary key, v longblob, w text character set utf8mb4);
         insert into awkward values (1, x'00ff10', 'ünïcödé 日本語 🎉'), (2, repeat('large ', 200000), null), (3, null, 'tab\\tquote''');
         create view awkward_view as select id from awkward where w is null;
         create procedure count_awkward() select count(*) from awkward;",
    );
    for i in 0..10 {
        sql.push_str(&format!("create table t{i}(id int primary key, v varchar(64), w int); insert into t{i} select seq, md5(seq), null from seq_1_to_{};", i * 30 + 1));
    }
    mariadb(&s, &db, &sql);
    let pw = password_file(&world, &s.password);
    world.policy(&format!(
        "[jobs.db]\ntargets = [\"local\"]\ncompression = \"zstd\"\n\n[jobs.db.sources.shop]\nkind = \"mysql\"\nurl = \"mysql://backupd@{}/{db}\"\npassword_file = \"{}\"\n",
        s.mysql,
        pw.display()
    ));
    let out = world.backupd(&["run-now"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = list_json(&world, &["db"]);
    assert_eq!(listed[0]["sources"]["shop"]["stats"]["tables"]["t9"], 271);

    let copy = format!("{db}_restored");
    let out = world.backupd(&[
        "restore",
        "db",
        "--into-url",
        &format!("mysql://backupd@{}/{copy}", s.mysql),
        "--create",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(my_fingerprint(&s, &db), my_fingerprint(&s, &copy));
    mariadb(&s, "", &format!("drop database {db}; drop database {copy}"));
}

#[test]
fn redis_rdb_restores_into_a_scratch_server() {
    let s = servers();
    let world = World::new();
    let r = |args: &[&str]| redis_cli(&s.redis, &s.password, args);
    let tag = unique("k");
    r(&["-n", "5", "SET", &format!("{tag}:str"), "ünïcödé"]);
    r(&[
        "-n",
        "5",
        "HSET",
        &format!("{tag}:hash"),
        "a",
        "1",
        "b",
        "2",
    ]);
    r(&["-n", "5", "RPUSH", &format!("{tag}:list"), "x", "y", "z"]);
    r(&[
        "-n",
        "5",
        "ZADD",
        &format!("{tag}:zset"),
        "1",
        "one",
        "2",
        "two",
    ]);
    r(&["-n", "6", "SADD", &format!("{tag}:set"), "m1", "m2"]);
    let pw = password_file(&world, &s.password);
    world.policy(&format!(
        "[jobs.cache]\ntargets = [\"local\"]\n\n[jobs.cache.sources.redis]\nkind = \"redis\"\nurl = \"redis://{}\"\npassword_file = \"{}\"\n",
        s.redis,
        pw.display()
    ));
    let out = world.backupd(&["run-now"]);
    assert!(out.status.success(), "{}", text(&out));
    let dir = world.path("restore");
    let out = world.backupd(&["restore", "cache", "--to", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let rdb = dir.join("redis/dump.rdb");
    sh(&format!("redis-check-rdb '{}'", rdb.display()));

    // Load it into a scratch server and compare what it holds.
    let port = 63900 + (std::process::id() % 50) as u16;
    let _server = KillOnDrop(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                dir.join("redis").to_str().unwrap(),
                "--dbfilename",
                "dump.rdb",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_cli(&addr, "", &["PING"]) != "PONG" {
        assert!(Instant::now() < deadline, "scratch redis did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = |args: &[&str]| redis_cli(&addr, "", args);
    assert_eq!(got(&["-n", "5", "GET", &format!("{tag}:str")]), "ünïcödé");
    assert_eq!(got(&["-n", "5", "HGET", &format!("{tag}:hash"), "b"]), "2");
    assert_eq!(
        got(&["-n", "5", "LRANGE", &format!("{tag}:list"), "0", "-1"]),
        "x\ny\nz"
    );
    assert_eq!(
        got(&["-n", "5", "ZSCORE", &format!("{tag}:zset"), "two"]),
        "2"
    );
    assert_eq!(got(&["-n", "6", "SCARD", &format!("{tag}:set")]), "2");
    // The manifest's key counts are what the scratch server holds.
    let keys = &list_json(&world, &["cache"])[0]["sources"]["redis"]["stats"]["keys"];
    for db in ["5", "6"] {
        assert_eq!(
            got(&["-n", db, "DBSIZE"]),
            keys[format!("db{db}")].to_string()
        );
    }
}

/// A child process that dies with the test, pass or fail.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_wrong_password_commits_nothing_and_is_not_printed() {
    let s = servers();
    let world = World::new();
    let wrong = "definitely-Wrong-pw-4711";
    let pw = password_file(&world, wrong);
    world.policy(&format!(
        "[jobs.db]\ntargets = [\"local\"]\n\n[jobs.db.sources.pg]\nkind = \"postgres\"\nurl = \"postgres://postgres@{}/postgres\"\npassword_file = \"{}\"\n\n[jobs.db.sources.my]\nkind = \"mysql\"\nurl = \"mysql://backupd@{}/mysql\"\npassword_file = \"{}\"\n\n[jobs.db.sources.cache]\nkind = \"redis\"\nurl = \"redis://{}\"\npassword_file = \"{}\"\n",
        s.pg,
        pw.display(),
        s.mysql,
        pw.display(),
        s.redis,
        pw.display()
    ));
    let out = std::process::Command::new(BIN)
        .args([
            "--config",
            world.path("policy.toml").to_str().unwrap(),
            "run-now",
        ])
        .env("BACKUPD_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("password authentication failed"), "{all}");
    assert!(all.contains("Access denied"), "{all}");
    assert!(
        all.contains("redis") && all.contains("authentication failed"),
        "{all}"
    );
    assert!(
        !all.contains(wrong),
        "the password leaked into the output:\n{all}"
    );
    assert!(world.stored("manifest.json").is_empty());

    let out = world.backupd(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!text(&out).contains(wrong));
}

#[test]
fn an_unreachable_server_and_a_missing_tool_are_explained() {
    let world = World::new();
    world.policy("[jobs.db]\ntargets = [\"local\"]\n\n[jobs.db.sources.pg]\nkind = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:1/app\"\n");
    let out = world.backupd(&["run-now"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("127.0.0.1:1"), "{}", text(&out));
    assert!(world.stored("manifest.json").is_empty());

    // A PATH without the client tools: both check and run-now name the package to install.
    let empty = world.path("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    for args in [vec!["check"], vec!["run-now"]] {
        let out = Command::new(BIN)
            .args(["--config", world.path("policy.toml").to_str().unwrap()])
            .args(&args)
            .env("PATH", &empty)
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            text(&out).contains(
                "pg_dump is not installed or not on PATH: install the postgresql-client package"
            ),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn a_dump_killed_half_way_commits_nothing_and_no_password_reaches_argv() {
    let s = servers();
    let world = World::new();
    let db = unique("big");
    psql(&s, "postgres", &format!("create database {db}"));
    // ~120 MB of hex text; gzip -9 on it keeps pg_dump busy for seconds.
    psql(
        &s,
        &db,
        "create table big as select g as id, (select string_agg(md5(g::text || x::text), '') from generate_series(1, 32) x) as v from generate_series(1, 120000) g",
    );
    let pw = password_file(&world, &s.password);
    world.policy(&format!(
        "[jobs.db]\ntargets = [\"local\"]\ncompression_level = 9\n\n[jobs.db.sources.pg]\nkind = \"postgres\"\nurl = \"postgres://postgres@{}/{db}\"\npassword_file = \"{}\"\n",
        s.pg,
        pw.display()
    ));
    let mut child = Command::new(BIN)
        .args([
            "--config",
            world.path("policy.toml").to_str().unwrap(),
            "run-now",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen_pg_dump = false;
    loop {
        // While the dump runs, no process on this machine may carry the password in argv.
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                assert!(
                    !cmdline.contains(&s.password),
                    "password in argv: {cmdline}"
                );
                seen_pg_dump |= cmdline.starts_with("/usr/bin/pg_dump")
                    || cmdline.contains("pg_dump --format=custom");
            }
        }
        let active = psql(
            &s,
            "postgres",
            &format!(
                "select count(*) from pg_stat_activity where datname = '{db}' and application_name = 'pg_dump' and state = 'active'"
            ),
        );
        if active == "1"
            && seen_pg_dump
            && world.stored("").iter().any(|p| {
                std::fs::metadata(p)
                    .map(|m| m.len() > 1 << 20)
                    .unwrap_or(false)
            })
        {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the dump finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "pg_dump never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
    psql(
        &s,
        "postgres",
        &format!(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = '{db}' and application_name = 'pg_dump'"
        ),
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("pg_dump exited with status 1"),
        "{}",
        text(&out)
    );
    assert!(
        world.stored("manifest.json").is_empty(),
        "a killed dump must not be committed"
    );
    assert!(
        world.stored(".age").is_empty(),
        "and its objects are removed"
    );
    psql(&s, "postgres", &format!("drop database {db}"));
}

#[test]
fn several_databases_and_globals_become_one_object_each() {
    let s = servers();
    let world = World::new();
    let (a, b) = (unique("multi_a"), unique("multi_b"));
    for db in [&a, &b] {
        psql(&s, "postgres", &format!("create database {db}"));
        psql(
            &s,
            db,
            &format!("create table marker as select '{db}'::text as name"),
        );
    }
    let role = unique("role");
    psql(&s, "postgres", &format!("create role {role} login"));
    let pw = password_file(&world, &s.password);
    world.policy(&format!(
        "[jobs.db]\ntargets = [\"local\"]\n\n[jobs.db.sources.cluster]\nkind = \"postgres\"\nurl = \"postgres://postgres@{}\"\npassword_file = \"{}\"\ndatabases = [\"{a}\", \"{b}\"]\ninclude_globals = true\n",
        s.pg,
        pw.display()
    ));
    let out = world.backupd(&["run-now"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = list_json(&world, &["db"]);
    let sources = listed[0]["sources"].as_object().unwrap();
    let mut names: Vec<&String> = sources.keys().collect();
    names.sort();
    let mut expected = [
        format!("cluster-{a}"),
        format!("cluster-{b}"),
        "cluster-globals".to_string(),
    ];
    expected.sort();
    assert_eq!(names, expected.iter().collect::<Vec<_>>());
    assert!(sources.values().all(|e| e["group"] == "cluster"));

    let dir = world.path("r");
    let out = world.backupd(&[
        "restore",
        "db",
        "--only",
        "cluster",
        "--to",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    for db in [&a, &b] {
        let listing = sh(&format!(
            "pg_restore --list '{}'",
            dir.join(format!("cluster-{db}/{db}.pgdump")).display()
        ));
        assert!(listing.contains("TABLE public marker"), "{listing}");
    }
    let globals = std::fs::read_to_string(dir.join("cluster-globals/globals.sql")).unwrap();
    assert!(
        globals.contains(&format!("CREATE ROLE {role}")),
        "{globals}"
    );

    // --into-url takes one database: the group alone is refused with a hint.
    let out = world.backupd(&[
        "restore",
        "db",
        "--only",
        "cluster",
        "--into-url",
        "postgres://postgres@127.0.0.1/x",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("restores one database source"),
        "{}",
        text(&out)
    );
    for db in [&a, &b] {
        psql(&s, "postgres", &format!("drop database {db}"));
    }
    psql(&s, "postgres", &format!("drop role {role}"));
}

#[test]
fn passwords_can_come_from_the_environment() {
    let s = servers();
    let world = World::new();
    world.policy(&format!(
        "[jobs.db]\ntargets = [\"local\"]\n\n[jobs.db.sources.pg]\nkind = \"postgres\"\nurl = \"postgres://postgres@{}/postgres\"\n\n[jobs.db.sources.cache]\nkind = \"redis\"\nurl = \"redis://{}\"\n",
        s.pg, s.redis
    ));
    let out = Command::new(BIN)
        .args([
            "--config",
            world.path("policy.toml").to_str().unwrap(),
            "run-now",
        ])
        .env("PGPASSWORD", &s.password)
        .env("REDISCLI_AUTH", &s.password)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(&s.password));
}

fn scratch_databases(s: &Servers) -> (String, String) {
    (
        psql(
            s,
            "postgres",
            "select count(*) from pg_database where datname like 'backupd_verify_%'",
        ),
        mariadb(
            s,
            "",
            "select count(*) from information_schema.schemata where schema_name like 'backupd_verify_%'",
        ),
    )
}

#[test]
fn database_snapshots_verify_by_test_restore_and_leave_no_scratch_database() {
    let s = servers();
    let world = World::new();
    let (pg_db, my_db) = (unique("vpg"), unique("vmy"));
    pg_fixture(&s, &pg_db);
    mariadb(&s, "", &format!("create database {my_db}"));
    mariadb(
        &s,
        &my_db,
        "create table users(id int primary key, name text); insert into users values (1, 'ada'), (2, 'grace');",
    );
    let tag = unique("vk");
    redis_cli(&s.redis, &s.password, &["-n", "7", "SET", &tag, "v"]);
    let pw = password_file(&world, &s.password);
    let jobs = |pg_check: &str| {
        format!(
            "[jobs.db]\ntargets = [\"local\"]\n\n[jobs.db.sources.pg]\nkind = \"postgres\"\nurl = \"postgres://postgres@{}/{pg_db}\"\npassword_file = \"{}\"\nchecks = [\"{pg_check}\"]\n\n[jobs.db.sources.my]\nkind = \"mysql\"\nurl = \"mysql://backupd@{}/{my_db}\"\npassword_file = \"{}\"\nchecks = [\"select count(*) = 2 from users\"]\n\n[jobs.db.sources.cache]\nkind = \"redis\"\nurl = \"redis://{}\"\npassword_file = \"{}\"\n",
            s.pg,
            pw.display(),
            s.mysql,
            pw.display(),
            s.redis,
            pw.display()
        )
    };
    let before = scratch_databases(&s);
    world.policy(&jobs("select count(*) = 3 from awkward"));
    assert!(world.backupd(&["run-now"]).status.success());
    let out = world.backupd(&["verify", "db", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let record: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let pg_checks = record[0]["sources"]["pg"]["checks"].to_string();
    assert!(
        pg_checks.contains("rows in public.t24")
            && pg_checks.contains("check: select count(*) = 3 from awkward"),
        "{pg_checks}"
    );
    let my_checks = record[0]["sources"]["my"]["checks"].to_string();
    assert!(
        my_checks.contains("rows in users")
            && my_checks.contains("check: select count(*) = 2 from users"),
        "{my_checks}"
    );
    let redis_checks = record[0]["sources"]["cache"]["checks"].to_string();
    assert!(
        redis_checks.contains("redis-check-rdb") && redis_checks.contains("key count"),
        "{redis_checks}"
    );
    assert_eq!(
        scratch_databases(&s),
        before,
        "scratch databases are dropped"
    );

    // A valid dump whose check query fails is a failed verification, named as such.
    world.policy(&jobs("select count(*) > 100 from awkward"));
    let out = world.backupd(&["verify", "db"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("source pg: check \"check: select count(*) > 100 from awkward\" failed"),
        "{stdout}"
    );
    assert_eq!(
        scratch_databases(&s),
        before,
        "scratch databases are dropped after a failure too"
    );
    psql(&s, "postgres", &format!("drop database {pg_db}"));
    mariadb(&s, "", &format!("drop database {my_db}"));
}
