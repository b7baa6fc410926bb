//! Serving a plugin on a unix socket the way containerd's proxy plugins expect: one live owner
//! per socket, stale sockets replaced, restrictive permissions, the gRPC health service, systemd
//! socket activation and readiness, and a bounded graceful shutdown on SIGTERM/SIGINT.

use std::fs::{self, File};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tower::layer::util::{Identity, Stack};
use tracing::{info, warn};

use crate::cli::ServerConfig;
use crate::rpc::RpcLayer;

/// The router a plugin adds its services to: every call goes through [`RpcLayer`].
pub type Router = tonic::transport::server::Router<Stack<RpcLayer, Identity>>;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const SD_LISTEN_FDS_START: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{path}: another server is already serving on this socket")]
    AlreadyServing { path: PathBuf },
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("socket activation: {0}")]
    Activation(String),
    #[error(transparent)]
    Config(#[from] crate::cli::ConfigError),
    #[error("serve: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("server task: {0}")]
    Task(String),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ServeError + 'a {
    move |source| ServeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Where the server accepts connections.
pub struct Listener {
    listener: UnixListener,
    /// Set when we bound the socket ourselves (not socket-activated): we remove it on exit,
    /// and the lock keeps a second instance from stealing it while we live.
    owned: Option<OwnedSocket>,
}

struct OwnedSocket {
    path: PathBuf,
    inode: u64,
    _lock: Flock<File>,
}

impl Listener {
    /// The socket systemd passed (`LISTEN_FDS`) if any, else `cfg.address`, bound here.
    pub fn open(cfg: &ServerConfig) -> Result<Listener, ServeError> {
        let pid = std::process::id();
        let fds = activated_fds(
            std::env::var("LISTEN_PID").ok().as_deref(),
            std::env::var("LISTEN_FDS").ok().as_deref(),
            pid,
        )?;
        if let Some(fd) = fds {
            return Listener::from_activated_fd(fd);
        }
        Listener::bind(&cfg.address, cfg.socket_mode_bits()?, cfg.socket_gid)
    }

    fn from_activated_fd(fd: RawFd) -> Result<Listener, ServeError> {
        let stat = nix::sys::stat::fstat(fd)
            .map_err(|e| ServeError::Activation(format!("fd {fd}: {e}")))?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(ServeError::Activation(format!("fd {fd} is not a socket")));
        }
        // SAFETY: systemd hands this process ownership of descriptor `fd` (LISTEN_PID matched
        // our pid), nothing else in the process uses it, and it was checked to be a socket.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let std_listener = std::os::unix::net::UnixListener::from(owned);
        std_listener
            .set_nonblocking(true)
            .map_err(|e| ServeError::Activation(format!("fd {fd}: {e}")))?;
        let listener = UnixListener::from_std(std_listener)
            .map_err(|e| ServeError::Activation(format!("fd {fd}: {e}")))?;
        info!(fd, "serving on a socket passed by systemd");
        Ok(Listener {
            listener,
            owned: None,
        })
    }

    /// Binds `path`: creates its directory, refuses if a live server owns it, replaces a stale
    /// socket left by a crash, and applies `mode` (and `gid`) before anyone can connect.
    pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> Result<Listener, ServeError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(dir)
                .map_err(io_err("create socket directory", dir))?;
        }
        let lock_path = lock_path(path);
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open lock", &lock_path))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            if e == nix::errno::Errno::EWOULDBLOCK {
                ServeError::AlreadyServing {
                    path: path.to_path_buf(),
                }
            } else {
                io_err("lock", &lock_path)(e.into())
            }
        })?;
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                // Someone not holding our lock (another build, another tool) may still be
                // listening: only a refused connection proves the socket stale.
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(ServeError::AlreadyServing {
                        path: path.to_path_buf(),
                    });
                }
                warn!(path = %path.display(), "removing stale socket");
                fs::remove_file(path).map_err(io_err("remove stale socket", path))?;
            }
            Ok(_) => {
                return Err(ServeError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("stat socket", path)(e)),
        }
        let listener = bind_owner_only(path).map_err(io_err("bind", path))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(path, None, Some(gid))
                .map_err(io_err("chown socket", path))?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod socket", path))?;
        let inode = fs::metadata(path)
            .map_err(io_err("stat socket", path))?
            .ino();
        info!(path = %path.display(), mode = format!("{mode:o}"), "listening");
        Ok(Listener {
            listener,
            owned: Some(OwnedSocket {
                path: path.to_path_buf(),
                inode,
                _lock: lock,
            }),
        })
    }

    pub fn local_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// The next connection (the metrics endpoint serves its own connections).
    pub(crate) async fn accept_unix(&self) -> io::Result<tokio::net::UnixStream> {
        self.listener.accept().await.map(|(s, _)| s)
    }
}

