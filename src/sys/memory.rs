//! Memory and CPU time of processes and process trees, from `/proc`.
//!
//! A worker's memory is the proportional set size (PSS) plus proportional swap (`SwapPss`)
//! summed over every process in its tree, because a Unicorn master and the workers it forks
//! are one molt worker, and their copy-on-write pages are shared: summing RSS would count
//! each shared page once per process and recycle workers that are not growing. PSS comes
//! from `/proc/<pid>/smaps_rollup` (Linux 4.14 and later, readable by the process's own user);
//! where that cannot be read, RSS from `statm` stands in and the total is marked inexact.
//!
//! The parsers take text and return bytes. The readers take the root to read from
//! (`/proc` in production, a fixture directory in tests) and treat a process that vanished
//! between two reads as absent, never as an error: processes exit at any moment.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

/// Bytes in the `kB` of `/proc` files, which the kernel has always meant as KiB.
const KIB: u64 = 1024;

/// Page size when the auxiliary vector does not say: the size on `x86_64` and on the arm64
/// kernels that Heroku and the common clouds run.
pub(crate) const DEFAULT_PAGE_SIZE: u64 = 4096;

/// Clock ticks per second when the auxiliary vector does not say: `USER_HZ`, which the
/// kernel fixes at 100 for user space on every architecture molt is built for.
pub(crate) const DEFAULT_CLOCK_TICKS: u64 = 100;

/// A `/proc` file whose text does not have the form the kernel writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// A field that every supported kernel writes is absent: the text is truncated or is
    /// not the file it was taken for.
    MissingField {
        /// The file's name under `/proc/<pid>/` or `/proc/`, e.g. `smaps_rollup`.
        file: &'static str,
        /// The field, named as in proc(5), e.g. `Pss` or `ppid`.
        field: &'static str,
    },
    /// A field is present but its value does not have the field's form.
    BadValue {
        file: &'static str,
        field: &'static str,
        /// The value as written.
        value: String,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::MissingField { file, field } => write!(f, "{file} has no {field} field"),
            ParseError::BadValue { file, field, value } => {
                write!(f, "{file} field {field} has the malformed value {value:?}")
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// The fields of `/proc/<pid>/smaps_rollup` that molt uses, in bytes.
///
/// Fields that older kernels do not write are 0: `Pss_Anon`, `Pss_File` and `Pss_Shmem`
/// arrived in Linux 5.8; `SwapPss` in 4.3, before `smaps_rollup` itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SmapsRollup {
    pub(crate) rss: u64,
    pub(crate) pss: u64,
    pub(crate) pss_anon: u64,
    pub(crate) pss_file: u64,
    pub(crate) pss_shmem: u64,
    pub(crate) private_clean: u64,
    pub(crate) private_dirty: u64,
    pub(crate) shared_clean: u64,
    pub(crate) shared_dirty: u64,
    pub(crate) swap: u64,
    pub(crate) swap_pss: u64,
}

impl SmapsRollup {
    /// What this process costs the container: its share of resident pages plus its share
    /// of swapped-out ones. Swap counts because Heroku's R14 counts swap against the quota.
    pub(crate) fn charged(&self) -> u64 {
        self.pss.saturating_add(self.swap_pss)
    }
}

/// Parses `/proc/<pid>/smaps_rollup`. `Rss` and `Pss` are required; other fields missing
/// on older kernels are 0, and fields molt does not use are ignored.
pub(crate) fn parse_smaps_rollup(text: &str) -> Result<SmapsRollup, ParseError> {
    const FILE: &str = "smaps_rollup";
    let mut rollup = SmapsRollup::default();
    let mut seen = Vec::new();
    for line in text.lines() {
        // The first line is the header of the one merged mapping
        // (`55d3c4a1e000-7ffc8e5f3000 ---p 00000000 00:00 0 [rollup]`), whose text before
        // the first colon has spaces in it; it is not a field.
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (field, slot) = match name {
            "Rss" => ("Rss", &mut rollup.rss),
            "Pss" => ("Pss", &mut rollup.pss),
            "Pss_Anon" => ("Pss_Anon", &mut rollup.pss_anon),
            "Pss_File" => ("Pss_File", &mut rollup.pss_file),
            "Pss_Shmem" => ("Pss_Shmem", &mut rollup.pss_shmem),
            "Private_Clean" => ("Private_Clean", &mut rollup.private_clean),
            "Private_Dirty" => ("Private_Dirty", &mut rollup.private_dirty),
            "Shared_Clean" => ("Shared_Clean", &mut rollup.shared_clean),
            "Shared_Dirty" => ("Shared_Dirty", &mut rollup.shared_dirty),
            "Swap" => ("Swap", &mut rollup.swap),
            "SwapPss" => ("SwapPss", &mut rollup.swap_pss),
            _ => continue,
        };
        *slot = parse_kib(FILE, field, value)?;
        seen.push(field);
    }
    // Every kernel that has smaps_rollup writes these two; without them the text is cut
    // short or is not smaps_rollup, and zeros would pass for a process that uses nothing.
    for field in ["Rss", "Pss"] {
        if !seen.contains(&field) {
            return Err(ParseError::MissingField { file: FILE, field });
        }
    }
    Ok(rollup)
}

/// Parses `/proc/<pid>/statm` into resident bytes (its second field, in pages). It is the
/// fallback where `smaps_rollup` cannot be read: another user's process, or Linux before 4.14.
pub(crate) fn parse_statm(text: &str, page_size: u64) -> Result<u64, ParseError> {
    const FILE: &str = "statm";
    let mut fields = text.split_whitespace();
    let size = fields.next().ok_or(ParseError::MissingField {
        file: FILE,
        field: "size",
    })?;
    parse_number::<u64>(FILE, "size", size)?;
    let resident = fields.next().ok_or(ParseError::MissingField {
        file: FILE,
        field: "resident",
    })?;
    let pages = parse_number::<u64>(FILE, "resident", resident)?;
    pages
        .checked_mul(page_size)
        .ok_or_else(|| bad_value(FILE, "resident", resident))
}

/// The fields of `/proc/<pid>/stat` that molt uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub(crate) pid: i32,
    /// The executable's name, at most 15 bytes, as the process may have renamed itself.
    pub(crate) comm: String,
    /// `R` running, `S` sleeping, `D` disk wait, `Z` zombie, `T` stopped, and so on.
    pub(crate) state: char,
    pub(crate) ppid: i32,
    pub(crate) pgrp: i32,
    /// The kernel's `PF_*` flags of the process.
    pub(crate) flags: u32,
    /// CPU time in user mode, in clock ticks (see [`clock_ticks_per_second`]).
    pub(crate) utime: u64,
    /// CPU time in kernel mode, in clock ticks.
    pub(crate) stime: u64,
    /// When the process started, in clock ticks after boot.
    pub(crate) starttime: u64,
    /// Resident set size in pages.
    pub(crate) rss_pages: u64,
}

