//! The process life every strata server shares, checked on the real binaries: systemd socket
//! activation, sd_notify readiness, refusing a socket a live server owns, and a clean exit on
//! SIGTERM that removes the socket.

// A test helper that cannot spawn or signal its server has nothing better to do than fail.
#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_tests::health;
use strata_tests::plugins::{PluginKind, binary};

fn spawn(kind: PluginKind, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(binary(kind).expect("strata binaries built"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn server")
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("server did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: Child) -> String {
    String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).into_owned()
}

fn sigterm(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

fn wait_serving(sock: &Path, child: &mut Child) {
    health::wait_serving(sock, Duration::from_secs(30), || match child.try_wait() {
        Ok(None) => Ok(()),
        other => Err(strata_tests::Error::new(format!(
            "server exited: {other:?}"
        ))),
    })
    .expect("server answers health");
}

#[test]
fn every_server_serves_health_refuses_a_second_owner_and_exits_cleanly_on_sigterm() {
    for kind in PluginKind::ALL {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run/x.sock");
        let root = dir.path().join("root");
        let (sock_s, root_s) = (sock.to_str().unwrap(), root.to_str().unwrap());
        let args = [
            "--address",
            sock_s,
            "--root",
            root_s,
            "--log-level",
            "debug",
        ];

        let mut first = spawn(kind, &args, &[]);
        wait_serving(&sock, &mut first);
        assert!(root.is_dir(), "{kind:?} creates its root");
        let mode = std::fs::metadata(&sock).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            mode.permissions().mode() & 0o777,
            0o660,
            "{kind:?} socket mode"
        );

        let mut second = spawn(kind, &args, &[]);
        let status = wait_exit(&mut second, Duration::from_secs(30));
        assert!(!status.success(), "{kind:?}: a second server must refuse");
        let err = stderr_of(second);
        assert!(err.contains("already serving"), "{kind:?}: {err}");
        health::check(&sock, Duration::from_secs(5)).expect("first server unharmed");

        sigterm(&first);
        let status = wait_exit(&mut first, Duration::from_secs(20));
        assert!(status.success(), "{kind:?} exits 0 on SIGTERM: {status:?}");
        assert!(!sock.exists(), "{kind:?} removes its socket");
    }
}

#[test]
fn systemd_socket_activation_and_readiness() {
    let activate = Path::new("/usr/bin/systemd-socket-activate");
    assert!(
        activate.exists(),
        "systemd-socket-activate is missing: install Debian's systemd package"
    );
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("activated.sock");
    let notify = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let root = dir.path().join("root");
    // --address points elsewhere: an activated server must serve the passed socket instead.
    let unused = dir.path().join("unused.sock");
    let mut child = Command::new(activate)
        .arg("-l")
        .arg(&sock)
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify.display()))
        .arg(binary(PluginKind::Differ).unwrap())
        .arg("--address")
        .arg(&unused)
        .arg("--root")
        .arg(&root)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // systemd-socket-activate only starts the server on the first connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "socket-activate never bound");
        std::thread::sleep(Duration::from_millis(20));
    }
    health::check(&sock, Duration::from_secs(30)).expect("activated server answers");
    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).expect("READY=1 within 30 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    assert!(!unused.exists(), "activated server must not bind --address");

    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(20));
    let n = listener.recv(&mut buf).expect("STOPPING=1 on SIGTERM");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    let err = stderr_of(child);
    assert!(status.success(), "{status:?}: {err}");
    assert!(
        err.contains("serving on a socket passed by systemd"),
        "{err}"
    );
}

#[test]
fn version_names_the_commit_built_from() {
    let head = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output()
        .unwrap();
    assert!(head.status.success(), "the tests run in a git checkout");
    let head = String::from_utf8(head.stdout).unwrap();
    for kind in PluginKind::ALL {
        let out = Command::new(binary(kind).expect("strata binaries built"))
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let expect = format!(
            "{} {} (commit {}",
            kind.binary_name(),
            env!("CARGO_PKG_VERSION"),
            head.trim()
        );
        // The binaries may be a commit behind when built before a commit and tested after;
        // the test builds them with the tests, so they name HEAD.
        assert!(
            text.starts_with(&expect),
            "{text:?} should start with {expect:?}"
        );
    }
}
