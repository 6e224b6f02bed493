"""``make fuzz``: thousands of generated corruptions of every input hespot reads, each
run through the command that reads it (issue 28).

``python -m tests.system.fuzz.fuzz [--cases 2000] [--seed 0] [--kinds h5,store,...]
[--jobs 2]``: makes the valid inputs (:mod:`bases`), then for case ``i`` of each kind
(:mod:`cases`) corrupts a copy with a ``random.Random`` seeded by ``(seed, kind, i)``
(:mod:`mutate`, :mod:`mutate_h5`, :mod:`mutate_image`, :mod:`mutate_folders`) and runs the
command in a child with a time limit (:mod:`harness`), judged by the rule of
:mod:`judge`. A case that breaks it is saved under ``--failures`` (default
``out/fuzz/failures/<kind>-s<seed>-<i>/``: ``case.json`` with the seed, the corruptions,
the command and what happened, and ``input/``, the corrupted files) and replayed with
``python -m tests.system.fuzz.fuzz --replay out/fuzz/failures/<name>`` (a fresh
interpreter). The last line is ``fuzz cases=<n> passed=<n> tracebacks=<n> hangs=<n>
leftovers=<n>``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # cases are tiny: one thread each, two cases at once
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

from tests.system.fuzz.harness import ROOT, Case, listing, poll, run_forked, run_spawned, start  # noqa: E402

#: modules every command imports, or imports when it runs: imported once here so that
#: a forked case does not import them again
PRELOAD = ("data.commands", "data.check", "data.summary", "data.importers.table",
           "data.importers.visium", "data.importers.wsi", "data.importers.her2st",
           "regress.run", "regress.submit", "regress.fit", "regress.predict", "embed.run",
           "embed.backbones", "embed.runners", "torch", "torchvision", "timm", "lightgbm",
           "anndata", "dask.array", "xarray", "scipy.ndimage", "sklearn.linear_model",
           "sklearn.decomposition", "jinja2", "PIL.Image", "imagecodecs", "openslide",
           "regress.outputs", "regress.ensemble", "regress.orders", "regress.recipes")


#: inputs a mutator may fail to make (each replaced by another case) before a run stops
#: replacing them
MAX_SKIPPED = 100


def preload() -> None:
    """Import :data:`PRELOAD`, then move every object to the collector's permanent
    generation: the forked cases then share this process's pages instead of copying them
    when a collection walks them."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    gc.collect()
    gc.freeze()


def make_case(kind: str, index: int, seed: int, bases, folder: Path) -> Case:
    """Case ``index`` of ``kind``: its input written into ``folder`` (the same files for
    the same seed, kind and index)."""
    from tests.system.fuzz.cases import KINDS

    rng = random.Random(f"{seed}:{kind}:{index}")
    folder.mkdir(parents=True)
    spec, muts = KINDS[kind](rng, bases, folder)
    return Case(kind, index, seed, spec.argv, spec.outputs, spec.valid, tuple(muts),
                spec.timeout)


def save_failure(case: Case, verdict: str, why: str, outcome, bases, failures: Path) -> Path:
    """The case's input (made again from its seed) and what happened, for ``--replay``."""
    dest = failures / case.name
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    make_case(case.kind, case.index, case.seed, bases, dest / "input")
    record = {**asdict(case), "verdict": verdict, "why": why, "rc": outcome.rc,
              "seconds": round(outcome.seconds, 2), "stderr": outcome.stderr[-4000:],
              "stdout": outcome.stdout[-2000:],
              "replay": f"python -m tests.system.fuzz.fuzz --replay {dest}"}
    (dest / "case.json").write_text(json.dumps(record, indent=1))
    return dest


