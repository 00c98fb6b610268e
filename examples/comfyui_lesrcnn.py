"""ComfyUI custom node: LESRCNN models in ComfyUI's own "Load Upscale Model" node.

ComfyUI loads upscale models with spandrel; this file registers LESRCNN with spandrel when
ComfyUI starts, and adds no node of its own.

1. Install the package into ComfyUI's Python:  python -m pip install "lesrcnn[spandrel]"
2. Copy this file to ComfyUI/custom_nodes/comfyui_lesrcnn.py
3. Put models in ComfyUI/models/upscale_models/: one file per scale, e.g. from the embedded
   multi-scale weights:  python -m lesrcnn.integrations.spandrel split lesrcnn-s ComfyUI/models/upscale_models
   (lesrcnn_s_x2/_x3/_x4.safetensors), or the authors' lesrcnn_x2/x3/x4.pth. A multi-scale file
   loads as its x2 network.
4. Restart ComfyUI; "Load Upscale Model" -> "Upscale Image (using Model)" as for any other model.
"""
from lesrcnn.integrations import spandrel as lesrcnn_spandrel

lesrcnn_spandrel.install()  # idempotent

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
