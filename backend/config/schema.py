"""The PyTC legacy (yacs) config tree: every key, its PyTC default, type, range and help.

One table drives everything: the loader fills defaults from it, the validator checks
against it, the JSON Schema and the browser wizard are generated from it. Defaults follow
PyTorch Connectomics' `connectomics/config/defaults.py`; keys found only in older releases
or in later forks are included too, so that published configs load as they are.

`core` marks keys a Trainboard training run honours. Every other key is accepted (a real
config must load) and reported as "accepted, not used" when the user changes it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from backend.config import architectures as arch
from backend.config.targets import (
    ACTIVATIONS,
    FAMILIES,
    LOSSES,
    REGULARIZERS,
    TARGETS_HELP,
)
from backend.config.targets import target_channels as target_channels  # re-exported
from backend.config.valuetypes import alternatives

Widget = Literal["slider", "log-slider", "select", "toggle", "number", "text", "list"]

SECTIONS_TOP = ("SYSTEM", "MODEL", "DATASET", "AUGMENTOR", "SOLVER", "MONITOR", "INFERENCE")

# Every model of PyTC v1.0.0's model map (backend/config/architectures.py: what each reads).
SUPPORTED_ARCHITECTURES = arch.ARCHITECTURES
ARCHITECTURES_2D = arch.ARCHITECTURES_2D
UNET_ARCHITECTURES = arch.UNETS
PYTC_ONLY_ARCHITECTURES: tuple[str, ...] = ()
# Names used by older PyTC releases and the configs written for them.
OLD_ARCHITECTURE_NAMES: dict[str, str] = {
    "unet_residual_3d": "unet_3d",
    "unet_residual_2d": "unet_2d",
    "unet_residual": "unet_3d",
    "unet_super": "unet_plus_3d",
    "super": "unet_plus_3d",
    "fpn": "fpn_3d",
}

# Losses, activations, regularisers and targets: PyTC v1.0.0's, all trained
# (backend/config/targets.py holds their grammar and the constraints between them).
SUPPORTED_LOSSES = LOSSES
SUPPORTED_REGULARIZERS = tuple(REGULARIZERS)
SUPPORTED_OPTIMIZERS = ("SGD", "Adam", "AdamW")
# DATASET.PAD_MODE: numpy.pad modes. Trainboard pads virtually (a patch reads mirrored or
# clamped indices), which these allow; the statistic modes need the whole padded volume.
PAD_MODES = ("reflect", "constant", "symmetric", "edge", "wrap")
PYTC_ONLY_PAD_MODES = ("linear_ramp", "maximum", "mean", "median", "minimum", "empty")
SUPPORTED_SCHEDULERS = (
    "MultiStepLR",
    "WarmupMultiStepLR",
    "WarmupCosineLR",
    "ReduceLROnPlateau",
)
PYTC_ONLY_SCHEDULERS = ("OneCycle",)
WARMUP_METHODS = ("linear", "constant")
CLIP_TYPES = ("value", "norm")
# Values PyTC v1.0.0 lists but cannot run: (key, value) -> why, and what works instead.
PYTC_CANNOT_RUN: dict[tuple[str, str], tuple[str, str]] = {
    ("SOLVER.LR_SCHEDULER_NAME", "OneCycle"): (
        "PyTC v1.0.0 lists 'OneCycle' but cannot build it (its builder reads SOLVER.MAX_ITER, "
        "which does not exist)",
        "WarmupCosineLR",
    ),
}
# Float keys where an infinite value means something (every other key must be finite).
INFINITE_ALLOWED = ("SOLVER.CLIP_GRADIENTS.NORM_TYPE",)
# Keys whose range is advice: PyTC (and torch) train with values outside it, so a value
# outside is a warning, not an error (GAMMA 2 raises the rate at each step, and so on).
ADVISORY_RANGES = ("SOLVER.GAMMA", "SOLVER.MOMENTUM", "SOLVER.WARMUP_FACTOR")
MULTISTEP_SCHEDULERS = ("MultiStepLR", "WarmupMultiStepLR")
WARMUP_SCHEDULERS = ("WarmupMultiStepLR", "WarmupCosineLR")
OUTPUT_ACTIVATIONS = ACTIVATIONS
# '8' (dilated instance EDT) is made but cannot be trained: PyTC's Criterion has no '8'.
SUPPORTED_TARGETS = tuple(f for f in FAMILIES if f != "8")


def pooling_factors(architecture: str, filters: int, isotropy: list[bool]) -> tuple[int, int, int]:
    """How often each patch axis (z, y, x) is halved by the U-Net encoder.

    PyTC's U-Nets downsample once per level after the first: (1, 2, 2) on anisotropic
    levels and (2, 2, 2) on isotropic ones; 2D models only downsample y and x.
    """
    levels = max(filters - 1, 0)
    xy = 2**levels
    if architecture in ARCHITECTURES_2D:
        return 1, xy, xy
    z = 2 ** sum(1 for iso in isotropy[1:filters] if iso)
    return z, xy, xy


@dataclass(frozen=True, slots=True)
class Ui:
    """How the browser wizard renders a key (min/max/step are the control's, not limits)."""

    widget: Widget
    min: float | None = None
    max: float | None = None
    step: float | None = None


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    default: Any
    type: str
    help: str
    core: bool = False
    choices: tuple[str, ...] = ()
    pytc_only: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    length: int | None = None
    ui: Ui | None = None

    @property
    def section(self) -> str:
        return self.name.rsplit(".", 1)[0]

    @property
    def leaf(self) -> str:
        return self.name.rsplit(".", 1)[1]

    @property
    def widget(self) -> Widget:
        if self.ui is not None:
            return self.ui.widget
        alts = alternatives(self.type)
        if alts[0].startswith("list["):
            return "list"
        if self.choices:
            return "select"
        if alts[0] == "bool":
            return "toggle"
        if alts[0] in ("int", "float"):
            return "number"
        return "text"


KEYS: dict[str, Key] = {}


def _key(
    name: str,
    default: Any,
    type_: str,
    help_: str,
    *,
    core: bool = False,
    choices: tuple[str, ...] = (),
    pytc_only: tuple[str, ...] = (),
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
    length: int | None = None,
    ui: Ui | None = None,
) -> None:
    assert name not in KEYS, name
    KEYS[name] = Key(
        name=name,
        default=default,
        type=type_,
        help=help_,
        core=core,
        choices=choices,
        pytc_only=pytc_only,
        minimum=minimum,
        maximum=maximum,
        exclusive_minimum=exclusive_minimum,
        exclusive_maximum=exclusive_maximum,
        length=length,
        ui=ui,
    )


PROBABILITY_UI = Ui("slider", 0.0, 1.0, 0.05)
SLICES = "str|list[str]|None"

# The table is aligned by hand for reading; the formatter would give each call ten lines.
# fmt: off
# --- SYSTEM -------------------------------------------------------------------------------
_key("SYSTEM.NUM_GPUS", 4, "int", "GPUs to train on; 0 trains on the CPU", core=True,
     minimum=0, ui=Ui("slider", 0, 8, 1))
_key("SYSTEM.NUM_CPUS", 4, "int", "data-loading worker processes", core=True,
     minimum=0, ui=Ui("slider", 0, 32, 1))
_key("SYSTEM.DISTRIBUTED", False, "bool",
     "DistributedDataParallel: one process per GPU (as PARALLEL: DDP)", core=True)
_key("SYSTEM.PARALLEL", "DP", "str",
     "multi-GPU mode: DP splits each batch over the GPUs of one process; DDP runs one "
     "process per GPU, SAMPLES_PER_BATCH each", core=True, choices=("DP", "DDP"))
_key("SYSTEM.DISTRIBUTED_BACKEND", "nccl", "str",
     "torch.distributed backend on CUDA (the CPU always uses gloo)", core=True,
     choices=("nccl", "gloo", "mpi"))
_key("SYSTEM.DEBUG", False, "bool", "PyTC debug mode")

# --- MODEL --------------------------------------------------------------------------------
_key("MODEL.ARCHITECTURE", "unet_3d", "str", "network architecture", core=True,
     choices=SUPPORTED_ARCHITECTURES, pytc_only=PYTC_ONLY_ARCHITECTURES)
_key("MODEL.BLOCK_TYPE", "residual", "str",
     "building block: U-Nets residual / residual_se (3D also residual_pa, residual_se_pa); "
     "fpn_3d resnet / botnet residual(_se), efficientnet inverted_res(_dilated)", core=True,
     choices=arch.BLOCK_TYPES)
_key("MODEL.BACKBONE", "resnet", "str",
     "fpn_3d: resnet, repvgg, botnet, efficientnet; deeplabv3*: resnet50 ... wide_resnet101_2",
     core=True, choices=arch.BACKBONES)
_key("MODEL.DEPLOY_MODE", False, "bool", "RepVGG deploy mode (one fused conv per block)",
     core=True)
_key("MODEL.FILTERS", [28, 36, 48, 64, 80], "list[int]", "channels per U-Net level",
     core=True, minimum=1)
_key("MODEL.BLOCKS", [2, 2, 2, 2], "list[int]", "blocks per fpn_3d backbone stage", core=True,
     minimum=1)
_key("MODEL.KERNEL_SIZES", [3, 3, 5, 3, 3], "list[int]", "kernel sizes (EfficientNet)",
     core=True, minimum=1)
_key("MODEL.ATTENTION", "squeeze_excitation", "str", "attention type (EfficientNet)",
     core=True)
_key("MODEL.ISOTROPY", [False, False, False, True, True], "list[bool]",
     "per level: isotropic (3,3,3) kernels and z downsampling, else anisotropic (1,3,3)",
     core=True)
_key("MODEL.TARGET_OPT", ["0"], "list[str]", f"learning targets: {TARGETS_HELP}", core=True)
_key("MODEL.TARGET_OPT_MULTISEG_SPLIT", None, "any", "multi-segment target split")
_key("MODEL.LABEL_EROSION", None, "int|list[int]|None",
     "split touching instances: erase pixels whose (2r+1)^2 window holds two ids; one rate "
     "or one per target", core=True, minimum=0)
_key("MODEL.LABEL_DILATION", None, "int|list[int]|None",
     "dilate instances in-plane by r pixels; one rate or one per target", core=True,
     minimum=0)
_key("MODEL.WEIGHT_OPT", [["1"]], "list[list[str]]",
     "pixel weight per loss: '1' class balance, '1-1' balance on the dilated foreground, "
     "'2-w0-w1' U-Net border weight, '0' none (the valid mask, if any)", core=True)
_key("MODEL.LOSS_OPTION", [["WeightedBCE"]], "list[list[str]]",
     "losses, one list per target", core=True, choices=SUPPORTED_LOSSES)
_key("MODEL.OUTPUT_ACT", [["none"]], "list[list[str]]",
     "activation applied before each loss", core=True, choices=OUTPUT_ACTIVATIONS)
_key("MODEL.LOSS_WEIGHT", [[1.0]], "list[list[float]]", "weight of each loss", core=True,
     minimum=0.0)
_key("MODEL.LOSS_KWARGS_KEY", None, "any",
     "loss arguments, names: one list per loss of each target", core=True)
_key("MODEL.LOSS_KWARGS_VAL", None, "any", "loss arguments, values (as LOSS_KWARGS_KEY)",
     core=True)
_key("MODEL.IN_PLANES", 1, "int", "input channels (1 for grayscale EM)", core=True, minimum=1,
     ui=Ui("number", 1, 16, 1))
_key("MODEL.OUT_PLANES", 1, "int", "output channels: the sum of the targets' channels",
     core=True, minimum=1, ui=Ui("number", 1, 16, 1))
_key("MODEL.PAD_MODE", "replicate", "str", "convolution padding", core=True,
     choices=("zeros", "circular", "reflect", "replicate"))
_key("MODEL.NORM_MODE", "bn", "str", "normalisation layers (sync_bn on one device is bn)",
     core=True,
     choices=("bn", "sync_bn", "in", "gn", "none"))
_key("MODEL.ACT_MODE", "elu", "str", "activation layers", core=True,
     choices=arch.ACT_MODES)
_key("MODEL.POOLING_LAYER", False, "bool", "downsample with pooling instead of strides",
     core=True)
_key("MODEL.MIXED_PRECESION", False, "bool",
     "automatic mixed precision on CUDA (PyTC's spelling)", core=True)
_key("MODEL.EMBEDDING", 1, "int", "embedding mode")
_key("MODEL.HEAD_DEPTH", 1, "int", "depth of the last decoder head", minimum=1)
_key("MODEL.INPUT_SIZE", [8, 256, 256], "list[int]", "training patch size (z, y, x)",
     core=True, minimum=1, length=3)
_key("MODEL.OUTPUT_SIZE", [8, 256, 256], "list[int]", "output patch size (z, y, x)",
     core=True, minimum=1, length=3)
_key("MODEL.REGU_OPT", None, "list[str]|None", "regularisers between output channels",
     core=True, choices=SUPPORTED_REGULARIZERS)
_key("MODEL.REGU_TARGET", None, "list[list[int]]|None",
     "per regulariser: the TARGET_OPT indices it reads", core=True, minimum=0)
_key("MODEL.REGU_WEIGHT", None, "list[float]|None", "weight of each regulariser", core=True,
     minimum=0.0)
_key("MODEL.FINETUNE", "", "str", "suffix for fine-tuned checkpoints")
_key("MODEL.EXACT", True, "bool", "pretrained weights must match exactly")
_key("MODEL.SIZE_MATCH", True, "bool", "load only weights whose shapes match")
_key("MODEL.PRE_MODEL", "", "str",
     "checkpoint to start from; resumed unless SOLVER.ITERATION_RESTART (PyTC); '' for none",
     core=True)
_key("MODEL.PRE_MODEL_LAYER", "", "str|list[str]", "layers to take from the pretrained model")
_key("MODEL.PRE_MODEL_ITER", 0, "int", "iteration to start at with SOLVER.ITERATION_RESTART",
     core=True, minimum=0)
_key("MODEL.PRE_MODEL_LAYER_SELECT", -1, "int|list[int]", "older PyTC: layer selection")
_key("MODEL.RETURN_FEATS", None, "any", "return these feature maps (3D U-Net)", core=True)
_key("MODEL.AUX_OUT", False, "bool", "auxiliary output (2D DeepLabV3), trained as PyTC does",
     core=True)
# UNETR / Swin UNETR (MONAI building blocks, as PyTC).
_key("MODEL.SWIN_UNETR_FEATURE_SIZE", 48, "int", "Swin UNETR feature size", minimum=1, core=True)
_key("MODEL.DEPTHS", [2, 2, 2, 2], "list[int]", "Swin UNETR layers per stage", minimum=1, core=True)
_key("MODEL.SWIN_UNETR_NUM_HEADS", [3, 6, 12, 24], "list[int]", "Swin UNETR attention heads",
     minimum=1)
_key("MODEL.NORM_NAME", "instance", "str", "UNETR / Swin UNETR normalisation", core=True,
     choices=arch.UNETR_NORMS)
_key("MODEL.SWIN_UNETR_DROPOUT_RATE", 0.0, "float", "Swin UNETR dropout", minimum=0.0,
     maximum=1.0)
_key("MODEL.ATTN_DROP_RATE", 0.0, "float", "attention dropout", minimum=0.0, maximum=1.0, core=True)
_key("MODEL.DROPOUT_PATH_RATE", 0.0, "float", "drop-path rate", minimum=0.0, maximum=1.0, core=True)
_key("MODEL.NORMALIZE", True, "bool", "normalise intermediate features (Swin UNETR)", core=True)
_key("MODEL.USE_CHECKPOINT", False, "bool", "gradient checkpointing (Swin UNETR)", core=True)
_key("MODEL.SPATIAL_DIMS", 3, "int", "spatial dimensions (UNETR)", minimum=2, maximum=3, core=True)
_key("MODEL.DOWNSAMPLE", "merging", "str", "Swin UNETR patch merging", core=True,
     choices=arch.SWIN_DOWNSAMPLES)
_key("MODEL.USE_V2", False, "bool", "Swin UNETR v2", core=True)
_key("MODEL.UNETR_FEATURE_SIZE", 16, "int", "UNETR feature size", minimum=1, core=True)
_key("MODEL.HIDDEN_SIZE", 768, "int", "UNETR hidden size", minimum=1, core=True)
_key("MODEL.MLP_DIM", 3072, "int", "UNETR feed-forward size", minimum=1, core=True)
_key("MODEL.UNETR_NUM_HEADS", 12, "int", "UNETR attention heads", minimum=1, core=True)
_key("MODEL.POS_EMBED", "perceptron", "str", "UNETR patch embedding", core=True,
     choices=arch.POS_EMBEDS)
_key("MODEL.CONV_BLOCK", True, "bool", "UNETR convolutional block", core=True)
_key("MODEL.RES_BLOCK", True, "bool", "UNETR residual block", core=True)
_key("MODEL.UNETR_DROPOUT_RATE", 0.0, "float", "UNETR dropout", minimum=0.0, maximum=1.0, core=True)

# --- DATASET ------------------------------------------------------------------------------
_key("DATASET.DATA_SCALE", [1.0, 1.0, 1.0], "list[float]", "resampling of the input (z, y, x)",
     minimum=0.0, exclusive_minimum=True, length=3)
_key("DATASET.IMAGE_SCALE", None, "any", "per-volume image resampling")
_key("DATASET.LABEL_SCALE", None, "any", "per-volume label resampling")
_key("DATASET.VALID_MASK_SCALE", None, "any", "per-volume valid-mask resampling")
_key("DATASET.SCALE_FACTOR", [2, 3, 3], "list[int]", "super-resolution scale", minimum=1)
_key("DATASET.IMAGE_NAME", None, SLICES,
     "training image volume(s), relative to INPUT_PATH; '@' joins several, globs are stacks",
     core=True)
_key("DATASET.LABEL_NAME", None, SLICES, "training label volume(s), one per image", core=True)
_key("DATASET.VALID_MASK_NAME", None, SLICES, "masks of annotated regions", core=True)
_key("DATASET.VAL_IMAGE_NAME", None, SLICES,
     "validation image volume(s); unset: part of the training data is held out", core=True)
_key("DATASET.VAL_LABEL_NAME", None, SLICES, "validation label volume(s)", core=True)
_key("DATASET.VAL_VALID_MASK_NAME", None, SLICES, "validation masks of annotated regions")
_key("DATASET.VAL_PAD_SIZE", [0, 0, 0], "list[int]", "padding of validation volumes",
     minimum=0, length=3)
_key("DATASET.LABEL_VAST", False, "bool", "labels are VAST RGB-encoded")
_key("DATASET.INPUT_PATH", "path/to/input", "str", "folder of the volumes ('@' joins several)",
     core=True, ui=Ui("text"))
_key("DATASET.OUTPUT_PATH", "path/to/output", "str", "checkpoints and logs go here",
     core=True, ui=Ui("text"))
_key("DATASET.IS_ABSOLUTE_PATH", False, "bool", "volume names are absolute paths")
_key("DATASET.IS_ISOTROPIC", False, "bool", "the data is isotropic (input/output convs)",
     core=True)
_key("DATASET.DO_2D", False, "bool", "train a 2D model on slices", core=True)
_key("DATASET.LOAD_2D", False, "bool", "the volumes are 2D images", core=True)
_key("DATASET.DROP_CHANNEL", True, "bool", "drop extra channels of multi-channel volumes")
_key("DATASET.REDUCE_LABEL", True, "bool",
     "renumber each crop's ids 1..N before making targets (off for '9' targets)", core=True)
_key("DATASET.PAD_SIZE", [2, 64, 64], "list[int]", "padding of the input volumes (z, y, x)",
     core=True, minimum=0, length=3)
_key("DATASET.PAD_MODE", "reflect", "str", "padding mode of the input volumes (numpy.pad)",
     core=True, choices=PAD_MODES, pytc_only=PYTC_ONLY_PAD_MODES)
_key("DATASET.ENSURE_MIN_SIZE", False, "bool", "upsample volumes smaller than a patch")
_key("DATASET.NORMALIZE_RANGE", True, "bool", "rescale images to uint8 range")
_key("DATASET.LABEL_BINARY", False, "bool", "labels are binary masks")
_key("DATASET.LABEL_MAG", 0, "int", "label magnification")
_key("DATASET.LABEL_EROSION", None, "int|list[int]|None",
     "older PyTC: see MODEL.LABEL_EROSION", core=True, minimum=0)
_key("DATASET.DO_CHUNK_TITLE", 0, "int", "tiled (chunked) dataset: 1 on", minimum=0, maximum=1)
_key("DATASET.DATA_CHUNK_NUM", [1, 1, 1], "list[int]", "chunks per axis (tiled dataset)",
     minimum=1, length=3)
_key("DATASET.DATA_CHUNK_IND", None, "any", "chunks to iterate (tiled dataset)")
_key("DATASET.CHUNK_IND_SPLIT", None, "any", "chunk index split (tiled dataset)")
_key("DATASET.DATA_COORD_RANGE", None, "any", "coordinate range (tiled dataset)")
_key("DATASET.DATA_CHUNK_NUM_IND", None, "any", "older PyTC: chunks to iterate")
_key("DATASET.PRE_LOAD_DATA", None, "any", "older PyTC: preloaded data")
_key("DATASET.DATA_CHUNK_STRIDE", True, "bool", "overlapping chunks (tiled dataset)")
_key("DATASET.DATA_CHUNK_ITER", 1000, "int", "iterations per chunk (tiled dataset)", minimum=1)
_key("DATASET.VALID_RATIO", 0.5, "float", "use patches whose annotated share is above this",
     core=True, minimum=0.0, maximum=1.0)
_key("DATASET.REJECT_SAMPLING.SIZE_THRES", -1, "int",
     "resample patches with fewer foreground voxels; -1 off", core=True, minimum=-1)
_key("DATASET.REJECT_SAMPLING.DIVERSITY", -1, "int",
     "resample patches with fewer distinct label values; -1 off", core=True, minimum=-1)
_key("DATASET.REJECT_SAMPLING.P", 0.95, "float", "probability of rejecting a patch",
     core=True, minimum=0.0, maximum=1.0, ui=PROBABILITY_UI)
_key("DATASET.REJECT_SAMPLING.NUM_TRIAL", 50, "int", "tries before accepting a patch",
     minimum=1)
_key("DATASET.MEAN", 0.5, "float", "input normalisation mean (after scaling to [0, 1])",
     core=True, ui=Ui("slider", 0.0, 1.0, 0.01))
_key("DATASET.STD", 0.5, "float", "input normalisation standard deviation", core=True,
     minimum=0.0, exclusive_minimum=True, ui=Ui("slider", 0.01, 1.0, 0.01))
_key("DATASET.MATCH_ACT", "none", "str", "activation matched on the input")
_key("DATASET.DISTRIBUTED", False, "bool",
     "DDP, each rank loading its share of the training volumes", core=True)

# --- AUGMENTOR ----------------------------------------------------------------------------
# PyTC v1.0.0's augmentor (backend/augment): every augmentation but COPYPASTE is applied.
_key("AUGMENTOR.ENABLED", True, "bool", "data augmentation on", core=True)
_key("AUGMENTOR.SMOOTH", False, "bool", "smooth label masks after augmentation", core=True)
_key("AUGMENTOR.ADDITIONAL_TARGETS_NAME", ["label"], "list[str]", "extra augmented volumes",
     core=True)
_key("AUGMENTOR.ADDITIONAL_TARGETS_TYPE", ["mask"], "list[str]", "their kinds (mask or img)",
     core=True, choices=("mask", "img"))

# Core augmentations: what Trainboard applies. COPYPASTE is accepted, not applied.
CORE_AUGMENTATIONS = (
    "ROTATE", "RESCALE", "FLIP", "ELASTIC", "GRAYSCALE", "MISSINGPARTS", "MISSINGSECTION",
    "MISALIGNMENT", "MOTIONBLUR", "CUTBLUR", "CUTNOISE",
)
AUGMENTATIONS: dict[str, tuple[bool, float, str]] = {
    # name: (enabled by default, P, help)
    "ROTATE": (True, 1.0, "rotations in the x-y plane"),
    "RESCALE": (True, 0.5, "random rescaling"),
    "FLIP": (True, 1.0, "random flips"),
    "ELASTIC": (True, 0.75, "elastic deformation"),
    "GRAYSCALE": (True, 0.75, "brightness and contrast changes"),
    "MISSINGPARTS": (True, 0.9, "masked-out regions"),
    "MISSINGSECTION": (True, 0.5, "missing sections"),
    "MISALIGNMENT": (True, 0.5, "section misalignment"),
    "MOTIONBLUR": (True, 0.5, "motion blur"),
    "CUTBLUR": (True, 0.5, "CutBlur"),
    "CUTNOISE": (True, 0.75, "CutNoise"),
    "COPYPASTE": (False, 0.8, "copy-paste of objects"),
}
for _aug, (_on, _p, _help) in AUGMENTATIONS.items():
    _core = _aug in CORE_AUGMENTATIONS
    _key(f"AUGMENTOR.{_aug}.ENABLED", _on, "bool", f"apply {_help}", core=_core)
    _key(f"AUGMENTOR.{_aug}.P", _p, "float", f"probability of {_help}", core=_core,
         minimum=0.0, maximum=1.0, ui=PROBABILITY_UI)
    _key(f"AUGMENTOR.{_aug}.SKIP", [], "list[str]", "sample keys this augmentation skips",
         core=_core)
_key("AUGMENTOR.ROTATE.ROT90", True, "bool",
     "rotate by multiples of 90 degrees; False: by any angle", core=True)
_key("AUGMENTOR.RESCALE.FIX_ASPECT", False, "bool", "keep the aspect ratio", core=True)
_key("AUGMENTOR.FLIP.DO_ZTRANS", 0, "int", "also swap z with x/y (isotropic data)",
     core=True, minimum=0, maximum=1)
_key("AUGMENTOR.ELASTIC.ALPHA", 16.0, "float", "maximum pixel displacement", core=True,
     minimum=0.0)
_key("AUGMENTOR.ELASTIC.SIGMA", 4.0, "float", "Gaussian smoothing of the displacement",
     core=True, minimum=0.0, exclusive_minimum=True)
_key("AUGMENTOR.MISSINGPARTS.ITER", 64, "int", "size of the masked regions", core=True,
     minimum=1)
_key("AUGMENTOR.MISSINGSECTION.NUM_SECTION", 2, "int", "sections removed", core=True,
     minimum=1)
_key("AUGMENTOR.MISALIGNMENT.DISPLACEMENT", 16, "int", "maximum shift in pixels", core=True,
     minimum=1)
_key("AUGMENTOR.MISALIGNMENT.ROTATE_RATIO", 0.5, "float", "fraction done by rotation",
     core=True, minimum=0.0, maximum=1.0)
_key("AUGMENTOR.MOTIONBLUR.SECTIONS", 2, "int", "sections blurred", core=True, minimum=1)
_key("AUGMENTOR.MOTIONBLUR.KERNEL_SIZE", 11, "int", "blur kernel size", core=True, minimum=1)
_key("AUGMENTOR.CUTBLUR.LENGTH_RATIO", 0.4, "float", "size of the cut region", core=True,
     minimum=0.0, maximum=1.0)
_key("AUGMENTOR.CUTBLUR.DOWN_RATIO_MIN", 2.0, "float", "minimum downsampling", core=True,
     minimum=1.0)
_key("AUGMENTOR.CUTBLUR.DOWN_RATIO_MAX", 8.0, "float", "maximum downsampling", core=True,
     minimum=1.0)
_key("AUGMENTOR.CUTBLUR.DOWNSAMPLE_Z", False, "bool", "also downsample z", core=True)
_key("AUGMENTOR.CUTNOISE.LENGTH_RATIO", 0.4, "float", "size of the cut region", core=True,
     minimum=0.0, maximum=1.0)
_key("AUGMENTOR.CUTNOISE.SCALE", 0.3, "float", "noise scale", core=True, minimum=0.0)
_key("AUGMENTOR.COPYPASTE.AUG_THRES", 0.7, "float", "copy-paste threshold",
     minimum=0.0, maximum=1.0)

# --- SOLVER -------------------------------------------------------------------------------
_key("SOLVER.NAME", "SGD", "str", "optimizer", core=True, choices=SUPPORTED_OPTIMIZERS)
_key("SOLVER.LR_SCHEDULER_NAME", "MultiStepLR", "str", "learning-rate schedule", core=True,
     choices=SUPPORTED_SCHEDULERS, pytc_only=PYTC_ONLY_SCHEDULERS)
_key("SOLVER.ITERATION_STEP", 1, "int", "gradient accumulation steps", core=True, minimum=1)
_key("SOLVER.ITERATION_SAVE", 5000, "int", "save a checkpoint every N iterations", core=True,
     minimum=1, ui=Ui("log-slider", 1, 1_000_000, 1))
_key("SOLVER.ITERATION_TOTAL", 40000, "int", "training length in iterations", core=True,
     minimum=1, ui=Ui("log-slider", 1, 1_000_000, 1))
_key("SOLVER.ITERATION_VAL", 5000, "int", "validate every N iterations", core=True,
     minimum=1, ui=Ui("log-slider", 1, 1_000_000, 1))
_key("SOLVER.ITERATION_RESTART", False, "bool",
     "load only a checkpoint's weights; start at MODEL.PRE_MODEL_ITER", core=True)
_key("SOLVER.BASE_LR", 0.001, "float", "base learning rate", core=True, minimum=0.0,
     exclusive_minimum=True, ui=Ui("log-slider", 1e-5, 1.0, None))
_key("SOLVER.BIAS_LR_FACTOR", 1.0, "float", "learning-rate factor for biases", core=True,
     minimum=0.0)
_key("SOLVER.WEIGHT_DECAY_BIAS", 0.0, "float", "weight decay of biases", core=True,
     minimum=0.0)
_key("SOLVER.MOMENTUM", 0.9, "float", "SGD momentum", core=True, minimum=0.0, maximum=1.0,
     ui=Ui("slider", 0.0, 1.0, 0.01))
_key("SOLVER.BETAS", [0.9, 0.999], "list[float]", "Adam/AdamW betas", core=True,
     minimum=0.0, maximum=1.0, exclusive_maximum=True, length=2)
_key("SOLVER.WEIGHT_DECAY", 0.0001, "float", "weight decay", core=True, minimum=0.0,
     ui=Ui("number", 0.0, 0.1, None))
_key("SOLVER.WEIGHT_DECAY_NORM", 0.0, "float", "weight decay of normalisation layers",
     core=True, minimum=0.0)
_key("SOLVER.GAMMA", 0.1, "float", "learning-rate decay factor at each step", core=True,
     minimum=0.0, maximum=1.0, exclusive_minimum=True, ui=Ui("slider", 0.01, 1.0, 0.01))
_key("SOLVER.STEPS", [30000, 35000], "list[int]", "iterations where the rate decays (MultiStep)",
     core=True, minimum=1)
_key("SOLVER.WARMUP_FACTOR", 0.001, "float", "starting fraction of the rate during warm-up",
     core=True, minimum=0.0, maximum=1.0)
_key("SOLVER.WARMUP_ITERS", 1000, "int", "warm-up length in iterations", core=True, minimum=0)
_key("SOLVER.WARMUP_METHOD", "linear", "str", "warm-up shape", core=True,
     choices=WARMUP_METHODS)
_key("SOLVER.SAMPLES_PER_BATCH", 2, "int", "patches per batch per device", core=True,
     minimum=1, ui=Ui("slider", 1, 64, 1))
_key("SOLVER.CLIP_GRADIENTS.ENABLED", False, "bool", "clip gradients", core=True)
_key("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "value", "str", "clip each value or the norm",
     core=True, choices=CLIP_TYPES)
_key("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 1.0, "float", "clipping threshold", core=True,
     minimum=0.0, exclusive_minimum=True)
_key("SOLVER.CLIP_GRADIENTS.NORM_TYPE", 2.0, "float", "p of the L-p norm (.inf for max)",
     core=True, minimum=0.0, exclusive_minimum=True)
_key("SOLVER.SWA.ENABLED", False, "bool", "stochastic weight averaging", core=True)
_key("SOLVER.SWA.LR_FACTOR", 0.05, "float", "SWA learning rate, as a factor of BASE_LR",
     core=True, minimum=0.0)
_key("SOLVER.SWA.START_ITER", 90000, "int", "iteration SWA starts", core=True, minimum=0)
_key("SOLVER.SWA.MERGE_ITER", 10, "int", "average every N iterations", core=True, minimum=1)
_key("SOLVER.SWA.BN_UPDATE_ITER", 2000, "int", "batch-norm update iterations at the end",
     core=True, minimum=0)

# --- MONITOR ------------------------------------------------------------------------------
_key("MONITOR.LOG_OPT", [1, 1, 0], "list[int]", "print, TensorBoard, text log (1 on)",
     minimum=0, maximum=1)
_key("MONITOR.VIS_OPT", [0, 16], "list[int]", "visualisation options", minimum=0)
_key("MONITOR.ITERATION_NUM", [20, 200], "list[int]",
     "log every N iterations (visualise every M: not used)", core=True, minimum=1, length=2)

# --- INFERENCE (carried by training configs; loaded and checked, not used) ----------------
_key("INFERENCE.INPUT_SIZE", None, "list[int]|None", "inference patch size", minimum=1,
     length=3)
_key("INFERENCE.OUTPUT_SIZE", None, "list[int]|None", "inference output size", minimum=1,
     length=3)
_key("INFERENCE.TENSORSTORE_PATH", None, "str|None", "TensorStore input")
_key("INFERENCE.INPUT_PATH", None, "str|None", "folder of the test volumes")
_key("INFERENCE.IMAGE_NAME", None, SLICES, "test volume(s)")
_key("INFERENCE.OUTPUT_PATH", "", "str", "where predictions go")
_key("INFERENCE.OUTPUT_NAME", "result.h5", "str", "prediction file name")
_key("INFERENCE.OUTPUT_DTYPE", "float32", "str", "prediction data type")
_key("INFERENCE.IS_ABSOLUTE_PATH", None, "bool|None", "test names are absolute paths")
_key("INFERENCE.DO_CHUNK_TITLE", None, "int|None", "tiled test dataset")
_key("INFERENCE.DO_SINGLY", False, "bool", "load test volumes one at a time")
_key("INFERENCE.DO_SINGLY_START_INDEX", 0, "int", "first test volume", minimum=0)
_key("INFERENCE.DO_SINGLY_STEP", 1, "int", "step between test volumes", minimum=1)
_key("INFERENCE.PAD_SIZE", None, "list[int]|None", "padding of test volumes", minimum=0,
     length=3)
_key("INFERENCE.UNPAD", True, "bool", "remove the padding from predictions")
_key("INFERENCE.OUTPUT_ACT", ["sigmoid"], "list[str]", "activation per target at inference",
     choices=OUTPUT_ACTIVATIONS)
_key("INFERENCE.STRIDE", [4, 128, 129], "list[int]", "sliding-window stride", minimum=1,
     length=3)
_key("INFERENCE.BLENDING", "gaussian", "str", "blending of overlapping windows",
     choices=("gaussian", "bump"))
_key("INFERENCE.AUG_MODE", "mean", "str", "test-time augmentation merge",
     choices=("mean", "min", "max"))
_key("INFERENCE.AUG_NUM", None, "int|None", "test-time augmentations", minimum=0)
_key("INFERENCE.DATA_SCALE", None, "list[float]|None", "overrides DATASET.DATA_SCALE",
     minimum=0.0, exclusive_minimum=True, length=3)
_key("INFERENCE.OUTPUT_SCALE", [1.0, 1.0, 1.0], "list[float]", "rescaling of predictions",
     minimum=0.0, exclusive_minimum=True, length=3)
_key("INFERENCE.DO_EVAL", True, "bool", "run the model in eval mode")
_key("INFERENCE.DO_3D", True, "bool", "older PyTC: 3D inference")
_key("INFERENCE.MODEL_OUTPUT_ID", [None], "any", "older PyTC: output channels to keep")
_key("INFERENCE.TEST_NUM", 1, "int", "test workers", minimum=1)
_key("INFERENCE.TEST_ID", 0, "int", "this test worker", minimum=0)
_key("INFERENCE.SAMPLES_PER_BATCH", 4, "int", "patches per batch per device", minimum=1)
_key("INFERENCE.MODEL_RETURN_FEATS", None, "any", "MODEL.RETURN_FEATS at inference")
# fmt: on


def _sections() -> frozenset[str]:
    out: set[str] = set()
    for name in KEYS:
        parts = name.split(".")
        for i in range(1, len(parts)):
            out.add(".".join(parts[:i]))
    return frozenset(out)


# Every dotted prefix of a key: the mappings of the tree.
SECTIONS = _sections()
# Sections a bare boolean may stand for (`ROTATE: True` means `ROTATE: {ENABLED: True}`).
SWITCHABLE_SECTIONS = frozenset(s for s in SECTIONS if f"{s}.ENABLED" in KEYS)


def defaults() -> dict[str, Any]:
    """The whole config tree with PyTC's defaults, as a fresh nested dict."""
    tree: dict[str, Any] = {}
    for key in KEYS.values():
        node = tree
        *parents, leaf = key.name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(key.default)
    return tree


def get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def put(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
