"""curate: build CLIP-scale image-text training sets."""
__version__ = "0.1.0"
