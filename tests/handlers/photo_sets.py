"""Label folders of small photos for `udagram model train` and `evaluate`: real scikit-image
photos, each copy a different random crop, flip and colour jitter (seeded)."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageEnhance

# label -> scikit-image photo. Lite2 (ImageNet) answers "Egyptian cat" for chelsea and "espresso"
# for coffee; it has no "astronaut" class.
PHOTOS = {"Egyptian cat": "chelsea", "espresso": "coffee", "astronaut": "astronaut"}


def photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def variant(image: Image.Image, rng: random.Random) -> Image.Image:
    """A crop of 70-95% of each side, maybe mirrored, brightness/contrast/saturation x0.75-1.25,
    short side 160-240 px."""
    w, h = image.size
    cw, ch = int(w * rng.uniform(0.7, 0.95)), int(h * rng.uniform(0.7, 0.95))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = image.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhancer(out).enhance(rng.uniform(0.75, 1.25))
    short = rng.randint(160, 240)
    scale = short / min(out.size)
    return out.resize((max(1, round(out.width * scale)), max(1, round(out.height * scale))), Image.Resampling.BICUBIC)


def write_label_folders(root: Path, per_label: int, seed: int, photos: dict[str, str] = PHOTOS,
                        originals: bool = False) -> Path:
    """root/<label>/<n>.jpg (every other one a PNG): `per_label` variants of each label's photo
    (plus the untouched photo as original.jpg with `originals`)."""
    rng = random.Random(seed)
    for label, name in photos.items():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        source = photo(name)
        if originals:
            source.save(folder / "original.jpg", quality=95)
        for n in range(per_label):
            image = variant(source, rng)
            if n % 2:
                image.save(folder / f"{seed}-{n}.png")
            else:
                image.save(folder / f"{seed}-{n}.jpg", quality=90)
    return root
