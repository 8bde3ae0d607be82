//! Whether the command molt started is a preforking server (Unicorn, gunicorn, Puma in
//! cluster mode) and which of its processes are the master and the children it forked, from
//! `/proc` alone; and the signals each server is controlled with.
//!
//! A preforking master loads the app once, opens the listening socket, then forks children
//! that inherit that socket and accept on it. So the master is the process of the command's
//! tree that holds the socket listening on the port molt gave it, nearest the top (wrappers
//! such as `bash -c`, `bin/start` or `bundle exec` sit above it and hold nothing), and its
//! workers are its children that hold the same socket, by inode. A child that does not hold
//! it is not a worker (a shell the app started, the children of a Node cluster, which are
//! handed connections instead). Which server it is comes from the titles the servers give
//! their processes in `/proc/<pid>/cmdline` (`comm` keeps the program's name, except where
//! `setproctitle` cuts the title to 15 bytes, so it only stands in for an empty cmdline):
//!
//! | server                         | master                                 | worker                                   |
//! |--------------------------------|----------------------------------------|------------------------------------------|
//! | Unicorn                        | `unicorn master -c config/unicorn.rb`  | `unicorn worker[0] -c config/unicorn.rb` |
//! | gunicorn                       | `gunicorn: master [app:app]`           | `gunicorn: worker [app:app]`             |
//! | gunicorn without setproctitle  | `python3 /usr/bin/gunicorn app:app`    | the same as its master                   |
//! | Puma                           | `puma 6.4.2 (tcp://0.0.0.0:3000) [app]` | `puma: cluster worker 0: 4242 [app]`    |
//!
//! The parsers take text; the readers take the root to read from (`/proc` in production, a
//! fixture directory under `test/fixtures/prefork/` in tests) and treat a process that
//! vanished between two reads as absent. The fixtures keep each `fd/<n>` as the symbolic
//! link the kernel shows, which git stores as such, so the same reader reads both.
//!
//! The answer is a snapshot of processes molt did not fork. A child forked a moment ago
//! still carries its master's title and is not counted until it renames itself, a few
//! milliseconds later; the caller detects again when the count matters.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use super::memory::{read_stat, tree_pids};

/// A preforking server that molt knows how to govern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Server {
    Unicorn,
    Gunicorn,
    Puma,
}

/// Which child a master stops when told to run one fewer. molt cannot choose: to retire a
/// particular child it stops that child and then lowers the count, or accepts the
/// server's pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removes {
    /// The child with the highest worker number (Unicorn's `worker[N-1]`), as numbers are
    /// reused: a replacement takes the lowest free number.
    HighestNumbered,
    /// The child spawned first (gunicorn sorts its workers by age).
    Oldest,
    /// The child started last (Puma's default `worker_culling_strategy :youngest`; an app
    /// that sets `:oldest` gets the oldest).
    Youngest,
}

/// How a server is driven by signals. Every server here replaces a child that exits while
/// its master runs, whatever the cause: a recycled or killed child is forked again from the
/// master's loaded image, so molt never starts a child itself.
///
/// A master counts signals, not requests: the kernel keeps one pending signal of each kind,
/// so signals sent faster than the master handles them merge. Eight TTIN sent at once added
/// two children to Unicorn and to Puma, and five to gunicorn, whose queue holds five. Send
/// one, wait until the count of children has changed, then send the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Control {
    /// To the master: run one more child.
    pub(crate) add_child: Signal,
    /// To the master: run one fewer child; the server picks which ([`Control::removes`])
    /// and stops it gracefully.
    pub(crate) remove_child: Signal,
    /// The child [`Control::remove_child`] stops.
    pub(crate) removes: Removes,
    /// The fewest children [`Control::remove_child`] goes down to; below it the signal is
    /// ignored.
    pub(crate) min_children: u32,
    /// To one child: stop accepting, finish the request in hand, then exit. Its master
    /// forks a replacement.
    pub(crate) stop_child: Signal,
    /// To the master: stop every child gracefully, then exit.
    pub(crate) stop_master: Signal,
}

impl Server {
    /// The server's name as molt logs it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Server::Unicorn => "unicorn",
            Server::Gunicorn => "gunicorn",
            Server::Puma => "puma",
        }
    }

    /// The signals of each server: the one table molt drives them by. Each entry was
    /// checked against the server's source and by signalling a running server (Unicorn
    /// 6.0, gunicorn 20.1, Puma 5.6; the sources of their current releases agree).
    pub(crate) const fn control(self) -> Control {
        match self {
            // Unicorn's SIGNALS file. A worker's TERM and INT are `exit!` at once; its
            // QUIT closes the listeners and lets the request in hand finish. TTOU lowers
            // `worker_processes`, down to 0, and QUITs the workers numbered at or above
            // it. The master's TERM and INT kill the workers at once; QUIT QUITs them and
            // waits up to Unicorn's `timeout` (60 s) before KILL.
            Server::Unicorn => Control {
                add_child: Signal::SIGTTIN,
                remove_child: Signal::SIGTTOU,
                removes: Removes::HighestNumbered,
                min_children: 0,
                stop_child: Signal::SIGQUIT,
                stop_master: Signal::SIGQUIT,
            },
            // gunicorn's signal docs. A worker's TERM clears `alive`, so the request in
            // hand finishes (TERM does not interrupt system calls there); QUIT and INT exit
            // after 0.1 s. TTOU is ignored at one worker and TERMs the oldest. The master's
            // TERM waits up to `graceful_timeout` (30 s); QUIT and INT do not.
            Server::Gunicorn => Control {
                add_child: Signal::SIGTTIN,
                remove_child: Signal::SIGTTOU,
                removes: Removes::Oldest,
                min_children: 1,
                stop_child: Signal::SIGTERM,
                stop_master: Signal::SIGTERM,
            },
            // Puma's docs/signals.md. A worker's TERM stops its server gracefully; INT is
            // ignored by workers. TTOU is ignored at one worker and TERMs the youngest by
            // default. The master's TERM closes the listeners and TERMs the workers, then
            // waits `worker_shutdown_timeout` (30 s) before KILL; it then re-raises TERM
            // (`raise_exception_on_sigterm`, on by default), so a graceful exit reads as
            // killed by SIGTERM.
            Server::Puma => Control {
                add_child: Signal::SIGTTIN,
                remove_child: Signal::SIGTTOU,
                removes: Removes::Youngest,
                min_children: 1,
                stop_child: Signal::SIGTERM,
                stop_master: Signal::SIGTERM,
            },
        }
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A preforking server found in the command's process tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Prefork {
    /// The process that holds the listening socket and forks the children.
    pub(crate) master: i32,
    pub(crate) server: Server,
    /// The master's children that hold its listening socket and carry the server's worker
    /// title, in pid order.
    pub(crate) children: Vec<i32>,
}

