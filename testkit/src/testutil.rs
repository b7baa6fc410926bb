//! Helpers shared by the unit tests.

/// Tests that chown to other users, make device nodes or set `trusted.*` xattrs need root.
/// They fail (not skip) without it, so a non-root run cannot pass silently.
pub(crate) fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (chown to other uids, device nodes, trusted.* and \
         security.capability xattrs); run `cargo test -p strata-testkit` as root, as CI does"
    );
}
