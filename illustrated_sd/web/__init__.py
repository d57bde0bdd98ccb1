"""The page in the browser: the embedded model, exported so that a web page can run it with onnxruntime-web.

    onnx_export.py   export_onnx(pipe, folder): text_encoder.onnx, unet.onnx (with its cross-attention maps),
                     vae_decoder.onnx and models.json, each checked against PyTorch with onnxruntime
    site.py          export_web(folder): a static site (page/: index.html, app.js, worker.js, …) in which those
                     files generate in the browser, with onnxruntime-web and transformers.js vendored from the
                     npm tarballs pinned in npm.lock.json (``illustrated-sd export-web OUT``)

This folder needs ``onnx`` and ``onnxruntime`` (``pip install -e .[dev]``); ``import illustrated_sd`` does not
import it, so the rest of the package never needs them.
"""

from .onnx_export import export_onnx
from .site import export_web

__all__ = ["export_onnx", "export_web"]
