"""`genrl demo`: a gradio page for sampling the image models and running (and steering) the policies."""

from genrl.demo.backend import DemoBackend

__all__ = ["DemoBackend"]
