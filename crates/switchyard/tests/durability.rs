//! Durability of the built binary under concurrent load: after `kill -9`, every event whose
//! request got a 2xx is stored; after SIGTERM the server exits 0 and nothing acknowledged is
//! lost. Traffic goes only to loopback and every loop is bounded in time and count.

use std::collections::HashSet;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{load, start, Server, SECRET, TOKEN};

fn stored_ids(url: &str) -> HashSet<String> {
    let client = reqwest::blocking::Client::new();
    let mut ids = HashSet::new();
    let mut next = Some("/api/projects/@current/events/?limit=10000".to_owned());
    while let Some(path) = next {
        let page: Value = client.get(format!("{url}{path}")).bearer_auth(SECRET).send().unwrap().json().unwrap();
        for e in page["results"].as_array().unwrap() {
            ids.insert(e["id"].as_str().unwrap().to_owned());
        }
        next = page["next"].as_str().map(str::to_owned);
    }
    ids
}

fn run_load_then(server: &mut Server, stop_server: impl FnOnce(&mut Child)) -> Vec<String> {
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&server.url, 12, stop.clone());
    std::thread::sleep(Duration::from_millis(1500));
    stop_server(&mut server.child);
    stop.store(true, Ordering::SeqCst);
    workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
}

#[test]
fn kill_9_and_sigterm_under_load_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let mut acked: Vec<String> = Vec::new();

    let first = run_load_then(&mut server, |child| {
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    });
    assert!(first.len() > 100, "the load generator got too few acknowledgements: {}", first.len());
    acked.extend(first);

    // Restart on the same data: it starts cleanly and has every acknowledged event.
    let mut server = start(dir.path());
    let stored = stored_ids(&server.url);
    let missing: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(missing.is_empty(), "{} acknowledged events lost after kill -9, e.g. {:?}", missing.len(), &missing[..missing.len().min(3)]);

    // SIGTERM under load: exit 0, nothing acknowledged lost.
    let mut status = None;
    let second = run_load_then(&mut server, |child| {
        let killed = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                status = Some(s);
                break;
            }
            assert!(Instant::now() < deadline, "server did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert_eq!(status.unwrap().code(), Some(0), "SIGTERM exits 0");
    assert!(!second.is_empty());
    acked.extend(second);

    let mut server = start(dir.path());
    let stored = stored_ids(&server.url);
    let missing = acked.iter().filter(|id| !stored.contains(*id)).count();
    assert_eq!(missing, 0, "acknowledged events lost after SIGTERM");

    // The events CLI reads the same API.
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["events", "--url", &server.url, "--secret-key", SECRET, "--event", "agent_execution", "--limit", "3"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<Value> = String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|e| e["event"] == "agent_execution" && e["protocol"] == "segment"));
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["events", "--url", &server.url, "--secret-key", "phs_wrong"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("401"));

    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// An `LD_PRELOAD` shim: once the file named by `FAILSYNC_FLAG` exists, `fsync` and
/// `fdatasync` of `events.db` fail with EIO, as on a failing disk. The WAL's syncs still work.
/// The kernel still writes the pages back (a shim cannot lose them): the test checks that the
/// server stops at the first failed sync of the database file, and that the WAL is replayed.
const FAILSYNC_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static int failing(int fd) {
    const char *flag = getenv("FAILSYNC_FLAG");
    if (!flag || access(flag, F_OK) != 0) return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    size_t len = strlen(path);
    return len >= 10 && strcmp(path + len - 10, "/events.db") == 0;
}
int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (failing(fd)) { errno = EIO; return -1; }
    return real(fd);
}
int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (failing(fd)) { errno = EIO; return -1; }
    return real(fd);
}
"#;

#[test]
fn a_failed_database_sync_stops_the_server_and_loses_nothing_acknowledged() {
    use std::os::unix::process::ExitStatusExt;

    let tools = tempfile::tempdir().unwrap();
    std::fs::write(tools.path().join("failsync.c"), FAILSYNC_C).unwrap();
    let shim = tools.path().join("libfailsync.so");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&shim)
        .arg(tools.path().join("failsync.c"))
        .arg("-ldl")
        .status()
        .unwrap();
    assert!(built.success(), "building the shim failed");
    let flag = tools.path().join("fail");

    let dir = tempfile::tempdir().unwrap();
    let mut failing = common::start_with(dir.path(), |command| {
        command
            .env("LD_PRELOAD", &shim)
            .env("FAILSYNC_FLAG", &flag)
            .stderr(std::fs::File::create(tools.path().join("server.err")).unwrap());
    });
    let url = failing.url.clone();
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

    // Acknowledged while the disk works; then the database file's syncs start failing while
    // events keep coming. Whatever got a 2xx must survive.
    let mut acked = Vec::new();
    let mut send = |round: usize| {
        let ids: Vec<String> = (0..20).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let batch: Vec<Value> = ids
            .iter()
            .map(|id| json!({"event": "agent_error", "uuid": id, "distinct_id": "user_1",
                             "properties": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "error_type": "timeout", "round": round}}))
            .collect();
        match client.post(format!("{url}/batch/")).json(&json!({"api_key": TOKEN, "batch": batch})).send() {
            Ok(r) if r.status().is_success() => {
                acked.extend(ids);
                true
            }
            _ => false,
        }
    };
    for round in 0..50 {
        assert!(send(round), "the server refused events while the disk worked");
    }
    std::fs::write(&flag, b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = failing.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server kept running after its database file failed to sync");
        send(50);
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.signal(), Some(6), "stopped by abort: {status:?}");
    let said = std::fs::read_to_string(tools.path().join("server.err")).unwrap();
    assert!(said.contains("failed") && said.contains("replayed at the next start"), "{said}");

    // A working disk again: the WAL is replayed and every acknowledged event is there.
    let server = start(dir.path());
    let stored = stored_ids(&server.url);
    let missing = acked.iter().filter(|id| !stored.contains(*id)).count();
    assert!(acked.len() >= 1000);
    assert_eq!(missing, 0, "{missing} of {} acknowledged events lost after the failed sync", acked.len());
}
