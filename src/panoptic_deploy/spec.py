"""A model's spec: its config file and overrides, parsed once, with what the stages read from it.

A stage that pre-processes images, builds the network or post-processes its outputs needs the config; before,
every function took the pair (config path, opts) and parsed the YAML again (a benchmark parsed it twice).
:class:`ModelSpec` is that pair parsed once, in the manner of torchvision's weights objects that carry a
model's transforms and metadata: pass it along instead of the two pieces. Functions still accept a config
path (with ``opts``) where callers have one, through :meth:`ModelSpec.of`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from panoptic_deploy.config import CfgNode, load_config
from panoptic_deploy.fileio import PathLike

if TYPE_CHECKING:
    from panoptic_deploy.categories import CategorySet
    from panoptic_deploy.modeling.panoptic_fcn import InferenceParams, InputParams


@dataclass(frozen=True)
class ModelSpec:
    """``config`` (a PanopticFCN/detectron2 YAML) with ``opts`` (``KEY VALUE`` overrides), loaded on creation
    so that a bad key fails before any work."""

    config: Path
    opts: tuple[str, ...] = ()
    cfg: CfgNode = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", Path(self.config))
        object.__setattr__(self, "opts", tuple(self.opts))
        object.__setattr__(self, "cfg", load_config(self.config, self.opts))

    @classmethod
    def of(cls, config: ModelSpec | PathLike, opts: Sequence[str] = ()) -> ModelSpec:
        """``config`` itself if it is a spec (then ``opts`` must be empty: they are part of it), else the spec
        of a config file with ``opts``."""
        if isinstance(config, ModelSpec):
            if opts:
                raise ValueError(f"{config.config}: opts given twice (in the ModelSpec and beside it)")
            return config
        return cls(Path(config), tuple(opts))

    @cached_property
    def input_params(self) -> InputParams:
        """Test-time pre-processing (resize, normalisation, padding, channel order)."""
        from panoptic_deploy.modeling.panoptic_fcn import input_params_from_config

        return input_params_from_config(self.cfg)

    @cached_property
    def inference_params(self) -> InferenceParams:
        """Post-processing thresholds and limits."""
        from panoptic_deploy.modeling.panoptic_fcn import inference_params_from_config

        return inference_params_from_config(self.cfg)

    def check_categories(self, categories: CategorySet) -> None:
        """One-line error unless the config's head sizes fit ``categories``."""
        categories.check_config(self.cfg, str(self.config))

    def input_hw_for(
        self, image: PathLike, buckets: Sequence[tuple[int, int]] | None = None
    ) -> tuple[int, int]:
        """Network input (H, W) of ``image`` under the test resize (from the image header only): its padded
        size, or the smallest of ``buckets`` holding it."""
        from panoptic_deploy.geometry import image_header_size
        from panoptic_deploy.preprocess import network_input_shape

        return network_input_shape(*image_header_size(image), self.input_params, buckets)
