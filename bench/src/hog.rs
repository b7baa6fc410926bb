//! The contention mode: CPU-bound processes competing with the benchmark for every core, as a
//! build or another tenant would on a busy node.

use std::process::{Child, Command, Stdio};

/// One busy `sh` loop per CPU, killed on drop.
pub struct Hogs(Vec<Child>);

impl Hogs {
    /// Starts `n` busy loops.
    pub fn start(n: usize) -> std::io::Result<Hogs> {
        let mut children = Vec::with_capacity(n);
        for _ in 0..n {
            children.push(
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .stdin(Stdio::null())
                    .spawn()?,
            );
        }
        Ok(Hogs(children))
    }

    pub fn count(&self) -> usize {
        self.0.len()
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The number of CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
