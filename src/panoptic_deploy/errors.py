"""Errors the command line reports as one line (``error: <message>``) instead of a traceback."""


class PanopticDeployError(Exception):
    """Base class: a user-facing problem with an input (file, config key, image), never a bug."""


class ConfigError(PanopticDeployError):
    """A config file or override is invalid (unknown key, wrong type, bad YAML, missing base)."""


class CheckpointError(PanopticDeployError):
    """A checkpoint file cannot be read safely or does not fit the model."""


class ImageError(PanopticDeployError):
    """An image file cannot be read or decoded."""


class PanopticFormatError(PanopticDeployError):
    """A COCO panoptic JSON/PNG pair is malformed or inconsistent."""


class ExportError(PanopticDeployError):
    """An ONNX export or simplification failed or does not reproduce the model within tolerance."""


class OutputError(PanopticDeployError):
    """An output path cannot be used: it is one of the inputs, or a file where a folder is expected (or the
    reverse). Raised before anything is written."""
