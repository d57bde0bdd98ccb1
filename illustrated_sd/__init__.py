"""illustrated_sd: Stable Diffusion that shows its work.

    import illustrated_sd as isd
    pipe = isd.load_pipeline()                       # the embedded tiny model, offline, on the CPU
    trace = pipe("a red circle on the left", seed=0)
    trace.image, trace.cross_attention("circle")     # the picture, and where "circle" was looked at

One folder per concern:

    loops/       the generation loops, one per model family, each read beside its diffusers file
    recording/   recorders installed for one call, and the edits that act through them
    trace/       the one Trace that flows to plots, widgets and the page
    plot/        the pictures: figures, widgets, the explorer and the HTML report
    models/      building and loading models
    lessons/     tools the notebooks teach with
    world/       the synthetic captioned world of shapes;  train/  training the embedded model
"""

import transformers

# diffusers imports CLIP's *image* processor for the safety checker we never use; in transformers 5 it
# warns that torchvision is missing. Silence that one import, not transformers' warnings in general.
_verbosity = transformers.logging.get_verbosity()
transformers.logging.set_verbosity_error()
from diffusers import StableDiffusionPipeline  # noqa: E402,F401
transformers.logging.set_verbosity(_verbosity)

from . import plot, world  # widgets load on request: from illustrated_sd import widgets
from .lessons import clip
from .recording import budget, edits
from .models.unet import build_random_pipeline
from .trace.sets import TraceSet
from .lessons.causal import CausalMap, causal_map
from .loops.flow import FlowPipeline
from .trace.flow import FlowTrace
from .lessons.forward_diffusion import ForwardDiffusion, cpu_threads, diffusion_loss, encode_examples, forward_diffusion, training_step
from .loops.inputs import paste_kept
from .models.loading import ModelLoadError, embedded_models, load_pipeline
from .loops.unet import SCHEDULERS, IllustratedPipeline
from .recording.recorders import RecordOptions
from .trace.unet import Trace

__all__ = ["budget", "clip", "edits", "plot", "world", "ForwardDiffusion", "cpu_threads", "diffusion_loss", "encode_examples", "forward_diffusion", "training_step", "CausalMap", "causal_map", "FlowPipeline", "FlowTrace", "IllustratedPipeline", "ModelLoadError", "RecordOptions", "SCHEDULERS", "Trace", "TraceSet", "build_random_pipeline", "embedded_models", "load_pipeline", "paste_kept"]
__version__ = "0.1.0"


def __getattr__(name):
    # ipywidgets is slow to import, so the widgets load on request: isd.widgets, or from illustrated_sd import widgets
    if name == "widgets":
        from .plot import widgets
        return widgets
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
