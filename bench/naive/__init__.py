"""The naive baseline archive: the eager model, batch 1, TorchServe's default settings.

`build_naive_archive(store)` writes store/classifier-naive.mar: TorchServe's eager mode
(lite2_model.py + a state_dict), the served handler's image pre/post-processing (so both
archives compute the same answer from the same pixels), no model-config.yaml (batch size 1 and
the worker count of config.properties: 1), no torch thread setting (torch's default: every core)
and no freeze/optimise or warm-up.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import torch

from handlers.archive import (
    HANDLER_SOURCE,
    MODEL_NAME,
    archive_path,
    archiver_staging_in,
    handler_sha256,
    lite2_model,
)
from handlers.image_classifier import LABELS_FILE, META_FILE

HERE = Path(__file__).parent
NAIVE_VERSION = "naive"


def build_naive_archive(model_store: Path) -> Path:
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    model, meta, labels = lite2_model()
    meta = replace(meta, threads=0, optimize=False, warmup_batch_size=1, handler_sha256=handler_sha256())
    target = archive_path(model_store, NAIVE_VERSION)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="udagram-naive-mar-") as tmp:
        work = Path(tmp)
        torch.save(model.state_dict(), work / "model.pth")
        (work / META_FILE).write_text(json.dumps(asdict(meta), indent=2))
        (work / LABELS_FILE).write_text(json.dumps({str(i): name for i, name in enumerate(labels)}))
        extra = [work / META_FILE, work / LABELS_FILE, HANDLER_SOURCE]
        with archiver_staging_in(work):
            generate_model_archive(
                ModelArchiverConfig(
                    model_name=MODEL_NAME,
                    handler=str(HERE / "naive_handler.py"),
                    version=NAIVE_VERSION,
                    serialized_file=str(work / "model.pth"),
                    model_file=str(HERE / "lite2_model.py"),
                    extra_files=",".join(str(p) for p in extra),
                    export_path=str(work),
                    force=True,
                )
            )
        shutil.move(str(work / f"{MODEL_NAME}.mar"), target)
    return target
