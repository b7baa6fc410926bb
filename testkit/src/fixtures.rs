//! The standard images the tests and benchmarks use.

use crate::Compression;
use crate::image::Image;

/// busybox-static as the whole rootfs: `/bin/busybox` plus applet links, enough for `ctr run`.
pub fn busybox(_compression: Compression) -> std::io::Result<Image> {
    todo!("testkit helper implements this")
}