/// Binds a listening socket at `path` whose file only its owner can connect to until its
/// mode is set. The file takes its mode from the socket's inode (masked by the umask), so the
/// socket is made 0600 before `bind`: narrowing the process-wide umask instead would also
/// narrow whatever another thread creates meanwhile.
fn bind_owner_only(path: &Path) -> io::Result<UnixListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
    };
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    nix::sys::stat::fchmod(
        fd.as_raw_fd(),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    // The standard library's backlog for Unix listeners.
    listen(&fd, Backlog::new(128)?)?;
    UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))
}

impl Drop for OwnedSocket {
    fn drop(&mut self) {
        // Only remove the socket if it is still the one we bound: a successor may own the path.
        if fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// Decodes systemd's socket-activation variables: `Some(fd)` when they are meant for `pid`.
fn activated_fds(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    pid: u32,
) -> Result<Option<RawFd>, ServeError> {
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    // Variables inherited from a parent that was activated are not for us.
    if listen_pid.trim().parse::<u32>().ok() != Some(pid) {
        return Ok(None);
    }
    match listen_fds.trim().parse::<u32>() {
        Ok(0) => Ok(None),
        Ok(1) => Ok(Some(SD_LISTEN_FDS_START)),
        Ok(n) => Err(ServeError::Activation(format!(
            "systemd passed {n} sockets; a strata server serves exactly one"
        ))),
        Err(_) => Err(ServeError::Activation(format!(
            "LISTEN_FDS={listen_fds:?} is not a number"
        ))),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop the server with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}

/// Serves `services` (names for the health service, e.g. `containerd.services.diff.v1.Diff`)
/// added by `add` on `listener`, each call through `rpc`, until `shutdown` resolves; then stops
/// accepting, lets in-flight calls finish for at most `drain`, and returns.
pub async fn serve_until<F>(
    listener: Listener,
    services: &[&str],
    add: impl FnOnce(Router) -> Router,
    rpc: RpcLayer,
    shutdown: F,
    drain: Duration,
) -> Result<(), ServeError>
where
    F: Future<Output = ()>,
{
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in services {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    let router = add(Server::builder().layer(rpc).add_service(health));
    let Listener { listener, owned } = listener;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
        let _ = stop_rx.await;
    });
    tokio::pin!(server);
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    tokio::pin!(shutdown);
    let result = tokio::select! {
        res = &mut server => res.map_err(ServeError::from),
        () = &mut shutdown => {
            notify_systemd(&[sd_notify::NotifyState::Stopping]);
            reporter.set_service_status("", ServingStatus::NotServing).await;
            for name in services {
                reporter.set_service_status(*name, ServingStatus::NotServing).await;
            }
            let _ = stop_tx.send(());
            match tokio::time::timeout(drain, &mut server).await {
                Ok(res) => res.map_err(ServeError::from),
                Err(_) => {
                    warn!(?drain, "in-flight calls did not finish in time; exiting anyway");
                    Ok(())
                }
            }
        }
    };
    drop(owned);
    info!("server stopped");
    result
}

/// A server running on a tokio task (tests, embedders) until [`Running::stop`] or drop.
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl Running {
    /// Stops accepting, drains in-flight calls (within the drain bound) and reports how the
    /// server ended.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(|e| ServeError::Task(e.to_string()))?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// [`serve_until`] on a new task of the current runtime (spans per call, no metrics), stopped
/// through the returned handle.
pub fn spawn(
    listener: Listener,
    services: &'static [&'static str],
    add: impl FnOnce(Router) -> Router + Send + 'static,
    drain: Duration,
) -> Running {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_until(
        listener,
        services,
        add,
        RpcLayer::new(),
        async {
            let _ = rx.await;
        },
        drain,
    ));
    Running {
        stop: Some(tx),
        task: Some(task),
    }
}

/// [`serve_until`] with the config's socket, SIGTERM/SIGINT, and its drain bound.
pub async fn serve(
    cfg: &ServerConfig,
    services: &[&str],
    add: impl FnOnce(Router) -> Router,
    rpc: RpcLayer,
) -> Result<(), ServeError> {
    let listener = Listener::open(cfg)?;
    serve_until(
        listener,
        services,
        add,
        rpc,
        termination_signal(),
        Duration::from_secs(cfg.shutdown_timeout_secs),
    )
    .await
}

fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        warn!(error = %e, "sd_notify failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::unix_channel;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    async fn health(path: &Path, service: &str) -> Result<i32, tonic::Status> {
        let mut client = HealthClient::new(unix_channel(path));
        let resp = client
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await?;
        Ok(resp.into_inner().status)
    }

