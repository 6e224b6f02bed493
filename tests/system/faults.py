"""The fault suite (issue 18): its cases, which ``make faults`` (``pytest -m faults``)
runs one test each (``test_fault_suite.py``).

Every case runs the real ``hespot`` command in its own process, on the synthetic fixture
(``import-her2st`` on one section of the bundled sample, ``import-wsi`` on a generated
pyramidal TIFF; ``tune`` through its ``main`` with two recipes of the tiny backbone):

- bad inputs: each must exit 2 with one ``hespot: ...`` line (no traceback) and write
  nothing;
- kills: every command that writes (``import-her2st``, ``import-wsi``, ``embed``,
  ``embed --workers 2`` (``embed-dask``: stage 1 on a Dask LocalCluster of 2 workers),
  ``regress``, ``submit``, ``report``, ``fit``, ``predict``, ``tune``, ``finetune``) is
  SIGKILLed at points of an uninterrupted run's duration (20, 50 and 80 %; the slow ones
  at 50 % only; for ``embed-dask``, of the time from its workers' start to its end, as its
  cluster starts 5 to 20 s in here), then run again. After the kill, no process it started
  (children and grandchildren: Dask's worker processes, the multiprocessing resource
  tracker) may run on and no output may be found incomplete under its final name (a page
  whose images are missing is incomplete); the rerun must succeed, give the uninterrupted
  run's outputs (``fault_outputs``: what "the same" means per command; the Dask run's
  features are the in-process run's, bit for bit) and leave no temporary behind.
  ``report`` is killed over a previous report, which must stay whole until the new one
  replaces it;
- concurrency: two runs started at once on one store (or one OUT) must not both write:
  one refuses naming the holder (or both finish one after the other), and the result
  equals the uninterrupted run's; two ``embed --workers 2`` at once, each into its own
  fresh store (two clusters side by side), both give the in-process features bit for bit.

Its last line is ``faults bad_inputs_refused=<n>/<m> kills_survived=<n>/<m>
concurrent_safe=<n>/<m>`` (``tests/system/conftest.py``). ``test_faults.py`` runs a quick
subset (:func:`run_suite`) in ``make test``.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from data.synthetic import write_synthetic
from data.wsi.pyramid import write_array_pyramid
from tests.helpers import ROOT
from tests.system.fault_outputs import (
    partial_files,
    same_finetune,
    same_h5,
    same_model,
    same_predict,
    same_report,
    same_scores,
    same_store,
    same_submission,
    same_tune,
    temporaries,
)
from tests.system.processes import dask_workers, descendants, survivors, workers_started

EMBED = ["--backbones", "tiny_random", "--patch-px", "64", "--tta", "2", "--quiet"]
REGRESS = ["--features", "tiny_random", "--models", "ridge", "--targets", "spot_rank",
           "--quiet"]


def hespot(*args: object, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [sys.executable, "-m", "data.commands", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def refused(result: subprocess.CompletedProcess, output: Path) -> bool:
    """Exit 2, one one-line ``hespot: ...`` message (after hespot's own logged warnings,
    if any, and nothing else), no traceback, nothing written at ``output``."""
    lines = result.stderr.strip().splitlines()
    logged = [ln for ln in lines[:-1] if not re.match(r"\d\d:\d\d:\d\d \w+ hespot: ", ln)]
    return (result.returncode == 2 and bool(lines) and lines[-1].startswith("hespot: ")
            and not logged and "Traceback" not in result.stderr and not output.exists())


def _nan_x(t: np.ndarray) -> np.ndarray:
    t["x"][3] = np.nan
    return t


def _drop_last_field(t: np.ndarray) -> np.ndarray:
    names = list(t.dtype.names[:-1])
    return np.asarray(t[names]).astype([(n, t.dtype[n]) for n in names])


def _edit_train(h5: Path, edit: Callable[[np.ndarray], np.ndarray]) -> None:
    with h5py.File(h5, "r+") as f:
        key = "spots/Train/S_2"
        table = edit(f[key][()])
        del f[key]
        f[key] = table


def bad_input_cases(root: Path, base: Path) -> dict[str, Callable[[], bool]]:
    """name -> a case: builds its input under ``root`` and runs the command."""
    def copy(name: str) -> Path:
        return Path(shutil.copy(base, root / f"{name}.h5"))

    def embed_refused(h5: Path, *extra: object) -> bool:
        store = root / f"{h5.stem}.zarr"
        return refused(hespot("embed", "--h5", h5, "--store", store, *EMBED, *extra), store)

    def nan_coordinate() -> bool:
        h5 = copy("nan")
        _edit_train(h5, _nan_x)
        return embed_refused(h5)

    def missing_cell_type() -> bool:
        h5 = copy("missing")
        _edit_train(h5, _drop_last_field)
        return embed_refused(h5)

    def absurd_image() -> bool:
        h5 = copy("absurd")
        with h5py.File(h5, "r+") as f:
            del f["images/Train/S_1"]
            f.create_dataset("images/Train/S_1", shape=(10**6, 10**6, 3), dtype=np.uint8,
                             chunks=(512, 512, 3), compression="gzip")
        return embed_refused(h5)

    def weights_not_weights() -> bool:
        bad = root / "uni.pt"
        bad.write_bytes(b"\x80\x04not weights" * 40)
        store = root / "w.zarr"
        return refused(hespot("embed", "--h5", base, "--store", store, "--backbones",
                              "efficientnet_lite0", "--weights", bad, "--quiet"), store)

    def slide_files(name: str, pixels: np.ndarray, mpp: float | None) -> Path:
        path = root / name
        write_array_pyramid(path, pixels, mpp, n_levels=2, compression="zlib")
        return path

    tissue = np.full((600, 600, 3), 235, np.uint8)
    tissue[150:450, 150:450] = (200, 110, 170)

    def wsi_refused(slide: Path, *extra: object) -> bool:
        out = root / f"{slide.stem}.h5"
        return refused(hespot("import-wsi", "--slide", slide, "--out", out, "--quiet",
                              *extra), out)

    def truncated_slide() -> bool:
        path = slide_files("cut.tif", tissue, 4.0)
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
        return wsi_refused(path)

    def blank_slide() -> bool:
        return wsi_refused(slide_files("blank.tif", np.full((600, 600, 3), 240, np.uint8), 4.0))

    def unsupported_format() -> bool:
        path = root / "slide.bmp"
        path.write_bytes(b"BM" + b"\0" * 100)
        return wsi_refused(path)

    def no_pixel_size() -> bool:
        return wsi_refused(slide_files("nompp.tif", tissue, None))

    def spots_outside() -> bool:
        spots = root / "outside.csv"
        spots.write_text("x,y\n100,100\n5000,100\n")
        return wsi_refused(slide_files("outside.tif", tissue, 4.0), "--spots", spots)

    def unsafe_name() -> bool:
        return wsi_refused(slide_files("named.tif", tissue, 4.0), "--name", "../escape")

    return {f.__name__: f for f in (nan_coordinate, missing_cell_type, absurd_image,
                                    weights_not_weights, truncated_slide, blank_slide,
                                    unsupported_format, no_pixel_size, spots_outside,
                                    unsafe_name)}


def bad_input_names() -> tuple[str, ...]:
    """The bad-input cases' names (nothing is built or run)."""
    return tuple(bad_input_cases(Path(), Path()))