impl ProcStat {
    /// User plus system CPU time, in clock ticks.
    pub(crate) fn cpu_ticks(&self) -> u64 {
        self.utime.saturating_add(self.stime)
    }

    /// Whether the process has exited and waits to be reaped: it holds no memory any more.
    pub(crate) fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }

    /// Whether the process is exiting or has exited: the kernel sets `PF_EXITING` before
    /// it closes the process's files, so this holds by the time its peers see them close.
    pub(crate) fn is_exiting(&self) -> bool {
        const PF_EXITING: u32 = 0x4;
        self.is_zombie() || self.flags & PF_EXITING != 0
    }
}

/// Parses `/proc/<pid>/stat`.
pub(crate) fn parse_stat(text: &str) -> Result<ProcStat, ParseError> {
    const FILE: &str = "stat";
    let missing = |field| ParseError::MissingField { file: FILE, field };
    // comm is any 15 bytes a process chose, spaces and parentheses included ("a) (b"), but
    // nothing after it can contain a `)`: so it ends at the last one.
    let open = text.find('(').ok_or(missing("comm"))?;
    let close = text
        .rfind(')')
        .filter(|&close| close > open)
        .ok_or(missing("comm"))?;
    let pid = parse_number(FILE, "pid", text[..open].trim())?;
    let comm = text[open + 1..close].to_owned();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // proc(5) numbers the fields from 1, with pid 1 and comm 2, so `rest[0]` is field 3.
    let field =
        |number: usize, name: &'static str| rest.get(number - 3).copied().ok_or(missing(name));
    let state_text = field(3, "state")?;
    let mut chars = state_text.chars();
    let (Some(state), None) = (chars.next(), chars.next()) else {
        return Err(bad_value(FILE, "state", state_text));
    };
    Ok(ProcStat {
        pid,
        comm,
        state,
        ppid: parse_number(FILE, "ppid", field(4, "ppid")?)?,
        pgrp: parse_number(FILE, "pgrp", field(5, "pgrp")?)?,
        flags: parse_number(FILE, "flags", field(9, "flags")?)?,
        utime: parse_number(FILE, "utime", field(14, "utime")?)?,
        stime: parse_number(FILE, "stime", field(15, "stime")?)?,
        starttime: parse_number(FILE, "starttime", field(22, "starttime")?)?,
        rss_pages: parse_number(FILE, "rss", field(24, "rss")?)?,
    })
}

/// Parses `/proc/<pid>/task/<tid>/children`: the pids of the processes that thread forked
/// and that have not been reaped, each followed by a space. Anything else is skipped.
pub(crate) fn parse_children(text: &str) -> Vec<i32> {
    text.split_whitespace()
        .filter_map(|word| word.parse::<i32>().ok())
        .filter(|&pid| pid > 0)
        .collect()
}

/// Parses the `MemTotal` line of `/proc/meminfo` into bytes.
pub(crate) fn parse_meminfo_total(text: &str) -> Result<u64, ParseError> {
    parse_kib_line("meminfo", "MemTotal", text)
}

/// Parses the `VmRSS` line of `/proc/<pid>/status` into bytes.
pub(crate) fn parse_status_rss(text: &str) -> Result<u64, ParseError> {
    parse_kib_line("status", "VmRSS", text)
}

/// What the kernel told the process about the machine in its auxiliary vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Auxv {
    /// `AT_PAGESZ`.
    pub(crate) page_size: Option<u64>,
    /// `AT_CLKTCK`: the unit of the CPU times in `/proc/<pid>/stat`.
    pub(crate) clock_ticks: Option<u64>,
}

/// Parses `/proc/self/auxv`: pairs of native-endian machine words, key then value, up to
/// the `AT_NULL` key. This is where the C library's `sysconf(_SC_PAGESIZE)` and
/// `sysconf(_SC_CLK_TCK)` get their answers; molt reads it directly because the nix
/// feature that wraps `sysconf` is not enabled in this crate.
pub(crate) fn parse_auxv(bytes: &[u8]) -> Auxv {
    const AT_NULL: u64 = 0;
    const AT_PAGESZ: u64 = 6;
    const AT_CLKTCK: u64 = 17;
    const WORD: usize = std::mem::size_of::<usize>();
    let word = |bytes: &[u8]| -> u64 {
        let word = usize::from_ne_bytes(bytes.try_into().expect("chunks_exact gives whole words"));
        u64::try_from(word).unwrap_or(u64::MAX)
    };
    let mut auxv = Auxv::default();
    for pair in bytes.chunks_exact(2 * WORD) {
        let (key, value) = pair.split_at(WORD);
        let value = Some(word(value)).filter(|&value| value > 0);
        match word(key) {
            AT_NULL => break,
            AT_PAGESZ => auxv.page_size = value,
            AT_CLKTCK => auxv.clock_ticks = value,
            _ => {}
        }
    }
    auxv
}

/// molt's own auxiliary vector, read once.
fn own_auxv() -> Auxv {
    static AUXV: OnceLock<Auxv> = OnceLock::new();
    *AUXV.get_or_init(|| {
        fs::read("/proc/self/auxv")
            .map(|bytes| parse_auxv(&bytes))
            .unwrap_or_default()
    })
}

/// The size of a memory page in bytes: the unit of `statm` and of `rss` in `stat`.
pub(crate) fn page_size() -> u64 {
    own_auxv().page_size.unwrap_or(DEFAULT_PAGE_SIZE)
}

/// Clock ticks per second: the unit of `utime` and `stime` in `stat`.
pub(crate) fn clock_ticks_per_second() -> u64 {
    own_auxv().clock_ticks.unwrap_or(DEFAULT_CLOCK_TICKS)
}

