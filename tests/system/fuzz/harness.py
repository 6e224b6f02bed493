"""Running one fuzz case and judging it.

A case runs a real ``hespot`` command (``data.commands.main``) in a child process with a
time limit: a fork of this process, which has imported every stage once (a fresh
interpreter would spend seconds importing torch, pandas and h5py per case), in its own
process group (killed whole on a timeout), with its stdout and stderr in files, an
address-space limit and its peak memory measured. ``--spawn`` (and ``--replay``) run the
same argv as ``python -m data.commands`` instead.

The rule each case is judged by (:func:`judge`): exit 0 with valid outputs, or exit 2 with
one ``hespot:`` line naming a file of the case (no traceback), within the time limit, with
nothing new left under an output's final name after a refusal and no temporary left
behind. ``hespot check`` exits 1 when it lists errors: that is its refusal.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
#: a child may grow its address space by this much (a reader allocating by a declared
#: size fails with MemoryError here instead of taking the machine's memory)
ADDRESS_SPACE_GROWTH = 3 * 2**30
#: a child whose resident memory grows by more than this breaks the memory rule
MAX_RSS_GROWTH_MB = 1024
CASE = "{case}"
#: a child's exit status when it could not make its case's input
MADE_NOTHING = 75
#: the time a child may take to make its input (then its case's own limit applies)
MAX_MAKE_S = 120.0


@dataclass(frozen=True)
class Case:
    """One generated input and the command that reads it.

    Attributes:
        argv: the ``hespot`` argv, with ``{case}`` for the case folder.
        outputs: paths (relative to the case folder) the command may write on exit 0.
        valid: the name of the check of those outputs (:data:`validate.VALIDATORS`).
        mutations: what was done to the valid input, one line each.
    """

    kind: str
    index: int
    seed: int
    argv: tuple[str, ...]
    outputs: tuple[str, ...]
    valid: str
    mutations: tuple[str, ...]
    timeout: float = 60.0

    @property
    def name(self) -> str:
        return f"{self.kind}-s{self.seed}-{self.index}"

    def command(self, folder: Path) -> list[str]:
        return [a.replace(CASE, str(folder)) for a in self.argv]


@dataclass
class Outcome:
    """How a case's command ended: ``rc`` None when it ran past its time limit."""

    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    rss_growth_mb: float = 0.0
    cpu_s: float = 0.0  # the child's user + system time (making the input included)


@dataclass
class Running:
    """A case's child: it makes the input, records the case in ``meta`` (the case's
    fields and the folder's listing before the command ran), then runs the command."""

    folder: Path
    pid: int
    started: float
    logs: tuple[Path, Path]
    rss_mb: float
    meta: Path
    case: Case | None = None
    before: set[str] = field(default_factory=set)
    error: str = ""  # why the input could not be made

    def load(self) -> None:
        """Read ``meta`` once the child wrote it."""
        if self.case is not None or self.error or not self.meta.exists():
            return
        record = json.loads(self.meta.read_text())
        self.error = record.get("error", "")
        if not self.error:
            self.case = Case(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in record["case"].items()})
            self.before = set(record["before"])


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child(argv: list[str], logs: tuple[Path, Path]) -> None:
    """In the fork: the command's exit status as the interpreter would give it."""
    for fd, path in zip((1, 2), logs, strict=True):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    # the streams on those descriptors (a parent that captures its own output, as pytest
    # does, has rebound sys.stdout and sys.stderr elsewhere)
    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    limit = _vm_bytes() + ADDRESS_SPACE_GROWTH
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.argv = ["hespot", *argv]
    from data.commands import main

    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # noqa: BLE001 - the interpreter's own report of a bug
        traceback.print_exc()
        code = 1
    if code is not None and not isinstance(code, int):
        sys.stderr.write(f"{code}\n")
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def _made(make: Callable[[], Case], folder: Path, meta: Path) -> Case | None:
    """In the fork: make the case's input and record it in ``meta`` (atomically)."""
    try:
        case = make()
        record: dict = {"case": asdict(case), "before": sorted(listing(folder))}
    except Exception as exc:  # noqa: BLE001 - a mutator that could not apply: no case
        case, record = None, {"error": f"{type(exc).__name__}: {str(exc)[:100]}"}
    tmp = meta.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.rename(meta)
    return case


def start(make: Callable[[], Case], folder: Path, logs: tuple[Path, Path],
          meta: Path) -> Running:
    """Fork a child that makes the case's input (``make()``, in parallel with the other
    cases) and runs its command; returns at once."""
    sys.stdout.flush()
    sys.stderr.flush()
    rss = _rss_mb()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setpgid(0, 0)
            case = _made(make, folder, meta)
            if case is not None:
                _child(case.command(folder), logs)
            os._exit(MADE_NOTHING)
        finally:
            os._exit(70)
    return Running(folder, pid, time.monotonic(), logs, rss, meta)


def poll(run: Running) -> Outcome | None:
    """The outcome once the child ended (or was killed at its time limit), else None;
    ``run.case`` is set from then on (None with ``run.error`` if no input was made)."""
    pid, status, usage = os.wait4(run.pid, os.WNOHANG)
    elapsed = time.monotonic() - run.started
    run.load()
    if pid == 0:
        if elapsed < (run.case.timeout if run.case else MAX_MAKE_S):
            return None
        try:
            os.killpg(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status, usage = os.wait4(run.pid, 0)
        rc = None
    else:
        rc = os.waitstatus_to_exitcode(status)
    run.load()
    if run.case is None and not run.error:
        run.error = f"no input made (exit {rc})"
    out, err = (p.read_text(errors="replace") if p.exists() else "" for p in run.logs)
    left = survivors(run.pid)
    if left:
        err += f"\nfuzz: {len(left)} processes of the command ran on after it ended\n"
    return Outcome(rc, out, err, elapsed, usage.ru_maxrss / 1024 - run.rss_mb,
                   usage.ru_utime + usage.ru_stime)


def survivors(pgid: int) -> list[int]:
    """Processes still in the case's process group once its command ended (a child it
    started and did not wait for); they are killed."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            found.append(int(entry.name))
    if found:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return found


def run_forked(case: Case, folder: Path, logs: tuple[Path, Path]) -> Outcome:
    """Run a case whose input is made to its end in a fork (blocking)."""
    meta = logs[0].with_suffix(".meta.json")
    meta.unlink(missing_ok=True)
    running = start(lambda: case, folder, logs, meta)
    while (outcome := poll(running)) is None:
        time.sleep(0.01)
    return outcome


def run_spawned(case: Case, folder: Path) -> Outcome:
    """Run a case as ``python -m data.commands`` (a fresh interpreter)."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "data.commands", *case.command(folder)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=case.timeout + 20)  # + the imports
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        rc = None
    return Outcome(rc, out, err, time.monotonic() - t0)


def listing(folder: Path) -> set[str]:
    """Every path under ``folder``, relative."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}
