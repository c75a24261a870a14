//! `sync-floor`: what one durable write costs on this machine's disk, with nothing else running.
//!
//! Every acknowledged group commit ends in one `fdatasync` of the WAL, after its frames were
//! written over older ones (the WAL starts over at its restart size). This program does the
//! same to a file of its own, so the figures are the least a group commit can take here: the
//! wall time a request waits for its sync at best, and the CPU the sync costs the machine (on a
//! virtual machine each device round trip is a VM exit, paid for in the guest's CPU time). The
//! same appended to a growing file shows what a new WAL costs until it reaches its restart size.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;

use crate::{cpu_seconds, percentile};

/// The file the WAL-like writes go to is this large, preallocated and synced before timing.
const FILE_BYTES: u64 = 16 << 20;

pub(crate) fn sync_floor(dir: &Path, ops: usize) -> anyhow::Result<()> {
    let path = dir.join(format!("switchyard-sync-floor-{}.bin", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let result = measure(&file, ops.max(1));
    let _ = std::fs::remove_file(&path);
    result
}

fn measure(file: &File, ops: usize) -> anyhow::Result<()> {
    println!(
        "switchyard-loadgen sync-floor: {ops} operations each; writes over a preallocated {} MiB file but the first",
        FILE_BYTES >> 20
    );
    println!("{:<34} {:>10} {:>10} {:>10} {:>12}", "operation", "avg µs", "p50 µs", "p99 µs", "CPU µs/op");
    // First as a new WAL grows: each sync also writes the file's new size and block map.
    let page = vec![0x5au8; 16 << 10];
    let mut end = 0u64;
    run("append 16 KiB + fdatasync (grows)", ops, || {
        file.write_all_at(&page, end)?;
        end += page.len() as u64;
        file.sync_data()
    })?;
    file.set_len(0)?;
    let chunk = vec![0u8; 1 << 20];
    for offset in (0..FILE_BYTES).step_by(chunk.len()) {
        file.write_all_at(&chunk, offset)?;
    }
    file.sync_all()?;
    for bytes in [16 << 10, 64 << 10] {
        let data = vec![0x5au8; bytes];
        let mut offset = 0u64;
        run(&format!("write {} KiB + fdatasync", bytes >> 10), ops, || {
            file.write_all_at(&data, offset)?;
            offset = (offset + bytes as u64) % FILE_BYTES;
            file.sync_data()
        })?;
    }
    run("fdatasync, nothing written", ops, || file.sync_data())?;
    Ok(())
}

fn run(name: &str, ops: usize, mut op: impl FnMut() -> std::io::Result<()>) -> anyhow::Result<()> {
    let pid = std::process::id();
    let cpu_before = cpu_seconds(pid).context("cannot read this process's CPU time")?;
    let mut micros = Vec::with_capacity(ops);
    let started = Instant::now();
    for _ in 0..ops {
        let t = Instant::now();
        op()?;
        micros.push(t.elapsed().as_micros());
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).context("cannot read this process's CPU time")? - cpu_before;
    micros.sort_unstable();
    println!(
        "{name:<34} {:>10.0} {:>10} {:>10} {:>12.0}",
        wall * 1e6 / ops as f64,
        percentile(&micros, 0.5),
        percentile(&micros, 0.99),
        cpu * 1e6 / ops as f64
    );
    Ok(())
}
