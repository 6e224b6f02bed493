"""Open a report page in headless Chromium: did every image load, and a screenshot.

The page sets ``<body data-images="loaded/total">`` on its load event (see
regress.report.page); ``--dump-dom`` prints the DOM after that, and it is parsed here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from data.atomic import atomic_path
from data.errors import ConfigError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--virtual-time-budget=5000")


class BrowserError(ConfigError):
    """No Chromium, or it failed to load the page."""


def find_chromium() -> str | None:
    """Path of a Chromium-family browser on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float) -> str:
    """Run Chromium ``args[0]`` with :data:`FLAGS` and a throw-away profile before
    ``args[1:]``; its stdout. Raises BrowserError on a timeout or a non-zero exit."""
    with tempfile.TemporaryDirectory(prefix="hespot-chromium-") as profile:
        try:
            proc = subprocess.run([*args[:1], *FLAGS, f"--user-data-dir={profile}", *args[1:]],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise BrowserError(f"chromium did not finish in {timeout:.0f} s") from exc
    if proc.returncode != 0:
        raise BrowserError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


def check_in_browser(index: Path, screenshot: Path | None = None, width: int = 1280,
                     height: int = 4000, timeout: float = 120) -> tuple[int, int]:
    """(images loaded with naturalWidth > 0, images on the page) of ``index`` in headless
    Chromium; writes a ``width`` x ``height`` PNG screenshot to ``screenshot`` if given.

    Raises:
        BrowserError: no Chromium on PATH (``make chromium`` installs it), it failed, or the
            page did not report its images.
    """
    exe = find_chromium()
    if exe is None:
        raise BrowserError("no chromium on PATH: `make chromium` installs it "
                           "(Debian: apt-get install chromium)")
    url = Path(index).resolve().as_uri()
    dom = _run([exe, "--dump-dom", url], timeout)
    found = re.search(r'data-images="(\d+)/(\d+)"', dom)
    if found is None:
        raise BrowserError(f"{index}: the page did not report its images (no data-images "
                           "on <body> after load)")
    if screenshot is not None:
        with atomic_path(screenshot, suffix=".png") as tmp:
            _run([exe, f"--screenshot={tmp.resolve()}", f"--window-size={width},{height}",
                  "--hide-scrollbars", url], timeout)
            if tmp.stat().st_size == 0:
                raise BrowserError(f"chromium wrote no screenshot at {screenshot}")
    return int(found.group(1)), int(found.group(2))