/// Reads and parses `<proc_root>/<pid>/stat`; `None` when the process is gone.
pub(crate) fn read_stat(proc_root: &Path, pid: i32) -> Option<ProcStat> {
    // The kernel cuts the command name at 15 bytes, possibly inside a UTF-8 character:
    // read bytes, not a string, or such a process would look gone.
    let bytes = fs::read(process_dir(proc_root, pid).join("stat")).ok()?;
    parse_stat(&String::from_utf8_lossy(&bytes)).ok()
}

/// Reads and parses `<proc_root>/<pid>/smaps_rollup`; `None` when it cannot be read
/// (the process is gone, belongs to another user, or the kernel predates 4.14).
pub(crate) fn read_smaps_rollup(proc_root: &Path, pid: i32) -> Option<SmapsRollup> {
    let text = fs::read_to_string(process_dir(proc_root, pid).join("smaps_rollup")).ok()?;
    parse_smaps_rollup(&text).ok()
}

/// `pid` and all its descendants, `pid` first, then breadth first. Empty when `pid` is gone.
///
/// Children come from `task/<tid>/children` of each thread (a child belongs to the thread
/// that forked it). Kernels built without `CONFIG_PROC_CHILDREN` lack those files; there the
/// children are found by scanning every `<proc_root>/<pid>/stat` for its ppid, once per walk.
/// A pid that vanished before it was read is skipped with its subtree (the kernel hands its
/// children to the nearest subreaper, which is molt). A pid seen twice, as pid reuse between
/// two reads can make happen, is walked once.
pub(crate) fn tree_pids(proc_root: &Path, pid: i32) -> Vec<i32> {
    let mut tree = Vec::new();
    let mut seen = HashSet::from([pid]);
    let mut queue = VecDeque::from([pid]);
    let mut by_parent: Option<HashMap<i32, Vec<i32>>> = None;
    while let Some(next) = queue.pop_front() {
        if !process_dir(proc_root, next).join("stat").is_file() {
            continue;
        }
        tree.push(next);
        let children = children_from_tasks(proc_root, next).unwrap_or_else(|| {
            by_parent
                .get_or_insert_with(|| children_by_parent(proc_root))
                .get(&next)
                .cloned()
                .unwrap_or_default()
        });
        for child in children {
            if seen.insert(child) {
                queue.push_back(child);
            }
        }
    }
    tree
}

/// The children listed in `task/*/children` of every thread of `pid`, threads in tid order;
/// `None` when the process has no such files (or no task directory any more).
fn children_from_tasks(proc_root: &Path, pid: i32) -> Option<Vec<i32>> {
    let entries = fs::read_dir(process_dir(proc_root, pid).join("task")).ok()?;
    let mut threads: Vec<(i32, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let tid = entry.file_name().to_str()?.parse().ok()?;
            Some((tid, entry.path()))
        })
        .collect();
    threads.sort_unstable();
    let mut found = false;
    let mut children = Vec::new();
    for (_, thread) in threads {
        // A thread that exits between the listing and this read takes its file with it.
        if let Ok(text) = fs::read_to_string(thread.join("children")) {
            found = true;
            children.extend(parse_children(&text));
        }
    }
    found.then_some(children)
}

/// Every process under `proc_root`, grouped by parent pid, children in pid order.
fn children_by_parent(proc_root: &Path) -> HashMap<i32, Vec<i32>> {
    let mut by_parent: HashMap<i32, Vec<i32>> = HashMap::new();
    let Ok(entries) = fs::read_dir(proc_root) else {
        return by_parent;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(stat) = read_stat(proc_root, pid) {
            by_parent.entry(stat.ppid).or_default().push(pid);
        }
    }
    for children in by_parent.values_mut() {
        children.sort_unstable();
    }
    by_parent
}

/// Memory and CPU time of a process tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TreeMemory {
    /// PSS plus `SwapPss` summed over the tree; RSS for processes whose `smaps_rollup` could
    /// not be read.
    pub(crate) bytes: u64,
    /// Private (unshared) resident bytes summed over the tree: what the tree's processes
    /// would free by exiting, and what another forked copy of them would cost. 0 for
    /// processes counted by RSS.
    pub(crate) private: u64,
    /// Processes counted, zombies included.
    pub(crate) processes: usize,
    /// User plus system CPU time summed over the tree, in clock ticks.
    pub(crate) cpu_ticks: u64,
    /// False when any process was counted by RSS, which over-counts shared pages.
    pub(crate) exact: bool,
}

/// Measures `pid` and its descendants; `None` when `pid` is gone. `page_size` is the unit
/// of `statm` (see [`page_size`]).
pub(crate) fn measure_tree(proc_root: &Path, pid: i32, page_size: u64) -> Option<TreeMemory> {
    let mut total = TreeMemory {
        bytes: 0,
        private: 0,
        processes: 0,
        cpu_ticks: 0,
        exact: true,
    };
    for member in tree_pids(proc_root, pid) {
        let Some(stat) = read_stat(proc_root, member) else {
            // It exited after the walk found it.
            if member == pid {
                return None;
            }
            continue;
        };
        total.processes += 1;
        total.cpu_ticks = total.cpu_ticks.saturating_add(stat.cpu_ticks());
        // A zombie's memory is already freed, and its smaps_rollup cannot be read: it would
        // make the total inexact for nothing.
        if stat.is_zombie() {
            continue;
        }
        let bytes = if let Some(rollup) = read_smaps_rollup(proc_root, member) {
            total.private = total
                .private
                .saturating_add(rollup.private_clean + rollup.private_dirty);
            rollup.charged()
        } else {
            total.exact = false;
            fs::read_to_string(process_dir(proc_root, member).join("statm"))
                .ok()
                .and_then(|text| parse_statm(&text, page_size).ok())
                .unwrap_or_else(|| stat.rss_pages.saturating_mul(page_size))
        };
        total.bytes = total.bytes.saturating_add(bytes);
    }
    (total.processes > 0).then_some(total)
}

/// The memory of `top`'s tree without the descendants of `below` (a process in it): a
/// preforking master and the wrappers above it, without its children. Counted as
/// [`measure_tree`] counts, from `smaps_rollup` (RSS where it cannot be read).
pub(crate) fn measure_above(proc_root: &Path, top: i32, below: i32) -> u64 {
    let under: HashSet<i32> = tree_pids(proc_root, below)
        .into_iter()
        .filter(|&pid| pid != below)
        .collect();
    tree_pids(proc_root, top)
        .into_iter()
        .filter(|pid| !under.contains(pid))
        .filter_map(|pid| read_smaps_rollup(proc_root, pid).map(|r| r.charged()))
        .sum()
}

