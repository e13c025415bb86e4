"""The default config tree: detectron2's defaults plus the keys PanopticFCN adds (spec §1.1, §1.4).

The detectron2 part is the data of ``detectron2/config/defaults.py`` (facebookresearch/detectron2,
Apache-2.0, Copyright (c) Facebook, Inc. and its affiliates), as of commit 084acd0 (the v0.4-v0.6
era: it has ``SOLVER.REFERENCE_WORLD_SIZE`` and ``SOLVER.AMP``, but none of the later
``SOLVER.BASE_LR_END`` / ``ROI_BOX_HEAD.USE_FED_LOSS`` keys). It is written here as plain data,
in detectron2's key order; the comments are ours. PanopticFCN's additions follow spec §1.4.

Python types matter: the YAML merge type-checks every value against these defaults (a tuple
default accepts a list and converts it, an ``int`` default rejects a float, and so on).
"""

from __future__ import annotations

from typing import Any

__all__ = ["add_panopticfcn_defaults", "detectron2_defaults"]


def detectron2_defaults() -> dict[str, Any]:
    """A fresh copy of detectron2's ``get_cfg()`` tree, as nested dicts (``VERSION`` 2)."""
    return {
        "VERSION": 2,
        "MODEL": {
            "LOAD_PROPOSALS": False,
            "MASK_ON": False,
            "KEYPOINT_ON": False,
            "DEVICE": "cuda",
            "META_ARCHITECTURE": "GeneralizedRCNN",
            "WEIGHTS": "",
            # BGR order, because INPUT.FORMAT defaults to "BGR".
            "PIXEL_MEAN": [103.530, 116.280, 123.675],
            "PIXEL_STD": [1.0, 1.0, 1.0],
            "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": 2},
            "FPN": {"IN_FEATURES": [], "OUT_CHANNELS": 256, "NORM": "", "FUSE_TYPE": "sum"},
            "PROPOSAL_GENERATOR": {"NAME": "RPN", "MIN_SIZE": 0},
            "ANCHOR_GENERATOR": {
                "NAME": "DefaultAnchorGenerator",
                "SIZES": [[32, 64, 128, 256, 512]],
                "ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
                "ANGLES": [[-90, 0, 90]],
                "OFFSET": 0.0,
            },
            "RPN": {
                "HEAD_NAME": "StandardRPNHead",
                "IN_FEATURES": ["res4"],
                "BOUNDARY_THRESH": -1,
                "IOU_THRESHOLDS": [0.3, 0.7],
                "IOU_LABELS": [0, -1, 1],
                "BATCH_SIZE_PER_IMAGE": 256,
                "POSITIVE_FRACTION": 0.5,
                "BBOX_REG_LOSS_TYPE": "smooth_l1",
                "BBOX_REG_LOSS_WEIGHT": 1.0,
                "BBOX_REG_WEIGHTS": (1.0, 1.0, 1.0, 1.0),
                "SMOOTH_L1_BETA": 0.0,
                "LOSS_WEIGHT": 1.0,
                "PRE_NMS_TOPK_TRAIN": 12000,
                "PRE_NMS_TOPK_TEST": 6000,
                "POST_NMS_TOPK_TRAIN": 2000,
                "POST_NMS_TOPK_TEST": 1000,
                "NMS_THRESH": 0.7,
                "CONV_DIMS": [-1],
            },
            "ROI_HEADS": {
                "NAME": "Res5ROIHeads",
                "NUM_CLASSES": 80,
                "IN_FEATURES": ["res4"],
                "IOU_THRESHOLDS": [0.5],
                "IOU_LABELS": [0, 1],
                "BATCH_SIZE_PER_IMAGE": 512,
                "POSITIVE_FRACTION": 0.25,
                "SCORE_THRESH_TEST": 0.05,
                "NMS_THRESH_TEST": 0.5,
                "PROPOSAL_APPEND_GT": True,
            },
            "ROI_BOX_HEAD": {
                "NAME": "",
                "BBOX_REG_LOSS_TYPE": "smooth_l1",
                "BBOX_REG_LOSS_WEIGHT": 1.0,
                "BBOX_REG_WEIGHTS": (10.0, 10.0, 5.0, 5.0),
                "SMOOTH_L1_BETA": 0.0,
                "POOLER_RESOLUTION": 14,
                "POOLER_SAMPLING_RATIO": 0,
                "POOLER_TYPE": "ROIAlignV2",
                "NUM_FC": 0,
                "FC_DIM": 1024,
                "NUM_CONV": 0,
                "CONV_DIM": 256,
                "NORM": "",
                "CLS_AGNOSTIC_BBOX_REG": False,
                "TRAIN_ON_PRED_BOXES": False,
            },
            "ROI_BOX_CASCADE_HEAD": {
                "BBOX_REG_WEIGHTS": (
                    (10.0, 10.0, 5.0, 5.0),
                    (20.0, 20.0, 10.0, 10.0),
                    (30.0, 30.0, 15.0, 15.0),
                ),
                "IOUS": (0.5, 0.6, 0.7),
            },
            "ROI_MASK_HEAD": {
                "NAME": "MaskRCNNConvUpsampleHead",
                "POOLER_RESOLUTION": 14,
                "POOLER_SAMPLING_RATIO": 0,
                "NUM_CONV": 0,
                "CONV_DIM": 256,
                "NORM": "",
                "CLS_AGNOSTIC_MASK": False,
                "POOLER_TYPE": "ROIAlignV2",
            },
            "ROI_KEYPOINT_HEAD": {
                "NAME": "KRCNNConvDeconvUpsampleHead",
                "POOLER_RESOLUTION": 14,
                "POOLER_SAMPLING_RATIO": 0,
                "CONV_DIMS": (512, 512, 512, 512, 512, 512, 512, 512),
                "NUM_KEYPOINTS": 17,
                "MIN_KEYPOINTS_PER_IMAGE": 1,
                "NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS": True,
                "LOSS_WEIGHT": 1.0,
                "POOLER_TYPE": "ROIAlignV2",
            },
            # Replaced wholesale by add_panopticfcn_defaults().
            "SEM_SEG_HEAD": {
                "NAME": "SemSegFPNHead",
                "IN_FEATURES": ["p2", "p3", "p4", "p5"],
                "IGNORE_VALUE": 255,
                "NUM_CLASSES": 54,
                "CONVS_DIM": 128,
                "COMMON_STRIDE": 4,
                "NORM": "GN",
                "LOSS_WEIGHT": 1.0,
            },
            "PANOPTIC_FPN": {
                "INSTANCE_LOSS_WEIGHT": 1.0,
                "COMBINE": {
                    "ENABLED": True,
                    "OVERLAP_THRESH": 0.5,
                    "STUFF_AREA_LIMIT": 4096,
                    "INSTANCES_CONFIDENCE_THRESH": 0.5,
                },
            },
            "RETINANET": {
                "NUM_CLASSES": 80,
                "IN_FEATURES": ["p3", "p4", "p5", "p6", "p7"],
                "NUM_CONVS": 4,
                "IOU_THRESHOLDS": [0.4, 0.5],
                "IOU_LABELS": [0, -1, 1],
                "PRIOR_PROB": 0.01,
                "SCORE_THRESH_TEST": 0.05,
                "TOPK_CANDIDATES_TEST": 1000,
                "NMS_THRESH_TEST": 0.5,
                "BBOX_REG_WEIGHTS": (1.0, 1.0, 1.0, 1.0),
                "FOCAL_LOSS_GAMMA": 2.0,
                "FOCAL_LOSS_ALPHA": 0.25,
                "SMOOTH_L1_LOSS_BETA": 0.1,
                "BBOX_REG_LOSS_TYPE": "smooth_l1",
                "NORM": "",
            },
            "RESNETS": {
                "DEPTH": 50,
                "OUT_FEATURES": ["res4"],
                "NUM_GROUPS": 1,
                "NORM": "FrozenBN",
                "WIDTH_PER_GROUP": 64,
                "STRIDE_IN_1X1": True,
                "RES5_DILATION": 1,
                "RES2_OUT_CHANNELS": 256,
                "STEM_OUT_CHANNELS": 64,
                "DEFORM_ON_PER_STAGE": [False, False, False, False],
                "DEFORM_MODULATED": False,
                "DEFORM_NUM_GROUPS": 1,
            },
        },
        "INPUT": {
            "MIN_SIZE_TRAIN": (800,),
            "MIN_SIZE_TRAIN_SAMPLING": "choice",
            "MAX_SIZE_TRAIN": 1333,
            "MIN_SIZE_TEST": 800,
            "MAX_SIZE_TEST": 1333,
            "RANDOM_FLIP": "horizontal",
            "CROP": {"ENABLED": False, "TYPE": "relative_range", "SIZE": [0.9, 0.9]},
            "FORMAT": "BGR",
            "MASK_FORMAT": "polygon",
        },
        "DATASETS": {
            "TRAIN": (),
            "PROPOSAL_FILES_TRAIN": (),
            "PRECOMPUTED_PROPOSAL_TOPK_TRAIN": 2000,
            "TEST": (),
            "PROPOSAL_FILES_TEST": (),
            "PRECOMPUTED_PROPOSAL_TOPK_TEST": 1000,
        },
        "DATALOADER": {
            "NUM_WORKERS": 4,
            "ASPECT_RATIO_GROUPING": True,
            "SAMPLER_TRAIN": "TrainingSampler",
            "REPEAT_THRESHOLD": 0.0,
            "FILTER_EMPTY_ANNOTATIONS": True,
        },
        "SOLVER": {
            "LR_SCHEDULER_NAME": "WarmupMultiStepLR",
            "MAX_ITER": 40000,
            "BASE_LR": 0.001,
            "MOMENTUM": 0.9,
            "NESTEROV": False,
            "WEIGHT_DECAY": 0.0001,
            "WEIGHT_DECAY_NORM": 0.0,
            "GAMMA": 0.1,
            "STEPS": (30000,),
            "WARMUP_FACTOR": 1.0 / 1000,
            "WARMUP_ITERS": 1000,
            "WARMUP_METHOD": "linear",
            "CHECKPOINT_PERIOD": 5000,
            "IMS_PER_BATCH": 16,
            "REFERENCE_WORLD_SIZE": 0,
            "BIAS_LR_FACTOR": 1.0,
            # detectron2 sets this to SOLVER.WEIGHT_DECAY's default.
            "WEIGHT_DECAY_BIAS": 0.0001,
            "CLIP_GRADIENTS": {"ENABLED": False, "CLIP_TYPE": "value", "CLIP_VALUE": 1.0, "NORM_TYPE": 2.0},
            "AMP": {"ENABLED": False},
        },
        "TEST": {
            "EXPECTED_RESULTS": [],
            "EVAL_PERIOD": 0,
            "KEYPOINT_OKS_SIGMAS": [],
            "DETECTIONS_PER_IMAGE": 100,
            "AUG": {
                "ENABLED": False,
                "MIN_SIZES": (400, 500, 600, 700, 800, 900, 1000, 1100, 1200),
                "MAX_SIZE": 4000,
                "FLIP": True,
            },
            "PRECISE_BN": {"ENABLED": False, "NUM_ITER": 200},
        },
        "OUTPUT_DIR": "./output",
        "SEED": -1,
        "CUDNN_BENCHMARK": False,
        "VIS_PERIOD": 0,
        "GLOBAL": {"HACK": 1.0},
    }


