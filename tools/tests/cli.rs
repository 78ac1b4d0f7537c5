//! `sluicectl` against a live `sluice` broker: every cluster subcommand, JSON output, exit
//! codes, and a produce | consume round trip cross-checked with kcat.
//!
//! The broker binary is `$SLUICE_BIN` or `sluice` beside `sluicectl` in the target directory
//! (`cargo build -p engine --bin sluice` builds it; the test fails, naming the path, if not).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../../engine/tests/support/ports.rs"]
mod ports;

const CTL: &str = env!("CARGO_BIN_EXE_sluicectl");
/// Bound on any one command or wait in these tests.
const LIMIT: Duration = Duration::from_secs(30);

fn sluice_bin() -> PathBuf {
    let path = std::env::var_os("SLUICE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(CTL)
                .parent()
                .expect("sluicectl has a directory")
                .join("sluice")
        });
    assert!(
        path.is_file(),
        "broker binary {} not found: run `cargo build -p engine --bin sluice` or set SLUICE_BIN",
        path.display()
    );
    path
}

/// True once `addr` answers an ApiVersions v0 request with error 0: a Kafka answer, not just
/// an accepted TCP connection, is what "the broker is up" means to the tests.
fn answers_api_versions(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    // size, api_key 18, api_version 0, correlation id 7, client id "t".
    let req = [0, 0, 0, 11, 0, 18, 0, 0, 0, 0, 0, 7, 0, 1, b't'];
    let mut head = [0u8; 10];
    s.write_all(&req).is_ok()
        && s.read_exact(&mut head).is_ok()
        && head[4..8] == [0, 0, 0, 7]
        && head[8..10] == [0, 0]
}

/// A broker on a free 127.0.0.1 port, killed on drop.
struct Broker {
    child: Child,
    addr: String,
    data: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        Broker::start_with(|_| Vec::new())
    }

    /// A broker with more flags, made from its PLAINTEXT address (say, more listeners).
    fn start_with(extra: impl FnOnce(&str) -> Vec<String>) -> Broker {
        let tmp = tempfile::tempdir().expect("tempdir");
        let port = ports::free_port();
        let addr = format!("127.0.0.1:{port}");
        let data = tmp.path().join("data");
        let log = std::fs::File::create(tmp.path().join("broker.log")).expect("log");
        let child = Command::new(sluice_bin())
            .args(["--data-dir", data.to_str().expect("utf8 path")])
            .args(["--listen", &addr, "--shards", "2"])
            .args(extra(&addr))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sluice");
        let mut b = Broker {
            child,
            addr,
            data,
            _tmp: tmp,
        };
        let deadline = Instant::now() + LIMIT;
        while !answers_api_versions(&b.addr) {
            if let Ok(Some(status)) = b.child.try_wait() {
                panic!("sluice exited ({status}) before serving: {}", b.log());
            }
            assert!(
                Instant::now() < deadline,
                "broker did not serve on {}: {}",
                b.addr,
                b.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    /// The broker's log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self._tmp.path().join("broker.log")).unwrap_or_default()
    }

    /// Stops the broker with SIGTERM (a clean close writes the index files) and waits.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + LIMIT;
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
    /// The broker's log when a command against it failed (for the failure message).
    broker_log: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// Runs a program with `stdin`, killing it if it outlives `LIMIT`.
fn run_program(mut cmd: Command, stdin: &str) -> Out {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(data.as_bytes());
    });
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let ereader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("command did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    Out {
        code: status.code().unwrap_or(-1),
        stdout: reader.join().expect("stdout reader"),
        stderr: ereader.join().expect("stderr reader"),
        broker_log: String::new(),
    }
}

fn ctl_in(addr: &str, args: &[&str], stdin: &str) -> Out {
    let mut cmd = Command::new(CTL);
    cmd.args(["--bootstrap", addr, "--request-timeout-ms", "5000"])
        .args(args);
    run_program(cmd, stdin)
}

fn ctl(b: &Broker, args: &[&str]) -> Out {
    let mut out = ctl_in(&b.addr, args, "");
    if out.code != 0 {
        out.broker_log = b.log();
    }
    out
}

fn ok(o: Out) -> Out {
    assert_eq!(
        o.code, 0,
        "stdout: {}\nstderr: {}\nbroker log:\n{}",
        o.stdout, o.stderr, o.broker_log
    );
    o
}

