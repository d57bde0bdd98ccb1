"""illustrated_sd: Stable Diffusion that shows its work.

    import illustrated_sd as isd
    pipe = isd.load_pipeline()                       # the embedded tiny model, offline, on the CPU
    trace = pipe("a red circle on the left", seed=0)
    trace.image, trace.cross_attention("circle")     # the picture, and where "circle" was looked at
"""

import transformers

# diffusers imports CLIP's *image* processor for the safety checker we never use; in transformers 5 it
# warns that torchvision is missing. Silence that one import, not transformers' warnings in general.
_verbosity = transformers.logging.get_verbosity()
transformers.logging.set_verbosity_error()
from diffusers import StableDiffusionPipeline  # noqa: E402,F401
transformers.logging.set_verbosity(_verbosity)

from . import budget, clip, edits, plot, world  # widgets load on request: from illustrated_sd import widgets
from .architectures import build_random_pipeline
from .batch import TraceSet
from .causal import CausalMap, causal_map
from .dit.pipeline import FlowPipeline
from .dit.trace import FlowTrace
from .forward_diffusion import ForwardDiffusion, cpu_threads, diffusion_loss, encode_examples, forward_diffusion, training_step
from .inputs import paste_kept
from .loading import ModelLoadError, load_pipeline
from .pipeline import SCHEDULERS, IllustratedPipeline
from .recorders import RecordOptions
from .trace import Trace

__all__ = ["budget", "clip", "edits", "plot", "world", "ForwardDiffusion", "cpu_threads", "diffusion_loss", "encode_examples", "forward_diffusion", "training_step", "CausalMap", "causal_map", "FlowPipeline", "FlowTrace", "IllustratedPipeline", "ModelLoadError", "RecordOptions", "SCHEDULERS", "Trace", "TraceSet", "build_random_pipeline", "load_pipeline", "paste_kept"]
__version__ = "0.1.0"
