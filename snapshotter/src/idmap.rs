//! Id-mapped snapshots: containerd's `containerd.io/snapshot/uidmapping` and
//! `containerd.io/snapshot/gidmapping` labels, read as containerd's overlayfs snapshotter reads
//! them (`internal/userns/idmap.go` and `plugins/snapshots/overlay/overlay.go`, v2.1).
//!
//! A label's value is a comma-separated list of `container-id:host-id:size` ranges, the form
//! containerd's client writes (`WithUserNSRemapperLabels`). Prepare and View carry the labels;
//! the new snapshot's root directory is given to the host ids container root maps to, and its
//! mounts carry `uidmap=`/`gidmap=` options with the labels' values, from which containerd's
//! mount code (2.x) makes id-mapped mounts of the lower layers. The layers themselves are never
//! touched.

use std::collections::BTreeMap;

/// The label with the uid ranges of a snapshot's user namespace.
pub const LABEL_UID_MAPPING: &str = "containerd.io/snapshot/uidmapping";
/// The label with the gid ranges.
pub const LABEL_GID_MAPPING: &str = "containerd.io/snapshot/gidmapping";

/// The id containerd (and the kernel) treat as "no id".
const INVALID_ID: u64 = (1 << 32) - 1;

/// One `container-id:host-id:size` range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// A snapshot's uid and gid ranges. An absent label is an empty list, which maps every id to
/// itself (containerd's `toHost` with a nil map).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

/// Why a mapping label was refused. Its text is containerd's for the same case.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdMapError {
    #[error("input value {0} unparsable: {1}")]
    Unparsable(String, &'static str),
    #[error("invalid mapping \"{0}\"")]
    OutOfRange(String),
    #[error("container ID {0} cannot be mapped to a host ID")]
    Unmapped(u32),
}

/// The raw label values a snapshot carries, exactly as given: they become mount options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemapLabels {
    pub uidmap: Option<String>,
    pub gidmap: Option<String>,
}

impl RemapLabels {
    /// The mapping labels among `labels` (empty values are no labels, as containerd stores
    /// them).
    pub fn from_labels(labels: &BTreeMap<String, String>) -> RemapLabels {
        let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        RemapLabels {
            uidmap: get(LABEL_UID_MAPPING),
            gidmap: get(LABEL_GID_MAPPING),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.uidmap.is_none() && self.gidmap.is_none()
    }

    /// containerd's mount options for these labels, `uidmap=` before `gidmap=`.
    pub fn options(&self) -> impl Iterator<Item = String> + '_ {
        let uid = self.uidmap.iter().map(|v| format!("uidmap={v}"));
        let gid = self.gidmap.iter().map(|v| format!("gidmap={v}"));
        uid.chain(gid)
    }

    /// The host uid and gid container root maps to, which own a new snapshot's root
    /// directory; `None` without labels.
    pub fn root_owner(&self) -> Result<Option<(u32, u32)>, IdMapError> {
        if self.is_empty() {
            return Ok(None);
        }
        self.id_map()?.root_pair().map(Some)
    }
}

impl IdMap {
    /// Parses the two label values (containerd's `IDMap.Unmarshal`): an empty value is an
    /// empty list; otherwise every comma-separated item must be a range.
    pub fn parse(uidmap: &str, gidmap: &str) -> Result<IdMap, IdMapError> {
        Ok(IdMap {
            uids: parse_list(uidmap)?,
            gids: parse_list(gidmap)?,
        })
    }

    /// The host ids of container root (containerd's `RootPair`).
    pub fn root_pair(&self) -> Result<(u32, u32), IdMapError> {
        self.to_host(0, 0)
    }

    /// The host uid and gid a container's `uid` and `gid` map to (containerd's `ToHost`).
    pub fn to_host(&self, uid: u32, gid: u32) -> Result<(u32, u32), IdMapError> {
        Ok((to_host(uid, &self.uids)?, to_host(gid, &self.gids)?))
    }