/// Why the command is not governed as a preforking server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotPrefork {
    /// The process molt started is gone.
    Gone { pid: i32 },
    /// No socket listens on the port.
    NoListener { port: u16 },
    /// A socket listens on the port, but no process of the command holds it: another
    /// process took the port, or the server runs as another user (its `fd` cannot be read).
    ListenerOutsideTree { port: u16 },
    /// Several processes of the command hold the socket, none forked by another.
    SeveralListeners { pids: Vec<i32> },
    /// The master has no child that holds its socket: a single-process server, Puma in
    /// single mode, or a Node cluster, whose primary hands connections to its children.
    SingleProcess { pid: i32, title: String },
    /// Children share the master's socket, but the titles are not of a server molt knows.
    UnknownServer { pid: i32, title: String },
    /// A known master whose children that hold the socket are not workers by their titles:
    /// just forked (they still carry the master's title), or another role (a new master
    /// after `USR2`, gunicorn's dirty arbiter).
    NoWorkers { pid: i32, server: Server },
    /// Workers forked by a worker rather than by the master (Puma's `fork_worker`, where
    /// worker 0 forks the others): each worker's tree would hold the ones it forked.
    NestedWorkers {
        pid: i32,
        server: Server,
        /// The worker that forked other workers.
        parent: i32,
    },
}

impl NotPrefork {
    /// A one-word reason for a logfmt line, e.g. `reason=single_process`.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            NotPrefork::Gone { .. } => "gone",
            NotPrefork::NoListener { .. } => "no_listener",
            NotPrefork::ListenerOutsideTree { .. } => "listener_outside_tree",
            NotPrefork::SeveralListeners { .. } => "several_listeners",
            NotPrefork::SingleProcess { .. } => "single_process",
            NotPrefork::UnknownServer { .. } => "unknown_server",
            NotPrefork::NoWorkers { .. } => "no_workers",
            NotPrefork::NestedWorkers { .. } => "nested_workers",
        }
    }
}

impl fmt::Display for NotPrefork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotPrefork::Gone { pid } => write!(f, "process {pid} is gone"),
            NotPrefork::NoListener { port } => write!(f, "nothing listens on port {port}"),
            NotPrefork::ListenerOutsideTree { port } => write!(
                f,
                "the socket on port {port} is held by no process of the command"
            ),
            NotPrefork::SeveralListeners { pids } => {
                write!(f, "several processes hold the listening socket: {pids:?}")
            }
            NotPrefork::SingleProcess { pid, title } => {
                write!(f, "{pid} ({title}) shares its socket with no child")
            }
            NotPrefork::UnknownServer { pid, title } => {
                write!(
                    f,
                    "{pid} ({title}) shares its socket with children but is no server molt knows"
                )
            }
            NotPrefork::NoWorkers { pid, server } => {
                write!(f, "{server} master {pid} has no child titled as a worker")
            }
            NotPrefork::NestedWorkers {
                pid,
                server,
                parent,
            } => write!(
                f,
                "{server} master {pid} has workers forked by worker {parent} (fork_worker)"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parsers
// ---------------------------------------------------------------------------------------

/// A TCP socket in the listening state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Listener {
    pub(crate) port: u16,
    pub(crate) inode: u64,
}

/// The state `/proc/net/tcp` writes for `TCP_LISTEN`.
const TCP_LISTEN: &str = "0A";

/// Parses `/proc/net/tcp` or `/proc/net/tcp6` into its listening sockets. Lines are
/// `sl local_address rem_address st ... uid timeout inode ...`, the local address
/// `ADDR:PORT` in hex (8 digits for IPv4, 32 for IPv6). The header and any line not of that
/// form are skipped: such a line cannot be the listener looked for.
pub(crate) fn parse_net_tcp(text: &str) -> Vec<Listener> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (&local, &state, &inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if state != TCP_LISTEN {
                return None;
            }
            let (_, port) = local.rsplit_once(':')?;
            Some(Listener {
                port: u16::from_str_radix(port, 16).ok()?,
                // A socket with inode 0 has no file (one in TIME_WAIT): no process holds it.
                inode: inode.parse().ok().filter(|&inode| inode > 0)?,
            })
        })
        .collect()
}

/// Parses the target of a `/proc/<pid>/fd/<n>` link, `socket:[INODE]`, into the inode;
/// `None` for anything else (files, pipes, `anon_inode:`).
pub(crate) fn parse_socket_link(target: &[u8]) -> Option<u64> {
    let inode = target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inode).ok()?.parse().ok()
}

/// Parses `/proc/<pid>/cmdline`: arguments ended by NUL bytes. A process that retitled
/// itself (Ruby's `$0 =`, Python's `setproctitle`) has one argument padded with NULs to the
/// length of its original arguments: trailing empty pieces are dropped.
pub(crate) fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    let mut args: Vec<String> = bytes
        .split(|&byte| byte == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    while args.last().is_some_and(String::is_empty) {
        args.pop();
    }
    args
}

/// What a process's title says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Master(Server),
    Worker(Server),
    /// A process of the server that is neither (gunicorn's dirty arbiter and its workers).
    Other(Server),
    /// The server's own command line, not retitled: gunicorn without `setproctitle`, whose
    /// master and workers all keep it, so the title cannot tell them apart.
    Untitled(Server),
    Unknown,
}

/// The role a process's command line (from [`parse_cmdline`]) gives it.
pub(crate) fn role(cmdline: &[String]) -> Role {
    let title = cmdline.join(" ");
    if let Some(role) = unicorn_role(&title) {
        return role;
    }
    if let Some(rest) = title.strip_prefix("gunicorn: ") {
        return if rest.starts_with("master [") {
            Role::Master(Server::Gunicorn)
        } else if rest.starts_with("worker [") {
            Role::Worker(Server::Gunicorn)
        } else {
            Role::Other(Server::Gunicorn)
        };
    }
    if title.starts_with("puma: cluster worker ") {
        return Role::Worker(Server::Puma);
    }
    if is_puma_master(&title) {
        return Role::Master(Server::Puma);
    }
    if runs_gunicorn(cmdline) {
        return Role::Untitled(Server::Gunicorn);
    }
    Role::Unknown
}

/// `unicorn master ...`, `unicorn master (old) ...` (after `USR2`), `unicorn worker[3] ...`;
/// `unicorn_rails` titles its processes the same way. The first word is the basename of the
/// program Unicorn was started as.
fn unicorn_role(title: &str) -> Option<Role> {
    let mut words = title.split(' ');
    let program = words.next()?;
    if !matches!(program, "unicorn" | "unicorn_rails") {
        return None;
    }
    let tag = words.next()?;
    if tag == "master" {
        return Some(Role::Master(Server::Unicorn));
    }
    let number = tag.strip_prefix("worker[")?.strip_suffix(']')?;
    (!number.is_empty() && number.bytes().all(|byte| byte.is_ascii_digit()))
        .then_some(Role::Worker(Server::Unicorn))
}

/// `puma <version> (<binds>)`, then ` [<tag>]` when there is a tag. Puma in single mode is
/// titled the same way.
fn is_puma_master(title: &str) -> bool {
    let Some(rest) = title.strip_prefix("puma ") else {
        return false;
    };
    let Some((version, binds)) = rest.split_once(' ') else {
        return false;
    };
    version.starts_with(|c: char| c.is_ascii_digit()) && binds.starts_with('(')
}

