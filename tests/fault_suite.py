"""The fault suite (issue 18): ``make faults`` (``python tests/fault_suite.py``).

Every case runs the real ``hespot`` command in its own process on the synthetic fixture:

- bad inputs: each must exit 2 with one ``hespot: ...`` line (no traceback) and write
  nothing;
- kills: ``embed``, ``regress`` and ``submit`` are SIGKILLed at several points of an
  uninterrupted run's duration, then run again: the outputs must equal the
  uninterrupted run's (features array for array, report scores, submission bytes);
- concurrency: two runs started at once on one store (or one OUT) must not both write:
  one refuses naming the holder (or both finish one after the other), and the result
  equals the uninterrupted run's.

The last line is ``faults bad_inputs_refused=<n>/<m> kills_survived=<n>/<m>
concurrent_safe=<n>/<m>``. ``tests/test_faults.py`` runs a quick subset in ``make test``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.synthetic import write_synthetic  # noqa: E402
from data.wsi.pyramid import write_array_pyramid  # noqa: E402

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


def _arrays(store: Path) -> dict[str, np.ndarray]:
    import zarr

    out: dict[str, np.ndarray] = {}

    def walk(group, prefix: str) -> None:
        for name, arr in group.arrays():
            out[prefix + name] = arr[:]
        for name, sub in group.groups():
            walk(sub, f"{prefix}{name}/")

    walk(zarr.open_group(str(store), mode="r"), "")
    return out


def same_store(a: Path, b: Path) -> bool:
    x, y = _arrays(a), _arrays(b)
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def same_scores(a: Path, b: Path) -> bool:
    def scores(out: Path) -> dict:
        report = json.loads((out / "report.json").read_text())
        return {m: (e["per_slide"], e["mean"], e["per_type"])
                for m, e in report["models"].items()}
    return scores(a) == scores(b)


def same_submission(a: Path, b: Path) -> bool:
    return all((a / n).read_bytes() == (b / n).read_bytes()
               for n in ("submission.csv", "predictions.h5ad"))


class Steps:
    """The three commands killed, their reference outputs (uninterrupted) and timings."""

    def __init__(self, root: Path, base: Path):
        self.root, self.base = root, base
        self.ref = root / "ref"
        self.seconds: dict[str, float] = {}
        for step in ("embed", "regress", "submit"):
            t0 = time.perf_counter()
            result = hespot(*self.argv(step, self.ref))
            if result.returncode != 0:
                raise RuntimeError(f"reference {step} failed: {result.stderr[-2000:]}")
            self.seconds[step] = time.perf_counter() - t0

    def argv(self, step: str, out: Path) -> list:
        store = out / "embeddings.zarr"
        if step == "embed":
            return ["embed", "--h5", self.base, "--store", store, *EMBED]
        if step == "regress":
            return ["regress", "--h5", self.base, "--store", store, "--out", out, *REGRESS]
        return ["submit", "--h5", self.base, "--out", out, "--quiet"]

    def prepare(self, step: str, out: Path) -> None:
        """``out`` holds what ``step`` reads: the reference's outputs of the steps before."""
        if step in ("regress", "submit"):
            shutil.copytree(self.ref, out)
            drop = ["submission.csv", "submission.json", "predictions.h5ad"]
            if step == "regress":
                drop += ["report.json", "predictions"]
            for name in drop:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    def same(self, step: str, out: Path) -> bool:
        if step == "embed":
            return same_store(self.ref / "embeddings.zarr", out / "embeddings.zarr")
        if step == "regress":
            return same_scores(self.ref, out)
        return same_submission(self.ref, out)

    def killed_then_rerun(self, step: str, fraction: float) -> bool:
        out = self.root / f"kill_{step}_{int(fraction * 100)}"
        self.prepare(step, out)
        proc = hespot(*self.argv(step, out), wait=False)
        time.sleep(fraction * self.seconds[step])
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        result = hespot(*self.argv(step, out))
        return result.returncode == 0 and self.same(step, out)

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


def run_suite(root: Path, fractions: tuple[float, ...] = (0.2, 0.5, 0.8),
              log: Callable[[str], None] = print) -> dict[str, tuple[int, int]]:
    """Run every case under ``root``; returns {kind: (passed, total)}."""
    base = write_synthetic(root / "synthetic.h5")
    counts = {}
    bad = {name: case() for name, case in bad_input_cases(root, base).items()}
    steps = Steps(root, base)
    kills = {f"{s}@{f:.0%}": steps.killed_then_rerun(s, f)
             for s in ("embed", "regress", "submit") for f in fractions}
    concurrent = {s: steps.concurrent(s) for s in ("embed", "regress", "submit")}
    for kind, cases in (("bad_inputs_refused", bad), ("kills_survived", kills),
                        ("concurrent_safe", concurrent)):
        for name, ok in cases.items():
            log(f"{'ok  ' if ok else 'FAIL'} {kind}: {name}")
        counts[kind] = (sum(cases.values()), len(cases))
    return counts


def summary(counts: dict[str, tuple[int, int]]) -> str:
    return "faults " + " ".join(f"{k}={n}/{m}" for k, (n, m) in counts.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests/fault_suite.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kill-at", default="0.2,0.5,0.8",
                   help="fractions of an uninterrupted run's time at which to SIGKILL")
    args = p.parse_args(argv)
    fractions = tuple(float(v) for v in args.kill_at.split(","))
    with tempfile.TemporaryDirectory(prefix="hespot-faults-") as tmp:
        counts = run_suite(Path(tmp), fractions)
    print(summary(counts))
    return 0 if all(n == m for n, m in counts.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
