//! A real PostgreSQL for tests: `initdb` and `pg_ctl start` in a temporary directory, on a
//! free port of 127.0.0.1 and a unix socket directory of its own, one server per test
//! binary (started by the first test that asks), a fresh database per test.
//!
//! - The binaries come from `PG_BIN` when set, else from the newest
//!   `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package; `.ci/run` installs it), else
//!   from `PATH`. A server that cannot start fails the test with the reason: a PostgreSQL
//!   test never skips.
//! - PostgreSQL refuses to run as root: as root, every server command runs as the
//!   `postgres` user (the Debian package creates it) through `runuser`, and the directory
//!   is given to that user.
//! - The server is stopped when the test binary exits, however it exits: a watchdog
//!   process started with the server waits for the binary's pid to go away, then stops the
//!   server (`-m immediate`) and removes the directory.
//! - `fsync` is off for tests (a clean restart still loses nothing: a fast shutdown
//!   checkpoints); the benchmarks (`benches/postgres-peers`, which include this file) start
//!   theirs with it on.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// A PostgreSQL server for this test binary.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    fsync: bool,
}

static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();

/// The server of this test binary, started on first use; panics with the reason when it
/// cannot start.
pub fn server() -> &'static PgServer {
    match SERVER.get_or_init(|| PgServer::start(false)) {
        Ok(server) => server,
        Err(reason) => panic!("PostgreSQL could not be started for this test: {reason}"),
    }
}

/// Where the PostgreSQL binaries are.
fn find_bin() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let found = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match found {
        Some(path) => Ok(Path::new(&path)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()),
        None => Err(
            "no initdb: install Debian's `postgresql` package (apt-get install -y \
             postgresql) or set PG_BIN to the directory of initdb and pg_ctl"
                .to_owned(),
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

fn describe(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

impl PgServer {
    /// Starts a server of its own (`fsync` on for benchmarks, off for tests); it is
    /// stopped when this process exits.
    pub fn start(fsync: bool) -> Result<PgServer, String> {
        let bin = find_bin()?;
        let as_postgres = is_root();
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "task-tests-pg-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sock")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let server = PgServer {
            bin,
            dir,
            port: free_port()?,
            as_postgres,
            fsync,
        };
        if as_postgres {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&server.dir)
                .output()
                .map_err(|e| format!("chown: {e}"))?;
            if !chown.status.success() {
                return Err(format!(
                    "running as root, the server must run as the `postgres` user, but \
                     chown failed (does the user exist? Debian's postgresql package \
                     creates it): {}",
                    describe(&chown)
                ));
            }
        }
        let data = server.dir.join("data");
        let init = server
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !init.status.success() {
            return Err(format!("initdb failed: {}", describe(&init)));
        }
        server.watch();
        let started = server
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(server.dir.join("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(server.options())
            .arg("start")
            .output()
            .map_err(|e| format!("pg_ctl: {e}"))?;
        if !started.status.success() {
            return Err(format!(
                "pg_ctl start failed: {}\n{}",
                describe(&started),
                server.log()
            ));
        }
        Ok(server)
    }

    /// The server's settings; `PG_EXTRA_OPTIONS` adds to them (e.g.
    /// `-c shared_preload_libraries=pg_stat_statements` to see where the time goes).
    fn options(&self) -> String {
        format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync={} -c max_connections=200 \
             -c shared_buffers=128MB {}",
            self.port,
            self.dir.join("sock").display(),
            if self.fsync { "on" } else { "off" },
            std::env::var("PG_EXTRA_OPTIONS").unwrap_or_default()
        )
    }

    /// A server command, as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        };
        command.stdin(Stdio::null());
        command
    }

    /// Stops the server and removes its directory once this process is gone.
    fn watch(&self) {
        let stop = format!(
            "{} -D {} stop -m immediate",
            self.bin.join("pg_ctl").display(),
            self.dir.join("data").display()
        );
        let stop = if self.as_postgres {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            dir = self.dir.display()
        );
        // Its own session (when `setsid` exists): a Ctrl-C of the test run does not kill it
        // before it cleans up.
        let spawn = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        };
        if spawn("setsid", &["sh", "-c", &script]).is_err() {
            let _ = spawn("sh", &["-c", &script]);
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs `sql` in `database` with psql; returns its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let output = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(format!("psql `{sql}`: {}", describe(&output)))
        }
    }

    /// A fresh, empty database named after `name`; returns its URL.
    pub fn database(&self, name: &str) -> String {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let db = format!(
            "{}_{}",
            name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {db}"))
            .unwrap_or_else(|e| panic!("{e}"));
        self.url(&db)
    }

    /// Restarts the server (`pg_ctl restart -m fast`: every connection is closed).
    pub fn restart(&self) -> Result<(), String> {
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "-m", "fast", "-o"])
            .arg(self.options())
            .arg("restart")
            .output()
            .map_err(|e| format!("pg_ctl: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!("pg_ctl restart failed: {}", describe(&output)))
        }
    }

    /// Terminates every connection of the library (`application_name` task-runtime) to
    /// `database`; returns how many.
    pub fn terminate_connections(&self, database: &str) -> Result<usize, String> {
        let killed = self.psql(
            "postgres",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                  WHERE datname = '{database}' AND application_name = 'task-runtime'"
            ),
        )?;
        killed.parse().map_err(|e| format!("{killed}: {e}"))
    }
}

/// The database name of a URL made by [`PgServer::database`].
pub fn database_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or_default()
}
