//! The SQLite event log against a real database file.

use std::sync::Arc;

use switchyard_store::log::trace_index_path;
use switchyard_store::{
    AppendBatch, EventLog, EventQuery, LogError, LogRecord, QuarantineQuery, QuarantineRecord, RetentionObserver, RetentionPass, Selection,
    SqliteLog, SqliteLogConfig,
};

fn record(i: usize) -> LogRecord {
    LogRecord {
        id: format!("id-{i}"),
        project_id: 1,
        kind: "track",
        event: "tool_used".into(),
        distinct_id: format!("user_{}", i % 7),
        trace_id: Some(format!("{:032x}", i % 3 + 1)),
        timestamp: "2026-11-25T12:00:00.000000Z".into(),
        received_at: "2026-11-25T12:00:00.000000Z".into(),
        body: format!("{{\"id\":\"id-{i}\"}}"),
        person_update: i.is_multiple_of(4),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_transactions_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let log = Arc::new(SqliteLog::open(&path, SqliteLogConfig::default()).unwrap());
    let mut tasks = Vec::new();
    for i in 0..200 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append(AppendBatch { spans: vec![], events: vec![record(i)], quarantined: vec![] }).await.unwrap()
        }));
    }
    let mut grouped = 0;
    for t in tasks {
        if t.await.unwrap().transaction_events > 1 {
            grouped += 1;
        }
    }
    assert!(grouped > 0, "no two appends shared a transaction");
    log.close().await;
    assert!(matches!(log.append(AppendBatch::default()).await, Err(LogError::Closed)));

    let log = SqliteLog::open(&path, SqliteLogConfig::default()).unwrap();
    let all = log.query_events(EventQuery { project_id: 1, limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), 200);
    assert!(all.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
    let traced = log
        .query_events(EventQuery { project_id: 1, trace_id: Some(format!("{:032x}", 1)), limit: 1000, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(traced.len(), 67);
    let other_project = log.query_events(EventQuery { project_id: 2, limit: 10, ..Default::default() }).await.unwrap();
    assert!(other_project.is_empty());
}

#[tokio::test]
async fn consumer_cursor_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let log = SqliteLog::open(&path, SqliteLogConfig::default()).unwrap();
    log.append(AppendBatch { spans: vec![], events: (0..10).map(record).collect(), quarantined: vec![] }).await.unwrap();
    let first = log.read("warehouse", 4, Selection::All).await.unwrap();
    assert_eq!(first.entries.len(), 4);
    assert_eq!(first.position, Some(first.entries[3].seq));
    log.commit("warehouse", first.position.unwrap()).await.unwrap();
    log.close().await;
    let log = SqliteLog::open(&path, SqliteLogConfig::default()).unwrap();
    let rest = log.read("warehouse", 100, Selection::All).await.unwrap();
    assert_eq!(rest.entries.len(), 6);
    assert_eq!(rest.entries[0].seq, first.entries[3].seq + 1);
    assert_eq!(log.read("other", 100, Selection::All).await.unwrap().entries.len(), 10);

    // A selective consumer sees only its events and may commit past the rest.
    let persons = log.read("persons", 100, Selection::PersonUpdates).await.unwrap();
    let ids: Vec<String> = persons.entries.iter().map(|e| e.body.clone()).collect();
    assert_eq!(ids, ["{\"id\":\"id-0\"}", "{\"id\":\"id-4\"}", "{\"id\":\"id-8\"}"]);
    log.commit("persons", persons.position.unwrap()).await.unwrap();
    assert!(log.read("persons", 100, Selection::PersonUpdates).await.unwrap().entries.is_empty());
}

#[tokio::test]
async fn bounded_reads_stop_at_their_bytes_and_always_make_progress() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(&dir.path().join("log.db"), SqliteLogConfig::default()).unwrap();
    log.append(AppendBatch { spans: vec![], events: (0..10).map(record).collect(), quarantined: vec![] }).await.unwrap();
    let all = log.read("probe", 100, Selection::All).await.unwrap();
    let three: usize = all.entries[..3].iter().map(|e| e.body.len()).sum();
    let first = log.read_bounded("loader", 100, three, Selection::All).await.unwrap();
    assert_eq!(first.entries.len(), 3, "the entry that reaches the budget is the last");
    assert_eq!(first.position, Some(all.entries[2].seq));
    log.commit("loader", first.position.unwrap()).await.unwrap();
    let one = log.read_bounded("loader", 100, 1, Selection::All).await.unwrap();
    assert_eq!((one.entries.len(), one.position), (1, Some(all.entries[3].seq)), "one entry past a tiny budget");
    let rest = log.read_bounded("loader", 100, usize::MAX, Selection::Project(1)).await.unwrap();
    assert_eq!(rest.entries.len(), 7);
    // Another project's consumer passes the whole log without entries.
    let other = log.read_bounded("other", 100, 1, Selection::Project(2)).await.unwrap();
    assert_eq!((other.entries.len(), other.position), (0, Some(all.entries[9].seq)));
}