    /// The value of a file's `security.capability` xattr for the copy shifted by this map,
    /// as containerd's client restores it after its chown (`remapFileCapabilities`): revision
    /// 3, its root uid (0 for revisions 1 and 2) mapped to the host. `None`: drop it, which
    /// containerd's chown does for a revision 3 root that no range covers.
    pub fn shift_file_capability(&self, caps: &[u8]) -> Result<Option<Vec<u8>>, String> {
        const REVISION_MASK: u32 = 0xff00_0000;
        const EFFECTIVE: u32 = 1;
        let word = |at: usize| -> Option<u32> {
            let b = caps.get(at..at + 4)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let magic =
            word(0).ok_or_else(|| format!("invalid file capability length {}", caps.len()))?;
        let revision = magic & REVISION_MASK;
        let size = match revision {
            0x0100_0000 => 12,
            0x0200_0000 => 20,
            0x0300_0000 => 24,
            _ => {
                return Err(format!(
                    "unsupported file capability revision {revision:#x}"
                ));
            }
        };
        if caps.len() != size || magic & !(REVISION_MASK | EFFECTIVE) != 0 {
            return Err("invalid file capability encoding".into());
        }
        let root = if size == 24 { word(20).unwrap_or(0) } else { 0 };
        let host = match to_host(root, &self.uids) {
            Ok(h) => h,
            Err(e) => {
                // A revision 3 root outside every valid range cannot be said in the new
                // namespace: containerd lets the chown clear the capability.
                let droppable = size == 24
                    && u64::from(root) != INVALID_ID
                    && !self.uids.is_empty()
                    && self.uids.iter().all(|r| {
                        r.size != 0
                            && u64::from(r.container_id) + u64::from(r.size) <= INVALID_ID
                            && u64::from(r.host_id) + u64::from(r.size) <= INVALID_ID
                            && !(root >= r.container_id && root - r.container_id < r.size)
                    });
                return if droppable {
                    Ok(None)
                } else {
                    Err(e.to_string())
                };
            }
        };
        let mut out = vec![0u8; 24];
        out[..caps.len().min(24)].copy_from_slice(&caps[..caps.len().min(24)]);
        out[..4].copy_from_slice(&(0x0300_0000 | (magic & EFFECTIVE)).to_le_bytes());
        out[20..24].copy_from_slice(&host.to_le_bytes());
        Ok(Some(out))
    }
}

impl RemapLabels {
    /// The parsed mapping (containerd's `IDMap.Unmarshal` of the two labels).
    pub fn id_map(&self) -> Result<IdMap, IdMapError> {
        IdMap::parse(
            self.uidmap.as_deref().unwrap_or(""),
            self.gidmap.as_deref().unwrap_or(""),
        )
    }
}

fn parse_list(s: &str) -> Result<Vec<IdRange>, IdMapError> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',').map(parse_range).collect()
}

/// One range, as containerd reads it with Go's `fmt.Sscanf(str, "%d:%d:%d", ...)`: each number
/// may follow blanks and carry a sign, the colons must follow the digits at once, and
/// whatever follows the third number is ignored. Each value must then lie in
/// `0..4294967295`.
fn parse_range(item: &str) -> Result<IdRange, IdMapError> {
    let unparsable = |why| IdMapError::Unparsable(item.to_string(), why);
    let mut rest = item;
    let mut values = [0i64; 3];
    for (i, v) in values.iter_mut().enumerate() {
        if i > 0 {
            rest = rest.strip_prefix(':').ok_or_else(|| {
                if rest.is_empty() {
                    unparsable("unexpected EOF")
                } else {
                    unparsable("input does not match format")
                }
            })?;
        }
        let (n, after) = scan_decimal(rest).map_err(unparsable)?;
        *v = n;
        rest = after;
    }
    let [ctr, host, size] = values;
    let ok = |v: i64| (0..INVALID_ID as i64).contains(&v);
    if !(ok(ctr) && ok(host) && ok(size)) {
        return Err(IdMapError::OutOfRange(item.to_string()));
    }
    // The range check above keeps every value below 2^32 - 1.
    let u = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok(IdRange {
        container_id: u(ctr),
        host_id: u(host),
        size: u(size),
    })
}

