//! The memory limit and usage of the cgroup molt runs in, from cgroup v2 `memory.max` and
//! `memory.current` or cgroup v1 `memory.limit_in_bytes` and `memory.usage_in_bytes`.
//!
//! Finding the files takes three facts: which cgroup the process is in
//! (`/proc/self/cgroup`), where each hierarchy is mounted and which part of it the mount
//! shows (`/proc/self/mountinfo`), and the files themselves. Heroku's Cedar dynos are
//! cgroup v1 (`/sys/fs/cgroup/memory/memory.limit_in_bytes`), newer dynos and containers
//! v2 (`/sys/fs/cgroup/memory.max`). This module reports what it finds; turning a limit
//! into a budget is the caller's job.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Limits at or above this many bytes (4 EiB) mean "no limit". cgroup v1 reports its
/// unlimited value as the largest page count in bytes, 9223372036854771712 with 4 KiB
/// pages (this is what this project's own CI sandbox shows), and no machine has 4 EiB.
pub(crate) const UNLIMITED_THRESHOLD: u64 = 1 << 62;

/// The cgroup paths of a process, from `/proc/<pid>/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CgroupPaths {
    /// The path in the v2 (unified) hierarchy: the line `0::<path>`.
    pub(crate) v2: Option<String>,
    /// The path in the v1 hierarchy that holds the memory controller:
    /// the line `<id>:<controllers including memory>:<path>`.
    pub(crate) v1_memory: Option<String>,
}

/// Parses `/proc/<pid>/cgroup`, skipping lines that do not have the form `id:controllers:path`.
pub(crate) fn parse_proc_cgroup(text: &str) -> CgroupPaths {
    let mut paths = CgroupPaths::default();
    for line in text.lines() {
        // The path is last and may itself contain colons.
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if path.is_empty() || id.parse::<u32>().is_err() {
            continue;
        }
        if id == "0" && controllers.is_empty() {
            paths.v2.get_or_insert_with(|| path.to_owned());
        } else if controllers
            .split(',')
            .any(|controller| controller == "memory")
        {
            paths.v1_memory.get_or_insert_with(|| path.to_owned());
        }
    }
    paths
}

/// A cgroup hierarchy's mount, from one line of `/proc/<pid>/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    /// Where it is mounted (field 5), e.g. `/sys/fs/cgroup/memory`.
    pub(crate) point: PathBuf,
    /// Which cgroup of the hierarchy appears at the mount point (field 4): `/` for the
    /// whole hierarchy, or e.g. `/docker/<id>` when Docker on cgroup v1 mounts only the
    /// container's own cgroup.
    pub(crate) root: String,
}

/// The cgroup mounts that hold memory facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Mounts {
    /// The first `cgroup2` mount.
    pub(crate) v2: Option<CgroupMount>,
    /// The first v1 `cgroup` mount whose super options include `memory`.
    pub(crate) v1_memory: Option<CgroupMount>,
}

/// Parses `/proc/<pid>/mountinfo`:
/// `id parent major:minor root mount-point options [optional fields...] - fstype source super-options`.
/// Lines without that form are skipped.
pub(crate) fn parse_mountinfo(text: &str) -> Mounts {
    let mut mounts = Mounts::default();
    for line in text.lines() {
        // Fields are separated by single spaces; the kernel escapes only space, tab,
        // newline and backslash inside them, so other whitespace belongs to a field.
        let fields: Vec<&str> = line.split(' ').filter(|f| !f.is_empty()).collect();
        // Six fields come before the optional ones, so the separator is never earlier.
        let Some(separator) = fields.iter().skip(6).position(|&field| field == "-") else {
            continue;
        };
        let separator = separator + 6;
        let (Some(&fstype), Some(&super_options)) =
            (fields.get(separator + 1), fields.get(separator + 3))
        else {
            continue;
        };
        let mount = || CgroupMount {
            point: PathBuf::from(unescape(fields[4])),
            root: unescape(fields[3]),
        };
        match fstype {
            "cgroup2" => {
                mounts.v2.get_or_insert_with(mount);
            }
            "cgroup" if super_options.split(',').any(|option| option == "memory") => {
                mounts.v1_memory.get_or_insert_with(mount);
            }
            _ => {}
        }
    }
    mounts
}

