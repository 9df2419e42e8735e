"""curate: build CLIP-scale image-text training sets (see ../shared/DESIGN.md)."""
__version__ = "0.1.0"
