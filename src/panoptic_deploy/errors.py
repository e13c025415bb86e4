"""Errors the command line reports as one line (``error: <message>``) instead of a traceback."""


class PanopticDeployError(Exception):
    """Base class: a user-facing problem with an input (file, config key, image), never a bug."""


class ConfigError(PanopticDeployError):
    """A config file or override is invalid (unknown key, wrong type, bad YAML, missing base)."""


class CheckpointError(PanopticDeployError):
    """A checkpoint file cannot be read safely or does not fit the model."""


class ImageError(PanopticDeployError):
    """An image file cannot be read or decoded."""


class NoBucketError(ImageError):
    """An image's padded network input fits in none of the configured size buckets."""


class PanopticFormatError(PanopticDeployError):
    """A COCO panoptic JSON/PNG pair is malformed or inconsistent."""


class ExportError(PanopticDeployError):
    """An ONNX export or simplification failed or does not reproduce the model within tolerance."""


class OutputError(PanopticDeployError):
    """An output path cannot be used: it is one of the inputs, or a file where a folder is expected (or the
    reverse). Raised before anything is written."""


class EngineError(PanopticDeployError):
    """An engine cannot be built, loaded or run: bad ONNX, mismatching sidecar, wrong device or version."""


class PrecisionError(PanopticDeployError):
    """A model, calibration input or calibration cache cannot be used for precision conversion."""


class BenchError(PanopticDeployError):
    """A benchmark cannot run: unknown backend/precision, mismatching reference or images, bad result file."""


class GpuMismatchError(PanopticDeployError):
    """No GPU is visible to the job, or it is not of the type the job's output path names."""


def first_line(exc: BaseException) -> str:
    """``TypeName: first line of the message`` (just the type name for an empty message): third-party
    exceptions (exporters, ONNX Runtime, simplifiers) carry pages of text; a one-line error quotes this."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