/// Undoes mountinfo's escapes: the kernel writes space, tab, newline and backslash in
/// paths as `\040`, `\011`, `\012` and `\134`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .and_then(|digits| {
                let value = digits
                    .iter()
                    .fold(0u32, |value, d| value * 8 + u32::from(d - b'0'));
                u8::try_from(value).ok()
            });
        if let Some(byte) = octal {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A memory limit as a cgroup file states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Limit {
    /// A limit in bytes. It may exceed physical memory; the budget code clamps it.
    Bytes(u64),
    /// No limit, and why the file's text means none.
    Unlimited(NoLimit),
}

impl Limit {
    /// The limit in bytes, if there is one.
    pub(crate) fn bytes(&self) -> Option<u64> {
        match self {
            Limit::Bytes(bytes) => Some(*bytes),
            Limit::Unlimited(_) => None,
        }
    }
}

/// Why a limit file's text means no limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoLimit {
    /// `max`, as cgroup v2 writes it, or `-1`, as people write it to cgroup v1.
    Max,
    /// A number at or above [`UNLIMITED_THRESHOLD`]: cgroup v1's way of saying none.
    Huge(u64),
    /// 0: nothing could run under it, yet molt is running, so it is not in force.
    Zero,
    /// Text that is neither a number nor `max`, kept for the log.
    Unrecognized(String),
}

/// Parses `memory.max` (v2) or `memory.limit_in_bytes` (v1).
pub(crate) fn parse_limit(text: &str) -> Limit {
    let text = text.trim();
    match text {
        "max" | "-1" => Limit::Unlimited(NoLimit::Max),
        _ => match text.parse::<u64>() {
            Ok(0) => Limit::Unlimited(NoLimit::Zero),
            Ok(bytes) if bytes >= UNLIMITED_THRESHOLD => Limit::Unlimited(NoLimit::Huge(bytes)),
            Ok(bytes) => Limit::Bytes(bytes),
            Err(_) => Limit::Unlimited(NoLimit::Unrecognized(text.to_owned())),
        },
    }
}

/// Parses `memory.current` (v2) or `memory.usage_in_bytes` (v1).
pub(crate) fn parse_usage(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Which cgroup version the memory facts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    fn limit_file(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "memory.limit_in_bytes",
            CgroupVersion::V2 => "memory.max",
        }
    }

    fn usage_file(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "memory.usage_in_bytes",
            CgroupVersion::V2 => "memory.current",
        }
    }
}

/// The memory facts of molt's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupMemory {
    pub(crate) version: CgroupVersion,
    /// The tightest limit of molt's cgroup and its ancestors within the mount, since a
    /// parent's limit binds every cgroup under it.
    pub(crate) limit: Limit,
    /// Memory charged to molt's cgroup now (page cache included); `None` when unreadable.
    pub(crate) usage: Option<u64>,
    /// The file that gave `limit`, for the log and `molt plan`.
    pub(crate) limit_path: PathBuf,
}

/// Reading cgroup facts failed. A file that does not exist is not an error: it means the
/// controller is not there.
#[derive(Debug)]
pub(crate) enum CgroupError {
    /// A file exists but could not be read.
    CannotRead { path: PathBuf, source: io::Error },
}

impl fmt::Display for CgroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CgroupError::CannotRead { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
        }
    }
}

// `source()` stays `None`, as in config.rs: the cause is already in the one-line message.
impl std::error::Error for CgroupError {}

/// Reads the memory limit and usage of this process's cgroup. `proc_root` is where
/// `self/cgroup` and `self/mountinfo` are (`/proc`); `fs_root` is what mount points are
/// relative to (`/`). `None` when no memory controller is found: not Linux, no cgroup
/// mount, or a cgroup without a limit file, such as the root of a v2 hierarchy.
pub(crate) fn read_cgroup_memory(
    proc_root: &Path,
    fs_root: &Path,
) -> Result<Option<CgroupMemory>, CgroupError> {
    let Some(cgroup) = read_if_present(&proc_root.join("self/cgroup"))? else {
        return Ok(None);
    };
    let Some(mountinfo) = read_if_present(&proc_root.join("self/mountinfo"))? else {
        return Ok(None);
    };
    let paths = parse_proc_cgroup(&cgroup);
    let mounts = parse_mountinfo(&mountinfo);
    // v2 first. Hybrid hosts (this project's CI sandbox among them) mount both, and only
    // the hierarchy that holds the memory controller has the files, so a v2 mount without
    // memory.max falls through to v1.
    if let (Some(path), Some(mount)) = (&paths.v2, &mounts.v2) {
        if let Some(memory) = read_hierarchy(fs_root, mount, path, CgroupVersion::V2)? {
            return Ok(Some(memory));
        }
    }
    if let (Some(path), Some(mount)) = (&paths.v1_memory, &mounts.v1_memory) {
        return read_hierarchy(fs_root, mount, path, CgroupVersion::V1);
    }
    Ok(None)
}

