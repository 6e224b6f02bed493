"""Small helpers several test modules share (fixtures are in ``conftest.py``)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_submit(h5: Path, out: Path, *args: str) -> int:
    """``hespot submit`` on ``out``'s predictions (quiet); its exit code."""
    import regress.submit

    return regress.submit.main(["--h5", str(h5), "--out", str(out), "--quiet", *args])


def refused(capsys, argv: list, *words: str) -> str:
    """Run ``hespot argv``: exit 2, the last stderr line one ``hespot:`` line holding
    ``words``, no traceback; returns that line."""
    from data import commands

    rc = commands.main([str(a) for a in argv])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("hespot: ") and "Traceback" not in err, err
    assert all(w in last for w in words), last
    return last

