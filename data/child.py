"""Another command run as a child process of this one, ended with it: how ``predict`` runs
stage 1 (``python -m embed.run``) so that stage 2 never imports torch.

The child is SIGKILLed when this process ends, however it ends (Linux: ``prctl``'s
``PR_SET_PDEATHSIG``), so a killed command leaves no child running on, writing its output
and holding its lock (:mod:`data.lock`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from data.cli import EXIT_USER_ERROR

#: prctl's option: the signal a process gets when the thread that started it ends (Linux)
PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` by which a child process is SIGKILLed when this process ends, however
    it ends (Linux; None elsewhere). Call it from the thread that starts the child."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above took effect
            os._exit(1)
    return setup


def run_module(module: str, argv: Sequence[str], stdin: str | None = None
               ) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module argv...`` with this interpreter to its end, ``stdin`` as its
    input, its stdout and stderr kept (text), ended with this process
    (:func:`die_with_parent`)."""
    return subprocess.run([sys.executable, "-m", module, *argv], input=stdin, text=True,
                          capture_output=True, preexec_fn=die_with_parent())


def _shown(text: bytes) -> tuple[bytes, bytes]:
    """(what of ``text`` to echo now, the partial line kept back): whole lines and progress
    bar redraws (up to the last carriage return), but not the command's own refusal (a
    line starting ``hespot:``), which the parent words as its one line."""
    *lines, rest = text.split(b"\n")
    shown = b"".join(line + b"\n" for line in lines if not line.startswith(b"hespot:"))
    if b"\r" in rest and not rest.startswith(b"hespot:"):
        cut = rest.rindex(b"\r") + 1
        shown, rest = shown + rest[:cut], rest[cut:]
    return shown, rest


def run_module_echoed(module: str, argv: Sequence[str], stdin: str | None = None,
                      keep: int = 65536) -> subprocess.CompletedProcess[str]:
    """:func:`run_module` with the child's stderr passed through to this process's as it
    comes (its log lines and progress bars, not its refusal: :func:`_shown`), its last
    ``keep`` characters kept for :func:`user_error`; stdout kept."""
    proc = subprocess.Popen([sys.executable, "-m", module, *argv], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=die_with_parent())
    with ThreadPoolExecutor(1) as pool:  # stdout drained beside, so neither pipe fills
        out = pool.submit(proc.stdout.read)
        if stdin is not None:
            proc.stdin.write(stdin.encode())
        proc.stdin.close()
        tail, pending = b"", b""
        while chunk := proc.stderr.read1(8192):
            tail = (tail + chunk)[-keep:]
            shown, pending = _shown(pending + chunk)
            sys.stderr.buffer.write(shown)
            sys.stderr.flush()
        sys.stderr.buffer.write(_shown(pending + b"\n")[0].rstrip(b"\n"))
        stdout = out.result()
    proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       stdout.decode(errors="replace"),
                                       tail.decode(errors="replace"))


def user_error(proc: subprocess.CompletedProcess[str]) -> str | None:
    """The one-line message of a hespot command that refused its input or settings (exit
    2, :func:`data.cli.run_cli`), without its ``hespot:`` prefix; None for any other exit."""
    if proc.returncode != EXIT_USER_ERROR:
        return None
    lines = proc.stderr.strip().splitlines()
    return lines[-1].removeprefix("hespot: ") if lines else ""
