//! The embedded default database: a private PostgreSQL cluster under `$COMMGUARD_DATA_DIR/pg`,
//! reachable only through a Unix socket, started when `DATABASE_URL` is unset and stopped on exit.
//!
//! `initdb` refuses to run as root, so when commguard runs as root the cluster is owned by, and
//! its programs run as, the `postgres` system user that Debian's package creates.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// The database and role the embedded cluster serves.
const DB_NAME: &str = "commguard";
const DB_USER: &str = "commguard";
/// A Unix socket path must fit in `sun_path` (108 bytes) including `/.s.PGSQL.5432`.
const MAX_SOCKET_DIR_LEN: usize = 90;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server programs (initdb, pg_ctl) not found in PG_BIN_DIR, PATH or /usr/lib/postgresql/*/bin: \
         install Debian's `postgresql` package (apt-get install postgresql) or set DATABASE_URL"
    )]
    BinariesNotFound,
    #[error(
        "running as root: PostgreSQL refuses to run as root and no `postgres` system user exists \
         (install Debian's `postgresql` package, run as a normal user, or set DATABASE_URL)"
    )]
    NoUnprivilegedUser,
    #[error("{0} failed: {1}")]
    Command(&'static str, String),
    #[error("embedded database: {0}")]
    Io(#[from] std::io::Error),
}

/// A running private cluster. `stop` shuts it down; dropping it without `stop` leaves it running
/// (the next start finds and adopts it).
pub struct EmbeddedPostgres {
    pgdata: PathBuf,
    socket_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<(u32, u32)>,
    log_file: PathBuf,
}

impl EmbeddedPostgres {
    /// Initialises the cluster on first use, recovers from a stale pid file, starts it (or adopts
    /// one already running on the same data directory) and makes sure the database exists.
    pub fn start(data_dir: &Path, pg_bin_dir: Option<&Path>) -> Result<Self, EmbeddedError> {
        let bin_dir = find_bin_dir(pg_bin_dir).ok_or(EmbeddedError::BinariesNotFound)?;
        let run_as = if is_root() { Some(postgres_user().ok_or(EmbeddedError::NoUnprivilegedUser)?) } else { None };

        std::fs::create_dir_all(data_dir)?;
        let data_dir = std::fs::canonicalize(data_dir)?;
        let pgdata = data_dir.join("pg");
        let socket_dir = socket_dir_for(&data_dir);
        let this = Self { log_file: data_dir.join("postgres.log"), pgdata, socket_dir, bin_dir, run_as };

        this.prepare_dirs()?;
        if !this.pgdata.join("PG_VERSION").exists() {
            this.initdb()?;
        }
        if !this.is_running() {
            this.remove_stale_pid_file();
            this.pg_ctl_start()?;
        }
        this.create_database()?;
        Ok(this)
    }

    /// The connection URL of the cluster's database, over its Unix socket.
    pub fn url(&self) -> String {
        format!("postgres://{DB_USER}@localhost/{DB_NAME}?host={}", self.socket_dir.display())
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Fast shutdown: open transactions roll back, committed ones are durable.
    pub fn stop(&self) -> Result<(), EmbeddedError> {
        let out = self
            .command("pg_ctl")
            .args(["-D"])
            .arg(&self.pgdata)
            .args(["-m", "fast", "-w", "-t", "30", "stop"])
            .output()?;
        if !out.status.success() && self.is_running() {
            return Err(EmbeddedError::Command("pg_ctl stop", String::from_utf8_lossy(&out.stderr).into()));
        }
        Ok(())
    }

    fn prepare_dirs(&self) -> Result<(), EmbeddedError> {
        if self.run_as.is_some() {
            // The `postgres` user must be able to pass through the data directory (not list it).
            if let Some(data_dir) = self.pgdata.parent() {
                let mode = std::fs::metadata(data_dir)?.mode();
                if mode & 0o001 == 0 {
                    set_mode(data_dir, (mode & 0o7777) | 0o001)?;
                }
            }
        }
        for dir in [&self.pgdata, &self.socket_dir] {
            std::fs::create_dir_all(dir)?;
            self.own(dir)?;
        }
        set_mode(&self.pgdata, 0o700)?;
        if !self.log_file.exists() {
            std::fs::write(&self.log_file, b"")?;
        }
        self.own(&self.log_file)
    }

    fn own(&self, path: &Path) -> Result<(), EmbeddedError> {
        if let Some((uid, gid)) = self.run_as {
            if std::fs::metadata(path)?.uid() != uid {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
            }
        }
        Ok(())
    }

    fn initdb(&self) -> Result<(), EmbeddedError> {
        tracing::info!(pgdata = %self.pgdata.display(), "initialising the embedded PostgreSQL cluster");
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-U", DB_USER, "--auth=trust", "-E", "UTF8", "--no-locale", "--no-instructions"])
            .output()?;
        if !out.status.success() {
            return Err(EmbeddedError::Command("initdb", String::from_utf8_lossy(&out.stderr).into()));
        }
        // Unix socket only, in a directory private to this cluster.
        let settings = format!(
            "\n# commguard: private cluster, Unix socket only\nlisten_addresses = ''\nunix_socket_directories = '{}'\nmax_connections = 200\n",
            self.socket_dir.display()
        );
        let conf = self.pgdata.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)?;
        text.push_str(&settings);
        std::fs::write(&conf, text)?;
        Ok(())
    }

    fn is_running(&self) -> bool {
        self.command("pg_ctl")
            .arg("-D")
            .arg(&self.pgdata)
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// After a crash the pid file names a process that no longer exists (or a recycled pid that
    /// is not a postmaster); `pg_ctl status` has already said no server runs on this directory.
    fn remove_stale_pid_file(&self) {
        let pid_file = self.pgdata.join("postmaster.pid");
        if pid_file.exists() {
            tracing::warn!("removing a stale postmaster.pid left by a crash");
            let _ = std::fs::remove_file(pid_file);
            let _ = std::fs::remove_file(self.socket_dir.join(".s.PGSQL.5432.lock"));
        }
    }

    fn pg_ctl_start(&self) -> Result<(), EmbeddedError> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&self.log_file)
            // The socket directory is passed at every start: the data directory may have moved.
            .arg("-o")
            .arg(format!("-k {} -c listen_addresses=''", self.socket_dir.display()))
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .output()?;
        if !out.status.success() {
            let log = std::fs::read_to_string(&self.log_file).unwrap_or_default();
            let tail: String =
                log.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            return Err(EmbeddedError::Command(
                "pg_ctl start",
                format!("{}\n{tail}", String::from_utf8_lossy(&out.stderr)),
            ));
        }
        Ok(())
    }

    fn create_database(&self) -> Result<(), EmbeddedError> {
        let psql = self.bin_dir.join("psql");
        let sock = self.socket_dir.display().to_string();
        let exists = self
            .command_at(&psql)
            .args(["-h", &sock, "-U", DB_USER, "-d", "postgres", "-tAc"])
            .arg(format!("SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"))
            .output()?;
        if !exists.status.success() {
            return Err(EmbeddedError::Command("psql", String::from_utf8_lossy(&exists.stderr).into()));
        }
        if String::from_utf8_lossy(&exists.stdout).trim() != "1" {
            let out = self
                .command_at(&psql)
                .args(["-h", &sock, "-U", DB_USER, "-d", "postgres", "-c"])
                .arg(format!("CREATE DATABASE {DB_NAME}"))
                .output()?;
            if !out.status.success() {
                return Err(EmbeddedError::Command("CREATE DATABASE", String::from_utf8_lossy(&out.stderr).into()));
            }
        }
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        self.command_at(&self.bin_dir.join(program))
    }

    fn command_at(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid).env("HOME", &self.pgdata).current_dir(&self.pgdata);
        }
        cmd
    }
}

/// `PG_BIN_DIR`, else the directory of `initdb` on PATH, else the newest /usr/lib/postgresql/*/bin.
pub fn find_bin_dir(configured: Option<&Path>) -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = configured {
        return has_tools(dir).then(|| dir.to_path_buf());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("initdb"))
            .find(|p| p.is_file())
            .and_then(|p| std::fs::canonicalize(p).ok())
            .and_then(|p| p.parent().map(Path::to_path_buf))
    });
    if let Some(dir) = on_path.filter(|d| has_tools(d)) {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, dir)| has_tools(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

fn socket_dir_for(data_dir: &Path) -> PathBuf {
    let inside = data_dir.join("run");
    if inside.as_os_str().len() <= MAX_SOCKET_DIR_LEN {
        return inside;
    }
    // A deep data directory: keep the socket in a short, per-data-dir path under /tmp.
    let digest = hex::encode(&Sha256::digest(data_dir.as_os_str().as_encoded_bytes())[..8]);
    std::env::temp_dir().join(format!("commguard-{digest}"))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn is_root() -> bool {
    // The owner of /proc/self is this process's effective uid.
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// The uid and gid of the `postgres` system user, from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != "postgres" {
            return None;
        }
        let _password = fields.next()?;
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}
