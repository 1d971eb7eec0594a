"""Configs as PyTC users have them on disk: a full base, a short overlay, an old-style file."""

from __future__ import annotations

# A full 3D config in the style of PyTC's configs/MitoEM/MitoEM-R-Base.yaml (binary mask +
# instance contour), written as published configs are: quoted and unquoted strings, a
# tuple string, a YAML 1.1 string float (1e-02), sections and comments.
MITO_BASE = """\
# For binary mask & instance contour prediction.
# 30x8x8 nm in (z,y,x)
SYSTEM:
  NUM_GPUS: 0
  NUM_CPUS: 2
MODEL:
  ARCHITECTURE: unet_3d
  BLOCK_TYPE: residual_se
  INPUT_SIZE: [17, 225, 225]
  OUTPUT_SIZE: [17, 225, 225]
  IN_PLANES: 1
  OUT_PLANES: 2
  FILTERS: [32, 64, 96, 128, 160]
  TARGET_OPT: ["0", "4-2-1"]
  LOSS_OPTION:
    - ["WeightedBCEWithLogitsLoss", "DiceLoss"]
    - ["WeightedBCEWithLogitsLoss", "DiceLoss"]
  LOSS_WEIGHT: [[1.0, 1.0], [1.0, 0.5]]
  WEIGHT_OPT: [["1", "0"], ["1", "0"]]
  OUTPUT_ACT: [["none", "sigmoid"], ["none", "sigmoid"]]
DATASET:
  IMAGE_NAME: im_train.h5
  LABEL_NAME: mito_train.h5
  INPUT_PATH: datasets/MitoEM_R/ # or your own dataset path
  OUTPUT_PATH: outputs/MitoEM_R/
  PAD_SIZE: [4, 64, 64]
  MEAN: 0.5
  STD: 0.5
AUGMENTOR:
  ROTATE:
    ENABLED: True
    P: 0.5
  FLIP: {ENABLED: True, P: 1.0}
SOLVER:
  NAME: AdamW
  LR_SCHEDULER_NAME: WarmupCosineLR
  BASE_LR: 1e-02
  ITERATION_STEP: 1
  ITERATION_SAVE: 5000
  ITERATION_TOTAL: 150000
  ITERATION_VAL: 5000
  SAMPLES_PER_BATCH: 2
  STEPS: (80000, 120000)
  CLIP_GRADIENTS:
    ENABLED: True
    CLIP_TYPE: norm
    CLIP_VALUE: 1.0
MONITOR:
  ITERATION_NUM: [20, 200]
INFERENCE:
  INPUT_SIZE: [17, 257, 257]
  OUTPUT_SIZE: [17, 257, 257]
  IMAGE_NAME: im_test.h5
  OUTPUT_PATH: outputs/MitoEM_R/test/
  OUTPUT_NAME: result.h5
  PAD_SIZE: [4, 64, 64]
  AUG_MODE: mean
  AUG_NUM: 4
  STRIDE: [8, 128, 128]
  SAMPLES_PER_BATCH: 8
"""

# An overlay in the style of configs/SNEMI/SNEMI-Affinity-UNet.yaml: means nothing alone.
MITO_OVERLAY = """\
MODEL:
  ARCHITECTURE: 'unet_plus_3d'
SOLVER:
  BASE_LR: 0.02
  STEPS: (60000, 90000)
  ITERATION_TOTAL: 100000
DATASET:
  OUTPUT_PATH: 'outputs/MitoEM_R_plus'
"""

# In the style of the older configs/Lucchi-Mitochondria.yaml: an old architecture name
# and augmentations as bare booleans.
LUCCHI_OLD = """\
# All other configurations are set by default.
SYSTEM:
  NUM_GPUS: 0
  NUM_CPUS: 4
MODEL:
  ARCHITECTURE: 'unet_residual_3d'
  INPUT_SIZE: [112, 112, 112]
  OUTPUT_SIZE: [112, 112, 112]
  IN_PLANES: 1
  OUT_PLANES: 1
  LOSS_OPTION: [['WeightedBCE', 'DiceLoss']]
  LOSS_WEIGHT: [[1.0, 1.0]]
  TARGET_OPT: ['0']
  WEIGHT_OPT: [['1', '0']]
  OUTPUT_ACT: [['sigmoid', 'sigmoid']]
DATASET:
  IMAGE_NAME: 'img/train_im.tif'
  LABEL_NAME: 'label/train_label.tif'
  INPUT_PATH: 'path/to/Lucchi/'
  OUTPUT_PATH: 'outputs/unet_res_mito'
  PAD_SIZE: [4, 128, 128]
AUGMENTOR:
  ROTATE: True
  FLIP: True
SOLVER:
  LR_SCHEDULER_NAME: "WarmupMultiStepLR"
  BASE_LR: 0.001
  ITERATION_STEP: 1
  ITERATION_SAVE: 10000
  ITERATION_TOTAL: 60000
  SAMPLES_PER_BATCH: 4
  STEPS: (30000, 35000)
"""


def minimal(**sections: str) -> str:
    """A valid small config (no paths checked) with extra YAML lines per section."""
    body = {
        "SYSTEM": "  NUM_GPUS: 0\n",
        # PyTC's default loss, WeightedBCE, takes probabilities: its default 'none' fails.
        "MODEL": "  INPUT_SIZE: [8, 64, 64]\n  OUTPUT_ACT: [['sigmoid']]\n",
        "DATASET": "  IMAGE_NAME: im.npy\n  LABEL_NAME: lb.npy\n",
    }
    for name, lines in sections.items():
        body[name] = body.get(name, "") + lines
    return "".join(f"{name}:\n{lines}" for name, lines in body.items())