/// Whether an untitled command line runs gunicorn: its program is `gunicorn`, or Python
/// running the `gunicorn` script or `-m gunicorn`.
fn runs_gunicorn(cmdline: &[String]) -> bool {
    let basename = |arg: &str| arg.rsplit('/').next().unwrap_or(arg).to_owned();
    let Some(program) = cmdline.first().map(|arg| basename(arg)) else {
        return false;
    };
    if program == "gunicorn" {
        return true;
    }
    if !program.starts_with("python") {
        return false;
    }
    let mut args = cmdline[1..].iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-m" => {
                return args
                    .next()
                    .is_some_and(|module| module == "gunicorn" || module.starts_with("gunicorn."))
            }
            // Python's options that take a value as the next argument.
            "-X" | "-W" | "-Q" => {
                args.next();
            }
            "-c" => return false,
            option if option.starts_with('-') => {}
            script => return basename(script) == "gunicorn",
        }
    }
    false
}

// ---------------------------------------------------------------------------------------
// The decision
// ---------------------------------------------------------------------------------------

/// One process of the command's tree, as the detection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) pid: i32,
    pub(crate) ppid: i32,
    /// Its command line, from [`parse_cmdline`].
    pub(crate) cmdline: Vec<String>,
    /// Its `comm`: the title shown when the command line is empty.
    pub(crate) comm: String,
    /// The inodes of the sockets it holds open.
    pub(crate) sockets: HashSet<u64>,
}

impl Member {
    /// The title for a log line: the command line, or `[comm]` as ps shows a process
    /// without one.
    pub(crate) fn title(&self) -> String {
        if self.cmdline.is_empty() {
            format!("[{}]", self.comm)
        } else {
            self.cmdline.join(" ")
        }
    }
}

/// Decides from a snapshot of the tree of `leader` (leader first, as
/// [`tree_pids`] walks it) and the machine's listening sockets whether the command
/// listening on `port` is a preforking server.
pub(crate) fn decide(
    leader: i32,
    port: u16,
    listeners: &[Listener],
    tree: &[Member],
) -> Result<Prefork, NotPrefork> {
    if tree.first().is_none_or(|member| member.pid != leader) {
        return Err(NotPrefork::Gone { pid: leader });
    }
    // IPv4 and IPv6 sockets can both listen on a port; a master may hold either or both.
    let inodes: HashSet<u64> = listeners
        .iter()
        .filter(|listener| listener.port == port)
        .map(|listener| listener.inode)
        .collect();
    if inodes.is_empty() {
        return Err(NotPrefork::NoListener { port });
    }
    let holders: HashMap<i32, &Member> = tree
        .iter()
        .filter(|member| !member.sockets.is_disjoint(&inodes))
        .map(|member| (member.pid, member))
        .collect();
    // A holder whose parent holds the socket too inherited it; the master did not.
    let roots: Vec<&Member> = tree
        .iter()
        .filter(|member| holders.contains_key(&member.pid) && !holders.contains_key(&member.ppid))
        .collect();
    let master = match roots.as_slice() {
        [] => return Err(NotPrefork::ListenerOutsideTree { port }),
        [master] => *master,
        several => {
            return Err(NotPrefork::SeveralListeners {
                pids: several.iter().map(|member| member.pid).collect(),
            })
        }
    };
    let sharing: Vec<&Member> = tree
        .iter()
        .filter(|member| member.ppid == master.pid && holders.contains_key(&member.pid))
        .collect();
    if sharing.is_empty() {
        return Err(NotPrefork::SingleProcess {
            pid: master.pid,
            title: master.title(),
        });
    }
    let master_role = role(&master.cmdline);
    let child_roles: Vec<Role> = sharing.iter().map(|child| role(&child.cmdline)).collect();
    let Some(server) = identify(master_role, &child_roles) else {
        return Err(NotPrefork::UnknownServer {
            pid: master.pid,
            title: master.title(),
        });
    };
    let mut children: Vec<i32> = sharing
        .iter()
        .zip(&child_roles)
        .filter(|&(_, &child)| is_worker(server, master_role, child))
        .map(|(child, _)| child.pid)
        .collect();
    children.sort_unstable();
    if let Some(parent) = tree
        .iter()
        .filter(|member| holders.contains_key(&member.pid))
        .map(|member| member.ppid)
        .find(|ppid| children.contains(ppid))
    {
        return Err(NotPrefork::NestedWorkers {
            pid: master.pid,
            server,
            parent,
        });
    }
    if children.is_empty() {
        return Err(NotPrefork::NoWorkers {
            pid: master.pid,
            server,
        });
    }
    Ok(Prefork {
        master: master.pid,
        server,
        children,
    })
}

/// The server a master runs: from its own title, else from its children's when they all
/// name the same one (a master whose title the app overwrote).
fn identify(master: Role, children: &[Role]) -> Option<Server> {
    match master {
        Role::Master(server) | Role::Untitled(server) => Some(server),
        Role::Worker(_) | Role::Other(_) | Role::Unknown => {
            let mut named = children.iter().filter_map(|role| match role {
                Role::Worker(server) => Some(*server),
                _ => None,
            });
            let first = named.next()?;
            named.all(|server| server == first).then_some(first)
        }
    }
}

/// Whether a child that holds the master's socket is one of its workers.
fn is_worker(server: Server, master: Role, child: Role) -> bool {
    match child {
        Role::Worker(named) => named == server,
        // Untitled workers are told from other children only by their master being untitled
        // too: a child carrying the master's own title is then a worker.
        Role::Untitled(named) => named == server && master == Role::Untitled(server),
        Role::Master(_) | Role::Other(_) | Role::Unknown => false,
    }
}

// ---------------------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------------------

/// The listening TCP sockets of `<proc_root>/net/tcp` and `<proc_root>/net/tcp6`, of the
/// network namespace molt runs in (where its workers run too). A file that cannot be read
/// (IPv6 disabled) contributes none.
pub(crate) fn read_listeners(proc_root: &Path) -> Vec<Listener> {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|name| fs::read_to_string(proc_root.join("net").join(name)).ok())
        .flat_map(|text| parse_net_tcp(&text))
        .collect()
}

/// The inodes of the sockets `pid` holds open, from the links in `<proc_root>/<pid>/fd`.
/// Empty when the process is gone or its descriptors cannot be read (another user's).
pub(crate) fn read_socket_inodes(proc_root: &Path, pid: i32) -> HashSet<u64> {
    let Ok(entries) = fs::read_dir(process_dir(proc_root, pid).join("fd")) else {
        return HashSet::new();
    };
    entries
        .flatten()
        // A descriptor closed between the listing and this read is no longer held.
        .filter_map(|entry| fs::read_link(entry.path()).ok())
        .filter_map(|target| parse_socket_link(target.as_os_str().as_bytes()))
        .collect()
}

/// Reads one process of the tree; `None` when it is gone.
pub(crate) fn read_member(proc_root: &Path, pid: i32) -> Option<Member> {
    let stat = read_stat(proc_root, pid)?;
    let cmdline = fs::read(process_dir(proc_root, pid).join("cmdline")).ok()?;
    Some(Member {
        pid,
        ppid: stat.ppid,
        cmdline: parse_cmdline(&cmdline),
        comm: stat.comm,
        sockets: read_socket_inodes(proc_root, pid),
    })
}