#[tokio::test]
async fn a_full_log_refuses_appends_and_keeps_what_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let config = SqliteLogConfig { max_size_bytes: Some(2 << 20), ..Default::default() };
    let log = SqliteLog::open(&path, config).unwrap();
    let mut stored = 0;
    let mut full = false;
    for round in 0..200 {
        let mut batch = AppendBatch::default();
        for i in 0..20 {
            let mut r = record(round * 20 + i);
            r.body = "x".repeat(1000);
            batch.events.push(r);
        }
        batch.quarantined.push(QuarantineRecord {
            project_id: 1, protocol: "posthog", received_at: "t".into(), code: "c".into(), reason: "r".into(), raw: "{}".into(),
        });
        match log.append(batch).await {
            Ok(_) => stored += 20,
            Err(LogError::Full) => { full = true; break; }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(full, "the size cap was never reached");
    assert!(stored > 0, "nothing fitted under the cap");
    let all = log.query_events(EventQuery { project_id: 1, limit: 100_000, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), stored, "a failed append must leave nothing behind, and lose nothing before it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_append_too_big_for_the_cap_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    // Room for the ten rounds' small appends (~4 MiB), the WAL (an eighth of the cap) and the
    // trace index, not for one huge append (~16 MiB).
    let config = SqliteLogConfig { max_size_bytes: Some(8 << 20), ..Default::default() };
    let log = Arc::new(SqliteLog::open(&path, config).unwrap());
    let sized = |from: usize, n: usize, bytes: usize| AppendBatch {
        spans: vec![],
        events: (from..from + n).map(|i| LogRecord { body: "x".repeat(bytes), ..record(i) }).collect(),
        quarantined: vec![],
    };
    for round in 0..10 {
        let base = round * 10_000;
        // While the writer inserts a first append of many small events, small appends and one
        // that cannot fit under the cap (~16 MiB) queue up, and the writer takes them as one
        // group: the small ones fit and must be kept.
        let (first, huge) = (sized(base, 2000, 50), sized(base + 2000, 8000, 2000));
        let small: Vec<AppendBatch> = (0..20).map(|i| sized(base + 9000 + i, 1, 100)).collect();
        let first = tokio::spawn({
            let log = log.clone();
            async move { log.append(first).await }
        });
        tokio::task::yield_now().await;
        let huge = tokio::spawn({
            let log = log.clone();
            async move { log.append(huge).await }
        });
        let small: Vec<_> = small
            .into_iter()
            .map(|batch| {
                let log = log.clone();
                tokio::spawn(async move { log.append(batch).await })
            })
            .collect();
        first.await.unwrap().unwrap();
        assert!(matches!(huge.await.unwrap(), Err(LogError::Full)));
        for s in small {
            s.await.unwrap().expect("a small append fits, whatever it was grouped with");
        }
    }
    let stored = log.query_events(EventQuery { project_id: 1, limit: 100_000, ..Default::default() }).await.unwrap();
    assert_eq!(stored.len(), 10 * (2000 + 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_capacity_appends_fail_fast_and_the_rest_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let config = SqliteLogConfig { queue_capacity: 1, max_txn_events: 1, ..Default::default() };
    let log = Arc::new(SqliteLog::open(&path, config).unwrap());
    let mut tasks = Vec::new();
    for i in 0..300 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            (i, log.append(AppendBatch { spans: vec![], events: vec![record(i)], quarantined: vec![] }).await)
        }));
    }
    let mut ok = Vec::new();
    let mut overloaded = 0;
    for t in tasks {
        match t.await.unwrap() {
            (i, Ok(_)) => ok.push(format!("id-{i}")),
            (_, Err(LogError::Overloaded)) => overloaded += 1,
            (_, Err(e)) => panic!("unexpected {e}"),
        }
    }
    assert!(overloaded > 0, "a queue of one never overflowed");
    assert_eq!(LogError::Overloaded.retry_after_secs(), 1);
    let stored = log.query_events(EventQuery { project_id: 1, limit: 1000, ..Default::default() }).await.unwrap();
    let mut stored: Vec<String> = stored.into_iter().map(|e| serde_json::from_str::<serde_json::Value>(&e.body).unwrap()["id"].as_str().unwrap().to_owned()).collect();
    stored.sort();
    ok.sort();
    assert_eq!(stored, ok, "exactly the acknowledged appends are stored");
}