/// Go's `%d` scan: skip spaces and tabs, an optional sign, then decimal digits (Go also takes
/// `_` into the token, which then fails to parse), which must fit an int64.
fn scan_decimal(s: &str) -> Result<(i64, &str), &'static str> {
    let s = s.trim_start_matches([' ', '\t', '\r']);
    if s.is_empty() {
        return Err("unexpected EOF");
    }
    let bytes = s.as_bytes();
    let mut end = 0;
    if matches!(bytes.first(), Some(b'+' | b'-')) {
        end = 1;
    }
    let digits_start = end;
    while end < bytes.len() && (bytes[end].is_ascii_digit() || bytes[end] == b'_') {
        end += 1;
    }
    if end == digits_start {
        return Err("expected integer");
    }
    let token = &s[..end];
    if token.contains('_') {
        return Err("invalid syntax");
    }
    let n: i64 = token.parse().map_err(|_| "value out of range")?;
    Ok((n, &s[end..]))
}

/// containerd's `toHost`: with no ranges every id maps to itself.
fn to_host(id: u32, ranges: &[IdRange]) -> Result<u32, IdMapError> {
    if ranges.is_empty() {
        return Ok(id);
    }
    for r in ranges {
        // containerd stops at the first range whose end overflows.
        let Some(high) = r.container_id.checked_add(r.size) else {
            break;
        };
        if id >= r.container_id && id < high {
            match r.host_id.checked_add(id - r.container_id) {
                Some(h) if u64::from(h) != INVALID_ID => return Ok(h),
                _ => break,
            }
        }
    }
    Err(IdMapError::Unmapped(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(container_id: u32, host_id: u32, size: u32) -> IdRange {
        IdRange {
            container_id,
            host_id,
            size,
        }
    }

    #[test]
    fn parses_what_containerds_client_writes() {
        // `WithUserNSRemapperLabels` joins `%d:%d:%d` items with commas.
        let m = IdMap::parse("0:100000:65536", "0:200000:65536,65536:300000:10").unwrap();
        assert_eq!(m.uids, [r(0, 100000, 65536)]);
        assert_eq!(m.gids, [r(0, 200000, 65536), r(65536, 300000, 10)]);
        assert_eq!(m.root_pair().unwrap(), (100000, 200000));
    }

    #[test]
    fn reads_like_gos_sscanf() {
        // Blanks before a number and a sign are taken; trailing text is ignored.
        assert_eq!(parse_range(" 0: 5:+7").unwrap(), r(0, 5, 7));
        assert_eq!(parse_range("0:5:7xyz").unwrap(), r(0, 5, 7));
        assert_eq!(parse_range("0:5:7:9").unwrap(), r(0, 5, 7));
        // A blank before a colon, missing numbers, hex and underscores are not.
        for bad in [
            "0 :5:7", "0:5", "0:5:", "", "a:1:2", "0x1:2:3", "1_0:2:3", "0;1;2",
        ] {
            assert!(
                matches!(parse_range(bad), Err(IdMapError::Unparsable(..))),
                "{bad:?}: {:?}",
                parse_range(bad)
            );
        }
        assert_eq!(
            parse_range("0:99999999999999999999:1"),
            Err(IdMapError::Unparsable(
                "0:99999999999999999999:1".into(),
                "value out of range"
            ))
        );
    }

    #[test]
    fn values_must_be_valid_ids() {
        for bad in [
            "-1:0:1",
            "0:-5:1",
            "0:0:-1",
            "4294967295:0:1",
            "0:4294967295:1",
        ] {
            assert_eq!(
                parse_range(bad),
                Err(IdMapError::OutOfRange(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(
            parse_range("4294967294:4294967294:0").unwrap(),
            r(u32::MAX - 1, u32::MAX - 1, 0)
        );
        // A bad item anywhere in the list fails the list.
        assert!(IdMap::parse("0:1:1,junk", "").is_err());
        assert!(IdMap::parse("0:1:1", "0:1:1,").is_err());
    }

    #[test]
    fn root_must_be_mapped() {
        let m = IdMap::parse("1:100000:65536", "0:100000:65536").unwrap();
        assert_eq!(m.root_pair(), Err(IdMapError::Unmapped(0)));
        // Size 0 maps nothing.
        let m = IdMap::parse("0:100000:0", "").unwrap();
        assert_eq!(m.root_pair(), Err(IdMapError::Unmapped(0)));
        // A range whose end overflows stops the search, as in containerd.
        let m = IdMap::parse("4294967294:1:2,0:7:1", "").unwrap();
        assert_eq!(m.root_pair(), Err(IdMapError::Unmapped(0)));
        // Root may be in any range.
        let m = IdMap::parse("1000:5:1,0:7:1", "").unwrap();
        assert_eq!(m.root_pair(), Ok((7, 0)));
        // An empty list maps root to itself; so does a missing label.
        assert_eq!(IdMap::default().root_pair(), Ok((0, 0)));
    }

    #[test]
    fn ids_map_like_containerds_to_host() {
        let m = IdMap::parse("0:100000:65536", "0:200000:10,10:300000:5").unwrap();
        assert_eq!(m.to_host(1000, 12), Ok((101000, 300002)));
        assert_eq!(m.to_host(70000, 0), Err(IdMapError::Unmapped(70000)));
        assert_eq!(m.to_host(0, 15), Err(IdMapError::Unmapped(15)));
        // No ranges: ids stay.
        assert_eq!(IdMap::default().to_host(70000, 5), Ok((70000, 5)));
    }

    #[test]
    fn file_capabilities_are_rooted_at_the_mapped_root() {
        let m = IdMap::parse("0:100000:65536", "").unwrap();
        // Revision 2 (20 bytes, effective bit set): becomes revision 3 rooted at 100000.
        let mut v2 = vec![0u8; 20];
        v2[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
        v2[4..8].copy_from_slice(&0x400u32.to_le_bytes());
        let v3 = m.shift_file_capability(&v2).unwrap().unwrap();
        assert_eq!(v3.len(), 24);
        assert_eq!(v3[..4], 0x0300_0001u32.to_le_bytes());
        assert_eq!(v3[4..20], v2[4..20]);
        assert_eq!(v3[20..], 100000u32.to_le_bytes());
        // Revision 3 rooted at container uid 5: at 100005.
        let mut r5 = v3.clone();
        r5[20..].copy_from_slice(&5u32.to_le_bytes());
        let out = m.shift_file_capability(&r5).unwrap().unwrap();
        assert_eq!(out[20..], 100005u32.to_le_bytes());
        // Rooted outside the ranges: dropped, as containerd's chown lets it go.
        r5[20..].copy_from_slice(&70000u32.to_le_bytes());
        assert_eq!(m.shift_file_capability(&r5), Ok(None));
        // Garbage is an error.
        assert!(m.shift_file_capability(&[1, 2]).is_err());
        assert!(m.shift_file_capability(&[0u8; 20]).is_err());
        let mut long = v2.clone();
        long.push(0);
        assert!(m.shift_file_capability(&long).is_err());
    }

    #[test]
    fn labels_become_options_and_a_root_owner() {
        let mut labels = BTreeMap::new();
        assert!(RemapLabels::from_labels(&labels).is_empty());
        assert_eq!(RemapLabels::from_labels(&labels).root_owner(), Ok(None));
        labels.insert(LABEL_UID_MAPPING.to_string(), "0:1000:10".to_string());
        labels.insert(LABEL_GID_MAPPING.to_string(), String::new());
        let l = RemapLabels::from_labels(&labels);
        assert_eq!(l.options().collect::<Vec<_>>(), ["uidmap=0:1000:10"]);
        assert_eq!(l.root_owner(), Ok(Some((1000, 0))));
        labels.insert(LABEL_GID_MAPPING.to_string(), "0:2000:10".to_string());
        let l = RemapLabels::from_labels(&labels);
        assert_eq!(
            l.options().collect::<Vec<_>>(),
            ["uidmap=0:1000:10", "gidmap=0:2000:10"]
        );
        assert_eq!(l.root_owner(), Ok(Some((1000, 2000))));
        labels.insert(LABEL_GID_MAPPING.to_string(), "5:2000:10".to_string());
        assert_eq!(
            RemapLabels::from_labels(&labels).root_owner(),
            Err(IdMapError::Unmapped(0))
        );
    }
}
