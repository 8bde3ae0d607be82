"""A memory cgroup (v2) for each side of the leak demo, so that the kernel holds each side
to the budget as it holds a dyno or a container to its limit: past memory.max it reclaims
what it can, then its OOM killer kills a process, and memory.events counts the kills.

    cgroups = Cgroups.create(limit_bytes, ["unicorn", "molt"], "molt-demo-1234")
    argv = cgroups.enter("unicorn", argv)    # argv, started inside that cgroup
    cgroups.oom_kills("unicorn"), cgroups.current("unicorn")
    cgroups.remove()                         # kills what is left, removes the cgroups

Cgroups.create raises Unavailable, with the reason, when this machine does not allow it:
not root, no cgroup v2 hierarchy, or one without the memory controller (a machine that
still mounts the cgroup v1 memory controller, or a container given a read-only view).

As a command, for a caller whose Python was killed before it could clean up:

    python3 cgroup.py remove /sys/fs/cgroup/molt-demo-1234

Standard library only.
"""

import os
import signal
import sys
import time

# Only a directory of this name is ever removed, so a wrong path cannot remove anything else.
PREFIX = "molt-demo-"


class Unavailable(Exception):
    """This machine gives the demo no memory cgroup of its own; the text says why."""


def _read(path):
    with open(path) as f:
        return f.read().strip()


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _mounts(fstype):
    """(mount point, options) of every mount of fstype."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 4 and fields[2] == fstype:
                # Spaces in mount points are written as \040.
                yield fields[1].replace("\\040", " "), fields[3].split(",")


def _v1_memory():
    return any("memory" in options for _, options in _mounts("cgroup"))


class Cgroups:
    def __init__(self, parent, names):
        self.parent = parent
        self.names = list(names)

    @classmethod
    def create(cls, limit, names, tag):
        """A cgroup `tag` at the root of the cgroup v2 hierarchy with the memory
        controller enabled below it, and in it one cgroup per name with memory.max = limit
        and no swap."""
        if os.geteuid() != 0:
            raise Unavailable("not running as root")
        roots = [path for path, _ in _mounts("cgroup2")]
        held = " (cgroup v1 holds it here)" if _v1_memory() else ""
        if not roots:
            raise Unavailable("no cgroup v2 hierarchy is mounted" + held)
        root = None
        for path in roots:
            try:
                if "memory" in _read(os.path.join(path, "cgroup.controllers")).split():
                    root = path
                    break
            except OSError:
                continue
        if root is None:
            raise Unavailable(
                f"the cgroup v2 hierarchy at {roots[0]} has no memory controller{held}"
            )
        try:
            enabled = _read(os.path.join(root, "cgroup.subtree_control")).split()
        except OSError as err:
            raise Unavailable(f"cannot read {root}/cgroup.subtree_control: {err}") from err
        if "memory" not in enabled:
            # Enabling it at the root would change every cgroup on the machine: not the
            # demo's to do.
            raise Unavailable(
                f"the memory controller is not enabled below {root} (cgroup.subtree_control)"
            )
        made = cls(os.path.join(root, tag), [])
        try:
            os.mkdir(made.parent)
            # A cgroup's children get memory.max only when it enables the controller for them.
            _write(os.path.join(made.parent, "cgroup.subtree_control"), "+memory")
            for name in names:
                path = os.path.join(made.parent, name)
                os.mkdir(path)
                made.names.append(name)
                _write(os.path.join(path, "memory.max"), str(limit))
                # A dyno that swaps is already failing (R14); here the limit is the limit.
                swap = os.path.join(path, "memory.swap.max")
                if os.path.exists(swap):
                    _write(swap, "0")
        except OSError as err:
            made.remove()
            raise Unavailable(f"cannot set up {made.parent}: {err}") from err
        return made

    def path(self, name):
        return os.path.join(self.parent, name)

    def enter(self, name, argv):
        """argv, run by a shell that first moves itself into the cgroup `name`, so that
        the command and everything it forks are in it from their first instruction."""
        procs = os.path.join(self.path(name), "cgroup.procs")
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *argv]

    def _stat(self, name, file, key):
        try:
            with open(os.path.join(self.path(name), file)) as f:
                for line in f:
                    k, _, v = line.partition(" ")
                    if k == key:
                        return int(v)
        except OSError:
            pass
        return 0

    def oom_kills(self, name):
        """Processes the kernel's OOM killer killed in the cgroup (memory.events)."""
        return self._stat(name, "memory.events", "oom_kill")

    def current(self, name):
        """All the memory the kernel charges to the cgroup now, page cache included."""
        try:
            return int(_read(os.path.join(self.path(name), "memory.current")))
        except (OSError, ValueError):
            return 0

    def _pids(self, name):
        try:
            return [int(p) for p in _read(os.path.join(self.path(name), "cgroup.procs")).split()]
        except (OSError, ValueError):
            return []

    def remove(self):
        """Kills every process left in the cgroups, then removes them; safe to call twice."""
        if not os.path.basename(self.parent.rstrip("/")).startswith(PREFIX):
            return
        for name in self.names:
            path = self.path(name)
            if not os.path.isdir(path):
                continue
            kill = os.path.join(path, "cgroup.kill")
            deadline = time.monotonic() + 10
            while self._pids(name) and time.monotonic() < deadline:
                if os.path.exists(kill):
                    try:
                        _write(kill, "1")
                    except OSError:
                        pass
                else:
                    for pid in self._pids(name):
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except OSError:
                            pass
                time.sleep(0.05)
            _rmdir(path)
        _rmdir(self.parent)

    @classmethod
    def existing(cls, parent):
        """The cgroups a demo left under parent, to remove them."""
        names = [n for n in sorted(os.listdir(parent)) if os.path.isdir(os.path.join(parent, n))]
        return cls(parent, names)


def _rmdir(path):
    # The kernel frees a cgroup a moment after its last process exits.
    deadline = time.monotonic() + 5
    while os.path.isdir(path):
        try:
            os.rmdir(path)
        except OSError:
            if time.monotonic() > deadline:
                print(f"demo: could not remove the cgroup {path}", file=sys.stderr)
                return
            time.sleep(0.05)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "remove":
        sys.exit("usage: cgroup.py remove CGROUP")
    target = sys.argv[2]
    if not os.path.basename(target.rstrip("/")).startswith(PREFIX):
        sys.exit(f"cgroup.py: {target} is not a demo cgroup ({PREFIX}*)")
    if os.path.isdir(target):
        Cgroups.existing(target).remove()