/// molt's own resident memory, from `<proc_root>/self/statm`, else the `VmRSS` line of
/// `<proc_root>/self/status`. `page_size` is the unit of `statm`.
pub(crate) fn self_rss(proc_root: &Path, page_size: u64) -> Option<u64> {
    let own = proc_root.join("self");
    fs::read_to_string(own.join("statm"))
        .ok()
        .and_then(|text| parse_statm(&text, page_size).ok())
        .or_else(|| {
            let text = fs::read_to_string(own.join("status")).ok()?;
            parse_status_rss(&text).ok()
        })
}

/// The machine's memory, from `MemTotal` in `<proc_root>/meminfo`. Inside a container this
/// is the host's memory: the cgroup limit, where there is one, is the real budget.
pub(crate) fn physical_memory(proc_root: &Path) -> Option<u64> {
    let text = fs::read_to_string(proc_root.join("meminfo")).ok()?;
    parse_meminfo_total(&text).ok()
}

fn process_dir(proc_root: &Path, pid: i32) -> PathBuf {
    proc_root.join(pid.to_string())
}

fn bad_value(file: &'static str, field: &'static str, value: &str) -> ParseError {
    ParseError::BadValue {
        file,
        field,
        value: value.to_owned(),
    }
}

fn parse_number<T: FromStr>(
    file: &'static str,
    field: &'static str,
    text: &str,
) -> Result<T, ParseError> {
    text.parse().map_err(|_| bad_value(file, field, text))
}

/// Parses a value such as `   13540 kB` into bytes.
fn parse_kib(file: &'static str, field: &'static str, value: &str) -> Result<u64, ParseError> {
    let value = value.trim();
    value
        .strip_suffix("kB")
        .and_then(|number| number.trim_end().parse::<u64>().ok())
        .and_then(|kib| kib.checked_mul(KIB))
        .ok_or_else(|| bad_value(file, field, value))
}