#[test]
fn topics_and_configs_lifecycle() {
    let b = Broker::start();
    let created = ok(ctl(
        &b,
        &[
            "topics",
            "create",
            "orders",
            "--partitions",
            "3",
            "--replication-factor",
            "1",
            "--config",
            "retention.ms=3600000",
            "--output",
            "json",
        ],
    ))
    .json();
    assert_eq!(created["name"], "orders");
    assert_eq!(created["partitions"], 3);
    assert_eq!(created["replication_factor"], 1);

    let list = ok(ctl(&b, &["topics", "list", "--output", "json"])).json();
    assert!(
        list.as_array().unwrap().iter().any(|t| t == "orders"),
        "{list}"
    );
    assert!(ok(ctl(&b, &["topics", "list"]))
        .stdout
        .lines()
        .any(|l| l == "orders"));

    ok(ctl_in(
        &b.addr,
        &["produce", "orders", "--partition", "1"],
        "a\nb\nc\n",
    ));
    let d = ok(ctl(
        &b,
        &["topics", "describe", "orders", "--output", "json"],
    ))
    .json();
    let parts = d["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[1]["partition"], 1);
    assert_eq!(parts[1]["leader"], parts[1]["replicas"][0]);
    assert_eq!(parts[1]["isr"], parts[1]["replicas"]);
    assert_eq!(parts[1]["log_start_offset"], 0);
    assert_eq!(parts[1]["log_end_offset"], 3);
    assert_eq!(parts[0]["log_end_offset"], 0);
    let table = ok(ctl(&b, &["topics", "describe", "orders"])).stdout;
    assert!(table.starts_with("TOPIC"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");

    let grown = ok(ctl(
        &b,
        &[
            "topics",
            "add-partitions",
            "orders",
            "--total",
            "5",
            "--output",
            "json",
        ],
    ));
    assert!(
        grown.stderr.contains("WARNING: keyed ordering changes"),
        "{}",
        grown.stderr
    );
    assert_eq!(grown.json()["partitions"], 5);
    let d = ok(ctl(
        &b,
        &["topics", "describe", "orders", "--output", "json"],
    ))
    .json();
    assert_eq!(d["partitions"].as_array().unwrap().len(), 5);

    ok(ctl(
        &b,
        &[
            "configs",
            "alter",
            "--topic",
            "orders",
            "--set",
            "retention.ms=60000",
            "--set",
            "retention.bytes=1048576",
        ],
    ));
    let cfg = ok(ctl(
        &b,
        &[
            "configs", "describe", "--topic", "orders", "--output", "json",
        ],
    ))
    .json();
    let get = |name: &str| {
        cfg.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing from {cfg}"))
    };
    assert_eq!(get("retention.ms")["value"], "60000");
    assert_eq!(get("retention.ms")["source"], "DYNAMIC_TOPIC_CONFIG");
    assert_eq!(get("retention.bytes")["value"], "1048576");
    ok(ctl(
        &b,
        &[
            "configs",
            "alter",
            "--topic",
            "orders",
            "--delete",
            "retention.bytes",
        ],
    ));
    let cfg = ok(ctl(
        &b,
        &[
            "configs", "describe", "--topic", "orders", "--output", "json",
        ],
    ))
    .json();
    let policy = cfg
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "retention.bytes")
        .cloned()
        .unwrap();
    assert_eq!(policy["value"], "-1");
    assert_eq!(policy["source"], "DEFAULT_CONFIG");
    let broker_cfg = ok(ctl(
        &b,
        &["configs", "describe", "--broker", "1", "--output", "json"],
    ));
    assert!(!broker_cfg.json().as_array().unwrap().is_empty());

    let del = ok(ctl(&b, &["topics", "delete", "orders", "--output", "json"])).json();
    assert_eq!(del["deleted"][0], "orders");
    let gone = ctl(&b, &["topics", "describe", "orders"]);
    assert_eq!(gone.code, 1, "{}", gone.stderr);
}

#[test]
fn error_exit_codes() {
    let b = Broker::start();
    let unknown = ctl(&b, &["topics", "describe", "missing-topic"]);
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("missing-topic"),
        "{}",
        unknown.stderr
    );
    assert!(
        unknown.stderr.contains("UNKNOWN_TOPIC_OR_PARTITION"),
        "{}",
        unknown.stderr
    );
    assert_eq!(
        ctl_in(&b.addr, &["produce", "missing-topic"], "x\n").code,
        1
    );
    assert_eq!(
        ctl(&b, &["consume", "missing-topic", "--timeout-ms", "100"]).code,
        1
    );

    ok(ctl(&b, &["topics", "create", "dup", "--partitions", "1"]));
    let dup = ctl(&b, &["topics", "create", "dup", "--partitions", "1"]);
    assert_eq!(dup.code, 1);
    assert!(
        dup.stderr.contains("TOPIC_ALREADY_EXISTS"),
        "{}",
        dup.stderr
    );
    let shrink = ctl(&b, &["topics", "add-partitions", "dup", "--total", "1"]);
    assert_eq!(shrink.code, 1, "{}", shrink.stderr);
    let bad_line = ctl_in(
        &b.addr,
        &["produce", "dup", "--format", "json"],
        "{\"value\":\"kept\"}\nnot json\n",
    );
    assert_eq!(bad_line.code, 1);
    assert!(bad_line.stderr.contains("line 2"), "{}", bad_line.stderr);
    let d = ok(ctl(&b, &["topics", "describe", "dup", "--output", "json"])).json();
    assert_eq!(
        d["partitions"][0]["log_end_offset"], 1,
        "the line before the bad one is sent"
    );
    let no_partition = ctl(
        &b,
        &["consume", "dup", "--partition", "7", "--timeout-ms", "100"],
    );
    assert_eq!(no_partition.code, 1, "{}", no_partition.stderr);

    // Nothing listens on a port we just released.
    let port = ports::free_port();
    let down = ctl_in(&format!("127.0.0.1:{port}"), &["topics", "list"], "");
    assert_eq!(down.code, 3, "{}", down.stderr);
    assert!(
        down.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        down.stderr
    );

    // A dead address first in the bootstrap list is skipped; SLUICE_BOOTSTRAP is honoured.
    let both = ctl_in(
        &format!("127.0.0.1:{port},{}", b.addr),
        &["topics", "list"],
        "",
    );
    assert_eq!(both.code, 0, "{}", both.stderr);
    let mut env_cmd = Command::new(CTL);
    env_cmd
        .env("SLUICE_BOOTSTRAP", &b.addr)
        .args(["topics", "list"]);
    let via_env = run_program(env_cmd, "");
    assert_eq!(via_env.code, 0, "{}", via_env.stderr);
    assert!(via_env.stdout.lines().any(|l| l == "dup"));

    // A peer that accepts but never answers: the request timeout ends it with exit code 3.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let mut cmd = Command::new(CTL);
    cmd.args([
        "--bootstrap",
        &silent_addr,
        "--request-timeout-ms",
        "300",
        "topics",
        "list",
    ]);
    let started = Instant::now();
    let hung = run_program(cmd, "");
    assert_eq!(hung.code, 3, "{}", hung.stderr);
    assert!(hung.stderr.contains("did not answer"), "{}", hung.stderr);
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(silent);

    assert_eq!(ctl(&b, &["topics", "create"]).code, 2);
    assert_eq!(ctl(&b, &["topics", "frobnicate"]).code, 2);
    assert_eq!(ctl(&b, &["produce", "dup", "--acks", "2"]).code, 2);
    assert_eq!(ctl(&b, &["configs", "alter", "--topic", "dup"]).code, 2);
    assert_eq!(ctl(&b, &["configs", "describe"]).code, 2);
    assert_eq!(
        ctl(&b, &["topics", "create", "x", "--config", "novalue"]).code,
        2
    );
    assert_eq!(
        ctl(&b, &["consume", "dup", "--from-timestamp", "yesterday"]).code,
        2
    );
}

#[test]
fn produce_consume_round_trip_with_keys_and_headers() {
    let b = Broker::start();
    ok(ctl(
        &b,
        &["topics", "create", "events", "--partitions", "4"],
    ));
    let mut input = String::new();
    for i in 0..40 {
        input.push_str(&format!(
            "{{\"key\":\"user-{i}\",\"value\":\"event {i}\",\"headers\":{{\"seq\":\"{i}\",\"src\":\"test\"}}}}\n"
        ));
    }
    input.push_str("{\"key\":null,\"value\":\"unkeyed\",\"partition\":2}\n");
    let summary = ok(ctl_in(
        &b.addr,
        &[
            "produce",
            "events",
            "--format",
            "json",
            "--compression",
            "lz4",
            "--output",
            "json",
        ],
        &input,
    ))
    .json();
    assert_eq!(summary["records"], 41);

    let out = ok(ctl(
        &b,
        &[
            "consume",
            "events",
            "--from-beginning",
            "--format",
            "json",
            "--max-messages",
            "41",
            "--timeout-ms",
            "5000",
        ],
    ));
    let records: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(records.len(), 41, "{}", out.stdout);
    for i in 0..40 {
        let r = records
            .iter()
            .find(|r| r["key"] == format!("user-{i}"))
            .unwrap_or_else(|| panic!("user-{i} missing"));
        assert_eq!(r["value"], format!("event {i}"));
        assert_eq!(r["headers"]["seq"], i.to_string());
        assert_eq!(r["headers"]["src"], "test");
    }
    let unkeyed = records.iter().find(|r| r["value"] == "unkeyed").unwrap();
    assert_eq!(unkeyed["partition"], 2);
    assert_eq!(unkeyed["key"], Value::Null);

    // kcat with the Java-compatible partitioner must put every key where sluicectl did.
    let mut kcat_in = String::new();
    for i in 0..40 {
        kcat_in.push_str(&format!("user-{i}:again {i}\n"));
    }
    let mut kcat = Command::new("kcat");
    kcat.args([
        "-P",
        "-b",
        &b.addr,
        "-t",
        "events",
        "-K",
        ":",
        "-X",
        "partitioner=murmur2_random",
    ]);
    let k = run_program(kcat, &kcat_in);
    assert_eq!(k.code, 0, "kcat: {}", k.stderr);
    let out = ok(ctl(
        &b,
        &[
            "consume",
            "events",
            "--from-beginning",
            "--format",
            "json",
            "--max-messages",
            "81",
            "--timeout-ms",
            "5000",
        ],
    ));
    let records: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 81);
    for i in 0..40 {
        let key = format!("user-{i}");
        let ps: Vec<&Value> = records
            .iter()
            .filter(|r| r["key"] == key)
            .map(|r| &r["partition"])
            .collect();
        assert_eq!(ps.len(), 2, "{key}");
        assert_eq!(ps[0], ps[1], "{key}: sluicectl and kcat (murmur2) disagree");
    }

    // kcat reads what sluicectl wrote, headers included.
    let mut kc = Command::new("kcat");
    kc.args([
        "-C",
        "-b",
        &b.addr,
        "-t",
        "events",
        "-e",
        "-q",
        "-f",
        "%k|%s|%h\n",
    ]);
    let k = run_program(kc, "");
    assert_eq!(k.code, 0, "kcat: {}", k.stderr);
    assert!(
        k.stdout
            .lines()
            .any(|l| l == "user-7|event 7|seq=7,src=test"),
        "{}",
        k.stdout
    );

    // Plain lines through a real shell pipe, keys split at the separator.
    let pipe = format!(
        "set -o pipefail; printf 'k1:v1\\nk2:v2\\nk3:v3\\n' | {CTL} --bootstrap {a} produce events \
         --partition 0 --key-separator : --header origin=pipe && {CTL} --bootstrap {a} consume events \
         --partition 0 --from-beginning --print-key --timeout-ms 2000 | grep '^k' | head -n 3",
        a = b.addr
    );
    let mut sh = Command::new("bash");
    sh.args(["-c", &pipe]);
    let p = run_program(sh, "");
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(p.stdout, "k1\tv1\nk2\tv2\nk3\tv3\n");
}