def add_panopticfcn_defaults(tree: dict[str, Any]) -> None:
    """Add PanopticFCN's keys (spec §1.4) to a :func:`detectron2_defaults` tree, in place.

    Like the official ``add_panopticfcn_config``, this REPLACES ``MODEL.SEM_SEG_HEAD`` by a node
    holding only ``NUM_CLASSES`` and ``IGNORE_VALUE``.
    """
    model = tree["MODEL"]
    model["TENSOR_DIM"] = 100
    model["IGNORE_VALUE"] = 255
    tree["SOLVER"]["POLY_LR_POWER"] = 0.9
    tree["SOLVER"]["POLY_LR_CONSTANT_ENDING"] = 0.0

    model["SEMANTIC_FPN"] = {
        "IN_FEATURES": ["p2", "p3", "p4", "p5"],
        "CONVS_DIM": 256,
        "COMMON_STRIDE": 4,
        "NORM": "GN",
    }
    model["POSITION_HEAD"] = {
        "NUM_CONVS": 3,
        "COORD": False,
        "CONVS_DIM": 256,
        "NORM": "GN",
        # True: the released COCO models have DCNv2 convs in the position head (spec §0).
        "DEFORM": True,
        "THING": {
            "CENTER_TYPE": "mass",
            "POS_NUM": 7,
            "NUM_CLASSES": 80,
            "BIAS_VALUE": -2.19,
            "MIN_OVERLAP": 0.7,
            "GAUSSIAN_SIGMA": 3,
            "THRES": 0.05,
            "TOP_NUM": 100,
        },
        "STUFF": {"NUM_CLASSES": 54, "WITH_THING": True, "THRES": 0.05},
    }
    model["SEM_SEG_HEAD"] = {"NUM_CLASSES": 54, "IGNORE_VALUE": 255}
    model["KERNEL_HEAD"] = {
        "INSTANCE_SCALES": ((1, 64), (32, 128), (64, 256), (128, 512), (256, 2048)),
        "TEST_SCALES": ((1, 64), (64, 128), (128, 256), (256, 512), (512, 2048)),
        "NUM_CONVS": 3,
        "DEFORM": False,
        "COORD": True,
        "CONVS_DIM": 256,
        "NORM": "GN",
    }
    model["FEATURE_ENCODER"] = {
        # The levels fed to the position and kernel heads, despite the section name (spec §1.4).
        "IN_FEATURES": ["p3", "p4", "p5", "p6", "p7"],
        "NUM_CONVS": 3,
        "CONVS_DIM": 64,
        "DEFORM": False,
        "COORD": True,
        "NORM": "",
    }
    model["LOSS_WEIGHT"] = {
        "POSITION": 1.0,
        "SEGMENT": 3.0,
        "FOCAL_LOSS_ALPHA": 0.25,
        "FOCAL_LOSS_GAMMA": 2.0,
    }
    model["INFERENCE"] = {
        "INST_THRES": 0.4,
        "SIMILAR_THRES": 0.9,
        "SIMILAR_TYPE": "cosine",
        "CLASS_SPECIFIC": True,
        "COMBINE": {
            "ENABLE": True,
            "NO_OVERLAP": False,
            "OVERLAP_THRESH": 0.5,
            "STUFF_AREA_LIMIT": 4096,
            "INST_THRESH": 0.2,
        },
    }
