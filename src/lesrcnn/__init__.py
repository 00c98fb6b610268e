"""LESRCNN: lightweight image super-resolution with an enhanced CNN (Tian et al., KBS 2020)."""
import importlib

__version__ = "0.1.0"

__all__ = ["Upscaler", "LESRCNN", "build", "load", "__version__"]
_LAZY = {"Upscaler": ".upscale", "LESRCNN": ".model", "build": ".model", "load": ".weights"}


def __getattr__(name: str):  # lazy: `import lesrcnn` stays cheap for the CLI
    if name not in _LAZY:
        raise AttributeError(name)
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
