"""Photo collections as `udagram model evaluate` and `train` read them: a folder per label.

    DIR/Egyptian cat/1.jpg, DIR/Egyptian cat/2.png, DIR/espresso/a.jpg, ...

The folder name is the label. Files of the upload formats (by extension) count; hidden entries,
other files and files directly in DIR are ignored, and so are folders holding no image.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"})


class DatasetError(Exception):
    """A folder that is not a usable collection; str() says why."""


def label_folders(root: Path) -> dict[str, list[Path]]:
    """{label: image paths}, labels and paths in name order."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder (expected a folder per label, e.g. {root}/cat/1.jpg)")
    collection: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(
            p for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if images:
            collection[folder.name] = images
    if not collection:
        raise DatasetError(
            f"{root} holds no label folder with images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
            f"expected a folder per label, e.g. {root}/cat/1.jpg"
        )
    return collection
