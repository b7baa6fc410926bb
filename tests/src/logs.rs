//! Reading the ends of log files for failure messages, and fields of log lines.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Debug logs grow to megabytes; failure messages only need the end.
const TAIL_WINDOW: u64 = 512 * 1024;

/// The last `lines` lines of the file at `path`, or a note saying why there are none.
pub fn tail(path: &Path, lines: usize) -> String {
    match read_end(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// The whole file as text (lossy), or a note saying why it can't be read.
pub fn read_all(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// The last line of `log` containing `marker`; empty if none does.
pub fn last_line_with<'a>(log: &'a str, marker: &str) -> &'a str {
    log.lines()
        .rfind(|l| l.contains(marker))
        .unwrap_or_default()
}

/// The value of `key=` in a log line (unquoted, up to the next space). Panics if the line has
/// no such field.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let at = format!(" {key}=");
    line.split_once(&at)
        .map(|(_, rest)| rest.split(' ').next().unwrap_or_default())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

/// `==== NAME (PATH), last N lines ====` followed by the tail, for failure reports.
pub fn titled_tail(name: &str, path: &Path, lines: usize) -> String {
    format!(
        "==== {name} ({}), last {lines} lines ====\n{}\n",
        path.display(),
        tail(path, lines)
    )
}

fn read_end(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(TAIL_WINDOW);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        // the window most likely starts mid-line: drop the partial first line
        if let Some(pos) = text.find('\n') {
            text.drain(..=pos);
        }
    }
    Ok(text)
}
