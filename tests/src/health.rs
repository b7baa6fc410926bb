//! The gRPC health check (`grpc.health.v1.Health/Check`, service "") over a unix socket: the
//! one proof that a plugin's server, not just its socket file, is up.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::error::{Error, Result};

/// One health check of the server on `socket`, answered within `timeout`. Ok only for
/// SERVING.
pub fn check(socket: &Path, timeout: Duration) -> Result<()> {
    let socket = socket.to_path_buf();
    block_on(async move {
        let channel = strata_common::client::unix_channel(&socket);
        let mut client = HealthClient::new(channel);
        let request = HealthCheckRequest {
            service: String::new(),
        };
        match tokio::time::timeout(timeout, client.check(request)).await {
            Err(_) => Err(Error::new(format!(
                "health check of {} timed out after {timeout:?}",
                socket.display()
            ))),
            Ok(Err(status)) => Err(Error::new(format!(
                "health check of {} failed: {}: {}",
                socket.display(),
                status.code(),
                status.message()
            ))),
            Ok(Ok(resp)) => {
                let status = resp.into_inner().status;
                if status == ServingStatus::Serving as i32 {
                    Ok(())
                } else {
                    let name = ServingStatus::try_from(status)
                        .map(|s| s.as_str_name().to_string())
                        .unwrap_or_else(|_| status.to_string());
                    Err(Error::new(format!(
                        "health check of {} answered {name}, not SERVING",
                        socket.display()
                    )))
                }
            }
        }
    })?
}

/// Checks `socket` until it answers SERVING or `timeout` passes; `still_alive` is asked
/// between attempts so a server that died is reported at once instead of after the timeout.
pub fn wait_serving(
    socket: &Path,
    timeout: Duration,
    mut still_alive: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last: Error;
    loop {
        still_alive()?;
        let attempt = if socket.exists() {
            check(socket, Duration::from_secs(2))
        } else {
            Err(Error::new(format!(
                "{} does not exist yet",
                socket.display()
            )))
        };
        match attempt {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::new(format!(
                "{} did not answer the health check with SERVING within {timeout:?}; last: {last}",
                socket.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `fut` on a runtime of its own, on a thread of its own, so the synchronous harness
/// works the same whether or not the caller is itself inside a tokio runtime.
fn block_on<F>(fut: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(fut))
    })
    .join()
    .map_err(|_| Error::new("health check thread panicked"))?
    .map_err(|e| Error::io("building a tokio runtime for a health check", e))
}