HER2ST = ROOT / "data" / "samples" / "her2st"
FINETUNE = ["--backbone", "tiny_random", "--patch-px", "64", "--epochs", "3", "--batch-size",
            "16", "--lr", "2e-3", "--augment", "flips", "--cutmix-p", "0", "--workers", "0",
            "--precision", "fp32", "--tta", "2", "--threads", "1", "--quiet"]
#: ``hespot tune`` with two recipes of the tiny backbone (the grid's recipes read the real
#: backbones' features): the real command's main in its own process
TUNE = ("import sys\n"
        "import regress.recipes as r\n"
        "tiny = [r.Recipe('t_plain', ('tiny_random',)),\n"
        "        r.Recipe('t_smooth', ('tiny_random',), smooth_k=4, smooth_w=0.5)]\n"
        "r.RECIPES = {**r.RECIPES, **{t.name: t for t in tiny}}\n"
        "from regress.tune import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n")


@dataclass(frozen=True)
class Step:
    """A command killed: the paths it writes under OUT, the reference outputs it reads,
    and what "the same outputs" means for it.

    Attributes:
        against: steps whose reference outputs ``same`` also reads (not copied to OUT).
        previous: whether the kill happens over a previous output (the reference's,
            copied to OUT first), which must stay whole until the new one replaces it.
        workers: Dask worker processes that must run under the command when it is
            killed (else the case would not check that they die with it); its kill
            points are fractions of the time from their start to the command's end.
    """
    outputs: tuple[str, ...]
    needs: tuple[str, ...]
    same: Callable[[Path, Path], bool]
    against: tuple[str, ...] = ()
    previous: bool = False
    workers: int = 0


