"""Handler of the naive baseline archive (bench only): the served handler's pre- and
post-processing (image_classifier.py travels in the archive as an extra file), but the model is
loaded the way TorchServe does it by default: BaseHandler's eager mode (model file + state_dict),
no TorchScript, no freeze/optimise, no warm-up, torch's default thread count."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from image_classifier import LABELS_FILE, META_FILE, ImageClassifier, Preprocessing, load_labels
from ts.torch_handler.base_handler import BaseHandler


class NaiveClassifier(ImageClassifier):
    def initialize(self, context: Any) -> None:
        BaseHandler.initialize(self, context)  # eager model from lite2_model.py + model.pth
        model_dir = context.system_properties.get("model_dir")
        with open(os.path.join(model_dir, META_FILE), encoding="utf-8") as f:
            self.meta = json.load(f)
        self.prep = Preprocessing.from_meta(self.meta)
        self._decoders = ThreadPoolExecutor(max_workers=1)  # batch 1: never used in parallel
        self.labels = load_labels(os.path.join(model_dir, LABELS_FILE))
        self.model_name = self.manifest["model"].get("modelName", "")
        self.model_version = self.manifest["model"].get("modelVersion", "")
        self.initialized = True


_service = NaiveClassifier()


def handle(data: list[Any] | None, context: Any) -> list[dict[str, Any]] | None:
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