/// Whether the command molt started as `leader` and told to listen on `port` is a
/// preforking server, read from `proc_root`. Meant for after the port accepts: a master
/// that preloads the app (`preload_app`, `--preload`, `preload_app!`) loads it, then binds,
/// then forks, so its children hold the socket a few milliseconds after the port accepts.
/// Without preloading the master binds and forks first and each child loads the app: the
/// port accepts and the children are found, titled as workers, before any of them can
/// serve, and nothing in `/proc` tells when one can.
#[cfg(test)]
pub(crate) fn detect(proc_root: &Path, leader: i32, port: u16) -> Result<Prefork, NotPrefork> {
    detect_again(proc_root, leader, port, &[], read_listeners).0
}

/// `detect` as molt runs it, for a master looked at before, trying first `known`: the
/// listening sockets on `port` the last look found. The socket a master listens on stays
/// the same for its life, and reading `/proc/net/tcp` is not cheap: it lists every TCP
/// socket of the machine, and a server that closes each connection after its response
/// (Unicorn) leaves tens of thousands in `TIME_WAIT` under load. A socket's inode names it
/// for as long as it is open, so while a process of the tree holds one of `known`, that is
/// still the listener; only when none does (nothing known yet, the master was replaced, or
/// it rebound) is `read_listeners` asked. Returns the answer and the listeners on `port` it
/// was decided on, to pass next time.
pub(crate) fn detect_again(
    proc_root: &Path,
    leader: i32,
    port: u16,
    known: &[Listener],
    read_listeners: impl FnOnce(&Path) -> Vec<Listener>,
) -> (Result<Prefork, NotPrefork>, Vec<Listener>) {
    let tree: Vec<Member> = tree_pids(proc_root, leader)
        .into_iter()
        .filter_map(|pid| read_member(proc_root, pid))
        .collect();
    let held = known
        .iter()
        .any(|listener| tree.iter().any(|m| m.sockets.contains(&listener.inode)));
    if held {
        return (decide(leader, port, known, &tree), known.to_vec());
    }
    let listeners: Vec<Listener> = read_listeners(proc_root)
        .into_iter()
        .filter(|listener| listener.port == port)
        .collect();
    (decide(leader, port, &listeners, &tree), listeners)
}