_REGRESSED = ("embeddings.zarr", "report.json", "report.md", "predictions")
#: ``embed-dask``'s LocalCluster: worker processes (``--workers``)
DASK_WORKERS = 2
#: in the order the reference runs them (each reads what the ones before wrote)
STEPS: dict[str, Step] = {
    "import-her2st": Step(("her2st.h5",), (), lambda a, b: same_h5(a / "her2st.h5",
                                                                    b / "her2st.h5")),
    "import-wsi": Step(("wsi.h5",), (), lambda a, b: same_h5(a / "wsi.h5", b / "wsi.h5")),
    "embed": Step(("embeddings.zarr",), (),
                  lambda a, b: same_store(a / "embeddings.zarr", b / "embeddings.zarr")),
    # the in-process reference's features, bit for bit (its own reference run, which the
    # partial-file check compares chunks with, writes embeddings-dask.zarr)
    "embed-dask": Step(("embeddings-dask.zarr",), (),
                       lambda a, b: same_store(a / "embeddings.zarr",
                                               b / "embeddings-dask.zarr"),
                       against=("embed",), workers=DASK_WORKERS),
    "regress": Step(("report.json", "report.md", "predictions"), ("embeddings.zarr",),
                    same_scores),
    "submit": Step(("submission.csv", "submission.json", "predictions.h5ad",
                    "predictions.csv", "rank_scores.csv"), _REGRESSED, same_submission),
    "report": Step(("report",), (*_REGRESSED, "submission.csv", "submission.json",
                                 "predictions.h5ad"), same_report, previous=True),
    "fit": Step(("model",), _REGRESSED, same_model),
    "predict": Step(("predict",), ("model",),
                    lambda a, b: same_predict(a / "predict", b / "predict")),
    "tune": Step(("tune",), ("embeddings.zarr",), same_tune),
    "finetune": Step(("ft",), (), lambda a, b: same_finetune(a / "ft", b / "ft")),
}


def with_inputs(names: Sequence[str]) -> list[str]:
    """``names`` and the steps that write what they read (or compare with), in
    :data:`STEPS`' order."""
    found = set(names)
    for name in reversed(STEPS):
        if name in found:
            found |= {s for s, step in STEPS.items()
                      if set(step.outputs) & set(STEPS[name].needs)}
            found |= set(STEPS[name].against)
    return [s for s in STEPS if s in found]


