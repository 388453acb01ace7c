"""The serving logic, Ray-free and written once: the request pipeline, its mode strategies, the backend protocols
it calls and the in-process services that implement them."""

from modm.serving.backends import Backends, SystemClock
from modm.serving.errors import RequestRefused
from modm.serving.pipeline import RequestPipeline
from modm.serving.request import Decision, ImageRequest, ServedImages

__all__ = ["Backends", "Decision", "ImageRequest", "RequestPipeline", "RequestRefused", "ServedImages", "SystemClock"]
