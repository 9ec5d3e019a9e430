"""GRIN Studio's web app: layout and callbacks over grin_engine (no tensors here)."""

from .app_builder import build_app, launch_kwargs
from .state import preload_models

__all__ = ["build_app", "launch_kwargs", "preload_models"]