/// Reads the limit and usage files of the cgroup at `cgroup_path` in one hierarchy.
fn read_hierarchy(
    fs_root: &Path,
    mount: &CgroupMount,
    cgroup_path: &str,
    version: CgroupVersion,
) -> Result<Option<CgroupMemory>, CgroupError> {
    let mount_dir = fs_root.join(mount.point.strip_prefix("/").unwrap_or(&mount.point));
    // The cgroup's directory is the path relative to the mount's root. Where that is not
    // there, the mount itself is tried: with a cgroup namespace, or when Docker mounts
    // only the container's cgroup, the container's files are at the mount point.
    let mut dirs = Vec::new();
    if let Some(relative) = relative_cgroup_dir(&mount.root, cgroup_path) {
        dirs.push(mount_dir.join(relative));
    }
    dirs.push(mount_dir.clone());
    for dir in dirs {
        let limit_path = dir.join(version.limit_file());
        let Some(text) = read_if_present(&limit_path)? else {
            continue;
        };
        let (limit, limit_path) =
            tightest_limit(&mount_dir, &dir, version, parse_limit(&text), limit_path)?;
        let usage =
            read_if_present(&dir.join(version.usage_file()))?.and_then(|text| parse_usage(&text));
        return Ok(Some(CgroupMemory {
            version,
            limit,
            usage,
            limit_path,
        }));
    }
    Ok(None)
}

