"""LESRCNN: lightweight image super-resolution with an enhanced CNN (Tian et al., KBS 2020)."""
__version__ = "0.1.0"

__all__ = ["Upscaler", "LESRCNN", "build", "load", "__version__"]


def __getattr__(name: str):  # lazy: `import lesrcnn` stays cheap for the CLI
    if name == "Upscaler":
        from .upscale import Upscaler
        return Upscaler
    if name in ("LESRCNN", "build"):
        from . import model
        return getattr(model, name)
    if name == "load":
        from .weights import load
        return load
    raise AttributeError(name)