/// Finds the line `<field>: <n> kB` in text of `Name: value` lines, and parses it into bytes.
fn parse_kib_line(file: &'static str, field: &'static str, text: &str) -> Result<u64, ParseError> {
    let value = text
        .lines()
        .find_map(|line| line.split_once(':').filter(|(name, _)| *name == field))
        .map(|(_, value)| value)
        .ok_or(ParseError::MissingField { file, field })?;
    parse_kib(file, field, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test/fixtures/proc");
    /// The page size the fixtures were written with.
    const PAGE: u64 = 4096;

    fn fixture(path: &str) -> PathBuf {
        Path::new(FIXTURES).join(path)
    }

    fn read_fixture(path: &str) -> String {
        fs::read_to_string(fixture(path)).unwrap()
    }

    fn missing(file: &'static str, field: &'static str) -> ParseError {
        ParseError::MissingField { file, field }
    }

    fn bad(file: &'static str, field: &'static str, value: &str) -> ParseError {
        ParseError::BadValue {
            file,
            field,
            value: value.to_owned(),
        }
    }

    /// A rollup as Linux 6.x writes it, with every field molt reads set to a distinct value.
    const ROLLUP: &str = "\
5606ce517000-7ffdbb855000 ---p 00000000 00:00 0                          [rollup]
Rss:                  11 kB
Pss:                  12 kB
Pss_Dirty:            99 kB
Pss_Anon:             13 kB
Pss_File:             14 kB
Pss_Shmem:            15 kB
Shared_Clean:         16 kB
Shared_Dirty:         17 kB
Private_Clean:        18 kB
Private_Dirty:        19 kB
Referenced:           99 kB
Anonymous:            99 kB
Swap:                 20 kB
SwapPss:              21 kB
Locked:                0 kB
";

    #[test]
    fn smaps_rollup_fields_are_read_in_bytes() {
        let rollup = parse_smaps_rollup(ROLLUP).unwrap();
        assert_eq!(
            rollup,
            SmapsRollup {
                rss: 11 * 1024,
                pss: 12 * 1024,
                pss_anon: 13 * 1024,
                pss_file: 14 * 1024,
                pss_shmem: 15 * 1024,
                shared_clean: 16 * 1024,
                shared_dirty: 17 * 1024,
                private_clean: 18 * 1024,
                private_dirty: 19 * 1024,
                swap: 20 * 1024,
                swap_pss: 21 * 1024,
            }
        );
        assert_eq!(rollup.charged(), (12 + 21) * 1024);
    }

    #[test]
    fn smaps_rollup_captured_sample() {
        // Captured from python3 on this project's Linux 6.18 sandbox.
        let rollup = parse_smaps_rollup(&read_fixture("self/smaps_rollup")).unwrap();
        assert_eq!(rollup.rss, 13540 * 1024);
        assert_eq!(rollup.pss, 12193 * 1024);
        assert_eq!(rollup.pss_anon, 6876 * 1024);
        assert_eq!(rollup.pss_file, 5317 * 1024);
        assert_eq!(rollup.private_dirty, 6876 * 1024);
        assert_eq!(rollup.swap_pss, 0);
    }

    #[test]
    fn smaps_rollup_of_an_older_kernel_lacks_the_pss_breakdown() {
        // Linux 4.14 to 5.7: no Pss_Anon, Pss_File, Pss_Shmem (nor Pss_Dirty).
        let text = "\
00400000-7ffd7b7ff000 ---p 00000000 00:00 0                          [rollup]
Rss:              185344 kB
Pss:               87340 kB
Shared_Clean:      30720 kB
Shared_Dirty:      50176 kB
Private_Clean:      1024 kB
Private_Dirty:    103424 kB
Referenced:       181248 kB
Anonymous:        153600 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:               2048 kB
SwapPss:             512 kB
Locked:                0 kB
";
        let rollup = parse_smaps_rollup(text).unwrap();
        assert_eq!(rollup.pss, 87340 * 1024);
        assert_eq!(
            (rollup.pss_anon, rollup.pss_file, rollup.pss_shmem),
            (0, 0, 0)
        );
        assert_eq!(rollup.charged(), (87340 + 512) * 1024);
        // SwapPss missing as well: still fine, counted as 0.
        let without_swap_pss = text.replace("SwapPss:             512 kB\n", "");
        assert_eq!(parse_smaps_rollup(&without_swap_pss).unwrap().swap_pss, 0);
    }

    #[test]
    fn smaps_rollup_without_rss_or_pss_is_an_error() {
        assert_eq!(parse_smaps_rollup(""), Err(missing("smaps_rollup", "Rss")));
        for (line, field) in [
            ("Rss:                  11 kB\n", "Rss"),
            ("Pss:                  12 kB\n", "Pss"),
        ] {
            let text = ROLLUP.replace(line, "");
            assert_eq!(
                parse_smaps_rollup(&text),
                Err(missing("smaps_rollup", field))
            );
        }
        // Cut off after the header, as a read of a process that is exiting can be.
        let header_only = ROLLUP.lines().next().unwrap();
        assert_eq!(
            parse_smaps_rollup(header_only),
            Err(missing("smaps_rollup", "Rss"))
        );
    }

    #[test]
    fn smaps_rollup_rejects_malformed_values() {
        let cases = [
            ("Pss:                  12 kB", "Pss:", "Pss", ""),
            (
                "Pss:                  12 kB",
                "Pss:    twelve kB",
                "Pss",
                "twelve kB",
            ),
            ("Pss:                  12 kB", "Pss:    12", "Pss", "12"),
            (
                "Pss:                  12 kB",
                "Pss:    12 MB",
                "Pss",
                "12 MB",
            ),
            (
                "Pss:                  12 kB",
                "Pss:    -12 kB",
                "Pss",
                "-12 kB",
            ),
            (
                "Swap:                 20 kB",
                "Swap: 18446744073709551615 kB",
                "Swap",
                "18446744073709551615 kB",
            ),
        ];
        for (good, broken, field, value) in cases {
            let text = ROLLUP.replace(good, broken);
            assert_eq!(
                parse_smaps_rollup(&text),
                Err(bad("smaps_rollup", field, value)),
                "{broken}"
            );
        }
    }

    #[test]
    fn statm_resident_is_the_second_field_in_pages() {
        assert_eq!(
            parse_statm("4141 3385 1666 1 0 2019 0\n", PAGE),
            Ok(3385 * 4096)
        );
        assert_eq!(
            parse_statm("4141 3385 1666 1 0 2019 0\n", 16384),
            Ok(3385 * 16384)
        );
        assert_eq!(
            parse_statm(&read_fixture("self/statm"), PAGE),
            Ok(3385 * 4096)
        );
        // A zombie's statm.
        assert_eq!(parse_statm("0 0 0 0 0 0 0\n", PAGE), Ok(0));
    }

    #[test]
    fn statm_rejects_truncated_text_and_non_numbers() {
        assert_eq!(parse_statm("", PAGE), Err(missing("statm", "size")));
        assert_eq!(parse_statm("4141", PAGE), Err(missing("statm", "resident")));
        assert_eq!(
            parse_statm("4141 x 1666", PAGE),
            Err(bad("statm", "resident", "x"))
        );
        assert_eq!(
            parse_statm("size 3385", PAGE),
            Err(bad("statm", "size", "size"))
        );
        assert_eq!(
            parse_statm("1 18446744073709551615", PAGE),
            Err(bad("statm", "resident", "18446744073709551615"))
        );
    }

    /// A stat line with `comm` in the middle; the other fields as in the captured sample.
    fn stat_line(comm: &str) -> String {
        format!(
            "31479 ({comm}) R 31476 31476 26657 0 -1 4194304 2847 6523 7 1 7 0 4 1 20 0 1 0 \
             163780 16961536 3334 18446744073709551615 94587231240192 94587231240533 \
             140727749524864 0 0 0 0 16781312 2 0 0 0 17 1 0 0 0 0 0 94587231251888 \
             94587231252504 94587778117632 140727749527796 140727749527839 140727749527839 \
             140727749529551 0\n"
        )
    }

    #[test]
    fn stat_captured_sample() {
        let stat = parse_stat(&read_fixture("self/stat")).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                pid: 31479,
                comm: "python3".to_owned(),
                state: 'R',
                ppid: 31476,
                pgrp: 31476,
                flags: 4_194_304,
                utime: 7,
                stime: 0,
                starttime: 163_780,
                rss_pages: 3334,
            }
        );
        assert_eq!(parse_stat(&stat_line("python3")).unwrap(), stat);
        assert_eq!(stat.cpu_ticks(), 7);
        assert!(!stat.is_zombie());
    }

    #[test]
    fn stat_comm_may_hold_spaces_and_parentheses() {
        for comm in [
            "a) (b",
            "x) R 1 2 (",
            "Web Content",
            "(sd-pam)",
            ") (",
            ")",
            "",
            "a b c d e f",
        ] {
            let stat = parse_stat(&stat_line(comm)).unwrap();
            assert_eq!(stat.comm, comm);
            assert_eq!(
                (stat.pid, stat.state, stat.ppid, stat.rss_pages),
                (31479, 'R', 31476, 3334)
            );
        }
    }

    #[test]
    fn stat_rejects_truncated_and_malformed_text() {
        assert_eq!(parse_stat(""), Err(missing("stat", "comm")));
        assert_eq!(
            parse_stat("31479 (python3 R 31476"),
            Err(missing("stat", "comm"))
        );
        assert_eq!(
            parse_stat("31479 python3) R 31476"),
            Err(missing("stat", "comm"))
        );
        assert_eq!(parse_stat("31479 (python3)"), Err(missing("stat", "state")));
        let line = stat_line("python3");
        // Cut before field 24, rss: "... 163780 16961536" ends at field 23.
        let cut = &line[..line.find(" 3334 ").unwrap()];
        assert_eq!(parse_stat(cut), Err(missing("stat", "rss")));
        let cut = &line[..line.find(" 20 0 1 0").unwrap()];
        assert_eq!(parse_stat(cut), Err(missing("stat", "starttime")));
        assert_eq!(
            parse_stat(&line.replace("R 31476", "R x")),
            Err(bad("stat", "ppid", "x"))
        );
        assert_eq!(
            parse_stat(&line.replace("R 31476", "RS 31476")),
            Err(bad("stat", "state", "RS"))
        );
        assert_eq!(
            parse_stat(&line.replace("31479 (", "pid (")),
            Err(bad("stat", "pid", "pid"))
        );
        assert_eq!(
            parse_stat(&line.replace(" 7 0 4 1 ", " -7 0 4 1 ")),
            Err(bad("stat", "utime", "-7"))
        );
    }

    #[test]
    fn zombies_are_recognised() {
        let zombie = parse_stat(&read_fixture("tree/106/stat")).unwrap();
        assert_eq!(
            (zombie.state, zombie.ppid, zombie.cpu_ticks()),
            ('Z', 101, 4)
        );
        assert!(zombie.is_zombie());
    }

    #[test]
    fn children_are_space_separated_pids() {
        assert_eq!(parse_children("101 102 "), vec![101, 102]);
        assert_eq!(parse_children(""), Vec::<i32>::new());
        assert_eq!(parse_children("7\n"), vec![7]);
        assert_eq!(parse_children("101 x 0 -3 102 99999999999"), vec![101, 102]);
    }

    #[test]
    fn meminfo_total_in_bytes() {
        assert_eq!(
            parse_meminfo_total(&read_fixture("meminfo")),
            Ok(24_684_096 * 1024)
        );
        assert_eq!(
            parse_meminfo_total("MemFree: 1 kB\n"),
            Err(missing("meminfo", "MemTotal"))
        );
        assert_eq!(
            parse_meminfo_total("MemTotal: lots\n"),
            Err(bad("meminfo", "MemTotal", "lots"))
        );
        assert_eq!(
            physical_memory(Path::new(FIXTURES)),
            Some(24_684_096 * 1024)
        );
        assert_eq!(physical_memory(&fixture("no-such-dir")), None);
    }

    #[test]
    fn status_rss_in_bytes() {
        assert_eq!(
            parse_status_rss(&read_fixture("self/status")),
            Ok(13540 * 1024)
        );
        // A kernel thread's status has no VmRSS line.
        assert_eq!(
            parse_status_rss("Name:\tkthreadd\nState:\tS\n"),
            Err(missing("status", "VmRSS"))
        );
    }

    #[test]
    fn self_rss_reads_statm_then_status() {
        assert_eq!(self_rss(Path::new(FIXTURES), PAGE), Some(3385 * 4096));
        // Only self/status in this root.
        assert_eq!(self_rss(&fixture("status-only"), PAGE), Some(13540 * 1024));
        assert_eq!(self_rss(&fixture("no-such-dir"), PAGE), None);
    }

    fn auxv_bytes(pairs: &[(usize, usize)]) -> Vec<u8> {
        pairs
            .iter()
            .flat_map(|(key, value)| [key.to_ne_bytes(), value.to_ne_bytes()])
            .flatten()
            .collect()
    }

    #[test]
    fn auxv_gives_page_size_and_clock_ticks() {
        // AT_HWCAP 16, AT_PAGESZ 6, AT_CLKTCK 17, AT_NULL 0, then junk after the end.
        let bytes = auxv_bytes(&[(16, 0x178b_fbff), (6, 16384), (17, 250), (0, 0), (6, 1)]);
        let expected = Auxv {
            page_size: Some(16384),
            clock_ticks: Some(250),
        };
        assert_eq!(parse_auxv(&bytes), expected);
        // A trailing partial word is ignored.
        let mut truncated = bytes.clone();
        truncated.truncate(2 * 2 * std::mem::size_of::<usize>() + 3);
        assert_eq!(
            parse_auxv(&truncated),
            Auxv {
                page_size: Some(16384),
                clock_ticks: None
            }
        );
        assert_eq!(parse_auxv(&[]), Auxv::default());
        assert_eq!(parse_auxv(&auxv_bytes(&[(6, 0)])), Auxv::default());
    }

    #[test]
    fn tree_follows_children_files_of_every_thread() {
        // 100 (threads 100, 107) -> 101, 102; 101 -> 106 (a zombie); 102 (threads 102, 109)
        // -> 103, and 104, which is listed but gone. 200 is not in the tree.
        let root = fixture("tree");
        assert_eq!(tree_pids(&root, 100), vec![100, 101, 102, 106, 103]);
        assert_eq!(tree_pids(&root, 102), vec![102, 103]);
        assert_eq!(tree_pids(&root, 103), vec![103]);
        assert_eq!(tree_pids(&root, 200), vec![200]);
    }

    #[test]
    fn tree_falls_back_to_ppid_without_children_files() {
        // The same tree on a kernel without CONFIG_PROC_CHILDREN, plus grandchild 105 of 101.
        let root = fixture("tree-no-children");
        assert_eq!(tree_pids(&root, 100), vec![100, 101, 102, 105, 103]);
        assert_eq!(tree_pids(&root, 101), vec![101, 105]);
    }

    #[test]
    fn tree_of_a_vanished_pid_is_empty() {
        assert_eq!(tree_pids(&fixture("tree"), 104), Vec::<i32>::new());
        assert_eq!(
            tree_pids(&fixture("tree-no-children"), 999),
            Vec::<i32>::new()
        );
    }

    #[test]
    fn tree_walk_ends_on_cycles() {
        // Children files 300 -> 301 -> {300, 302} -> 301: each pid once.
        assert_eq!(tree_pids(&fixture("cycle"), 300), vec![300, 301, 302]);
        // Parents 400 <-> 401 in stat.
        assert_eq!(tree_pids(&fixture("tree-no-children"), 400), vec![400, 401]);
    }

    #[test]
    fn measure_tree_sums_pss_and_swap_pss_and_falls_back_to_rss() {
        // By hand, from the files under test/fixtures/proc/tree:
        //   100 Pss 41210 kB + SwapPss 1024 kB = 42234 kB   utime+stime 1520+310 = 1830
        //   101 Pss 87340 kB + SwapPss    0 kB = 87340 kB                4210+388 = 4598
        //   102 Pss 92112 kB + SwapPss  512 kB = 92624 kB                3977+401 = 4378
        //   106 zombie: no memory                                           3+1   =    4
        //   103 no smaps_rollup: statm 5120 pages x 4096 = 20480 kB          12+9  =   21
        //   total 242678 kB = 248502272 bytes, 5 processes, 10831 ticks, not exact (103).
        let tree = measure_tree(&fixture("tree"), 100, PAGE).unwrap();
        assert_eq!(
            tree,
            TreeMemory {
                bytes: 248_502_272,
                // Private_Clean + Private_Dirty of 100, 101 and 102: 230400 kB.
                private: 230_400 * 1024,
                processes: 5,
                cpu_ticks: 10_831,
                exact: false
            }
        );
    }

    #[test]
    fn measure_tree_is_exact_when_every_rollup_is_read() {
        // 101 (87340 kB) and its zombie child 106, which does not make the total inexact.
        let tree = measure_tree(&fixture("tree"), 101, PAGE).unwrap();
        assert_eq!(
            tree,
            TreeMemory {
                bytes: 87340 * 1024,
                private: (1024 + 103_424) * 1024,
                processes: 2,
                cpu_ticks: 4598 + 4,
                exact: true
            }
        );
    }

    #[test]
    fn measure_tree_falls_back_to_stat_rss_without_statm() {
        // tree-no-children has only stat files: rss 100 pages each, utime 10 + stime 1.
        let tree = measure_tree(&fixture("tree-no-children"), 101, PAGE).unwrap();
        assert_eq!(
            tree,
            TreeMemory {
                bytes: 2 * 100 * 4096,
                private: 0,
                processes: 2,
                cpu_ticks: 22,
                exact: false
            }
        );
    }

    #[test]
    fn measure_above_leaves_out_what_the_lower_process_forked() {
        // 101's child 106 is left out; 101 itself, its parent 100 and sibling 102 count;
        // 103 has no smaps_rollup and counts nothing here.
        let above = measure_above(&fixture("tree"), 100, 101);
        assert_eq!(above, (42_234 + 87_340 + 92_624) * 1024);
    }

    #[test]
    fn measure_tree_of_a_vanished_pid_is_none() {
        assert_eq!(measure_tree(&fixture("tree"), 104, PAGE), None);
        assert_eq!(measure_tree(&fixture("no-such-dir"), 1, PAGE), None);
    }

    fn own_pid() -> i32 {
        i32::try_from(std::process::id()).unwrap()
    }

    #[test]
    fn live_measure_of_this_process() {
        let proc_root = Path::new("/proc");
        let tree = measure_tree(proc_root, own_pid(), page_size()).unwrap();
        assert!(tree.bytes > 0, "{tree:?}");
        assert!(tree.processes >= 1, "{tree:?}");
        assert!(self_rss(proc_root, page_size()).unwrap() > 0);
        assert!(physical_memory(proc_root).unwrap() > 0);
    }

    #[test]
    fn live_tree_includes_a_spawned_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let child_pid = i32::try_from(child.id()).unwrap();
        let tree = tree_pids(Path::new("/proc"), own_pid());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(tree.first(), Some(&own_pid()));
        assert!(tree.contains(&child_pid), "{child_pid} not in {tree:?}");
    }

    #[test]
    fn live_page_size_and_clock_ticks() {
        let page = page_size();
        assert!(page >= 4096 && page.is_power_of_two(), "{page}");
        assert!(clock_ticks_per_second() > 0);
    }
}

