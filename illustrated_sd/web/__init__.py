"""The page in the browser: the embedded model, exported so that a web page can run it with onnxruntime-web.

    onnx_export.py   export_onnx(pipe, folder): text_encoder.onnx, unet.onnx (with its cross-attention maps),
                     vae_decoder.onnx and models.json, each checked against PyTorch with onnxruntime

This folder needs ``onnx`` and ``onnxruntime`` (``pip install -e .[dev]``); ``import illustrated_sd`` does not
import it, so the rest of the package never needs them.
"""

from .onnx_export import export_onnx

__all__ = ["export_onnx"]