def schedule(kinds: list[str], n: int) -> list[tuple[str, int]]:
    """(kind, index) of ``n`` cases, the kinds taking turns."""
    return [(kinds[i % len(kinds)], i // len(kinds)) for i in range(n)]


class Run:
    """The cases of one run: started ``jobs`` at a time, judged, failures saved."""

    def __init__(self, root: Path, bases, seed: int, failures: Path, log=print):
        self.root, self.bases, self.seed, self.failures, self.log = (root, bases, seed,
                                                                     failures, log)
        self.results: list[tuple[str, str]] = []  # (kind, verdict)
        self.seconds: dict[str, list[tuple[float, float]]] = {}  # command -> (wall, cpu) s
        self.skipped: Counter = Counter()
        self.parent_s = Counter()  # seconds this process spent judging
        (root / "logs").mkdir(parents=True, exist_ok=True)

    def _start(self, kind: str, index: int):
        """Fork case ``index`` of ``kind``: its child makes the input and runs it."""
        folder = self.root / "cases" / f"{kind}-{index}"
        name = f"{kind}-s{self.seed}-{index}"
        logs = (self.root / "logs" / f"{name}.out", self.root / "logs" / f"{name}.err")
        return start(lambda: make_case(kind, index, self.seed, self.bases, folder), folder,
                     logs, self.root / "logs" / f"{name}.json")

    def _finish(self, running, outcome) -> bool:
        """Judge a case that ended (False: its input could not be made)."""
        from tests.system.fuzz.judge import judge

        case = running.case
        if case is None:
            self.skipped[f"{running.folder.name.split('-')[0]}: {running.error}"] += 1
        else:
            t0 = time.perf_counter()
            verdict, why = judge(case, running.folder, running.before, outcome)
            self.parent_s["judging"] += time.perf_counter() - t0
            self.results.append((case.kind, verdict))
            self.seconds.setdefault(f"{case.kind} {case.argv[0]}", []).append(
                (outcome.seconds, outcome.cpu_s))
            if verdict != "pass":
                saved = save_failure(case, verdict, why, outcome, self.bases, self.failures)
                self.log(f"FAIL {verdict} {case.name} ({'; '.join(case.mutations)[:200]}): "
                         f"{why[-400:]}\n     replay: python -m tests.system.fuzz.fuzz "
                         f"--replay {saved}")
        shutil.rmtree(running.folder, ignore_errors=True)
        for path in (*running.logs, running.meta):
            path.unlink(missing_ok=True)
        return case is not None

    def run(self, todo: list[tuple[str, int]], jobs: int) -> None:
        """Run the cases ``todo``; a case whose input could not be made is replaced by
        another of its kind (index + len(todo)), so that as many cases run."""
        running = []
        extra = len(todo)
        todo = list(reversed(todo))
        t0 = time.monotonic()
        while todo or running:
            while todo and len(running) < jobs:
                running.append(self._start(*todo.pop()))
            for r in list(running):
                outcome = poll(r)
                if outcome is not None:
                    running.remove(r)
                    if not self._finish(r, outcome):
                        if sum(self.skipped.values()) <= MAX_SKIPPED:
                            kind, index = r.folder.name.rsplit("-", 1)
                            todo.append((kind, int(index) + extra))
                    elif len(self.results) % 100 == 0:
                        self.log(f"{len(self.results)} cases, {time.monotonic() - t0:.0f} s")
            time.sleep(0.005)


def summary(results: list[tuple[str, str]]) -> list[str]:
    lines = []
    for kind in dict.fromkeys(k for k, _ in results):
        verdicts = Counter(v for k, v in results if k == kind)
        bad = ", ".join(f"{v}={n}" for v, n in sorted(verdicts.items()) if v != "pass")
        lines.append(f"  {kind:<9} cases={sum(verdicts.values())} passed={verdicts['pass']}"
                     + (f" ({bad})" if bad else ""))
    total = Counter(v for _, v in results)
    others = {v: n for v, n in total.items() if v in ("memory", "unclear", "invalid")}
    lines.append(f"other failures: {others}" if others else "other failures: none")
    lines.append(f"fuzz cases={len(results)} passed={total['pass']} "
                 f"tracebacks={total['traceback']} hangs={total['hang']} "
                 f"leftovers={total['leftover']}")
    return lines


def replay(path: Path, spawn: bool = True) -> int:
    """Run a saved case again on a copy of its input; prints the verdict."""
    from tests.system.fuzz.judge import judge

    record = json.loads((path / "case.json").read_text())
    case = Case(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()
                   if k in Case.__dataclass_fields__})
    with tempfile.TemporaryDirectory(prefix="hespot-replay-") as tmp:
        folder = Path(tmp).resolve() / "case"
        shutil.copytree(path / "input", folder)
        before = listing(folder)
        logs = (Path(tmp) / "out.txt", Path(tmp) / "err.txt")
        outcome = run_spawned(case, folder) if spawn else run_forked(case, folder, logs)
        verdict, why = judge(case, folder, before, outcome)
    print(f"{case.name}: {'; '.join(case.mutations)}\n$ hespot {' '.join(case.argv)}\n"
          f"exit {outcome.rc} in {outcome.seconds:.1f} s\n{outcome.stderr[-3000:]}\n"
          f"verdict: {verdict} {why[-600:]}")
    return 0 if verdict == "pass" else 1


def main(argv: list[str] | None = None) -> int:
    from tests.system.fuzz.cases import KINDS

    p = argparse.ArgumentParser(prog="python -m tests.system.fuzz.fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=2000, help="cases in all (kinds take turns)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds")
    p.add_argument("--jobs", type=int, default=2, help="cases run at once")
    p.add_argument("--failures", type=Path, default=ROOT / "out" / "fuzz" / "failures")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it")
    p.add_argument("--replay", type=Path, nargs="+", help="saved cases to run again")
    args = p.parse_args(argv)
    if args.replay:
        return max(replay(path) for path in args.replay)
    unknown = set(args.kinds.split(",")) - set(KINDS)
    if unknown:
        p.error(f"unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    t0 = time.monotonic()
    preload()
    root = Path(args.keep or tempfile.mkdtemp(prefix="hespot-fuzz-")).resolve()
    try:
        from tests.system.fuzz.bases import Bases, build

        done = root / "base" / ".made"
        bases = Bases(root / "base") if done.exists() else build(root / "base")
        done.touch()
        print(f"inputs made in {time.monotonic() - t0:.0f} s", flush=True)
        run = Run(root, bases, args.seed, args.failures, log=lambda s: print(s, flush=True))
        run.run(schedule(args.kinds.split(","), args.cases), args.jobs)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    for key, n in run.skipped.items():
        print(f"not made ({n}x): {key}")
    print("seconds per case (wall/cpu): " + ", ".join(
        f"{k} {sum(w for w, _ in v) / len(v):.1f}/{sum(c for _, c in v) / len(v):.2f} "
        f"(x{len(v)})" for k, v in sorted(run.seconds.items())))
    print("this process: " + ", ".join(f"{k} {v:.0f} s" for k, v in run.parent_s.items()))
    print(f"{time.monotonic() - t0:.0f} s, seed {args.seed}")
    print("\n".join(summary(run.results)))
    return 0 if all(v == "pass" for _, v in run.results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