/// Property tests of the `/proc` parsers: arbitrary text never panics, and text written
/// the way the kernel writes it reads back as the values it was made from.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Pure parsers: 512 cases of generated text take about a second in a debug build.
    const CASES: u32 = 512;

    /// A kernel-sized amount of memory in KiB (below 2^40 KiB, 1 PiB).
    fn kib() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..4096, 0u64..(1 << 40)]
    }

    /// Text made of the characters `/proc` files use, which reaches the parsers' inner
    /// branches more often than arbitrary text does.
    fn proc_like() -> impl Strategy<Value = String> {
        "[A-Za-z_()0-9:. \t\n-]{0,300}"
    }

    /// Any text: arbitrary Unicode or `/proc`-like.
    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), proc_like()]
    }

    /// A `smaps_rollup` field line as the kernel pads it.
    fn kib_line(name: &str, kib: u64) -> String {
        format!("{:<16}{kib:>8} kB\n", format!("{name}:"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        #[test]
        fn parsers_never_panic_on_any_text(text in any_text(), page in 1u64..(1 << 20)) {
            let _ = parse_smaps_rollup(&text);
            let _ = parse_statm(&text, page);
            let _ = parse_stat(&text);
            let _ = parse_children(&text);
            let _ = parse_meminfo_total(&text);
            let _ = parse_status_rss(&text);
        }

        #[test]
        fn parse_auxv_never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_auxv(&bytes);
        }

        /// Fields in any order, with unknown ones among them and the `[rollup]` header
        /// first, read back in bytes.
        #[test]
        fn smaps_rollup_reads_back(
            values in prop::collection::vec(kib(), 11),
            unknown in prop::collection::vec(("[A-Z][a-z_]{1,12}", kib()), 0..6),
            order in Just((0..11).collect::<Vec<usize>>()).prop_shuffle(),
        ) {
            const NAMES: [&str; 11] = [
                "Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Private_Clean",
                "Private_Dirty", "Shared_Clean", "Shared_Dirty", "Swap", "SwapPss",
            ];
            let mut text =
                "5606ce517000-7ffdbb855000 ---p 00000000 00:00 0                          [rollup]\n"
                    .to_owned();
            for (i, &field) in order.iter().enumerate() {
                text.push_str(&kib_line(NAMES[field], values[field]));
                if let Some((name, kib)) = unknown.get(i) {
                    if !NAMES.contains(&name.as_str()) {
                        text.push_str(&kib_line(name, *kib));
                    }
                }
            }
            let rollup = parse_smaps_rollup(&text).unwrap();
            let got = [
                rollup.rss, rollup.pss, rollup.pss_anon, rollup.pss_file, rollup.pss_shmem,
                rollup.private_clean, rollup.private_dirty, rollup.shared_clean,
                rollup.shared_dirty, rollup.swap, rollup.swap_pss,
            ];
            let expected: Vec<u64> = values.iter().map(|kib| kib * 1024).collect();
            prop_assert_eq!(got.to_vec(), expected);
        }

        /// Without `Rss` or `Pss` the text is not a rollup: an error, never zeros.
        #[test]
        fn smaps_rollup_without_rss_or_pss_is_an_error(
            rss in kib(),
            pss in kib(),
            drop_rss in any::<bool>(),
        ) {
            let text = if drop_rss {
                kib_line("Pss", pss)
            } else {
                kib_line("Rss", rss)
            };
            prop_assert!(parse_smaps_rollup(&text).is_err());
        }

        #[test]
        fn statm_reads_back(
            fields in prop::collection::vec(0u64..(1 << 40), 7),
            page in prop::sample::select(&[4096u64, 16384, 65536]),
        ) {
            let text = fields.iter().map(u64::to_string).collect::<Vec<_>>().join(" ") + "\n";
            prop_assert_eq!(parse_statm(&text, page), Ok(fields[1] * page));
        }

        #[test]
        fn statm_overflow_is_an_error(resident in (u64::MAX / 4096 + 1)..u64::MAX) {
            let text = format!("1 {resident} 0 0 0 0 0\n");
            prop_assert!(parse_statm(&text, 4096).is_err());
        }

        /// A command name may hold spaces and parentheses; the fields after it read back.
        #[test]
        fn stat_reads_back(
            pid in 1i32..=i32::MAX,
            comm in "[ -~]{0,15}",
            state in prop::sample::select(&['R', 'S', 'D', 'Z', 'T', 't', 'X', 'I', 'W', 'P']),
            ppid in 0i32..=i32::MAX,
            pgrp in 0i32..=i32::MAX,
            flags in any::<u32>(),
            utime in any::<u64>(),
            stime in any::<u64>(),
            starttime in any::<u64>(),
            rss_pages in any::<u64>(),
        ) {
            // Fields 3 to 52 of proc(5); the ones molt reads are set, the rest are numbers.
            let mut fields: Vec<String> = (3..=52).map(|n| (n * 7).to_string()).collect();
            fields[0] = state.to_string();
            fields[1] = ppid.to_string();
            fields[2] = pgrp.to_string();
            fields[9 - 3] = flags.to_string();
            fields[14 - 3] = utime.to_string();
            fields[15 - 3] = stime.to_string();
            fields[22 - 3] = starttime.to_string();
            fields[24 - 3] = rss_pages.to_string();
            let text = format!("{pid} ({comm}) {}\n", fields.join(" "));
            let stat = parse_stat(&text).unwrap();
            prop_assert_eq!(stat, ProcStat { pid, comm, state, ppid, pgrp, flags, utime, stime, starttime, rss_pages });
        }

        #[test]
        fn children_read_back(pids in prop::collection::vec(1i32..=i32::MAX, 0..64)) {
            let text: String = pids.iter().map(|pid| pid.to_string() + " ").collect();
            prop_assert_eq!(parse_children(&text), pids);
        }

        /// `MemTotal` and `VmRSS` among other `Name: value` lines.
        #[test]
        fn kib_lines_read_back(
            kib in kib(),
            before in prop::collection::vec(("[A-Z][A-Za-z]{1,12}", kib()), 0..8),
            after in prop::collection::vec(("[A-Z][A-Za-z]{1,12}", kib()), 0..8),
        ) {
            let lines = |fields: &[(String, u64)], skip: &str| -> String {
                fields
                    .iter()
                    .filter(|(name, _)| name != skip)
                    .map(|(name, kib)| format!("{name}:\t{kib:>8} kB\n"))
                    .collect::<Vec<_>>()
                    .concat()
            };
            let meminfo = format!(
                "{}MemTotal:       {kib:>8} kB\n{}",
                lines(&before, "MemTotal"),
                lines(&after, "MemTotal")
            );
            prop_assert_eq!(parse_meminfo_total(&meminfo), Ok(kib * 1024));
            let status = format!(
                "Name:\tpython3\n{}VmRSS:\t{kib:>8} kB\n{}",
                lines(&before, "VmRSS"),
                lines(&after, "VmRSS")
            );
            prop_assert_eq!(parse_status_rss(&status), Ok(kib * 1024));
        }

        /// Pairs of native words up to `AT_NULL`: the page size and clock ticks read back
        /// wherever they sit among other keys; anything after `AT_NULL` is ignored.
        #[test]
        fn auxv_reads_back(
            others in prop::collection::vec((18usize..64, any::<usize>()), 0..16),
            page_at in 0usize..16,
            ticks_at in 0usize..16,
            page in 1usize..(1 << 30),
            ticks in 1usize..10_000,
            trailing in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            const AT_PAGESZ: usize = 6;
            const AT_CLKTCK: usize = 17;
            let mut pairs = others;
            pairs.insert(page_at.min(pairs.len()), (AT_PAGESZ, page));
            pairs.insert(ticks_at.min(pairs.len()), (AT_CLKTCK, ticks));
            pairs.push((0, 0));
            let mut bytes: Vec<u8> = pairs
                .iter()
                .flat_map(|(key, value)| [key.to_ne_bytes(), value.to_ne_bytes()].concat())
                .collect();
            bytes.extend_from_slice(&trailing);
            let auxv = parse_auxv(&bytes);
            prop_assert_eq!(auxv.page_size, Some(page as u64));
            prop_assert_eq!(auxv.clock_ticks, Some(ticks as u64));
        }
    }
}

