"""diffusers' classes, imported from the modules that define them.

``from diffusers import X`` goes through diffusers' lazy top-level module, whose ``TYPE_CHECKING`` branch gives a
type checker the placeholder ``X`` of ``diffusers.utils.dummy_pt_objects`` (a class with no methods), so every use
of X would be an error. The defining modules give the real classes; at run time they are the same objects.
"""

from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

__all__ = [
    "DDIMScheduler",
    "DDPMScheduler",
    "DiffusionPipeline",
    "ImagePipelineOutput",
    "SchedulerMixin",
    "UNet2DConditionModel",
]
