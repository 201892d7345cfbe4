"""Models: shared layers, token mixers, scan routes, backbones and necks (each registered by name)."""
from . import backbones, layers, mixers, necks  # noqa: F401