class Steps:
    """The commands killed, their reference outputs (uninterrupted) and timings."""

    def __init__(self, root: Path, base: Path, names: Sequence[str] = tuple(STEPS)):
        self.root, self.base = root, base
        self.ref = root / "ref"
        self.seconds: dict[str, float] = {}
        #: steps with Dask workers: seconds from the start until they all ran
        self.workers_up: dict[str, float] = {}
        self.why: dict[str, str] = {}
        self.need(names)

    def need(self, names: Sequence[str]) -> None:
        """Run the reference of each of ``names`` and of the steps whose outputs they read
        (:func:`with_inputs`, in :data:`STEPS`' order) that has not run yet."""
        for step in (s for s in with_inputs(names) if s not in self.seconds):
            if step == "import-wsi":
                pixels = np.full((3000, 3000, 3), 235, np.uint8)
                pixels[600:2400, 600:2400] = (200, 110, 170)
                pixels[600:2400, 600:2400] += np.random.default_rng(0).integers(
                    0, 40, (1800, 1800, 3), dtype=np.uint8)
                write_array_pyramid(self.root / "wsi.tif", pixels, 1.0, n_levels=3,
                                    compression="zlib")
            self._reference(step)

    def _reference(self, step: str) -> None:
        """Run ``step`` uninterrupted into the reference folder; its time (and when its
        Dask workers ran)."""
        with tempfile.TemporaryFile("w+") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(self.command(step, self.ref), cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=err, text=True)
            if STEPS[step].workers:
                up = workers_started(proc, STEPS[step].workers)
                if up is not None:
                    self.workers_up[step] = up - t0
            try:
                rc = proc.wait(timeout=600)
            finally:
                proc.kill()
            self.seconds[step] = time.perf_counter() - t0
            if rc != 0:
                err.seek(0)
                raise RuntimeError(f"reference {step} failed: {err.read()[-2000:]}")
            if STEPS[step].workers and step not in self.workers_up:
                raise RuntimeError(f"reference {step}: its {STEPS[step].workers} Dask "
                                   "workers were never seen running")

    def argv(self, step: str, out: Path) -> list:
        """The ``hespot`` arguments of ``step`` writing under ``out``."""
        base, store = self.base, out / "embeddings.zarr"
        return {
            "import-her2st": ["import-her2st", "--src", HER2ST, "--sections", "C2", "--out",
                              out / "her2st.h5", "--quiet"],
            "import-wsi": ["import-wsi", "--slide", self.root / "wsi.tif", "--images", "copy",
                           "--out", out / "wsi.h5", "--quiet"],
            "embed": ["embed", "--h5", base, "--store", store, *EMBED],
            "embed-dask": ["embed", "--h5", base, "--store", out / "embeddings-dask.zarr",
                           *EMBED, "--workers", DASK_WORKERS],
            "regress": ["regress", "--h5", base, "--store", store, "--out", out, *REGRESS],
            "submit": ["submit", "--h5", base, "--out", out, "--quiet"],
            "report": ["report", "--h5", base, "--store", store, "--out", out, "--quiet"],
            "fit": ["fit", "--h5", base, "--store", store, "--out", out, "--quiet"],
            "predict": ["predict", "--model", out / "model", "--h5", base, "--out",
                        out / "predict", "--quiet"],
            "tune": ["tune", "--h5", base, "--store", store, "--out", out / "tune",
                     "--recipes", "t_plain,t_smooth", "--targets", "spot_rank", "--quiet"],
            "finetune": ["finetune", "--h5", base, "--out", out / "ft", *FINETUNE],
        }[step]

    def command(self, step: str, out: Path) -> list[str]:
        args = [str(a) for a in self.argv(step, out)]
        if step == "tune":
            return [sys.executable, "-c", TUNE, *args[1:]]
        return [sys.executable, "-m", "data.commands", *args]

    def prepare(self, step: str, out: Path, previous: bool = False) -> None:
        """``out`` holds what ``step`` reads: the reference's outputs of the steps before;
        with ``previous``, also the reference's outputs of ``step`` (a previous run's)."""
        out.mkdir(parents=True)
        for name in (*STEPS[step].needs, *(STEPS[step].outputs if previous else ())):
            src = self.ref / name
            shutil.copytree(src, out / name) if src.is_dir() else shutil.copy(src, out / name)

    def same(self, step: str, out: Path) -> bool:
        """Whether ``out`` holds the reference's outputs of ``step`` (False when some are
        missing)."""
        try:
            return STEPS[step].same(self.ref, out)
        except FileNotFoundError:
            return False

    def _at(self, step: str, proc: subprocess.Popen, fraction: float) -> None:
        """Wait until ``fraction`` of ``step``'s uninterrupted time has passed; for a step
        with Dask workers, ``fraction`` of the time from its workers' start to its end,
        counted from when they run in ``proc`` (starting a cluster takes 5 to 20 s here,
        as the machine is loaded: measured from the start, the kill would fall before
        the cluster or after the end)."""
        if STEPS[step].workers:
            if workers_started(proc, STEPS[step].workers, timeout=3 * self.seconds[step]):
                time.sleep(fraction * (self.seconds[step] - self.workers_up[step]))
            return
        time.sleep(fraction * self.seconds[step])

    def killed_then_rerun(self, step: str, fraction: float) -> bool:
        """SIGKILL ``step`` at ``fraction`` of its uninterrupted time; no output may then be
        partial under its final name; run again, it must give the reference's outputs."""
        case = kill_case(step, fraction)
        out = self.root / f"kill_{step}_{int(fraction * 100)}"
        self.prepare(step, out, previous=STEPS[step].previous)
        proc = subprocess.Popen(self.command(step, out), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        self._at(step, proc, fraction)
        started = descendants(proc.pid)
        workers = dask_workers(started)  # while they run: /proc names them
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        orphans = survivors(proc.pid, started)
        partial = partial_files(self.ref, out, STEPS[step].outputs)
        result = subprocess.run(self.command(step, out), cwd=ROOT, capture_output=True,
                                text=True, timeout=600)
        left = temporaries(out)
        differs = result.returncode == 0 and not self.same(step, out)
        if orphans:
            self.why[case] = (f"{len(orphans)} of its processes ran on after it was killed "
                              f"(pids {', '.join(map(str, orphans[:5]))})")
        elif workers < STEPS[step].workers:
            self.why[case] = (f"killed with {workers} Dask workers running, not "
                              f"{STEPS[step].workers}: their end was not checked")
        elif partial:
            self.why[case] = f"partial after the kill: {', '.join(partial[:5])}"
        elif result.returncode != 0:
            self.why[case] = f"rerun exit {result.returncode}: {result.stderr.strip()[-600:]}"
        elif differs:
            self.why[case] = "rerun's outputs differ from the uninterrupted run's"
        elif left:
            self.why[case] = f"temporaries left after the rerun: {', '.join(left[:5])}"
        return case not in self.why

    def concurrent(self, step: str) -> bool:
        """Two runs at once: not both writing; the output then equals the reference."""
        out = self.root / f"concurrent_{step}"
        self.prepare(step, out)
        procs = [hespot(*self.argv(step, out), wait=False) for _ in range(2)]
        results = [(p.wait(), p.communicate()[1]) for p in procs]
        codes = sorted(rc for rc, _ in results)
        named = all("held by pid" in err for rc, err in results if rc == 2)
        if codes not in ([0, 0], [0, 2]) or not named:
            return False
        return hespot(*self.argv(step, out)).returncode == 0 and self.same(step, out)

    def twice_fresh(self, step: str) -> bool:
        """Two runs at once, each into its own fresh OUT: both succeed and give the
        reference's outputs (for ``embed-dask``: the in-process features, so the two
        stores are the same array for array)."""
        case = f"{step} x2, fresh outputs"
        outs = [self.root / f"twice_{step}_{i}" for i in (1, 2)]
        for out in outs:
            self.prepare(step, out)
        procs = [hespot(*self.argv(step, out), wait=False) for out in outs]
        results = [(p.communicate()[1], p.returncode) for p in procs]
        failed = [f"exit {rc}: {err.strip()[-300:]}" for err, rc in results if rc != 0]
        if failed:
            self.why[case] = "; ".join(failed)
        elif not all(self.same(step, out) for out in outs):
            self.why[case] = "outputs differ from the uninterrupted in-process run's"
        return case not in self.why


#: the slowest commands (10-40 s here), killed at the middle kill point only
SLOW = ("import-her2st", "embed-dask", "report", "predict", "tune", "finetune")
#: the commands also run twice at once into fresh outputs (when killed: in ``steps``)
TWICE = ("embed-dask",)
#: the commands run twice at once on one output
CONCURRENT = ("embed", "regress", "submit")
#: the kill points: fractions of an uninterrupted run's time
FRACTIONS = (0.2, 0.5, 0.8)
#: the kinds of cases, in the summary line's order
KINDS = ("bad_inputs_refused", "kills_survived", "concurrent_safe")


def default_steps() -> tuple[str, ...]:
    """Every step of :data:`STEPS`; ``embed-dask`` only where dask.distributed is
    installed (``--workers`` needs it)."""
    dask = importlib.util.find_spec("distributed") is not None
    return tuple(s for s in STEPS if dask or s != "embed-dask")


def kill_points(steps: Sequence[str], fractions: Sequence[float]) -> list[tuple[str, float]]:
    """(step, fraction) of every kill case: each fraction, the middle one for :data:`SLOW`."""
    middle = fractions[len(fractions) // 2]
    return [(s, f) for s in steps for f in (fractions if s not in SLOW else (middle,))]


def kill_case(step: str, fraction: float) -> str:
    """The name of a kill case (``embed@50%``)."""
    return f"{step}@{fraction:.0%}"


def uninterrupted(runner: Steps) -> str:
    """The reference runs' times (and when their Dask workers ran), as one line."""
    return "uninterrupted: " + ", ".join(
        f"{s} {t:.1f} s" + (f" (workers up at {runner.workers_up[s]:.1f} s)"
                            if s in runner.workers_up else "")
        for s, t in runner.seconds.items())


def run_suite(root: Path, fractions: tuple[float, ...] = FRACTIONS,
              log: Callable[[str], None] = print, steps: Sequence[str] | None = None,
              concurrent: Sequence[str] = CONCURRENT,
              bad_inputs: bool = True,
              twice: Sequence[str] | None = None) -> dict[str, tuple[int, int]]:
    """Run every case under ``root``; returns {kind: (passed, total)}.

    Args:
        fractions: kill points, as fractions of each step's uninterrupted time (the
            middle one only for the :data:`SLOW` steps).
        steps: the commands killed (keys of :data:`STEPS`; default
            :func:`default_steps`).
        concurrent: the commands run twice at once on one output.
        bad_inputs: whether to run the bad-input cases.
        twice: the commands run twice at once into fresh outputs (default: those of
            :data:`TWICE` in ``steps``); counted as concurrent cases.
    """
    steps = default_steps() if steps is None else tuple(steps)
    twice = [s for s in TWICE if s in steps] if twice is None else list(twice)
    base = write_synthetic(root / "synthetic.h5")
    counts = {}
    bad = {name: case() for name, case in bad_input_cases(root, base).items()} \
        if bad_inputs else {}
    runner = Steps(root, base, with_inputs([*steps, *concurrent, *twice]))
    log(uninterrupted(runner))
    kills = {kill_case(s, f): runner.killed_then_rerun(s, f)
             for s, f in kill_points(steps, fractions)}
    together = {s: runner.concurrent(s) for s in concurrent}
    together |= {f"{s} x2, fresh outputs": runner.twice_fresh(s) for s in twice}
    for kind, cases in zip(KINDS, (bad, kills, together), strict=True):
        for name, ok in cases.items():
            why = f" ({runner.why[name]})" if name in runner.why else ""
            log(f"{'ok  ' if ok else 'FAIL'} {kind}: {name}{why}")
        counts[kind] = (sum(cases.values()), len(cases))
    return counts


def summary(counts: dict[str, tuple[int, int]]) -> str:
    """``faults bad_inputs_refused=n/m kills_survived=n/m concurrent_safe=n/m``."""
    return "faults " + " ".join(f"{k}={n}/{m}" for k, (n, m) in counts.items())
