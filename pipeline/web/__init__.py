"""A fake web on loopback for tests and the offline demo."""
from .fakeweb import FakeWeb, make_image

__all__ = ["FakeWeb", "make_image"]