#[test]
fn consume_positions_and_pipes() {
    let b = Broker::start();
    ok(ctl(&b, &["topics", "create", "log", "--partitions", "1"]));
    let lines: String = (0..200).map(|i| format!("line-{i}\n")).collect();
    ok(ctl_in(
        &b.addr,
        &["produce", "log", "--acks", "1", "--compression", "gzip"],
        &lines,
    ));

    let from = ok(ctl(
        &b,
        &[
            "consume",
            "log",
            "--partition",
            "0",
            "--offset",
            "150",
            "--max-messages",
            "3",
            "--timeout-ms",
            "5000",
        ],
    ));
    assert_eq!(from.stdout, "line-150\nline-151\nline-152\n");

    // Every record is older than a time far in the future: nothing to read, exit after idling.
    let future = ok(ctl(
        &b,
        &[
            "consume",
            "log",
            "--from-timestamp",
            "2100-01-01T00:00:00Z",
            "--timeout-ms",
            "500",
        ],
    ));
    assert_eq!(future.stdout, "");
    let past = ok(ctl(
        &b,
        &[
            "consume",
            "log",
            "--from-timestamp",
            "2000-01-01T00:00:00Z",
            "--max-messages",
            "1",
            "--timeout-ms",
            "5000",
        ],
    ));
    assert_eq!(past.stdout, "line-0\n");

    // Default start is the log end: nothing old is printed.
    let latest = ok(ctl(&b, &["consume", "log", "--timeout-ms", "300"]));
    assert_eq!(latest.stdout, "");

    // Ctrl-C (SIGINT) ends an unbounded consumer cleanly: exit 0 and the count on stderr.
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out");
    let err_path = dir.path().join("err");
    let mut child = Command::new(CTL)
        .args(["--bootstrap", &b.addr, "consume", "log", "--from-beginning"])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    while std::fs::read_to_string(&out_path).unwrap().lines().count() < 200 {
        assert!(
            Instant::now() < deadline,
            "consumer did not print 200 lines"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("consumer ignored SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let err = std::fs::read_to_string(&err_path).unwrap();
    assert!(err.contains("Processed a total of 200 messages"), "{err}");

    // The reader closing the pipe early is a normal end: exit 0, nothing on stderr but the count.
    let pipe = format!(
        "set -o pipefail; {CTL} --bootstrap {} consume log --from-beginning --timeout-ms 5000 | head -n 2",
        b.addr
    );
    let mut sh = Command::new("bash");
    sh.args(["-c", &pipe]);
    let p = run_program(sh, "");
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(p.stdout, "line-0\nline-1\n");
    assert!(!p.stderr.contains("error"), "{}", p.stderr);
}

#[test]
fn cluster_describe_and_index_check() {
    let mut b = Broker::start();
    let c = ok(ctl(&b, &["cluster", "describe", "--output", "json"])).json();
    assert!(!c["cluster_id"].as_str().unwrap().is_empty(), "{c}");
    let port: i64 = b.addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(c["brokers"][0]["port"], port);
    assert_eq!(c["brokers"][0]["node_id"], c["controller_id"]);
    let table = ok(ctl(&b, &["cluster", "describe"])).stdout;
    assert!(table.contains("Cluster id:"), "{table}");
    assert!(table.contains("Metadata quorum"), "{table}");

    ok(ctl(
        &b,
        &[
            "topics",
            "create",
            "idx",
            "--partitions",
            "1",
            "--config",
            "segment.bytes=4096",
            "--config",
            "index.interval.bytes=100",
        ],
    ));
    // Eight runs, eight batches of ~1.2 KB: three to a 4 KB segment, so segments roll and
    // each segment's second and third batches get index entries.
    for run in 0..8 {
        let lines: String = (0..25)
            .map(|i| format!("run {run} record number {i} padded to be longer\n"))
            .collect();
        ok(ctl_in(&b.addr, &["produce", "idx"], &lines));
    }
    b.stop();
    let dir = b.data.join("idx-0");
    let check = ok(ctl(
        &b,
        &["check-index", dir.to_str().unwrap(), "--output", "json"],
    ))
    .json();
    assert_eq!(check["ok"], true, "{check}");
    assert!(check["segments"].as_array().unwrap().len() > 1, "{check}");

    // Corrupt one offset index entry: check-index must notice and exit 1.
    let seg = &check["segments"][0]["segment"];
    let index = PathBuf::from(seg.as_str().unwrap()).with_extension("index");
    let mut bytes = std::fs::read(&index).unwrap();
    assert!(bytes.len() >= 8, "first segment has an index entry");
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    std::fs::write(&index, &bytes).unwrap();
    let bad = ctl(&b, &["check-index", dir.to_str().unwrap()]);
    assert_eq!(bad.code, 1, "{}", bad.stdout);
    assert!(
        bad.stdout.contains("MISMATCH") || bad.stdout.contains("INVALID"),
        "{}",
        bad.stdout
    );
    assert_eq!(ctl(&b, &["check-index", "/nonexistent-dir"]).code, 1);
}

#[test]
fn records_delete_logdirs_and_producers() {
    let b = Broker::start();
    ok(ctl(&b, &["topics", "create", "rec", "--partitions", "2"]));
    let lines: String = (0..10).map(|i| format!("v{i}\n")).collect();
    ok(ctl_in(
        &b.addr,
        &["produce", "rec", "--partition", "0"],
        &lines,
    ));
    // An idempotent producer (librdkafka) on partition 1.
    let mut kcat = Command::new("kcat");
    kcat.args(["-P", "-b", &b.addr, "-t", "rec", "-p", "1"])
        .args(["-X", "enable.idempotence=true"]);
    let k = run_program(kcat, "a\nb\nc\n");
    assert_eq!(k.code, 0, "kcat: {}", k.stderr);

    let producers = ok(ctl(
        &b,
        &["producers", "describe", "rec", "--output", "json"],
    ))
    .json();
    let producers = producers.as_array().expect("array");
    assert_eq!(producers.len(), 1, "{producers:?}");
    assert_eq!(producers[0]["partition"], 1);
    assert_eq!(producers[0]["last_sequence"], 2);
    assert!(producers[0]["producer_id"].as_i64().expect("id") >= 0);
    assert_eq!(producers[0]["current_txn_start_offset"], -1);

    let dirs = ok(ctl(
        &b,
        &["logdirs", "describe", "--topic", "rec", "--output", "json"],
    ))
    .json();
    let dirs = dirs.as_array().expect("array");
    assert_eq!(dirs.len(), 1);
    assert_eq!(dirs[0]["broker"], 1);
    assert_eq!(dirs[0]["error"], "NONE");
    assert!(dirs[0]["total_bytes"].as_i64().expect("total") > 0);
    let replicas = dirs[0]["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 2);
    for r in replicas {
        assert_eq!(r["topic"], "rec");
        assert!(r["size_bytes"].as_i64().expect("size") > 0, "{r}");
        assert_eq!(r["offset_lag"], 0);
    }
    let table = ok(ctl(&b, &["logdirs", "describe"])).stdout;
    assert!(
        table.contains("__consumer_offsets") && table.contains("rec"),
        "{table}"
    );

    let deleted = ok(ctl(
        &b,
        &[
            "records",
            "delete",
            "rec",
            "--partition",
            "0",
            "--before",
            "4",
            "--output",
            "json",
        ],
    ))
    .json();
    assert_eq!(deleted[0]["low_watermark"], 4);
    assert_eq!(deleted[0]["error"], "NONE");
    let desc = ok(ctl(&b, &["topics", "describe", "rec", "--output", "json"])).json();
    assert_eq!(desc["partitions"][0]["log_start_offset"], 4);
    let consumed = ok(ctl(
        &b,
        &[
            "consume",
            "rec",
            "--partition",
            "0",
            "--from-beginning",
            "--max-messages",
            "1",
            "--timeout-ms",
            "5000",
        ],
    ))
    .stdout;
    assert_eq!(consumed.trim(), "v4");

    // Above the high watermark: the partition's error and exit code 1.
    let above = ctl(
        &b,
        &[
            "records",
            "delete",
            "rec",
            "--partition",
            "0",
            "--before",
            "11",
        ],
    );
    assert_eq!(above.code, 1, "{}", above.stdout);
    assert!(
        above.stderr.contains("OFFSET_OUT_OF_RANGE"),
        "{}",
        above.stderr
    );
    let bad = ctl(&b, &["records", "delete", "rec", "--before", "-5"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);

    // `hw` empties every partition.
    let all = ok(ctl(
        &b,
        &[
            "records", "delete", "rec", "--before", "hw", "--output", "json",
        ],
    ))
    .json();
    assert_eq!(all[0]["low_watermark"], 10);
    assert_eq!(all[1]["low_watermark"], 3);
}

#[test]
fn quotas_alter_describe_and_delete() {
    let b = Broker::start();
    ok(ctl(
        &b,
        &[
            "quotas",
            "alter",
            "--entity-type",
            "clients",
            "--entity-name",
            "slow",
            "--add-config",
            "producer_byte_rate=1048576,consumer_byte_rate=2097152",
        ],
    ));
    ok(ctl(
        &b,
        &[
            "quotas",
            "alter",
            "--user",
            "alice",
            "--client-defaults",
            "--add-config",
            "request_percentage=12.5",
        ],
    ));
    ok(ctl(
        &b,
        &[
            "quotas",
            "alter",
            "--entity-type",
            "users",
            "--entity-default",
            "--add-config",
            "producer_byte_rate=4096",
        ],
    ));
    // validate_only changes nothing.
    ok(ctl(
        &b,
        &[
            "quotas",
            "alter",
            "--entity-type",
            "users",
            "--entity-name",
            "zed",
            "--add-config",
            "producer_byte_rate=1",
            "--validate-only",
        ],
    ));
    let all = ok(ctl(&b, &["quotas", "describe", "--output", "json"])).json();
    let all = all.as_array().expect("array");
    assert_eq!(all.len(), 3, "{all:?}");
    let slow = ok(ctl(
        &b,
        &[
            "quotas",
            "describe",
            "--entity-type",
            "clients",
            "--entity-name",
            "slow",
            "--output",
            "json",
        ],
    ))
    .json();
    assert_eq!(
        slow,
        serde_json::json!([{
            "entity": {"client-id": "slow"},
            "values": {"consumer_byte_rate": 2097152.0, "producer_byte_rate": 1048576.0}
        }])
    );
    let defaults = ok(ctl(
        &b,
        &[
            "quotas",
            "describe",
            "--entity-type",
            "users",
            "--entity-default",
            "--output",
            "json",
        ],
    ))
    .json();
    assert_eq!(defaults[0]["entity"]["user"], Value::Null);
    assert_eq!(defaults.as_array().map(Vec::len), Some(1));
    // Every entity of a type: alice's user+client-id pair and the default user.
    let users = ok(ctl(
        &b,
        &[
            "quotas",
            "describe",
            "--entity-type",
            "users",
            "--output",
            "json",
        ],
    ))
    .json();
    assert_eq!(users.as_array().map(Vec::len), Some(2), "{users}");
    let table = ok(ctl(&b, &["quotas", "describe"])).stdout;
    assert!(table.contains("user=alice,client-id=<default>"), "{table}");

    ok(ctl(
        &b,
        &[
            "quotas",
            "alter",
            "--entity-type",
            "clients",
            "--entity-name",
            "slow",
            "--delete-config",
            "producer_byte_rate,consumer_byte_rate",
        ],
    ));
    let all = ok(ctl(&b, &["quotas", "describe", "--output", "json"])).json();
    assert_eq!(all.as_array().map(Vec::len), Some(2));

    // The broker refuses an unknown key (INVALID_REQUEST): exit code 1, the message shown.
    let bad = ctl(
        &b,
        &[
            "quotas",
            "alter",
            "--entity-type",
            "clients",
            "--entity-name",
            "x",
            "--add-config",
            "bogus_rate=1",
        ],
    );
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert!(bad.stderr.contains("bogus_rate"), "{}", bad.stderr);
    // Usage mistakes: exit code 2.
    assert_eq!(
        ctl(
            &b,
            &[
                "quotas",
                "alter",
                "--entity-type",
                "clients",
                "--entity-name",
                "x"
            ]
        )
        .code,
        2
    );
    assert_eq!(
        ctl(
            &b,
            &[
                "quotas",
                "alter",
                "--entity-type",
                "hosts",
                "--entity-name",
                "x",
                "--add-config",
                "producer_byte_rate=1"
            ]
        )
        .code,
        2
    );
    assert_eq!(
        ctl(
            &b,
            &[
                "quotas",
                "alter",
                "--entity-type",
                "clients",
                "--add-config",
                "producer_byte_rate=1"
            ]
        )
        .code,
        2
    );
    assert_eq!(
        ctl(
            &b,
            &[
                "quotas",
                "alter",
                "--entity-type",
                "clients",
                "--entity-name",
                "x",
                "--add-config",
                "producer_byte_rate=fast"
            ]
        )
        .code,
        2
    );
}

/// `sluicectl users`: set, list, describe and delete SCRAM credentials on a broker with a
/// SCRAM listener, and sluicectl itself logging in with them (and no longer after delete).
#[test]
fn users_set_list_describe_delete_and_log_in() {
    let sasl_port = ports::free_port();
    let sasl = format!("127.0.0.1:{sasl_port}");
    let b = Broker::start_with(|plain| {
        vec![
            "--set".into(),
            format!("listeners=PLAINTEXT://{plain},SASL_PLAINTEXT://{sasl}"),
            "--set".into(),
            "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512".into(),
        ]
    });
    let login = |mech: &str, pw: &str| {
        let prop = |k: &str, v: &str| format!("{k}={v}");
        let args = [
            "-X".to_string(),
            prop("security.protocol", "SASL_PLAINTEXT"),
            "-X".into(),
            prop("sasl.mechanism", mech),
            "-X".into(),
            prop("sasl.username", "alice"),
            "-X".into(),
            prop("sasl.password", pw),
            "topics".into(),
            "list".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl_in(&sasl, &args, "")
    };
    assert_eq!(
        ok(ctl(&b, &["users", "list", "--output", "json"])).json(),
        serde_json::json!([])
    );
    assert_eq!(login("SCRAM-SHA-256", "pw-1").code, 1, "no such user yet");
    ok(ctl(
        &b,
        &[
            "users",
            "set",
            "alice",
            "--mechanism",
            "SCRAM-SHA-256",
            "--password",
            "pw-1",
        ],
    ));
    let set = ok(ctl(
        &b,
        &[
            "users",
            "set",
            "alice",
            "--mechanism",
            "scram-sha-512",
            "--password",
            "pw-1",
            "--iterations",
            "8192",
            "--output",
            "json",
        ],
    ))
    .json();
    assert_eq!(set["mechanism"], "SCRAM-SHA-512");
    let d = ok(ctl(&b, &["users", "describe", "alice", "--output", "json"])).json();
    assert_eq!(
        d,
        serde_json::json!([{ "user": "alice", "credentials": [
            { "mechanism": "SCRAM-SHA-256", "iterations": 4096 },
            { "mechanism": "SCRAM-SHA-512", "iterations": 8192 },
        ]}])
    );
    let table = ok(ctl(&b, &["users", "list"])).stdout;
    assert!(
        table.contains("USER") && table.contains("SCRAM-SHA-512  8192"),
        "{table}"
    );
    // Both mechanisms log in at once; a wrong password does not.
    ok(login("SCRAM-SHA-256", "pw-1"));
    ok(login("SCRAM-SHA-512", "pw-1"));
    let wrong = login("SCRAM-SHA-512", "pw-2");
    assert_eq!(wrong.code, 1);
    assert!(
        wrong.stderr.contains("SASL_AUTHENTICATION_FAILED"),
        "{}",
        wrong.stderr
    );
    // Refused before anything is sent: exit code 2.
    for args in [
        &[
            "users",
            "set",
            "bob",
            "--mechanism",
            "PLAIN",
            "--password",
            "x",
        ][..],
        &[
            "users",
            "set",
            "bob",
            "--mechanism",
            "SCRAM-SHA-256",
            "--password",
            "x",
            "--iterations",
            "100",
        ],
        &[
            "users",
            "set",
            "bob",
            "--mechanism",
            "SCRAM-SHA-256",
            "--password",
            "",
        ],
    ] {
        assert_eq!(ctl(&b, args).code, 2, "{args:?}");
    }
    ok(ctl(
        &b,
        &["users", "delete", "alice", "--mechanism", "SCRAM-SHA-512"],
    ));
    let again = ctl(
        &b,
        &["users", "delete", "alice", "--mechanism", "SCRAM-SHA-512"],
    );
    assert_eq!(again.code, 1);
    assert!(
        again.stderr.contains("RESOURCE_NOT_FOUND"),
        "{}",
        again.stderr
    );
    assert_eq!(login("SCRAM-SHA-512", "pw-1").code, 1, "deleted credential");
    ok(login("SCRAM-SHA-256", "pw-1"));
    let missing = ctl(&b, &["users", "describe", "nobody"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("RESOURCE_NOT_FOUND"),
        "{}",
        missing.stderr
    );
    // Without an authorizer the ACL APIs are disabled, as Kafka's.
    let acls = ctl(&b, &["acls", "list"]);
    assert_eq!(acls.code, 1);
    assert!(acls.stderr.contains("SECURITY_DISABLED"), "{}", acls.stderr);
}

/// `sluicectl acls` with kafka-acls.sh's flags on a broker with an authorizer.
#[test]
fn acls_create_list_delete() {
    let b = Broker::start_with(|_| {
        [
            "--set",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "--set",
            "super.users=User:ANONYMOUS",
        ]
        .map(String::from)
        .to_vec()
    });
    let created = ok(ctl(
        &b,
        &[
            "acls",
            "create",
            "--allow-principal",
            "User:alice",
            "--operation",
            "Read",
            "--operation",
            "Write",
            "--topic",
            "orders",
            "--output",
            "json",
        ],
    ))
    .json();
    assert_eq!(created.as_array().map(Vec::len), Some(2));
    assert_eq!(created[0]["resource_type"], "TOPIC");
    assert_eq!(created[0]["pattern_type"], "LITERAL");
    assert_eq!(created[0]["host"], "*");
    ok(ctl(
        &b,
        &[
            "acls",
            "create",
            "--deny-principal",
            "User:bob",
            "--operation",
            "read",
            "--topic",
            "ord",
            "--resource-pattern-type",
            "prefixed",
        ],
    ));
    ok(ctl(
        &b,
        &[
            "acls",
            "create",
            "--allow-principal",
            "User:alice",
            "--operation",
            "DescribeConfigs",
            "--cluster",
        ],
    ));
    let all = ok(ctl(&b, &["acls", "list", "--output", "json"])).json();
    assert_eq!(all.as_array().map(Vec::len), Some(4), "{all}");
    let orders = ok(ctl(
        &b,
        &["acls", "list", "--topic", "orders", "--output", "json"],
    ))
    .json();
    let ops: Vec<&str> = orders
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|a| a["operation"].as_str())
        .collect();
    assert_eq!(ops, vec!["READ", "WRITE"]);
    let alice = ok(ctl(
        &b,
        &[
            "acls",
            "list",
            "--allow-principal",
            "User:alice",
            "--output",
            "json",
        ],
    ))
    .json();
    assert_eq!(alice.as_array().map(Vec::len), Some(3));
    let table = ok(ctl(&b, &["acls", "list", "--cluster"])).stdout;
    assert!(
        table.contains("DESCRIBE_CONFIGS") && table.contains("kafka-cluster"),
        "{table}"
    );
    let deleted = ok(ctl(
        &b,
        &[
            "acls",
            "delete",
            "--topic",
            "ord",
            "--resource-pattern-type",
            "prefixed",
            "--output",
            "json",
        ],
    ))
    .json();
    assert_eq!(deleted.as_array().map(Vec::len), Some(1));
    assert_eq!(deleted[0]["principal"], "User:bob");
    assert_eq!(deleted[0]["permission"], "DENY");
    let left = ok(ctl(&b, &["acls", "list", "--output", "json"])).json();
    assert_eq!(left.as_array().map(Vec::len), Some(3));
    // Usage mistakes: exit code 2, nothing sent.
    for args in [
        &["acls", "delete"][..],
        &[
            "acls",
            "create",
            "--topic",
            "t",
            "--operation",
            "Fly",
            "--allow-principal",
            "User:a",
        ],
        &["acls", "create", "--topic", "t", "--operation", "Read"],
        &[
            "acls",
            "create",
            "--topic",
            "t",
            "--allow-principal",
            "User:a",
            "--operation",
            "Read",
            "--resource-pattern-type",
            "match",
        ],
    ] {
        assert_eq!(ctl(&b, args).code, 2, "{args:?}");
    }
    // A binding the broker refuses (a principal without a type): INVALID_REQUEST, exit 1.
    let bad = ctl(
        &b,
        &[
            "acls",
            "create",
            "--topic",
            "t",
            "--operation",
            "Read",
            "--allow-principal",
            "alice",
        ],
    );
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("INVALID_REQUEST"), "{}", bad.stderr);
}

#[test]
fn leaders_elect_and_cluster_quorum() {
    let b = Broker::start();
    ok(ctl(&b, &["topics", "create", "el", "--partitions", "2"]));
    // A cluster of one: each partition's only replica leads already.
    let all = ok(ctl(
        &b,
        &[
            "leaders",
            "elect",
            "--type",
            "preferred",
            "--topic",
            "el",
            "--output",
            "json",
        ],
    ))
    .json();
    let rows = all.as_array().expect("array");
    assert_eq!(rows.len(), 2, "{all}");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["topic"], "el");
        assert_eq!(r["partition"], i as i64);
        assert_eq!(r["error"], "ELECTION_NOT_NEEDED", "{all}");
    }
    let one = ok(ctl(
        &b,
        &[
            "leaders",
            "elect",
            "--type",
            "unclean",
            "--topic",
            "el",
            "--partition",
            "1",
            "--output",
            "json",
        ],
    ))
    .json();
    assert_eq!(one.as_array().map(Vec::len), Some(1), "{one}");
    assert_eq!(one[0]["error"], "ELECTION_NOT_NEEDED");
    // Every partition: the broker leaves out those that need nothing.
    let none = ok(ctl(
        &b,
        &[
            "leaders",
            "elect",
            "--type",
            "preferred",
            "--all-topic-partitions",
            "--output",
            "json",
        ],
    ))
    .json();
    assert_eq!(none, serde_json::json!([]));
    let table = ok(ctl(
        &b,
        &[
            "leaders",
            "elect",
            "--type",
            "preferred",
            "--all-topic-partitions",
        ],
    ))
    .stdout;
    assert!(
        table.contains("No partition needed an election."),
        "{table}"
    );
    let table = ok(ctl(
        &b,
        &["leaders", "elect", "--type", "preferred", "--topic", "el"],
    ))
    .stdout;
    assert!(
        table.contains("RESULT") && table.contains("ELECTION_NOT_NEEDED"),
        "{table}"
    );
    // A partition that does not exist: answered per partition, exit 1.
    let bad = ctl(
        &b,
        &[
            "leaders",
            "elect",
            "--type",
            "preferred",
            "--topic",
            "el",
            "--partition",
            "9",
        ],
    );
    assert_eq!(bad.code, 1, "{} {}", bad.stdout, bad.stderr);
    assert!(
        bad.stderr.contains("UNKNOWN_TOPIC_OR_PARTITION"),
        "{}",
        bad.stderr
    );
    assert_eq!(
        ctl(
            &b,
            &["leaders", "elect", "--type", "preferred", "--topic", "nope"]
        )
        .code,
        1
    );
    // Usage: no partitions named, both ways at once, a partition without a topic, a bad type.
    for args in [
        &["leaders", "elect", "--type", "preferred"][..],
        &[
            "leaders",
            "elect",
            "--type",
            "preferred",
            "--topic",
            "el",
            "--all-topic-partitions",
        ],
        &[
            "leaders",
            "elect",
            "--type",
            "preferred",
            "--partition",
            "0",
        ],
        &["leaders", "elect", "--type", "dirty", "--topic", "el"],
    ] {
        let o = ctl(&b, args);
        assert_eq!(o.code, 2, "{args:?}: {} {}", o.stdout, o.stderr);
    }

    // The metadata quorum of a cluster of one: itself, the leader and only voter.
    let q = ok(ctl(&b, &["cluster", "quorum", "--output", "json"])).json();
    let voters = q["voters"].as_array().expect("voters");
    assert_eq!(voters.len(), 1, "{q}");
    assert_eq!(voters[0]["replica_id"], q["leader_id"]);
    assert!(q["high_watermark"].as_i64().unwrap() > 0, "{q}");
    let table = ok(ctl(&b, &["cluster", "quorum"])).stdout;
    assert!(table.contains("Metadata quorum: leader"), "{table}");
    assert!(table.contains("leader"), "{table}");
}
