//! A throwaway PostgreSQL 15 cluster: `initdb` in a temporary directory, started on a free
//! loopback port, stopped (`pg_ctl stop -m immediate`) and removed on drop.
//!
//! PostgreSQL refuses to run as root; tests run as root here, so the cluster's commands run as
//! the `postgres` system user (`runuser`) when the test is root, and as the test's user
//! otherwise. The binaries are Debian's PostgreSQL 15 (`/usr/lib/postgresql/15/bin`, or
//! `SWITCHYARD_PG_BIN`); when they are missing the test fails saying so (CI installs them),
//! it is never skipped.

// Shared by several test binaries: each uses a part.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The superuser `initdb` creates; `trust` authentication, no password.
pub const USER: &str = "switchyard";

pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    running: bool,
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

impl PgCluster {
    /// A new cluster, initialized, not started.
    pub fn init() -> PgCluster {
        let bin = std::env::var_os("SWITCHYARD_PG_BIN").map_or_else(|| PathBuf::from(DEFAULT_BIN), PathBuf::from);
        assert!(
            bin.join("initdb").is_file(),
            "PostgreSQL 15 is needed by this test and {} is missing: install it (Debian: apt-get install postgresql-15) or set SWITCHYARD_PG_BIN to its bin directory",
            bin.join("initdb").display()
        );
        let dir = tempfile::Builder::new().prefix("switchyard-pg-").tempdir().expect("a temporary directory");
        if running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown runs");
            assert!(status.success(), "chown of {} to postgres failed", dir.path().display());
        }
        let cluster = PgCluster {
            port: free_port(),
            dir,
            bin,
            running: false,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &["-D", path(&data), "-A", "trust", "-U", USER, "-E", "UTF8", "--locale=C", "--no-sync"],
        );
        cluster
    }

    /// A new cluster, started.
    pub fn start_new() -> PgCluster {
        let mut cluster = PgCluster::init();
        cluster.start();
        cluster
    }

    pub fn start(&mut self) {
        let options = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        let data = self.data();
        let ok = self.try_run("pg_ctl", &["-D", path(&data), "-l", path(&log), "-o", &options, "-w", "-t", "60", "start"]);
        if !ok {
            panic!("PostgreSQL did not start; its log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        self.running = true;
    }

    /// Stops at once (no checkpoint), as a crash would.
    pub fn stop(&mut self) {
        if self.running {
            let data = self.data();
            self.try_run("pg_ctl", &["-D", path(&data), "-m", "immediate", "-w", "stop"]);
            self.running = false;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port)
    }

    /// A connection to the `postgres` database (its connection task spawned).
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connecting to the test cluster");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program} did not run: {e}"));
        assert!(
            output.status.success(),
            "{program} failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn try_run(&self, program: &str, args: &[&str]) -> bool {
        self.command(program).args(args).output().is_ok_and(|o| o.status.success())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

/// A loopback port free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