/// Property tests of the `/proc` readers: what they read from a file matches what the
/// parser makes of the same bytes.
#[cfg(test)]
mod reader_properties {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use proptest::prelude::*;

    use super::*;

    /// Cases that write a file each.
    const FILE_CASES: u32 = 256;

    /// A temp dir standing for `/proc`, removed on drop.
    struct ProcRoot(PathBuf);

    impl ProcRoot {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "molt-proc-prop-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&path).unwrap();
            ProcRoot(path)
        }
    }

    impl Drop for ProcRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(FILE_CASES))]

        /// A process names itself with any bytes but NUL (`prctl(PR_SET_NAME)`), and the
        /// kernel cuts the name at 15 bytes, mid-character for a UTF-8 name: its `stat`
        /// must still be read, or its memory goes uncounted.
        #[test]
        fn stat_of_a_process_with_any_name_is_read(
            comm in prop::collection::vec(1u8..=255, 0..=15),
            pid in 1i32..=i32::MAX,
            rss_pages in any::<u64>(),
        ) {
            let root = ProcRoot::new();
            let dir = root.0.join(pid.to_string());
            fs::create_dir_all(&dir).unwrap();
            let mut text = format!("{pid} (").into_bytes();
            text.extend_from_slice(&comm);
            let rest: Vec<String> = (3..=52)
                .map(|n| if n == 24 { rss_pages.to_string() } else if n == 3 { "S".to_owned() } else { n.to_string() })
                .collect();
            text.extend_from_slice(format!(") {}\n", rest.join(" ")).as_bytes());
            fs::write(dir.join("stat"), &text).unwrap();
            let stat = read_stat(&root.0, pid);
            prop_assert!(stat.is_some(), "{:?}", String::from_utf8_lossy(&text));
            prop_assert_eq!(stat.unwrap().rss_pages, rss_pages);
        }
    }
}