fn process_dir(proc_root: &Path, pid: i32) -> PathBuf {
    proc_root.join(pid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test/fixtures/prefork");

    fn fixture(case: &str) -> PathBuf {
        Path::new(FIXTURES).join(case)
    }

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|&word| word.to_owned()).collect()
    }

    fn title(text: &str) -> Vec<String> {
        vec![text.to_owned()]
    }

    // --- parsers ------------------------------------------------------------------------

    #[test]
    fn net_tcp_listeners_are_the_lines_in_state_0a() {
        // Captured with a client connected: the accepted connection (state 01) has the
        // same local port and is not a listener.
        let text = fs::read_to_string(fixture("http-server/net/tcp")).unwrap();
        assert_eq!(
            parse_net_tcp(&text),
            vec![
                Listener {
                    port: 2024,
                    inode: 1587
                },
                Listener {
                    port: 59253,
                    inode: 85436
                },
            ]
        );
    }

    #[test]
    fn net_tcp6_listeners_have_32_digit_addresses() {
        let text = fs::read_to_string(fixture("gunicorn-ipv6/net/tcp6")).unwrap();
        assert_eq!(
            parse_net_tcp(&text),
            vec![Listener {
                port: 34127,
                inode: 162_588
            }]
        );
        // A table with only its header, as on a machine with no IPv6 socket.
        let header = fs::read_to_string(fixture("unicorn-direct/net/tcp6")).unwrap();
        assert_eq!(parse_net_tcp(&header), vec![]);
    }

    #[test]
    fn net_tcp_skips_lines_not_of_the_kernels_form() {
        let text = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0 100 0 0 10 0
   1: 0100007F:ZZZZ 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4243 1 0 100 0 0 10 0
   2: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 x 1 0 100 0 0 10 0
   3: 0100007F:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 0 1 0 100 0 0 10 0
   4: 0100007F1F93 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4244 1 0 100 0 0 10 0
   5: 0100007F:1F94 00000000:0000 0A
   6: 0100007F:1F95 0100007F:9C40 06 00000000:00000000 03:00000B5A 00000000     0        0 0 3 0
";
        assert_eq!(
            parse_net_tcp(text),
            vec![Listener {
                port: 8080,
                inode: 4242
            }]
        );
        assert_eq!(parse_net_tcp(""), vec![]);
    }

    #[test]
    fn socket_links_name_their_inode() {
        assert_eq!(parse_socket_link(b"socket:[81702]"), Some(81702));
        for other in [
            &b"pipe:[81701]"[..],
            b"anon_inode:[eventfd]",
            b"/dev/null",
            b"socket:[]",
            b"socket:[12",
            b"socket:[-1]",
            b"socket:[x]",
            b"/app/socket:[1]",
        ] {
            assert_eq!(parse_socket_link(other), None, "{other:?}");
        }
    }

    #[test]
    fn fixture_fd_entries_are_read_as_links() {
        // git keeps the fixtures' fd entries as the symbolic links the kernel shows.
        assert_eq!(
            read_socket_inodes(&fixture("unicorn-direct"), 4994),
            HashSet::from([81702])
        );
        assert_eq!(
            read_socket_inodes(&fixture("unicorn-direct"), 1),
            HashSet::new()
        );
    }

    #[test]
    fn cmdline_is_split_at_nul_and_a_title_loses_its_padding() {
        assert_eq!(
            parse_cmdline(b"/usr/bin/python3\0/usr/bin/gunicorn\0--preload\0app:app\0"),
            args(&[
                "/usr/bin/python3",
                "/usr/bin/gunicorn",
                "--preload",
                "app:app"
            ])
        );
        let captured = fs::read(fixture("unicorn-direct/4995/cmdline")).unwrap();
        assert!(captured.ends_with(&[0; 8]), "{captured:?}");
        assert_eq!(
            parse_cmdline(&captured),
            title("unicorn worker[0] -c config/unicorn.rb")
        );
        // An empty argument inside is kept; a kernel thread has none.
        assert_eq!(parse_cmdline(b"a\0\0b\0"), args(&["a", "", "b"]));
        assert_eq!(parse_cmdline(b""), Vec::<String>::new());
        assert_eq!(parse_cmdline(b"\0\0"), Vec::<String>::new());
        assert_eq!(parse_cmdline(b"no-nul"), args(&["no-nul"]));
    }

    /// Command lines as `/proc/<pid>/cmdline` holds them, and the role each gives.
    const ROLES: &[(&str, Role)] = {
        use Role::{Master, Other, Unknown, Untitled, Worker};
        use Server::{Gunicorn, Puma, Unicorn};
        &[
            ("unicorn master -c config/unicorn.rb\0\0\0", Master(Unicorn)),
            (
                "unicorn master (old) -c config/unicorn.rb\0",
                Master(Unicorn),
            ),
            ("unicorn master\0", Master(Unicorn)),
            (
                "unicorn_rails master -c config/unicorn.rb -E production\0",
                Master(Unicorn),
            ),
            (
                "unicorn worker[0] -c config/unicorn.rb\0\0",
                Worker(Unicorn),
            ),
            ("unicorn worker[12]\0", Worker(Unicorn)),
            ("unicorn worker[] -c x\0", Unknown),
            ("unicorn worker[a]\0", Unknown),
            ("unicornd master\0", Unknown),
            // Before Unicorn titles itself.
            ("/usr/bin/ruby3.1\0/usr/bin/unicorn\0-c\0x\0", Unknown),
            ("gunicorn: master [app:app]\0\0\0", Master(Gunicorn)),
            ("gunicorn: master [app.2]\0", Master(Gunicorn)),
            ("gunicorn: worker [app:app]\0\0\0", Worker(Gunicorn)),
            // The dirty arbiter of gunicorn 25 and later, and its workers.
            ("gunicorn: dirty-arbiter\0", Other(Gunicorn)),
            ("gunicorn: dirty-worker [app]\0", Other(Gunicorn)),
            (
                "/usr/bin/python3\0/usr/bin/gunicorn\0--preload\0app:app\0",
                Untitled(Gunicorn),
            ),
            ("gunicorn\0app:app\0", Untitled(Gunicorn)),
            (
                "/app/.heroku/python/bin/python\0/app/.heroku/python/bin/gunicorn\0app:app\0",
                Untitled(Gunicorn),
            ),
            (
                "/usr/bin/python3\0-m\0gunicorn\0--preload\0app:app\0",
                Untitled(Gunicorn),
            ),
            (
                "python3.12\0-u\0-X\0dev\0-m\0gunicorn.app.wsgiapp\0app:app\0",
                Untitled(Gunicorn),
            ),
            (
                "python3\0-W\0ignore\0/venv/bin/gunicorn\0app:app\0",
                Untitled(Gunicorn),
            ),
            ("python3\0-c\0import gunicorn\0", Unknown),
            ("python3\0-m\0http.server\0", Unknown),
            ("python3\0manage.py\0gunicorn\0", Unknown),
            ("python3\0", Unknown),
            ("puma 5.6.5 (tcp://127.0.0.1:37987) [app]\0\0", Master(Puma)),
            ("puma 6.4.2 (tcp://0.0.0.0:3000)\0", Master(Puma)),
            (
                "puma 6.4.2 (tcp://0.0.0.0:3000,unix:///tmp/p.sock) [my app]\0",
                Master(Puma),
            ),
            ("puma: cluster worker 0: 5064 [app]\0\0", Worker(Puma)),
            ("puma: cluster worker 1: 5064\0", Worker(Puma)),
            ("puma starting\0", Unknown),
            // Before Puma titles itself.
            ("puma\0-C\0config/puma.rb\0", Unknown),
            ("node\0cluster.js\0", Unknown),
            (
                "bash\0-c\0cd . && unicorn -c config/unicorn.rb; echo done\0",
                Unknown,
            ),
            ("/bin/sh\0bin/start\0", Unknown),
            ("", Unknown),
        ]
    };

    #[test]
    fn titles_say_the_role() {
        for &(cmdline, expected) in ROLES {
            assert_eq!(
                role(&parse_cmdline(cmdline.as_bytes())),
                expected,
                "{cmdline:?}"
            );
        }
    }

    // --- the signal table -----------------------------------------------------------------

    /// The table as verified against the servers' sources and by signalling running ones:
    /// a change to it must be a deliberate change to this test too.
    #[test]
    fn control_signals_of_each_server() {
        use Signal::{SIGQUIT, SIGTERM, SIGTTIN, SIGTTOU};
        let table = [
            (
                Server::Unicorn,
                SIGQUIT,
                Removes::HighestNumbered,
                0,
                SIGQUIT,
            ),
            (Server::Gunicorn, SIGTERM, Removes::Oldest, 1, SIGTERM),
            (Server::Puma, SIGTERM, Removes::Youngest, 1, SIGTERM),
        ];
        for (server, stop_child, removes, min_children, stop_master) in table {
            assert_eq!(
                server.control(),
                Control {
                    add_child: SIGTTIN,
                    remove_child: SIGTTOU,
                    removes,
                    min_children,
                    stop_child,
                    stop_master,
                },
                "{server}"
            );
        }
    }

    // --- detection over captured trees ----------------------------------------------------

    /// What a captured case must be found to be.
    enum Expect {
        Prefork(i32, Server, &'static [i32]),
        SingleProcess(i32, &'static str),
        UnknownServer(i32, &'static str),
        NestedWorkers(i32, Server, i32),
    }

    impl Expect {
        fn answer(&self) -> Result<Prefork, NotPrefork> {
            match *self {
                Expect::Prefork(master, server, children) => Ok(Prefork {
                    master,
                    server,
                    children: children.to_vec(),
                }),
                Expect::SingleProcess(pid, title) => Err(NotPrefork::SingleProcess {
                    pid,
                    title: title.to_owned(),
                }),
                Expect::UnknownServer(pid, title) => Err(NotPrefork::UnknownServer {
                    pid,
                    title: title.to_owned(),
                }),
                Expect::NestedWorkers(pid, server, parent) => Err(NotPrefork::NestedWorkers {
                    pid,
                    server,
                    parent,
                }),
            }
        }
    }

    /// Every captured case: its directory, the process molt started, its port, and what
    /// must be found. Each tree was captured from the real server (Unicorn 6.0.0, gunicorn
    /// 20.1.0, Puma 5.6.5, Python 3.11, Node 20) started as molt starts a command, with two
    /// workers and the app preloaded, by `capture.py` beside the fixtures.
    const CAPTURED: &[(&str, i32, u16, Expect)] = {
        use Expect::{NestedWorkers, Prefork, SingleProcess, UnknownServer};
        use Server::{Gunicorn, Puma, Unicorn};
        &[
            (
                "unicorn-direct",
                4994,
                41701,
                Prefork(4994, Unicorn, &[4995, 4996]),
            ),
            (
                "unicorn-bundle-exec",
                4999,
                37011,
                Prefork(4999, Unicorn, &[5000, 5001]),
            ),
            // bash execs the last command of `cd . && unicorn ...`: no wrapper is left.
            (
                "unicorn-bash-exec",
                5004,
                36097,
                Prefork(5004, Unicorn, &[5005, 5006]),
            ),
            // `cd . && unicorn ...; echo ...`: bash stays the parent.
            (
                "unicorn-bash",
                5009,
                35721,
                Prefork(5010, Unicorn, &[5011, 5012]),
            ),
            // A `#!/bin/sh` script: dash does not exec its last command.
            (
                "unicorn-bin-start",
                5015,
                33453,
                Prefork(5016, Unicorn, &[5017, 5018]),
            ),
            // After USR2 the new master is a child of the old one and holds the socket; it
            // and its own workers are not the old master's workers.
            (
                "unicorn-usr2",
                5693,
                56247,
                Prefork(5693, Unicorn, &[5694, 5695]),
            ),
            (
                "gunicorn-direct",
                5021,
                60863,
                Prefork(5021, Gunicorn, &[5022, 5023]),
            ),
            (
                "gunicorn-bash",
                5026,
                51509,
                Prefork(5027, Gunicorn, &[5028, 5029]),
            ),
            (
                "gunicorn-bin-start",
                5048,
                42285,
                Prefork(5049, Gunicorn, &[5050, 5051]),
            ),
            (
                "gunicorn-ipv6",
                10803,
                34127,
                Prefork(10803, Gunicorn, &[10829, 10852]),
            ),
            // Without setproctitle every process keeps the command line.
            (
                "gunicorn-untitled",
                5054,
                42009,
                Prefork(5054, Gunicorn, &[5055, 5056]),
            ),
            (
                "gunicorn-untitled-module",
                5059,
                53671,
                Prefork(5059, Gunicorn, &[5060, 5061]),
            ),
            (
                "puma-direct",
                5064,
                37987,
                Prefork(5064, Puma, &[5065, 5067]),
            ),
            (
                "puma-bundle-exec",
                5083,
                38933,
                Prefork(5083, Puma, &[5084, 5085]),
            ),
            ("puma-bash", 5102, 60445, Prefork(5103, Puma, &[5104, 5107])),
            (
                "puma-bin-start",
                5138,
                47549,
                Prefork(5139, Puma, &[5140, 5141]),
            ),
            ("puma-cli", 5158, 36651, Prefork(5158, Puma, &[5159, 5161])),
            (
                "puma-single",
                5176,
                48791,
                SingleProcess(5176, "puma 5.6.5 (tcp://127.0.0.1:48791) [app]"),
            ),
            // Worker 0 forks the others.
            (
                "puma-fork-worker",
                5184,
                38025,
                NestedWorkers(5184, Puma, 5185),
            ),
            (
                "http-server",
                5261,
                59253,
                SingleProcess(5261, "python3 -m http.server --bind 127.0.0.1 59253"),
            ),
            // The primary of a Node cluster holds the socket and hands connections to its
            // children: they are not preforked workers.
            (
                "node-cluster",
                5266,
                47349,
                SingleProcess(5266, "node cluster.js"),
            ),
            // With NODE_CLUSTER_SCHED_POLICY=none the children share the socket: a
            // preforking server, but not one molt knows.
            (
                "node-cluster-shared",
                5309,
                47091,
                UnknownServer(5309, "node cluster.js"),
            ),
        ]
    };

    #[test]
    fn detection_over_every_captured_tree() {
        let dirs = fs::read_dir(FIXTURES)
            .unwrap()
            .flatten()
            .filter(|entry| entry.path().is_dir())
            .count();
        assert_eq!(dirs, CAPTURED.len(), "a captured case without a row here");
        for (case, leader, port, expected) in CAPTURED {
            assert_eq!(
                detect(&fixture(case), *leader, *port),
                expected.answer(),
                "{case}"
            );
        }
    }

    #[test]
    fn a_master_seen_before_is_found_again_without_reading_the_listeners() {
        for (case, leader, port, expected) in CAPTURED {
            let root = fixture(case);
            let reads = std::cell::Cell::new(0);
            let read = |root: &Path| {
                reads.set(reads.get() + 1);
                read_listeners(root)
            };
            let (first, known) = detect_again(&root, *leader, *port, &[], read);
            assert_eq!(first, expected.answer(), "{case}");
            assert_eq!(reads.get(), 1, "{case}: nothing known, so read");
            assert!(known.iter().all(|l| l.port == *port), "{case}");
            let (again, _) = detect_again(&root, *leader, *port, &known, read);
            assert_eq!(again, first, "{case}");
            // A master found is found again on what was known; a tree that holds no
            // listener found before is read again.
            let expected_most = if first.is_ok() { 1 } else { 2 };
            assert!(reads.get() <= expected_most, "{case}: {first:?}");
        }
    }

    #[test]
    fn listeners_that_no_longer_decide_the_tree_are_read_afresh() {
        let (case, leader, port) = ("unicorn-bash", 5009, 35721);
        let root = fixture(case);
        let fresh = detect(&root, leader, port);
        assert!(fresh.is_ok(), "{fresh:?}");
        // A socket the tree does not hold (the master was replaced): read again, same answer.
        let stale = [Listener { port, inode: 1 }];
        let reads = std::cell::Cell::new(0);
        let (found, known) = detect_again(&root, leader, port, &stale, |root| {
            reads.set(reads.get() + 1);
            read_listeners(root)
        });
        assert_eq!(found, fresh);
        assert_eq!(reads.get(), 1);
        assert!(known.iter().all(|l| l.inode != 1 && l.port == port));
    }

    #[test]
    fn detection_of_a_wrong_port_or_pid() {
        let root = fixture("unicorn-bash");
        assert_eq!(
            detect(&root, 5009, 1),
            Err(NotPrefork::NoListener { port: 1 })
        );
        assert_eq!(
            detect(&root, 4242, 35721),
            Err(NotPrefork::Gone { pid: 4242 })
        );
        assert_eq!(
            detect(&fixture("no-such-dir"), 5009, 35721),
            Err(NotPrefork::Gone { pid: 5009 })
        );
        // Started from a worker, the tree is that worker alone.
        assert_eq!(
            detect(&root, 5011, 35721),
            Err(NotPrefork::SingleProcess {
                pid: 5011,
                title: "unicorn worker[0] -c config/unicorn.rb".to_owned(),
            })
        );
    }

    // --- the decision over made-up trees --------------------------------------------------

    const PORT: u16 = 5000;
    const LISTENING: Listener = Listener {
        port: PORT,
        inode: 100,
    };

    fn process(pid: i32, parent: i32, cmdline: Vec<String>, sockets: &[u64]) -> Member {
        Member {
            pid,
            ppid: parent,
            cmdline,
            comm: "comm".to_owned(),
            sockets: sockets.iter().copied().collect(),
        }
    }

    fn gunicorn_tree(children: &[(i32, &str)]) -> Vec<Member> {
        let mut tree = vec![process(10, 1, title("gunicorn: master [app]"), &[100, 7])];
        tree.extend(
            children.iter().map(|&(pid, text)| {
                process(pid, 10, title(text), &[100, pid.unsigned_abs().into()])
            }),
        );
        tree
    }

    #[test]
    fn decide_finds_workers_among_children() {
        let mut tree = gunicorn_tree(&[
            (12, "gunicorn: worker [app]"),
            (11, "gunicorn: worker [app]"),
            // Just forked: the worker renames itself a moment later.
            (13, "gunicorn: master [app]"),
            // Gunicorn's dirty arbiter is forked without closing the listener.
            (14, "gunicorn: dirty-arbiter"),
        ]);
        // A child that does not hold the socket.
        tree.push(process(15, 10, args(&["sh", "-c", "convert a b"]), &[]));
        assert_eq!(
            decide(10, PORT, &[LISTENING], &tree),
            Ok(Prefork {
                master: 10,
                server: Server::Gunicorn,
                children: vec![11, 12],
            })
        );
    }

    #[test]
    fn decide_with_children_not_yet_titled_is_no_workers() {
        let tree = gunicorn_tree(&[(11, "gunicorn: master [app]")]);
        assert_eq!(
            decide(10, PORT, &[LISTENING], &tree),
            Err(NotPrefork::NoWorkers {
                pid: 10,
                server: Server::Gunicorn
            })
        );
    }

    #[test]
    fn decide_names_the_server_from_its_children_when_the_master_was_retitled() {
        let tree = vec![
            process(10, 1, title("my app master"), &[100]),
            process(11, 10, title("unicorn worker[0] -c u.rb"), &[100]),
            process(12, 10, title("unicorn worker[1] -c u.rb"), &[100]),
        ];
        assert_eq!(
            decide(10, PORT, &[LISTENING], &tree),
            Ok(Prefork {
                master: 10,
                server: Server::Unicorn,
                children: vec![11, 12],
            })
        );
        // Children of two servers name none.
        let mixed = vec![
            process(10, 1, title("my app master"), &[100]),
            process(11, 10, title("unicorn worker[0]"), &[100]),
            process(12, 10, title("puma: cluster worker 0: 10"), &[100]),
        ];
        assert_eq!(
            decide(10, PORT, &[LISTENING], &mixed),
            Err(NotPrefork::UnknownServer {
                pid: 10,
                title: "my app master".to_owned()
            })
        );
    }

    #[test]
    fn decide_untitled_children_of_a_titled_master_are_not_workers() {
        let tree = gunicorn_tree(&[(11, "/usr/bin/python3 /usr/bin/gunicorn app:app")]);
        assert_eq!(
            decide(10, PORT, &[LISTENING], &tree),
            Err(NotPrefork::NoWorkers {
                pid: 10,
                server: Server::Gunicorn
            })
        );
    }

    #[test]
    fn decide_the_socket_held_outside_the_tree_or_by_several() {
        let wrapper = process(9, 1, args(&["bash", "-c", "x; y"]), &[]);
        let tree = vec![
            wrapper.clone(),
            process(10, 9, args(&["sleep", "9"]), &[200]),
        ];
        assert_eq!(
            decide(9, PORT, &[LISTENING], &tree),
            Err(NotPrefork::ListenerOutsideTree { port: PORT })
        );
        // Two servers on one port (SO_REUSEPORT), neither forked by the other.
        let tree = vec![
            wrapper,
            process(10, 9, title("unicorn master"), &[100]),
            process(11, 9, title("unicorn master"), &[101]),
        ];
        let both = [
            LISTENING,
            Listener {
                port: PORT,
                inode: 101,
            },
        ];
        assert_eq!(
            decide(9, PORT, &both, &tree),
            Err(NotPrefork::SeveralListeners { pids: vec![10, 11] })
        );
        // A listener on another port is not ours.
        let other = Listener {
            port: PORT + 1,
            inode: 100,
        };
        assert_eq!(
            decide(9, PORT, &[other], &tree),
            Err(NotPrefork::NoListener { port: PORT })
        );
        assert_eq!(
            decide(9, PORT, &[LISTENING], &[]),
            Err(NotPrefork::Gone { pid: 9 })
        );
    }

    #[test]
    fn decide_a_master_holding_ipv4_and_ipv6_sockets() {
        let v6 = Listener {
            port: PORT,
            inode: 101,
        };
        let tree = vec![
            process(
                10,
                1,
                title("puma 6.4.2 (tcp://0.0.0.0:5000,tcp://[::]:5000)"),
                &[100, 101],
            ),
            process(11, 10, title("puma: cluster worker 0: 10"), &[101]),
            process(12, 10, title("puma: cluster worker 1: 10"), &[100]),
        ];
        assert_eq!(
            decide(10, PORT, &[LISTENING, v6], &tree),
            Ok(Prefork {
                master: 10,
                server: Server::Puma,
                children: vec![11, 12],
            })
        );
    }

    #[test]
    fn a_process_without_a_command_line_is_titled_by_comm() {
        let mut quiet = process(10, 1, vec![], &[100]);
        quiet.comm = "server".to_owned();
        assert_eq!(
            decide(10, PORT, &[LISTENING], &[quiet]),
            Err(NotPrefork::SingleProcess {
                pid: 10,
                title: "[server]".to_owned()
            })
        );
    }

    #[test]
    fn reasons_read_as_log_lines() {
        let cases = [
            (NotPrefork::Gone { pid: 4 }, "gone", "process 4 is gone"),
            (
                NotPrefork::NoListener { port: 5000 },
                "no_listener",
                "nothing listens on port 5000",
            ),
            (
                NotPrefork::ListenerOutsideTree { port: 5000 },
                "listener_outside_tree",
                "the socket on port 5000 is held by no process of the command",
            ),
            (
                NotPrefork::SeveralListeners { pids: vec![4, 5] },
                "several_listeners",
                "several processes hold the listening socket: [4, 5]",
            ),
            (
                NotPrefork::SingleProcess {
                    pid: 4,
                    title: "node app.js".to_owned(),
                },
                "single_process",
                "4 (node app.js) shares its socket with no child",
            ),
            (
                NotPrefork::UnknownServer {
                    pid: 4,
                    title: "uwsgi".to_owned(),
                },
                "unknown_server",
                "4 (uwsgi) shares its socket with children but is no server molt knows",
            ),
            (
                NotPrefork::NoWorkers {
                    pid: 4,
                    server: Server::Unicorn,
                },
                "no_workers",
                "unicorn master 4 has no child titled as a worker",
            ),
            (
                NotPrefork::NestedWorkers {
                    pid: 4,
                    server: Server::Puma,
                    parent: 5,
                },
                "nested_workers",
                "puma master 4 has workers forked by worker 5 (fork_worker)",
            ),
        ];
        for (reason, code, text) in cases {
            assert_eq!((reason.code(), reason.to_string().as_str()), (code, text));
        }
    }
}

/// Property tests of the parsers: arbitrary text never panics, and text written the way
/// the kernel writes it reads back.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Pure parsers: 512 cases of generated text take well under a second.
    const CASES: u32 = 512;

    /// A `/proc/net/tcp` line as the kernel formats it (`tcp4_seq_show`).
    fn tcp_line(slot: usize, address: &str, port: u16, state: u8, inode: u64) -> String {
        format!(
            "{slot:>4}: {address}:{port:04X} 00000000:0000 {state:02X} 00000000:00000000 \
             00:00000000 00000000  1000        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        #[test]
        fn parsers_never_panic(text in any::<String>(), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_net_tcp(&text);
            let _ = parse_socket_link(&bytes);
            let _ = parse_socket_link(text.as_bytes());
            let _ = parse_cmdline(&bytes);
            let _ = role(&parse_cmdline(&bytes));
            let _ = role(&[text]);
        }

        /// Sockets in any state on IPv4 or IPv6 addresses: the listening ones read back,
        /// in order.
        #[test]
        fn net_tcp_reads_back(
            sockets in prop::collection::vec(
                (any::<bool>(), any::<u16>(), 1u8..=12, 1u64..u64::MAX),
                0..32,
            ),
        ) {
            let mut text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n".to_owned();
            let mut expected = Vec::new();
            for (slot, &(v6, port, state, inode)) in sockets.iter().enumerate() {
                let address = if v6 { "00000000000000000000000001000000" } else { "0100007F" };
                text.push_str(&tcp_line(slot, address, port, state, inode));
                if state == 0x0A {
                    expected.push(Listener { port, inode });
                }
            }
            prop_assert_eq!(parse_net_tcp(&text), expected);
        }

        #[test]
        fn socket_links_read_back(inode in any::<u64>()) {
            prop_assert_eq!(parse_socket_link(format!("socket:[{inode}]").as_bytes()), Some(inode));
            prop_assert_eq!(parse_socket_link(format!("pipe:[{inode}]").as_bytes()), None);
        }

        /// Arguments without NUL, the last one not empty, read back whether the kernel
        /// ends them with one NUL or a retitled process pads them with many.
        #[test]
        fn cmdline_reads_back(
            mut cmdline in prop::collection::vec("[^\u{0}]{0,12}", 1..8),
            last in "[^\u{0}]{1,12}",
            padding in 1usize..64,
        ) {
            cmdline.push(last);
            let mut bytes: Vec<u8> = cmdline.iter().flat_map(|arg| [arg.as_bytes(), b"\0"].concat()).collect();
            prop_assert_eq!(parse_cmdline(&bytes), cmdline.clone());
            bytes.extend(std::iter::repeat_n(0, padding));
            prop_assert_eq!(parse_cmdline(&bytes), cmdline);
        }
    }
}

/// Detection against the live `/proc` of real servers, each started as molt starts a
/// command (its own process group, a port of its own), and the signal table checked on
/// them: `add_child` and `remove_child` change the count, `stop_child` gets a child
/// replaced. Unicorn and gunicorn are skipped when absent, or fail when
/// `MOLT_E2E_REQUIRED=1` (CI installs them); Puma is skipped when absent, as CI does not
/// install it yet.
#[cfg(test)]
mod live {
    use std::net::TcpListener;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use nix::sys::signal::{kill, killpg};
    use nix::unistd::Pid;

    use super::*;

    /// How long a server may take to boot and fork: a tiny preloaded app takes well under
    /// a second; this leaves room for a loaded CI machine.
    const DEADLINE: Duration = Duration::from_secs(15);

    /// Whether `tool` is on PATH. When it is not, the test skips with a note, or fails if
    /// `required` and `MOLT_E2E_REQUIRED=1`.
    fn present(tool: &str, required: bool) -> bool {
        if which::which(tool).is_ok() {
            return true;
        }
        assert!(
            !(required && std::env::var("MOLT_E2E_REQUIRED").as_deref() == Ok("1")),
            "MOLT_E2E_REQUIRED=1 but {tool} is not on PATH"
        );
        eprintln!("skipped: {tool} not on PATH");
        false
    }

    /// A server's process group and its app directory, killed and removed on drop.
    struct Started {
        child: Child,
        dir: PathBuf,
        port: u16,
    }

    impl Started {
        /// Writes `files` into a new directory and runs `program args` there in a new
        /// process group with `PORT` set, as molt starts a command.
        fn new(label: &str, files: &[(&str, &str)], program: &str, args: &[&str]) -> Started {
            let dir =
                std::env::temp_dir().join(format!("molt-prefork-{}-{label}", std::process::id()));
            fs::create_dir_all(&dir).unwrap();
            for (name, text) in files {
                fs::write(dir.join(name), text).unwrap();
            }
            // The OS picks a free port; the server binds it a moment later.
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let args: Vec<String> = args
                .iter()
                .map(|arg| arg.replace("{port}", &port.to_string()))
                .collect();
            let child = Command::new(program)
                .args(&args)
                .current_dir(&dir)
                .env("PORT", port.to_string())
                .env_remove("WEB_CONCURRENCY")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap();
            Started { child, dir, port }
        }

        fn leader(&self) -> i32 {
            i32::try_from(self.child.id()).unwrap()
        }

        /// Detects until `done` holds for the answer, or fails at the deadline with the
        /// last answer.
        fn detect_until(&self, what: &str, done: impl Fn(&Prefork) -> bool) -> Prefork {
            let start = Instant::now();
            loop {
                let answer = detect(Path::new("/proc"), self.leader(), self.port);
                if let Ok(prefork) = &answer {
                    if done(prefork) {
                        return prefork.clone();
                    }
                }
                assert!(start.elapsed() < DEADLINE, "{what}: last answer {answer:?}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    impl Drop for Started {
        fn drop(&mut self) {
            let _ = killpg(Pid::from_raw(self.leader()), Signal::SIGKILL);
            let _ = self.child.wait();
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    /// Detects the server, then drives it by its row of the table.
    fn detect_and_control(started: &Started, server: Server, master_is_leader: bool) {
        let two = started.detect_until("two workers", |p| p.children.len() == 2);
        assert_eq!(two.server, server);
        if master_is_leader {
            assert_eq!(two.master, started.leader());
        } else {
            let stat = read_stat(Path::new("/proc"), two.master).unwrap();
            assert_eq!(
                stat.ppid,
                started.leader(),
                "the master is the wrapper's child"
            );
        }
        for &child in &two.children {
            assert_eq!(
                read_stat(Path::new("/proc"), child).unwrap().ppid,
                two.master
            );
        }
        let control = server.control();
        let master = Pid::from_raw(two.master);
        kill(master, control.add_child).unwrap();
        started.detect_until("a third worker", |p| p.children.len() == 3);
        kill(master, control.remove_child).unwrap();
        let back = started.detect_until("back to two", |p| p.children.len() == 2);
        let stopped = back.children[0];
        kill(Pid::from_raw(stopped), control.stop_child).unwrap();
        started.detect_until("the stopped child replaced", |p| {
            p.children.len() == 2 && !p.children.contains(&stopped)
        });
    }

    const CONFIG_RU: &str =
        "run ->(env) { [200, { \"content-type\" => \"text/plain\" }, [\"ok\\n\"]] }\n";

    #[test]
    fn live_unicorn() {
        if !present("unicorn", true) {
            return;
        }
        let started = Started::new(
            "unicorn",
            &[
                ("config.ru", CONFIG_RU),
                ("unicorn.rb", "worker_processes 2\npreload_app true\n"),
            ],
            "unicorn",
            &["-l", "127.0.0.1:{port}", "-c", "unicorn.rb", "config.ru"],
        );
        detect_and_control(&started, Server::Unicorn, true);
    }

    #[test]
    fn live_gunicorn_under_a_bash_wrapper() {
        if !present("gunicorn", true) || !present("bash", true) {
            return;
        }
        // `; exit $?` keeps bash from exec'ing gunicorn: the wrapper stays the parent.
        let started = Started::new(
            "gunicorn",
            &[(
                "app.py",
                "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok\\n']\n",
            )],
            "bash",
            &[
                "-c",
                "gunicorn --preload -w 2 -b 127.0.0.1:{port} app:app; exit $?",
            ],
        );
        detect_and_control(&started, Server::Gunicorn, false);
    }

    #[test]
    fn live_puma() {
        if !present("puma", true) {
            return;
        }
        let started = Started::new(
            "puma",
            &[("config.ru", CONFIG_RU)],
            "puma",
            &[
                "-C",
                "/dev/null",
                "-w",
                "2",
                "--preload",
                "-t",
                "1:1",
                "-b",
                "tcp://127.0.0.1:{port}",
                "config.ru",
            ],
        );
        detect_and_control(&started, Server::Puma, true);
    }
}
