"""The stage-1 spec of a model's feature parts: read from the store when the model is fitted
(:func:`read_spec`), replayed when it predicts (:func:`stage1_config`, :func:`embed_as_spec`)
and checked against what stage 1 then stored (:func:`check_stored`).

Stage 1 runs as its own process (``python -m embed.run``, :mod:`data.child`), as ``make``
runs it, so stage 2 never imports torch.
"""

from __future__ import annotations

import functools
import json
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data.checksum import sha256_file
from data.child import run_module, run_module_echoed, user_error
from data.cluster import CLUSTER_FLAGS
from data.errors import ConfigError, DataError, Problem
from data.h5 import CanonicalH5
from data.store import BackboneItem, FeatureSpec, open_store
from regress.config import PredictConfig

log = logging.getLogger("hespot")

# stored settings that make a feature part what it is (compared when predicting)
IDENTITY_KEYS = ("timm_id", "weights_sha256", "tta_views", "input_size", "stage_indices",
                 "pad_mode")
# and the ones that only affect the last bits (compared with a warning)
RUN_KEYS = ("dtype", "runner", "batch_spots", "chunk_spots")


def identity(attrs: dict[str, Any]) -> dict[str, Any]:
    """What makes a stored backbone x slide's features what they are, from its group
    attributes: the identity settings, the patch (µm when the run gave it in µm, whatever
    each slide's pixel size made of it, else px), the context crops (px) and, where the
    group has them, the context crops in µm (whatever their px on each slide) and the stain
    levers' settings (``+macenko``, ``+hed``)."""
    settings, config = attrs["settings"], attrs.get("info", {}).get("config", {})
    patch = ["um", config["patch_um"]] if config.get("patch_um") else \
        ["px", settings["crops_px"][0]]
    out = {**{k: settings.get(k) for k in IDENTITY_KEYS}, "patch": patch,
           "contexts_px": settings["crops_px"][1:]}
    if settings.get("crops_um"):
        out["contexts_um"] = [um for um, _ in settings["crops_um"]]
    if settings.get("stain"):
        out["stain"] = settings["stain"]
    return json.loads(json.dumps(out))


def read_spec(store_path: str, spec: FeatureSpec, slides: Sequence[str]) -> dict[str, Any]:
    """How stage 1 made one feature part: its identity (the same on every training slide),
    the run settings, the array's layer and crop, and the run's patch size."""
    store = open_store(store_path)
    found = [dict(store[f"{spec.backbone}/{slide}"].attrs) for slide in slides]
    ids = [identity(a) for a in found]
    diff = sorted(k for k in ids[0] if len({json.dumps(i[k]) for i in ids}) > 1)
    if diff:
        raise DataError(Problem(store_path, "", f"{spec.backbone} settings ({', '.join(diff)})",
                                "the same stage-1 settings on every training slide",
                                "settings that differ between slides",
                                "rerun `make embeddings EMBED_ARGS=--overwrite`"))
    attrs = found[0]
    config = attrs["info"].get("config", {})
    return {"spec": str(spec), "backbone": spec.backbone, "array": spec.array,
            **attrs["arrays"][spec.array], "patch_px": config.get("patch_px"),
            "patch_um": config.get("patch_um"), "identity": ids[0],
            "weights_source": attrs["info"].get("weights_source"),
            "settings": {k: attrs["settings"].get(k) for k in (*IDENTITY_KEYS, "crops_px",
                                                                *RUN_KEYS)}}


def first_difference(part: dict, attrs: dict[str, Any]) -> str | None:
    """The first identity key in which a stored group differs from the part's spec."""
    have, want = identity(attrs), part["identity"]
    return next((k for k in want if json.dumps(have.get(k)) != json.dumps(want[k])), None)


def backbone_parts(features: Sequence[dict]) -> dict[str, dict]:
    """backbone -> its first feature part (every part of a backbone shares its settings)."""
    out: dict[str, dict] = {}
    for part in features:
        out.setdefault(part["backbone"], part)
    return out


