//! The embedded default database: a private PostgreSQL cluster under `$COMMGUARD_DATA_DIR/pg`,
//! reachable only through a Unix socket, started when `DATABASE_URL` is unset and stopped when
//! the last process using it exits.
//!
//! Several commguard processes may use one data directory at once (a server, `audit verify`,
//! `replay`, a second server that then finds its port taken). Each one holds a *lease* for as long
//! as it uses the cluster: a shared `flock` on `pg.users.lock`. Starting, adopting and stopping
//! happen under an exclusive `flock` on `pg.control.lock`, so two processes never start or stop
//! the cluster at once; a leaving process stops the cluster only if it can then take the users
//! lock exclusively, i.e. no other process holds a lease. The kernel drops a process's locks when
//! it dies, so a `kill -9`'d process neither blocks the others nor counts as a user; the cluster
//! it leaves running is adopted by the next start and stopped by the last user.
//!
//! `initdb` refuses to run as root, so when commguard runs as root the cluster is owned by, and
//! its programs run as, the `postgres` system user that Debian's package creates.

use std::fs::File;
use std::os::fd::AsRawFd;
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

/// A running private cluster and this process's lease on it. `release` gives the lease back and
/// stops the cluster if no other process holds one; dropping it without `release` leaves the
/// cluster running (the next start adopts it, the last user stops it).
pub struct EmbeddedPostgres {
    pgdata: PathBuf,
    socket_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<(u32, u32)>,
    log_file: PathBuf,
    lease: Lease,
}

/// What `release` did with the cluster.
#[derive(Debug, PartialEq, Eq)]
pub enum Released {
    /// This process was its last user and stopped it.
    Stopped,
    /// Another process still uses it: left running.
    InUse,
}

impl EmbeddedPostgres {
    /// Takes a lease, initialises the cluster on first use, recovers from a stale pid file,
    /// starts it (or adopts one already running on the same data directory) and makes sure the
    /// database exists. Waits while another process starts or stops the cluster.
    pub fn start(data_dir: &Path, pg_bin_dir: Option<&Path>) -> Result<Self, EmbeddedError> {
        let bin_dir = find_bin_dir(pg_bin_dir).ok_or(EmbeddedError::BinariesNotFound)?;
        let run_as = if is_root() { Some(postgres_user().ok_or(EmbeddedError::NoUnprivilegedUser)?) } else { None };

        std::fs::create_dir_all(data_dir)?;
        let data_dir = std::fs::canonicalize(data_dir)?;
        let control = Control::lock(&data_dir)?;
        let lease = Lease::take(&control)?;
        let pgdata = data_dir.join("pg");
        let socket_dir = socket_dir_for(&data_dir);
        let this = Self { log_file: data_dir.join("postgres.log"), pgdata, socket_dir, bin_dir, run_as, lease };

        this.prepare_dirs()?;
        if !this.pgdata.join("PG_VERSION").exists() {
            this.initdb()?;
        }
        if !this.is_running() {
            this.remove_stale_pid_file();
            this.pg_ctl_start()?;
        }
        this.create_database()?;
        drop(control);
        Ok(this)
    }

    /// Gives this process's lease back and, if no other process holds one, stops the cluster
    /// (fast shutdown: open transactions roll back, committed ones are durable). A cluster that
    /// another live process uses is never stopped.
    pub fn release(self) -> Result<Released, EmbeddedError> {
        let control = Control::lock(self.pgdata.parent().unwrap_or(&self.pgdata))?;
        if !self.lease.last(&control)? {
            return Ok(Released::InUse);
        }
        // The users lock is now held exclusively: no process takes a lease until it is stopped.
        let stopped = self.stop();
        drop(self);
        drop(control);
        stopped.map(|()| Released::Stopped)
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

    fn stop(&self) -> Result<(), EmbeddedError> {
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
        // The cluster trusts whoever reaches its socket (initdb --auth=trust): only this
        // cluster's user may reach it, through a directory and a socket of its own.
        set_mode(&self.socket_dir, 0o700)?;
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
            .arg(format!("-k {} -c listen_addresses='' -c unix_socket_permissions=0700", self.socket_dir.display()))
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

/// The exclusive lock under which the cluster is started, adopted or stopped (`pg.control.lock`
/// in the data directory); released when dropped, or by the kernel when the process dies.
struct Control {
    file: File,
    data_dir: PathBuf,
}

impl Control {
    fn lock(data_dir: &Path) -> Result<Self, EmbeddedError> {
        let file = lock_file(&data_dir.join("pg.control.lock"))?;
        flock(&file, libc::LOCK_EX)?;
        Ok(Self { file, data_dir: data_dir.to_path_buf() })
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = flock(&self.file, libc::LOCK_UN);
    }
}

/// This process's use of the cluster: a shared lock on `pg.users.lock`, held until dropped (the
/// descriptor closes) or until the process dies. Taken and tested only under `Control`.
struct Lease {
    file: File,
}

impl Lease {
    fn take(control: &Control) -> Result<Self, EmbeddedError> {
        let file = lock_file(&control.data_dir.join("pg.users.lock"))?;
        // Never waits long: the users lock is held exclusively only by a process that also holds
        // the control lock (while it stops the cluster), and we hold the control lock now.
        flock(&file, libc::LOCK_SH)?;
        Ok(Self { file })
    }

    /// Whether this is the last lease: converts it to an exclusive lock without waiting. `true`:
    /// no other process holds a lease, and none can take one while this one is kept. `false`:
    /// the lease must be dropped, since a failed conversion may already have given up the shared
    /// lock (`flock` conversions are not atomic).
    fn last(&self, _control: &Control) -> Result<bool, EmbeddedError> {
        match flock(&self.file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Opens (creating it if needed) a lock file. Like every file std opens, it is close-on-exec, so
/// `pg_ctl` and the postmaster it starts never inherit the lock.
/// `flock` needs no write access: a lock file another user created is opened read-only.
fn lock_file(path: &Path) -> Result<File, EmbeddedError> {
    match std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(File::open(path)?),
        opened => Ok(opened?),
    }
}

/// `flock(2)`, retried when a signal interrupts a wait.
#[allow(unsafe_code)]
fn flock(file: &File, operation: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: `file` owns an open descriptor for the whole call; flock takes no pointers.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn try_lock(path: &Path, operation: libc::c_int) -> bool {
        flock(&lock_file(path).unwrap(), operation | libc::LOCK_NB).is_ok()
    }

    #[test]
    fn only_the_last_lease_may_stop_the_cluster_and_dead_holders_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let control = Control::lock(dir.path()).unwrap();
        assert!(!try_lock(&dir.path().join("pg.control.lock"), libc::LOCK_EX), "one starter or stopper at a time");
        let server = Lease::take(&control).unwrap();
        let cli = Lease::take(&control).unwrap();
        assert!(!cli.last(&control).unwrap(), "the server still uses the cluster");
        drop(cli);
        // A holder that went away without a word (its descriptor closed, as when a process is
        // killed) leaves no trace: here the leaving CLI's lease.
        assert!(server.last(&control).unwrap(), "the server is the last user");
        assert!(!try_lock(&dir.path().join("pg.users.lock"), libc::LOCK_SH), "no lease while it stops the cluster");
        drop(server);
        drop(control);
        assert!(try_lock(&dir.path().join("pg.control.lock"), libc::LOCK_EX));
        assert!(try_lock(&dir.path().join("pg.users.lock"), libc::LOCK_EX));
    }
}
