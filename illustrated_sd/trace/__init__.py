"""The one Trace that flows from a generation to the plots, the widgets and the page.

    unet.py    Trace: one SD 1/2/XL generation, recorded; its questions (cross_attention, token_index), save and load
    flow.py    FlowTrace: the same for SD3, SD3.5 and Flux (joint attention in four quadrants)
    sets.py    TraceSet: a prompt set, one trace file per prompt and an index (illustrated-sd batch)
    files.py   atomic_write and whole-folder swaps: every file the package writes goes through them
"""

from .unet import Trace
from .flow import FlowTrace
from .sets import TraceSet

__all__ = ["FlowTrace", "Trace", "TraceSet"]