def stage1_config(part: dict, h5: str, store: str, slides: Sequence[str],
                  weights: str | None = None, device: str = "auto",
                  threads: int | None = None, quiet: bool = True,
                  cluster: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings (``embed.run``'s EmbedConfig fields, as JSON) that remake a backbone's
    training run on ``slides``, as the model's spec recorded the run: the item (the store
    group with its stain levers, stages, crops in px and in µm: :class:`BackboneItem`), the
    TTA views, the patch (in µm where the run gave it in µm, else in px), the padding, the
    spots per batch and per chunk. Only the files (``h5``, ``store``, ``slides``) and the
    run-time choices are this run's: the device (and with it the precision and the runner),
    the weights file where the backbone came from one, the threads, the log (``quiet``)
    and the Dask cluster (``cluster``: ``workers``, ``threads_per_worker``, ``scheduler``
    where set)."""
    s = part["settings"]
    item = BackboneItem.of_group(part["backbone"], bool(s["stage_indices"]), s["crops_px"][1:],
                                 part["identity"].get("contexts_um", ()))
    patch = {"patch_um": part["patch_um"]} if part.get("patch_um") else \
        {"patch_px": s["crops_px"][0]}
    return {"h5": h5, "store": store, "backbones": [str(item)], "slides": list(slides),
            "tta": s["tta_views"], **patch, "pad_mode": s["pad_mode"],
            "batch_spots": s["batch_spots"], "chunk_spots": s["chunk_spots"],
            "weights": weights if part.get("weights_source") == "file" else None,
            "device": device, "threads": threads or None, "quiet": quiet,
            **{k: v for k, v in (cluster or {}).items() if v}}


def stored_slides(store_path: str, backbone: str, part: dict, slides: Sequence[str],
                  fingerprint) -> set[str]:
    """The slides whose backbone group is finished in the store, with the model's spec and
    from the same slide content (stage 1 need not run for them). ``fingerprint(slide)`` is
    called only for those candidates, so a new store hashes no image."""
    if not Path(store_path).exists():
        return set()
    store = open_store(store_path)
    found = set()
    for slide in slides:
        key = f"{backbone}/{slide}"
        if key not in store or "done" not in store[key]:
            continue
        try:
            attrs = dict(store[key].attrs)
            finished = first_difference(part, attrs) is None and bool(
                store[key]["done"][:].all())
            settings = attrs.get("settings", {})
            same = finished and settings.get("input_fingerprint") == fingerprint(slide)
        except (AttributeError, TypeError, KeyError, ValueError, RuntimeError) as exc:
            raise DataError(Problem(store_path, slide, key, "a store group as stage 1 "
                                    "writes it", f"unreadable ({type(exc).__name__}: "
                                    f"{exc})"[:300], "remove the store (or this group) to "
                                    "compute it again, or give another --store")) from exc
        if same:
            found.add(slide)
    return found


def embed_as_spec(bundle, cfg: PredictConfig, store: str, slides: Sequence[str]) -> None:
    """Run stage 1 for every backbone of the model on ``slides``: a child process each
    (``python -m embed.run --config -``, ended with this one: :mod:`data.child`), given the
    settings of :func:`stage1_config` through the command's own config loading; its log
    and progress bars shown with ``cfg.stage1_log``.

    Raises:
        DataError: stage 1 refused an input or setting (its message is passed on).
    """
    with CanonicalH5(cfg.h5) as h5:
        fingerprint = functools.cache(h5.fingerprint)
        stored = {name: stored_slides(store, name, part, slides, fingerprint)
                  for name, part in backbone_parts(bundle.meta["features"]).items()}
    for name, part in backbone_parts(bundle.meta["features"]).items():
        todo = [s for s in slides if s not in stored[name]]
        if not todo:
            log.info("stage 1: %s already stored for %s", name, ", ".join(slides))
            continue
        shown = cfg.stage1_log and not cfg.quiet
        cluster = {k: getattr(cfg, k) for k in CLUSTER_FLAGS}
        settings = json.dumps(stage1_config(part, cfg.h5, store, todo, cfg.weights,
                                            cfg.device, cfg.threads, not shown, cluster))
        log.info("stage 1: python -m embed.run --config - with %s", settings)
        proc = (run_module_echoed if shown else run_module)("embed.run", ["--config", "-"],
                                                           stdin=settings)
        for line in proc.stderr.splitlines() if proc.returncode == 0 and not shown else ():
            log.warning("stage 1: %s", line)
        message = user_error(proc)
        if message is not None:
            raise DataError(Problem(cfg.h5, "", f"stage 1 of {name}",
                                    "embeddings as the model's spec says", message,
                                    f"see the message; `echo {shlex.quote(settings)} | "
                                    "python -m embed.run --config -` reproduces it"))
        if proc.returncode != 0:
            raise RuntimeError(f"stage 1 of {name} failed (exit {proc.returncode}):\n"
                               f"{proc.stderr[-4000:]}")


def check_stored(bundle, store_path: str, slides: Sequence[str]) -> None:
    """The stored settings of every backbone x slide match the model's spec.

    Raises:
        DataError: a setting that makes the features what they are differs (weights,
            views, input size, stages, padding; crops where the patch is in pixels).
    """
    store = open_store(store_path)
    for name, part in backbone_parts(bundle.meta["features"]).items():
        want = part["identity"]
        for slide in slides:
            attrs = dict(store[f"{name}/{slide}"].attrs)
            k = first_difference(part, attrs)
            if k is not None:
                raise DataError(Problem(store_path, slide, f"{name}/{slide} {k}",
                                        f"{want[k]!r} (the model's spec)",
                                        repr(identity(attrs).get(k)), "embed with the "
                                        "model's settings: predict into a new --store"))
            have = attrs["settings"]
            other = [k for k in RUN_KEYS if have.get(k) != part["settings"].get(k)]
            if other:
                log.warning("%s / %s: stage 1 ran with other %s than the model's training "
                            "(%s); features may differ in the last bits", name, slide,
                            ", ".join(other),
                            {k: (part["settings"].get(k), have.get(k)) for k in other})


def require_weights(bundle, weights: str | None) -> None:
    """A backbone the model took from a local file needs that file (same sha256).

    Raises:
        ConfigError: no ``--weights`` given, or more than one such backbone.
        DataError: the file is missing or is another file than the model's.
    """
    parts = [p for p in backbone_parts(bundle.meta["features"]).values()
             if p.get("weights_source") == "file"]
    if not parts:
        if weights:
            log.warning("--weights %s is not used: no backbone of the model came from a "
                        "local weights file", weights)
        return
    if len(parts) > 1:
        raise ConfigError("the model reads several backbones with local weights files; "
                          "predict them one at a time is not supported")
    want = parts[0]["settings"]["weights_sha256"]
    if not weights:
        raise ConfigError(f"backbone {parts[0]['backbone']} of the model came from a local "
                          f"weights file (sha256 {want[:16]}...): pass it with --weights")
    path = Path(weights)
    if not path.is_file():
        raise DataError(Problem(weights, "", "--weights", "a weights file", "no such file",
                                "check the path"))
    digest = sha256_file(path)
    if digest != want:
        raise DataError(Problem(weights, "", "sha256", f"{want[:16]}... (the model's)",
                                f"{digest[:16]}...", "pass the weights file the model "
                                "was trained with"))