/// The tightest of the cgroup's own limit and those of its ancestors up to the mount.
/// A systemd service may be unlimited inside a slice that has a `MemoryMax`.
fn tightest_limit(
    mount_dir: &Path,
    dir: &Path,
    version: CgroupVersion,
    mut limit: Limit,
    mut limit_path: PathBuf,
) -> Result<(Limit, PathBuf), CgroupError> {
    if dir == mount_dir {
        return Ok((limit, limit_path));
    }
    for ancestor in dir.ancestors().skip(1) {
        let path = ancestor.join(version.limit_file());
        if let Some(text) = read_if_present(&path)? {
            let candidate = parse_limit(&text);
            let tighter = match (candidate.bytes(), limit.bytes()) {
                (Some(candidate), Some(current)) => candidate < current,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if tighter {
                limit = candidate;
                limit_path = path;
            }
        }
        if ancestor == mount_dir {
            break;
        }
    }
    Ok((limit, limit_path))
}

/// `cgroup_path` relative to the mount's `root`, when it lies under it; `None` otherwise,
/// and for any path that would step out of the mount (`/../..`, which a process outside
/// a cgroup namespace's root sees).
fn relative_cgroup_dir(root: &str, cgroup_path: &str) -> Option<PathBuf> {
    let relative = Path::new(cgroup_path).strip_prefix(root).ok()?;
    relative
        .components()
        .all(|component| matches!(component, Component::Normal(_)))
        .then(|| relative.to_owned())
}

/// The text of a file, or `None` when it does not exist. Not UTF-8 is tolerated: paths
/// in mountinfo are bytes.
fn read_if_present(path: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(source) => Err(CgroupError::CannotRead {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test/fixtures/cgroup");

    /// The container id in the v1-1gb fixture.
    const DOCKER_ID: &str = "4f1e8a0c2b7d93e6a5c1f0b8d2e4a6c8e0f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0";
    /// The sandbox cgroup captured in the v1-unlimited fixture.
    const SANDBOX_CGROUP: &str = "/process_api/a3aa0e91d56d8ac0b9a0c0dd90f55411";

    fn case(name: &str) -> PathBuf {
        Path::new(FIXTURES).join(name)
    }

    fn read_case(name: &str) -> Result<Option<CgroupMemory>, CgroupError> {
        let root = case(name);
        read_cgroup_memory(&root.join("proc"), &root)
    }

    fn mount(point: &str, root: &str) -> CgroupMount {
        CgroupMount {
            point: PathBuf::from(point),
            root: root.to_owned(),
        }
    }

    #[test]
    fn proc_cgroup_v2_only() {
        let paths = parse_proc_cgroup("0::/system.slice/app.service\n");
        assert_eq!(paths.v2.as_deref(), Some("/system.slice/app.service"));
        assert_eq!(paths.v1_memory, None);
    }

    #[test]
    fn proc_cgroup_v1_with_combined_controllers() {
        let text = fs::read_to_string(case("v1-1gb/proc/self/cgroup")).unwrap();
        let paths = parse_proc_cgroup(&text);
        assert_eq!(paths.v1_memory, Some(format!("/docker/{DOCKER_ID}")));
        assert_eq!(paths.v2, None);
        // memory sharing a line with other controllers, as some hosts mount it.
        let paths = parse_proc_cgroup("8:cpu,cpuacct:/a\n4:blkio,memory:/b\n");
        assert_eq!(paths.v1_memory.as_deref(), Some("/b"));
        // name=systemd is not the memory controller; memsw is not either.
        let paths = parse_proc_cgroup("1:name=systemd:/x\n3:memoryx:/y\n");
        assert_eq!(paths, CgroupPaths::default());
    }

    #[test]
    fn proc_cgroup_hybrid_captured_sample() {
        let text = fs::read_to_string(case("v1-unlimited/proc/self/cgroup")).unwrap();
        let paths = parse_proc_cgroup(&text);
        assert_eq!(paths.v2.as_deref(), Some("/"));
        assert_eq!(paths.v1_memory.as_deref(), Some(SANDBOX_CGROUP));
    }

    #[test]
    fn proc_cgroup_skips_malformed_lines() {
        let text = "garbage\n4:memory\nx:memory:/bad-id\n4:memory:\n\n0::/a:b\n";
        let paths = parse_proc_cgroup(text);
        // The path keeps its colon: only the first two separate fields.
        assert_eq!(paths.v2.as_deref(), Some("/a:b"));
        assert_eq!(paths.v1_memory, None);
        assert_eq!(parse_proc_cgroup(""), CgroupPaths::default());
    }

    #[test]
    fn mountinfo_hybrid_captured_sample() {
        let text = fs::read_to_string(case("v1-unlimited/proc/self/mountinfo")).unwrap();
        let mounts = parse_mountinfo(&text);
        assert_eq!(mounts.v2, Some(mount("/sys/fs/cgroup/unified", "/")));
        assert_eq!(mounts.v1_memory, Some(mount("/sys/fs/cgroup/memory", "/")));
    }

    #[test]
    fn mountinfo_docker_v1_mounts_the_container_cgroup() {
        let text = fs::read_to_string(case("v1-1gb/proc/self/mountinfo")).unwrap();
        let mounts = parse_mountinfo(&text);
        let root = format!("/docker/{DOCKER_ID}");
        assert_eq!(
            mounts.v1_memory,
            Some(mount("/sys/fs/cgroup/memory", &root))
        );
        assert_eq!(mounts.v2, None);
    }

    #[test]
    fn mountinfo_v2_with_optional_fields() {
        let text = fs::read_to_string(case("v2-nested/proc/self/mountinfo")).unwrap();
        let mounts = parse_mountinfo(&text);
        assert_eq!(mounts.v2, Some(mount("/sys/fs/cgroup", "/")));
        assert_eq!(mounts.v1_memory, None);
        // Several optional fields, and a source named cgroup (Docker's cgroup2 mount).
        let line = "617 616 0:30 / /sys/fs/cgroup ro,nosuid shared:9 master:2 propagate_from:1 \
                    - cgroup2 cgroup rw,nsdelegate\n";
        assert_eq!(parse_mountinfo(line).v2, Some(mount("/sys/fs/cgroup", "/")));
    }

    #[test]
    fn mountinfo_unescapes_paths() {
        let line =
            "35 31 0:32 /my\\040app /srv/cgroup\\011v1\\134mem rw - cgroup cgroup rw,memory\n";
        let mounts = parse_mountinfo(line);
        assert_eq!(
            mounts.v1_memory,
            Some(mount("/srv/cgroup\tv1\\mem", "/my app"))
        );
        // A backslash not followed by three octal digits stays as it is.
        assert_eq!(unescape("a\\9b\\04"), "a\\9b\\04");
    }

    #[test]
    fn mountinfo_skips_malformed_lines() {
        let text = "\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/x rw - cgroup2
37 31 - cgroup2 cgroup2 rw
38 31 0:33 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,cpu

41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.v2, Some(mount("/sys/fs/cgroup/unified", "/")));
        assert_eq!(mounts.v1_memory, None);
        assert_eq!(parse_mountinfo(""), Mounts::default());
    }

    #[test]
    fn limit_bytes_and_max() {
        assert_eq!(parse_limit("536870912\n"), Limit::Bytes(536_870_912));
        assert_eq!(parse_limit("max\n"), Limit::Unlimited(NoLimit::Max));
        assert_eq!(parse_limit("-1"), Limit::Unlimited(NoLimit::Max));
        assert_eq!(parse_limit("536870912").bytes(), Some(536_870_912));
        assert_eq!(parse_limit("max").bytes(), None);
    }

    #[test]
    fn limit_absurd_values_mean_none() {
        // cgroup v1's "no limit" with 4 KiB pages (this project's sandbox), and i64::MAX.
        for huge in [
            9_223_372_036_854_771_712_u64,
            9_223_372_036_854_775_807,
            1 << 62,
            u64::MAX,
        ] {
            assert_eq!(
                parse_limit(&huge.to_string()),
                Limit::Unlimited(NoLimit::Huge(huge))
            );
        }
        assert_eq!(
            parse_limit(&((1_u64 << 62) - 1).to_string()),
            Limit::Bytes((1 << 62) - 1)
        );
    }

    #[test]
    fn limit_above_physical_memory_is_reported_as_given() {
        // 1 TiB: more than this machine has, and still a number the budget code clamps.
        assert_eq!(parse_limit("1099511627776"), Limit::Bytes(1 << 40));
    }

    #[test]
    fn limit_zero_and_garbage_mean_none_with_the_reason() {
        assert_eq!(parse_limit("0\n"), Limit::Unlimited(NoLimit::Zero));
        assert_eq!(
            parse_limit(""),
            Limit::Unlimited(NoLimit::Unrecognized(String::new()))
        );
        assert_eq!(
            parse_limit("512M"),
            Limit::Unlimited(NoLimit::Unrecognized("512M".to_owned()))
        );
        assert_eq!(
            parse_limit("-5"),
            Limit::Unlimited(NoLimit::Unrecognized("-5".to_owned()))
        );
        assert_eq!(
            parse_limit("99999999999999999999999"),
            Limit::Unlimited(NoLimit::Unrecognized("99999999999999999999999".to_owned()))
        );
    }

    #[test]
    fn usage_is_a_number_or_none() {
        assert_eq!(parse_usage("312475648\n"), Some(312_475_648));
        assert_eq!(parse_usage(""), None);
        assert_eq!(parse_usage("lots"), None);
    }

    #[test]
    fn relative_cgroup_dir_under_the_mount_root() {
        let dir = |root, path| relative_cgroup_dir(root, path);
        assert_eq!(
            dir("/", "/system.slice/app.service"),
            Some(PathBuf::from("system.slice/app.service"))
        );
        assert_eq!(dir("/", "/"), Some(PathBuf::new()));
        assert_eq!(dir("/docker/abc", "/docker/abc"), Some(PathBuf::new()));
        assert_eq!(dir("/docker", "/docker/abc"), Some(PathBuf::from("abc")));
        // Not under the root: only the mount itself is tried.
        assert_eq!(dir("/docker/abc", "/system.slice/x"), None);
        assert_eq!(dir("/docker/abc", "/docker/abcdef"), None);
        // Outside a cgroup namespace's root.
        assert_eq!(dir("/", "/../../user.slice"), None);
    }

    #[test]
    fn v2_512mb_dyno() {
        let memory = read_case("v2-512mb").unwrap().unwrap();
        assert_eq!(
            memory,
            CgroupMemory {
                version: CgroupVersion::V2,
                limit: Limit::Bytes(536_870_912),
                usage: Some(312_475_648),
                limit_path: case("v2-512mb/sys/fs/cgroup/memory.max"),
            }
        );
    }

    #[test]
    fn v2_unlimited_container() {
        let memory = read_case("v2-unlimited").unwrap().unwrap();
        assert_eq!(memory.version, CgroupVersion::V2);
        assert_eq!(memory.limit, Limit::Unlimited(NoLimit::Max));
        assert_eq!(memory.usage, Some(48_234_496));
        assert_eq!(
            memory.limit_path,
            case("v2-unlimited/sys/fs/cgroup/memory.max")
        );
    }

    #[test]
    fn v2_nested_service_under_the_mount() {
        // The service's own 1 GiB is tighter than its slice's `max`.
        let memory = read_case("v2-nested").unwrap().unwrap();
        let service = case("v2-nested/sys/fs/cgroup/system.slice/app.service");
        assert_eq!(
            memory,
            CgroupMemory {
                version: CgroupVersion::V2,
                limit: Limit::Bytes(1 << 30),
                usage: Some(268_435_456),
                limit_path: service.join("memory.max"),
            }
        );
    }

    #[test]
    fn v2_parent_limit_binds_an_unlimited_service() {
        // web.service says `max`; app.slice above it has 768 MiB. Usage is the service's.
        let memory = read_case("v2-parent-limit").unwrap().unwrap();
        assert_eq!(memory.limit, Limit::Bytes(805_306_368));
        assert_eq!(
            memory.limit_path,
            case("v2-parent-limit/sys/fs/cgroup/app.slice/memory.max")
        );
        assert_eq!(memory.usage, Some(201_326_592));
    }

    #[test]
    fn v2_root_cgroup_has_no_limit_file() {
        // The root of a v2 hierarchy has no memory.max: no cgroup limit, use physical memory.
        assert!(read_case("v2-root").unwrap().is_none());
    }

    #[test]
    fn v1_unlimited_hybrid_captured_sample() {
        // This sandbox: cgroup2 mounted at /sys/fs/cgroup/unified without the memory
        // controller, so the v1 memory hierarchy is read, and its limit means none.
        let memory = read_case("v1-unlimited").unwrap().unwrap();
        let leaf = case("v1-unlimited/sys/fs/cgroup/memory").join(&SANDBOX_CGROUP[1..]);
        assert_eq!(
            memory,
            CgroupMemory {
                version: CgroupVersion::V1,
                limit: Limit::Unlimited(NoLimit::Huge(9_223_372_036_854_771_712)),
                usage: Some(7_012_352),
                limit_path: leaf.join("memory.limit_in_bytes"),
            }
        );
    }

    #[test]
    fn v1_1gb_docker_container_at_the_mount_point() {
        // /proc/self/cgroup says /docker/<id>, and that is the mount's root: the files are
        // at the mount point itself.
        let memory = read_case("v1-1gb").unwrap().unwrap();
        assert_eq!(
            memory,
            CgroupMemory {
                version: CgroupVersion::V1,
                limit: Limit::Bytes(1 << 30),
                usage: Some(402_653_184),
                limit_path: case("v1-1gb/sys/fs/cgroup/memory/memory.limit_in_bytes"),
            }
        );
    }

    #[test]
    fn missing_proc_files_mean_no_cgroup() {
        let nowhere = case("no-such-case");
        assert!(read_cgroup_memory(&nowhere.join("proc"), &nowhere)
            .unwrap()
            .is_none());
        // Files present, mounts present, but the fs root holds no cgroup files.
        assert!(read_cgroup_memory(&case("v2-512mb/proc"), &nowhere)
            .unwrap()
            .is_none());
    }

    #[test]
    fn unreadable_limit_file_is_an_error() {
        // Its memory.max is a directory: reading it fails with something other than
        // "not found".
        let err = read_case("unreadable").unwrap_err();
        let CgroupError::CannotRead { path, .. } = &err;
        assert_eq!(path, &case("unreadable/sys/fs/cgroup/memory.max"));
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read {}: ", path.display())),
            "{err}"
        );
    }

    #[test]
    fn live_system_reads_without_error() {
        let memory = read_cgroup_memory(Path::new("/proc"), Path::new("/"));
        assert!(memory.is_ok(), "{memory:?}");
    }
}

/// Property tests of the cgroup parsers: arbitrary text never panics, and text written
/// the way the kernel writes it reads back as the values it was made from.
#[cfg(test)]
mod properties {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use proptest::prelude::*;

    use super::*;

    /// Pure parsers: 512 cases of generated text take about a second in a debug build.
    const CASES: u32 = 512;
    /// Cases that write a cgroup tree to a temp dir.
    const FILE_CASES: u32 = 128;

    /// Text made of the characters these files use.
    fn cgroup_like() -> impl Strategy<Value = String> {
        r"[a-z0-9:/,._=\\ \t\n-]{0,300}"
    }

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), cgroup_like()]
    }

    /// A path as it may appear in mountinfo before escaping: any characters but NUL,
    /// including the space, tab, newline and backslash the kernel escapes, but no other
    /// whitespace (see `mount_point_with_other_whitespace_reads_back`).
    fn raw_path() -> impl Strategy<Value = String> {
        "/[^\u{0}]{0,40}".prop_map(|path| {
            path.chars()
                .filter(|&c| !c.is_whitespace() || matches!(c, ' ' | '\t' | '\n'))
                .collect()
        })
    }

    /// Escapes a path as the kernel writes it in mountinfo.
    fn escape(path: &str) -> String {
        let mut out = String::new();
        for c in path.chars() {
            match c {
                ' ' => out.push_str("\\040"),
                '\t' => out.push_str("\\011"),
                '\n' => out.push_str("\\012"),
                '\\' => out.push_str("\\134"),
                c => out.push(c),
            }
        }
        out
    }

    /// A mountinfo line for a mount of `fstype` with `optional` optional fields.
    fn mount_line(root: &str, point: &str, optional: usize, fstype: &str, options: &str) -> String {
        let tags: Vec<String> = (0..optional).map(|i| format!("shared:{i}")).collect();
        let tags = if tags.is_empty() {
            String::new()
        } else {
            format!(" {}", tags.join(" "))
        };
        format!(
            "35 24 0:30 {} {} rw,nosuid,nodev,noexec,relatime{tags} - {fstype} {fstype} {options}\n",
            escape(root),
            escape(point)
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        #[test]
        fn parsers_never_panic_on_any_text(text in any_text()) {
            let _ = parse_proc_cgroup(&text);
            let _ = parse_mountinfo(&text);
            let _ = parse_limit(&text);
            let _ = parse_usage(&text);
            let _ = unescape(&text);
        }

        /// A cgroup path relative to a mount root never steps outside the mount.
        #[test]
        fn relative_cgroup_dir_stays_inside_the_mount(root in any_text(), path in any_text()) {
            if let Some(relative) = relative_cgroup_dir(&root, &path) {
                prop_assert!(relative.components().all(|c| matches!(c, Component::Normal(_))));
            }
        }

        #[test]
        fn limits_read_back(bytes in 1u64..UNLIMITED_THRESHOLD, space in "[ \t]{0,2}", newline in any::<bool>()) {
            let text = format!("{space}{bytes}{}", if newline { "\n" } else { "" });
            prop_assert_eq!(parse_limit(&text), Limit::Bytes(bytes));
        }

        #[test]
        fn huge_limits_mean_none(bytes in UNLIMITED_THRESHOLD..=u64::MAX) {
            prop_assert_eq!(parse_limit(&format!("{bytes}\n")), Limit::Unlimited(NoLimit::Huge(bytes)));
        }

        #[test]
        fn non_numeric_limits_mean_none(text in any_text()) {
            let limit = parse_limit(&text);
            if text.trim().parse::<u64>().is_err() {
                prop_assert!(limit.bytes().is_none(), "{text:?} gave {limit:?}");
            }
        }

        #[test]
        fn usage_reads_back(bytes in any::<u64>()) {
            prop_assert_eq!(parse_usage(&format!("{bytes}\n")), Some(bytes));
        }

        /// The v2 line and the v1 memory line are found among other controllers' lines;
        /// the path keeps any colons it has.
        #[test]
        fn proc_cgroup_reads_back(
            v2 in "/[a-z0-9:._-]{0,30}",
            v1 in "/[a-z0-9:._-]{0,30}",
            others in prop::collection::vec(("[1-9][0-9]?", prop::sample::select(&["cpu,cpuacct", "pids", "blkio", "net_cls,net_prio"]), "/[a-z0-9]{0,10}"), 0..6),
            memory_first in any::<bool>(),
        ) {
            let mut lines: Vec<String> = others
                .iter()
                .map(|(id, controllers, path)| format!("{id}:{controllers}:{path}"))
                .collect();
            let memory = if memory_first { "memory,hugetlb" } else { "hugetlb,memory" };
            lines.insert(lines.len() / 2, format!("9:{memory}:{v1}"));
            lines.push(format!("0::{v2}"));
            let paths = parse_proc_cgroup(&(lines.join("\n") + "\n"));
            prop_assert_eq!(paths, CgroupPaths { v2: Some(v2), v1_memory: Some(v1) });
        }

        /// Mount points and roots with escaped characters read back unescaped, with any
        /// number of optional fields before the separator.
        #[test]
        fn mountinfo_reads_back(
            v2_point in raw_path(),
            v2_root in raw_path(),
            v1_point in raw_path(),
            v1_root in raw_path(),
            optional in 0usize..4,
        ) {
            let text = [
                mount_line("/", "/proc", optional, "proc", "rw"),
                mount_line(&v1_root, &v1_point, optional, "cgroup", "rw,memory"),
                mount_line("/", "/sys/fs/cgroup/cpu", optional, "cgroup", "rw,cpu,cpuacct"),
                mount_line(&v2_root, &v2_point, optional, "cgroup2", "rw,nsdelegate"),
            ]
            .concat();
            let mounts = parse_mountinfo(&text);
            prop_assert_eq!(
                mounts,
                Mounts {
                    v2: Some(CgroupMount { point: PathBuf::from(v2_point), root: v2_root }),
                    v1_memory: Some(CgroupMount { point: PathBuf::from(v1_point), root: v1_root }),
                }
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        /// The kernel escapes only space, tab, newline and backslash in mountinfo paths,
        /// and separates fields with single spaces: any other whitespace (a vertical tab,
        /// a carriage return, a no-break space) is part of the path.
        #[test]
        fn mount_point_with_other_whitespace_reads_back(
            before in "/[a-z]{0,10}",
            space in prop::sample::select(&['\u{b}', '\u{c}', '\r', '\u{85}', '\u{a0}', '\u{2028}', '\u{3000}']),
            after in "[a-z]{0,10}",
        ) {
            let point = format!("{before}{space}{after}");
            let text = mount_line("/", &point, 1, "cgroup2", "rw");
            let mounts = parse_mountinfo(&text);
            prop_assert_eq!(mounts.v2.map(|m| m.point), Some(PathBuf::from(point)));
        }
    }

    /// A temp dir, removed on drop.
    struct Root(PathBuf);

    impl Root {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "molt-cgroup-prop-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&path).unwrap();
            Root(path)
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(FILE_CASES))]

        /// A v2 cgroup nested under slices, each with `memory.max` a number or `max`:
        /// the limit read is the tightest number on the way up to the mount.
        #[test]
        fn nested_v2_limit_is_the_tightest(
            limits in prop::collection::vec(prop::option::of(1u64..(1 << 40)), 1..5),
            usage in any::<u64>(),
        ) {
            let root = Root::new();
            let proc_dir = root.0.join("proc/self");
            fs::create_dir_all(&proc_dir).unwrap();
            let names: Vec<String> = (0..limits.len()).map(|i| format!("level{i}.slice")).collect();
            let cgroup_path = format!("/{}", names.join("/"));
            fs::write(proc_dir.join("cgroup"), format!("0::{cgroup_path}\n")).unwrap();
            fs::write(
                proc_dir.join("mountinfo"),
                mount_line("/", "/sys/fs/cgroup", 1, "cgroup2", "rw,nsdelegate"),
            )
            .unwrap();
            let mut dir = root.0.join("sys/fs/cgroup");
            for (name, limit) in names.iter().zip(&limits) {
                dir = dir.join(name);
                fs::create_dir_all(&dir).unwrap();
                let text = limit.map_or_else(|| "max\n".to_owned(), |n| format!("{n}\n"));
                fs::write(dir.join("memory.max"), text).unwrap();
            }
            fs::write(dir.join("memory.current"), format!("{usage}\n")).unwrap();
            let memory = read_cgroup_memory(&root.0.join("proc"), &root.0).unwrap().unwrap();
            prop_assert_eq!(memory.version, CgroupVersion::V2);
            prop_assert_eq!(memory.limit.bytes(), limits.iter().flatten().min().copied());
            prop_assert_eq!(memory.usage, Some(usage));
        }
    }
}
