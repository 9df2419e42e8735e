"""Model architectures the project registers with open_clip (`curate-tiny`)."""
from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"
TINY_NAME = "curate-tiny"
_registered = False


def register_models() -> None:
    """Make the project's architectures known to open_clip (idempotent)."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    _registered = True


def model_config_path(name: str) -> Path | None:
    """The JSON config of a project architecture, to write next to checkpoints."""
    path = CONFIG_DIR / f"{name}.json"
    return path if path.exists() else None