/// Bytes of `path` resident in the OS page cache, from util-linux's `fincore`.
fn resident_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("running fincore (util-linux)");
    assert!(out.status.success(), "fincore: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().parse().expect("fincore prints a byte count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpointed_pages_leave_the_page_cache_and_still_read_back() {
    // In the target directory: a disk-backed file system (a tmpfs file cannot leave memory).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("log.db");
    let config = SqliteLogConfig { cached_tail_bytes: 1 << 20, ..Default::default() };
    let log = SqliteLog::open(&path, config).unwrap();
    let body = "y".repeat(4000);
    for batch in 0..100 {
        let events = (0..50).map(|k| LogRecord { body: body.clone(), ..record(batch * 50 + k) }).collect();
        log.append(AppendBatch { spans: vec![], events, quarantined: vec![] }).await.unwrap();
    }
    // The checkpoint thread's passes (every 100 ms) copy the WAL into the file, sync it and
    // drop all but its last MiB from the cache.
    // Both figures from one moment: a pass may be copying more pages in between two looks.
    let measure = || (std::fs::metadata(&path).unwrap().len(), resident_bytes(&path));
    let started = std::time::Instant::now();
    let (mut size, mut resident) = measure();
    while (size < 16 << 20 || resident > 4 << 20) && started.elapsed() < std::time::Duration::from_secs(20) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        (size, resident) = measure();
    }
    assert!(size >= 16 << 20, "the checkpoints copied too little: the file has {size} bytes");
    assert!(resident <= 4 << 20, "{resident} of the file's {size} bytes stayed in the page cache");
    let stored = log.query_events(EventQuery { project_id: 1, limit: 10_000, ..Default::default() }).await.unwrap();
    assert_eq!(stored.len(), 5000);
    assert!(stored.iter().all(|e| e.body == body), "every event reads back from disk as written");
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_starts_over_under_steady_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    // 1,024 frames of 16 KiB: the WAL is asked to start over past 16 MiB; SQLite's own
    // checkpoint after a commit (the backstop) would wait for 64 MiB.
    let config = SqliteLogConfig { restart_wal_frames: 1024, ..Default::default() };
    let log = Arc::new(SqliteLog::open(&path, config).unwrap());
    let body = "x".repeat(2000);
    let target_bytes = 160usize << 20;
    // Steady writes at 32 MiB/s, a heavy intake: the WAL passes the limit every half second.
    // Unpaced, a checkpoint thread descheduled for 0.7 s by the tests beside this one let the
    // WAL reach the backstop while the writers ran at 70 MB/s.
    let rate = 32.0 * 1024.0 * 1024.0;
    let started = std::time::Instant::now();
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (log, body, written) = (log.clone(), body.clone(), written.clone());
            tokio::spawn(async move {
                let mut i = 0;
                loop {
                    let bytes = written.load(std::sync::atomic::Ordering::Relaxed) * body.len();
                    if bytes >= target_bytes || started.elapsed() > std::time::Duration::from_secs(60) {
                        break;
                    }
                    let ahead = bytes as f64 / rate - started.elapsed().as_secs_f64();
                    if ahead > 0.0 {
                        tokio::time::sleep(std::time::Duration::from_secs_f64(ahead)).await;
                    }
                    let events = (0..20)
                        .map(|k| LogRecord { body: body.clone(), ..record(w * 10_000_000 + i * 20 + k) })
                        .collect();
                    log.append(AppendBatch { spans: vec![], events, quarantined: vec![] }).await.unwrap();
                    written.fetch_add(20, std::sync::atomic::Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let written = written.load(std::sync::atomic::Ordering::Relaxed);
    let wal = std::fs::metadata(dir.path().join("log.db-wal")).unwrap().len();
    let data = (written * body.len()) as u64;
    assert!(data > 128 << 20, "too little written to tell: {data} bytes");
    // Under the backstop's 64 MiB, with room for a checkpoint thread slowed by the tests
    // running beside this one: the restarts came from the checkpoint thread.
    assert!(wal < 56 << 20, "the WAL grew to {wal} bytes while {data} bytes were written");
    let stored = log.query_events(EventQuery { project_id: 1, limit: 10_000_000, ..Default::default() }).await.unwrap();
    assert_eq!(stored.len(), written, "every acknowledged event is stored");
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_queries_read_the_index_and_the_events_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let log = SqliteLog::open(&path, SqliteLogConfig::default()).unwrap();
    let traced = |i: usize, trace: u32| LogRecord { trace_id: Some(format!("{trace:032x}")), ..record(i) };
    log.append(AppendBatch { spans: vec![], events: (0..30).map(|i| traced(i, 7 + (i % 2) as u32)).collect(), quarantined: vec![] }).await.unwrap();
    wait_for_trace_index(&path, 30).await;
    // Logged after the pass: found by the scan past the index's position, until the next pass.
    log.append(AppendBatch { spans: vec![], events: (30..40).map(|i| traced(i, 7)).collect(), quarantined: vec![] }).await.unwrap();
    let ids = |entries: Vec<switchyard_store::LogEntry>| -> Vec<String> {
        entries.into_iter().map(|e| serde_json::from_str::<serde_json::Value>(&e.body).unwrap()["id"].as_str().unwrap().to_owned()).collect()
    };
    let query = |trace: u32| EventQuery { project_id: 1, trace_id: Some(format!("{trace:032x}")), limit: 1000, ..Default::default() };
    let found = ids(log.query_events(query(7)).await.unwrap());
    let mut want: Vec<String> = (0..30).step_by(2).chain(30..40).map(|i| format!("id-{i}")).collect();
    want.reverse();
    assert_eq!(found, want, "newest first, indexed and not yet indexed alike");
    assert_eq!(ids(log.query_events(query(8)).await.unwrap()).len(), 15);
    let other_project = EventQuery { project_id: 2, ..query(7) };
    assert!(log.query_events(other_project).await.unwrap().is_empty(), "another project's trace stays hidden");
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_index_holds_every_traced_event_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let log = SqliteLog::open(&path, SqliteLogConfig::default()).unwrap();
    append_batches(&log, 0).await;
    log.close().await;
    // Lose the index's database, as if the passes had never run: after the restart the passes
    // must read every event back from the log.
    std::fs::remove_file(trace_index_path(&path)).unwrap();
    let log = SqliteLog::open(&path, SqliteLogConfig::default()).unwrap();
    append_batches(&log, 300).await;
    wait_for_trace_index(&path, 600).await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("ATTACH DATABASE ?1 AS traces", [trace_index_path(&path).to_string_lossy()]).unwrap();
    let rows = |sql: &str| -> Vec<(i64, String, i64)> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
    };
    let indexed = rows("SELECT t.project_id, t.trace_id, j.value FROM traces.trace_runs t, json_each(t.seqs) j ORDER BY 1, 2, 3");
    let traced = rows("SELECT project_id, trace_id, seq FROM events WHERE trace_id IS NOT NULL ORDER BY 1, 2, 3");
    assert_eq!(traced.len(), 600 - 600 / 7 - 1);
    assert_eq!(indexed, traced, "every traced event indexed once, nothing else");
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_of_another_log_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let log = SqliteLog::open(&path, SqliteLogConfig::default()).unwrap();
    append_batches(&log, 0).await;
    wait_for_trace_index(&path, 300).await;
    log.close().await;
    drop(log);
    // The log's database replaced (an older backup, a fresh file), the index's kept.
    remove_database(&path);
    let log = SqliteLog::open(&path, SqliteLogConfig::default()).unwrap();
    let events = (0..100).map(|i| LogRecord { trace_id: Some(format!("{:032x}", 99)), ..record(i) }).collect();
    log.append(AppendBatch { spans: vec![], events, quarantined: vec![] }).await.unwrap();
    let query = |trace: u32| EventQuery { project_id: 1, trace_id: Some(format!("{trace:032x}")), limit: 1000, ..Default::default() };
    assert_eq!(log.query_events(query(99)).await.unwrap().len(), 100, "this log's events are found by their trace");
    assert!(log.query_events(query(1)).await.unwrap().is_empty());
    let index = rusqlite::Connection::open(trace_index_path(&path)).unwrap();
    let old_runs: i64 = index.query_row("SELECT count(*) FROM trace_runs WHERE first_seq <= 300 AND trace_id != ?1", [format!("{:032x}", 99)], |r| r.get(0)).unwrap();
    assert_eq!(old_runs, 0, "the other log's runs are gone");
    wait_for_trace_index(&path, 100).await;
    assert_eq!(log.query_events(query(99)).await.unwrap().len(), 100, "and indexed again");
    log.close().await;
    drop(log);

    // Replaced by another log already longer than the index's position: told apart by the
    // log's identity.
    let other_dir = tempfile::tempdir().unwrap();
    let other_path = other_dir.path().join("log.db");
    let other = SqliteLog::open(&other_path, SqliteLogConfig::default()).unwrap();
    let events = (0..400).map(|i| LogRecord { trace_id: Some(format!("{:032x}", 77)), ..record(i) }).collect();
    other.append(AppendBatch { spans: vec![], events, quarantined: vec![] }).await.unwrap();
    other.close().await;
    drop(other);
    remove_database(&path);
    std::fs::copy(&other_path, &path).unwrap();
    let log = SqliteLog::open(&path, SqliteLogConfig::default()).unwrap();
    let index = rusqlite::Connection::open(trace_index_path(&path)).unwrap();
    let stale: i64 = index.query_row("SELECT count(*) FROM trace_runs WHERE trace_id = ?1", [format!("{:032x}", 99)], |r| r.get(0)).unwrap();
    assert_eq!(stale, 0, "the replaced log's runs are gone");
    assert_eq!(log.query_events(query(77)).await.unwrap().len(), 400);
    wait_for_trace_index(&path, 400).await;
    assert_eq!(log.query_events(query(77)).await.unwrap().len(), 400, "indexed from this log");
    log.close().await;
}

/// Three batches of 100 events numbered from `from`: every seventh has no trace id, the others
/// belong to five agent runs.
async fn append_batches(log: &SqliteLog, from: usize) {
    for b in 0..3 {
        let events = (0..100)
            .map(|i| from + b * 100 + i)
            .map(|i| LogRecord { trace_id: (i % 7 != 0).then(|| format!("{:032x}", i % 5 + 1)), ..record(i) })
            .collect();
        log.append(AppendBatch { spans: vec![], events, quarantined: vec![] }).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_queries_find_events_in_every_block_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let log = SqliteLog::open(&path, SqliteLogConfig::default()).unwrap();
    // The index is kept per 65,536 events: 140,000 events span three blocks. One agent run has
    // an event in each block; the rest belong to two busy runs.
    let run = |i: usize| match i {
        10 | 70_000 | 139_990 => format!("{:032x}", 42),
        _ => format!("{:032x}", i % 2 + 1),
    };
    for chunk in 0..14 {
        let events = (chunk * 10_000..(chunk + 1) * 10_000).map(|i| LogRecord { trace_id: Some(run(i)), ..record(i) }).collect();
        log.append(AppendBatch { spans: vec![], events, quarantined: vec![] }).await.unwrap();
    }
    wait_for_trace_index(&path, 140_000).await;
    let conn = rusqlite::Connection::open(trace_index_path(&path)).unwrap();
    let blocks: i64 = conn.query_row("SELECT count(DISTINCT block) FROM trace_runs", [], |r| r.get(0)).unwrap();
    assert_eq!(blocks, 3);
    let query = |trace: u32, limit: usize| EventQuery { project_id: 1, trace_id: Some(format!("{trace:032x}")), limit, ..Default::default() };
    let seqs = |entries: Vec<switchyard_store::LogEntry>| entries.into_iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(log.query_events(query(42, 10)).await.unwrap()), [139_991, 70_001, 11], "newest first, one per block");
    let busy = log.query_events(query(1, 5)).await.unwrap();
    assert_eq!(seqs(busy), [139_999, 139_997, 139_995, 139_993, 139_989]);
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_kept_in_the_log_by_earlier_versions_moves_into_its_own_database() {
    // What earlier versions left in the log's database, complete up to their position: the
    // index per block (`trace_blocks`), and before that per trace (`trace_index`).
    let layouts = [
        "CREATE TABLE trace_blocks (project_id INTEGER NOT NULL, block INTEGER NOT NULL, trace_id TEXT NOT NULL,
                                    seq INTEGER NOT NULL, PRIMARY KEY (project_id, block, trace_id, seq)) WITHOUT ROWID;
         INSERT INTO trace_blocks SELECT project_id, seq >> 16, trace_id, seq FROM events;",
        "CREATE TABLE trace_index (project_id INTEGER NOT NULL, trace_id TEXT NOT NULL, seq INTEGER NOT NULL,
                                   PRIMARY KEY (project_id, trace_id, seq)) WITHOUT ROWID;
         INSERT INTO trace_index SELECT project_id, trace_id, seq FROM events;",
    ];
    for layout in layouts {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        two_runs_without_an_index(&path).await;
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(layout).unwrap();
            conn.execute_batch("INSERT INTO cursors (consumer, position) VALUES ('$trace_index', 20);").unwrap();
            // Traced events logged after the old index's position: the new index's passes
            // take them from there.
            for i in 20..24 {
                conn.execute(
                    "INSERT INTO events (id, project_id, type, event, distinct_id, trace_id, timestamp, received_at, body)
                     VALUES (?1, 1, 'track', 'tool_used', 'user_1', ?2, '', '', '{}')",
                    rusqlite::params![format!("id-{i}"), format!("{:032x}", i % 2 + 1)],
                )
                .unwrap();
            }
        }
        let log = SqliteLog::open(&path, SqliteLogConfig::default()).unwrap();
        wait_for_trace_index(&path, 24).await;
        let found = log
            .query_events(EventQuery { project_id: 1, trace_id: Some(format!("{:032x}", 1)), limit: 100, ..Default::default() })
            .await
            .unwrap();
        assert_eq!(found.iter().map(|e| e.seq).collect::<Vec<_>>(), [23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1]);
        let conn = rusqlite::Connection::open(&path).unwrap();
        let left: i64 = conn
            .query_row(
                "SELECT (SELECT count(*) FROM sqlite_master WHERE name IN ('trace_index', 'trace_blocks'))
                      + (SELECT count(*) FROM cursors WHERE consumer = '$trace_index')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0, "the old index and its position left the log's database");
        let index = rusqlite::Connection::open(trace_index_path(&path)).unwrap();
        let entries: i64 = index.query_row("SELECT count(*) FROM trace_runs, json_each(seqs)", [], |r| r.get(0)).unwrap();
        assert_eq!(entries, 24, "moved entries and new ones, each once");
        log.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_of_one_row_per_event_becomes_one_row_per_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    two_runs_without_an_index(&path).await;
    // The index's database as this project's first version of it left it: a row per event.
    {
        let index = rusqlite::Connection::open(trace_index_path(&path)).unwrap();
        index
            .execute_batch(
                "CREATE TABLE trace_blocks (project_id INTEGER NOT NULL, block INTEGER NOT NULL, trace_id TEXT NOT NULL,
                                            seq INTEGER NOT NULL, PRIMARY KEY (project_id, block, trace_id, seq)) WITHOUT ROWID;
                 CREATE TABLE cursors (consumer TEXT PRIMARY KEY, position INTEGER NOT NULL);
                 INSERT INTO cursors VALUES ('$trace_index', 20);",
            )
            .unwrap();
        let mut insert = index.prepare("INSERT INTO trace_blocks VALUES (1, 0, ?1, ?2)").unwrap();
        for seq in 1..=20i64 {
            insert.execute(rusqlite::params![format!("{:032x}", (seq - 1) % 2 + 1), seq]).unwrap();
        }
    }
    let log = SqliteLog::open(&path, SqliteLogConfig::default()).unwrap();
    let found = log
        .query_events(EventQuery { project_id: 1, trace_id: Some(format!("{:032x}", 2)), limit: 100, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(found.iter().map(|e| e.seq).collect::<Vec<_>>(), [20, 18, 16, 14, 12, 10, 8, 6, 4, 2]);
    let index = rusqlite::Connection::open(trace_index_path(&path)).unwrap();
    let (old, seqs): (i64, i64) = index
        .query_row(
            "SELECT (SELECT count(*) FROM sqlite_master WHERE name = 'trace_blocks'),
                    (SELECT count(*) FROM trace_runs, json_each(seqs))",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((old, seqs), (0, 20), "the old table moved into runs, every seq once");
    log.close().await;
}

/// A closed log of 20 events over two agent runs, its trace index deleted.
async fn two_runs_without_an_index(path: &std::path::Path) {
    let log = SqliteLog::open(path, SqliteLogConfig::default()).unwrap();
    let events = (0..20).map(|i| LogRecord { trace_id: Some(format!("{:032x}", i % 2 + 1)), ..record(i) }).collect();
    log.append(AppendBatch { spans: vec![], events, quarantined: vec![] }).await.unwrap();
    log.close().await;
    drop(log);
    remove_database(&trace_index_path(path));
}

/// Deletes the SQLite database at `path` (its WAL and shared memory too, if left).
fn remove_database(path: &std::path::Path) {
    std::fs::remove_file(path).unwrap();
    for suffix in ["-wal", "-shm"] {
        let mut file = path.to_owned().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// Waits until the trace index's passes (asked for every 100 ms) have indexed the log up to
/// `seq`.
async fn wait_for_trace_index(path: &std::path::Path, seq: i64) {
    let conn = rusqlite::Connection::open(trace_index_path(path)).unwrap();
    let started = std::time::Instant::now();
    loop {
        let position: i64 = conn
            .query_row("SELECT coalesce((SELECT position FROM cursors WHERE consumer = '$trace_index'), 0)", [], |r| r.get(0))
            .unwrap();
        if position >= seq {
            return;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "the trace index stopped at {position} of {seq}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stored_without_their_column_members_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(&dir.path().join("log.db"), SqliteLogConfig::default()).unwrap();
    // As the normalizers write them: the members kept in columns, and most at their default,
    // are left out of the body.
    let stored = |i: usize| LogRecord {
        event: "tool \"used\"".into(),
        trace_id: i.is_multiple_of(2).then(|| format!("{:032x}", i + 1)),
        body: format!("{{\"protocol\":\"posthog\",\"user_id\":null,\"properties\":{{\"n\":{i}}}}}"),
        ..record(i)
    };
    let records: Vec<LogRecord> = (0..4).map(stored).collect();
    log.append(AppendBatch { spans: vec![], events: records.clone(), quarantined: vec![] }).await.unwrap();
    let whole = |r: &LogRecord| {
        serde_json::json!({"id": r.id, "project_id": r.project_id, "type": r.kind, "event": r.event,
            "distinct_id": r.distinct_id, "timestamp": r.timestamp, "received_at": r.received_at, "trace_id": r.trace_id,
            "protocol": "posthog", "user_id": null, "anonymous_id": null, "traits": {}, "context": {}, "span_id": null, "request_ip": null,
            "properties": serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["properties"]})
    };
    let parse = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap();
    let read = log.read("warehouse", 10, Selection::All).await.unwrap();
    let read: Vec<serde_json::Value> = read.entries.iter().map(|e| parse(&e.body)).collect();
    assert_eq!(read, records.iter().map(whole).collect::<Vec<_>>());
    let queried = log.query_events(EventQuery { project_id: 1, limit: 10, ..Default::default() }).await.unwrap();
    let queried: Vec<serde_json::Value> = queried.iter().rev().map(|e| parse(&e.body)).collect();
    assert_eq!(queried, read);
    log.close().await;
}

fn quarantined(raw: String, received_at: &str) -> QuarantineRecord {
    QuarantineRecord {
        project_id: 1,
        protocol: "posthog",
        received_at: received_at.into(),
        code: "event_too_large".into(),
        reason: "event 0: too large".into(),
        raw,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_quarantined_raws_keep_their_first_bytes_size_and_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let config = SqliteLogConfig { quarantine_raw_bytes: 1000, ..Default::default() };
    let log = SqliteLog::open(&path, config).unwrap();
    // 3-byte characters: 1000 is not a character boundary, the cut goes back to 999.
    let big = format!("{{\"properties\":\"{}\"}}", "€".repeat(100_000));
    let small = "{\"event\":\"x\"}".to_owned();
    let batch = AppendBatch {
        spans: vec![],
        events: vec![record(0)],
        quarantined: vec![quarantined(big.clone(), "2026-11-25T12:00:00.000000Z"), quarantined(small.clone(), "2026-11-25T12:00:00.000000Z")],
    };
    log.append(batch).await.unwrap();
    let rows = log.query_quarantine(QuarantineQuery { project_id: 1, limit: 10, ..Default::default() }).await.unwrap();
    let (small_row, big_row) = (&rows[0], &rows[1]);
    assert_eq!(small_row.raw, small);
    assert!(!small_row.raw_truncated() && small_row.raw_size.is_none());
    assert!(big_row.raw_truncated());
    assert_eq!(big_row.raw.len(), 999, "cut at the last character boundary under the limit");
    assert!(big.starts_with(&big_row.raw));
    assert_eq!(big_row.raw_size, Some(big.len() as i64));
    assert_eq!(big_row.raw_sha256.as_deref(), Some(sha256_hex(big.as_bytes()).as_str()));
    let conn = rusqlite::Connection::open(&path).unwrap();
    let stored: i64 = conn.query_row("SELECT sum(length(CAST(raw AS BLOB))) FROM quarantine", [], |r| r.get(0)).unwrap();
    assert_eq!(stored, 999 + small.len() as i64, "only the first bytes reach the disk");

    // A page of the listing stops at its byte budget, the row that reaches it included.
    let capped = QuarantineQuery { project_id: 1, limit: 10, max_bytes: Some(10), ..Default::default() };
    assert_eq!(log.query_quarantine(capped).await.unwrap().len(), 1);
    let events = EventQuery { project_id: 1, limit: 10, max_bytes: Some(1), ..Default::default() };
    log.append(AppendBatch { spans: vec![], events: vec![record(1), record(2)], quarantined: vec![] }).await.unwrap();
    assert_eq!(log.query_events(events).await.unwrap().len(), 1);
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantine_of_an_earlier_version_gets_the_digest_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE quarantine (seq INTEGER PRIMARY KEY, project_id INTEGER NOT NULL, protocol TEXT NOT NULL,
                                      received_at TEXT NOT NULL, code TEXT NOT NULL, reason TEXT NOT NULL, raw TEXT NOT NULL);
             INSERT INTO quarantine VALUES (1, 1, 'posthog', 't', 'c', 'r', '{\"old\":true}');",
        )
        .unwrap();
    }
    let config = SqliteLogConfig { quarantine_raw_bytes: 10, ..Default::default() };
    let log = SqliteLog::open(&path, config).unwrap();
    log.append(AppendBatch { spans: vec![], events: vec![record(0)], quarantined: vec![quarantined("x".repeat(50), "t")] }).await.unwrap();
    let rows = log.query_quarantine(QuarantineQuery { project_id: 1, limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!((rows[0].raw.as_str(), rows[0].raw_size), ("xxxxxxxxxx", Some(50)));
    assert_eq!((rows[1].raw.as_str(), rows[1].raw_size, rows[1].raw_truncated()), ("{\"old\":true}", None, false));
    log.close().await;
}

/// Counts retention passes and what they deleted.
#[derive(Default)]
struct RetentionCounts {
    passes: std::sync::atomic::AtomicU64,
    events: std::sync::atomic::AtomicU64,
    quarantine: std::sync::atomic::AtomicU64,
}

impl RetentionCounts {
    fn observer(self: &Arc<Self>) -> RetentionObserver {
        let counts = self.clone();
        RetentionObserver(Arc::new(move |pass: RetentionPass| {
            use std::sync::atomic::Ordering::SeqCst;
            counts.events.fetch_add(pass.events, SeqCst);
            counts.quarantine.fetch_add(pass.quarantine, SeqCst);
            counts.passes.fetch_add(1, SeqCst);
        }))
    }

    /// Waits until two more passes have ended: one whole pass ran after this call.
    async fn whole_pass(&self) {
        let start = self.passes.load(std::sync::atomic::Ordering::SeqCst);
        let started = std::time::Instant::now();
        while self.passes.load(std::sync::atomic::Ordering::SeqCst) < start + 2 {
            assert!(started.elapsed() < std::time::Duration::from_secs(30), "no retention pass");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

const LONG_AGO: &str = "2020-01-01T00:00:00.000000Z";

fn now_formatted() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

async fn seqs(log: &SqliteLog) -> Vec<i64> {
    let mut seqs: Vec<i64> =
        log.query_events(EventQuery { project_id: 1, limit: 1_000_000, ..Default::default() }).await.unwrap().iter().map(|e| e.seq).collect();
    seqs.reverse();
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_rows_behind_every_cursor_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let counts = Arc::new(RetentionCounts::default());
    let config = SqliteLogConfig {
        retention: Some(std::time::Duration::from_secs(86_400)),
        retention_interval: std::time::Duration::from_millis(30),
        retention_batch: 7,
        retention_consumers: vec!["persons".into()],
        on_retention: Some(counts.observer()),
        ..Default::default()
    };
    let log = SqliteLog::open(&path, config).unwrap();
    let now = now_formatted();
    // Seqs 1..=30 received long ago, 31..=40 now; quarantine rows: 5 old, then 2 new.
    let old: Vec<LogRecord> = (0..30).map(|i| LogRecord { received_at: LONG_AGO.into(), ..record(i) }).collect();
    let old_quarantine = (0..5).map(|_| quarantined("{}".into(), LONG_AGO)).collect();
    log.append(AppendBatch { spans: vec![], events: old, quarantined: old_quarantine }).await.unwrap();
    let new: Vec<LogRecord> = (30..40).map(|i| LogRecord { received_at: now.clone(), ..record(i) }).collect();
    let new_quarantine = (0..2).map(|_| quarantined("{}".into(), &now)).collect();
    log.append(AppendBatch { spans: vec![], events: new, quarantined: new_quarantine }).await.unwrap();
    wait_for_trace_index(&path, 40).await;

    // `persons` has no cursor yet: it has read nothing, so no event goes.
    log.commit("warehouse", 25).await.unwrap();
    counts.whole_pass().await;
    assert_eq!(seqs(&log).await, (1..=40).collect::<Vec<_>>(), "no event before every consumer read it");
    let quarantine = log.query_quarantine(QuarantineQuery { project_id: 1, limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(quarantine.iter().map(|q| q.received_at.as_str()).collect::<Vec<_>>(), [now.as_str(), now.as_str()], "old quarantine rows go");

    // The slowest cursor bounds what goes.
    log.commit("persons", 12).await.unwrap();
    counts.whole_pass().await;
    assert_eq!(seqs(&log).await, (13..=40).collect::<Vec<_>>());
    log.commit("persons", 40).await.unwrap();
    counts.whole_pass().await;
    assert_eq!(seqs(&log).await, (26..=40).collect::<Vec<_>>(), "`warehouse` is at 25");
    log.commit("warehouse", 40).await.unwrap();
    counts.whole_pass().await;
    assert_eq!(seqs(&log).await, (31..=40).collect::<Vec<_>>(), "events newer than the retention period stay");
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!((counts.events.load(SeqCst), counts.quarantine.load(SeqCst)), (30, 5));

    // Trace queries find what is left, whether the index still names deleted events or not.
    let traced = log.query_events(EventQuery { project_id: 1, trace_id: Some(format!("{:032x}", 1)), limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(traced.iter().map(|e| e.seq).collect::<Vec<_>>(), [40, 37, 34, 31]);
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_emptied_blocks_of_the_trace_index_and_never_reuses_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let counts = Arc::new(RetentionCounts::default());
    let config = SqliteLogConfig {
        retention: Some(std::time::Duration::from_secs(3_600)),
        retention_interval: std::time::Duration::from_millis(30),
        on_retention: Some(counts.observer()),
        ..Default::default()
    };
    let log = SqliteLog::open(&path, config).unwrap();
    // 70,000 old events: the trace index's block 0 (seqs below 65,536) and part of block 1.
    for chunk in 0..7 {
        let events = (chunk * 10_000..(chunk + 1) * 10_000).map(|i| LogRecord { received_at: LONG_AGO.into(), ..record(i) }).collect();
        log.append(AppendBatch { spans: vec![], events, quarantined: vec![] }).await.unwrap();
    }
    wait_for_trace_index(&path, 70_000).await;
    log.commit("persons", 70_000).await.unwrap();
    let started = std::time::Instant::now();
    while counts.events.load(std::sync::atomic::Ordering::SeqCst) < 69_999 {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "retention stopped");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    counts.whole_pass().await;
    assert_eq!(seqs(&log).await, [70_000], "every old event read by every consumer goes, but the newest");
    let index = rusqlite::Connection::open(trace_index_path(&path)).unwrap();
    let blocks: Vec<i64> = index.prepare("SELECT DISTINCT block FROM trace_runs ORDER BY 1").unwrap().query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert_eq!(blocks, [1], "the emptied block's runs are gone");
    let receipt = log.append(AppendBatch { spans: vec![], events: vec![record(70_000)], quarantined: vec![] }).await.unwrap();
    assert_eq!(receipt.last_seq, Some(70_001), "seqs go on from the newest, never from 1 again");
    log.close().await;
}

/// Bytes of the database at `path` and its WAL on disk.
fn database_bytes(path: &std::path::Path) -> u64 {
    let mut wal = path.to_owned().into_os_string();
    wal.push("-wal");
    [path.to_owned(), wal.into()].iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_cap_counts_every_database_of_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let control = dir.path().join("control.db");
    // The control store holds 3 MiB; the cap is 6 MiB.
    std::fs::write(&control, vec![0u8; 3 << 20]).unwrap();
    let cap = 6u64 << 20;
    let config = SqliteLogConfig { max_size_bytes: Some(cap), counted_files: vec![control.clone()], ..Default::default() };
    let log = SqliteLog::open(&path, config).unwrap();
    let batch = |round: usize| AppendBatch {
        spans: vec![],
        events: (0..50).map(|i| LogRecord { body: "x".repeat(2000), ..record(round * 50 + i) }).collect(),
        quarantined: vec![],
    };
    let mut stored = 0usize;
    let mut full = false;
    for round in 0..200 {
        match log.append(batch(round)).await {
            Ok(_) => stored += 50,
            Err(LogError::Full) => {
                full = true;
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(full, "the cap was never reached");
    let total = database_bytes(&path) + database_bytes(&trace_index_path(&path)) + database_bytes(&control);
    assert!(total <= cap + (512 << 10), "the databases take {total} bytes under a cap of {cap}");
    assert!(stored * 2000 < 3 << 20, "{stored} events of 2,000 bytes: the control store's 3 MiB were not counted");
    assert!(stored > 0);

    // The control store shrinks: the room is the log's again.
    std::fs::write(&control, b"").unwrap();
    log.append(batch(1000)).await.expect("room again once the control store shrank");
    log.close().await;
}

#[tokio::test]
async fn spans_commit_with_events_and_are_read_back_by_trace() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let span = |trace: &str, id: &str, start: &str| switchyard_store::SpanRecord {
        project_id: 1,
        trace_id: trace.into(),
        span_id: id.into(),
        parent_span_id: None,
        name: format!("span {id}"),
        start_time: start.into(),
        end_time: start.into(),
        received_at: "2026-12-05T10:00:00Z".into(),
        body: format!("{{\"span_id\":\"{id}\"}}"),
    };
    {
        let log = SqliteLog::open(&path, SqliteLogConfig::default()).unwrap();
        let receipt = log
            .append(AppendBatch {
                events: vec![record(1)],
                quarantined: vec![],
                spans: vec![span("t1", "b", "2026-12-05T10:00:02Z"), span("t1", "a", "2026-12-05T10:00:01Z"), span("t2", "c", "2026-12-05T10:00:03Z")],
            })
            .await
            .unwrap();
        assert_eq!(receipt.last_seq, Some(1));
        log.close().await;
    }
    // Durable with the events of the same append: read back after a reopen.
    let log = SqliteLog::open(&path, SqliteLogConfig::default()).unwrap();
    let spans = log.trace_spans(1, "t1", 100).await.unwrap();
    assert_eq!(spans, vec!["{\"span_id\":\"a\"}", "{\"span_id\":\"b\"}"], "by start time");
    assert!(log.trace_spans(2, "t1", 100).await.unwrap().is_empty(), "another project's");
    let recent: Vec<String> = log.recent_span_traces(1, 100).await.unwrap().into_iter().map(|(t, _)| t).collect();
    assert_eq!(recent, vec!["t2", "t1"]);
    assert_eq!(log.query_events(EventQuery { project_id: 1, limit: 10, ..EventQuery::default() }).await.unwrap().len(), 1);
}