    #[tokio::test]
    async fn a_socket_is_bound_owner_only_before_its_mode_is_set() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let _listener = bind_owner_only(&sock).unwrap();
        let mode = fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "mode {mode:o}: group or others have access"
        );
        std::os::unix::net::UnixStream::connect(&sock).unwrap();
    }

    #[test]
    fn activation_variables_are_only_for_their_pid() {
        assert_eq!(activated_fds(None, None, 7).unwrap(), None);
        assert_eq!(activated_fds(Some("8"), Some("1"), 7).unwrap(), None);
        assert_eq!(activated_fds(Some("7"), Some("1"), 7).unwrap(), Some(3));
        assert_eq!(activated_fds(Some("7"), Some("0"), 7).unwrap(), None);
        assert!(activated_fds(Some("7"), Some("2"), 7).is_err());
        assert!(activated_fds(Some("7"), Some("x"), 7).is_err());
    }

    #[tokio::test]
    async fn serves_health_refuses_a_second_owner_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sub/dir/test.sock");
        let listener = Listener::bind(&sock, 0o660, None).unwrap();
        let mode = fs::metadata(&sock).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o660);

        let err = Listener::bind(&sock, 0o660, None).err().unwrap();
        assert!(matches!(err, ServeError::AlreadyServing { .. }), "{err}");

        let running = spawn(listener, &["test.Service"], |r| r, Duration::from_secs(5));
        assert_eq!(health(&sock, "").await.unwrap(), 1, "SERVING");
        assert_eq!(health(&sock, "test.Service").await.unwrap(), 1);
        let missing = health(&sock, "nope").await.unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);

        tokio::time::timeout(Duration::from_secs(10), running.stop())
            .await
            .expect("shutdown within the drain bound")
            .unwrap();
        assert!(!sock.exists(), "socket removed on exit");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_but_a_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("stale.sock");
        // A socket nobody listens on, as a SIGKILLed server leaves behind.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        let l = Listener::bind(&sock, 0o600, None).unwrap();
        drop(l);

        let file = dir.path().join("file.sock");
        fs::write(&file, b"precious").unwrap();
        let err = Listener::bind(&file, 0o600, None).err().unwrap();
        assert!(matches!(err, ServeError::NotASocket { .. }), "{err}");
        assert_eq!(fs::read(&file).unwrap(), b"precious");
    }

    #[tokio::test]
    async fn a_live_foreign_listener_is_not_stolen() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("foreign.sock");
        let _foreign = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = Listener::bind(&sock, 0o600, None).err().unwrap();
        assert!(matches!(err, ServeError::AlreadyServing { .. }), "{err}");
        assert!(sock.exists());
    }
}
