"""`udagram model train DIR --version V`: a new classifier head on the served backbone.

The backbone is the default model's EfficientNet-Lite2 with its packaged ImageNet weights,
frozen; only a new linear head is trained, one output per label folder of DIR (handlers/datasets.py):

1. every photo is decoded and preprocessed exactly as the handler does it in TorchServe
   (handlers/image_classifier.py: upright, RGB, resize 292 bicubic, centre crop 260, normalise),
   and its 1280 pooled backbone features are computed once (the slow part, seconds for ~100 photos);
2. a stratified, seeded split keeps `validation_share` of each label's photos for validation;
3. the head (one nn.Linear) is trained with Adam on cross-entropy in mini-batches, and training
   stops once the validation loss has not improved for `patience` epochs; the best epoch's head is kept;
4. backbone + head, one eager nn.Module, goes to the archive builder's `write_archive`: the same
   export (ONNX Runtime or TorchScript), verification on the reference photos and packaging as
   `udagram model build`, the folder names as its labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from handlers.archive import Batching, ModelMeta, check_version, lite2_model, write_archive
from handlers.datasets import DatasetError, label_folders
from handlers.image_classifier import ImageInputError, Preprocessing, image_to_input

FEATURE_BATCH = 16


@dataclass(frozen=True)
class TrainingConfig:
    validation_share: float = 0.2
    max_epochs: int = 500
    patience: int = 20  # epochs without a better validation loss before stopping
    min_improvement: float = 1e-3  # what counts as better (absolute, in validation loss)
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    seed: int = 0


@dataclass
class EpochReport:
    epoch: int
    train_loss: float
    validation_loss: float
    validation_accuracy: float


@dataclass
class TrainingResult:
    archive: Path
    labels: list[str]
    train_size: int
    validation_size: int
    epochs: int  # epochs run
    best: EpochReport  # the epoch whose head was kept
    train_accuracy: float
    stopped_early: bool
    skipped: dict[str, str] = field(default_factory=dict)  # photo -> why it was left out


class Progress:
    """Hooks for a progress display (the CLI draws a rich progress bar with them)."""

    def start(self, stage: str, total: int) -> None: ...

    def advance(self, stage: str, steps: int = 1, note: str = "") -> None: ...

    def finish(self, stage: str) -> None: ...


def stratified_split(targets: list[int], share: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) indices: about `share` of each class for validation (at least one
    photo, and never a class's last training photo), drawn with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    train: list[int] = []
    validation: list[int] = []
    for cls in sorted(set(targets)):
        members = [i for i, t in enumerate(targets) if t == cls]
        order = [members[j] for j in torch.randperm(len(members), generator=generator).tolist()]
        n_val = min(len(members) - 1, max(1, round(share * len(members))))
        validation += order[:n_val]
        train += order[n_val:]
    return sorted(train), sorted(validation)


def backbone() -> tuple[nn.Module, Preprocessing, ModelMeta]:
    """The served Lite2 with its classifier removed: images in, 1280 pooled features out."""
    model, meta, _ = lite2_model()
    model._fc = nn.Identity()  # Lite2's forward: features -> pool -> dropout (off in eval) -> _fc
    return model.eval(), Preprocessing.from_meta(asdict(meta)), meta


def features_of(
    model: nn.Module, prep: Preprocessing, photos: list[Path], progress: Progress
) -> tuple[torch.Tensor, list[int], dict[str, str]]:
    """Features of the photos that decode ((n, 1280)), their indices in `photos`, and why the others did not."""
    kept: list[int] = []
    skipped: dict[str, str] = {}
    chunks: list[torch.Tensor] = []
    progress.start("features", len(photos))
    for start in range(0, len(photos), FEATURE_BATCH):
        inputs = []
        for index in range(start, min(start + FEATURE_BATCH, len(photos))):
            try:
                inputs.append(image_to_input(photos[index].read_bytes(), prep))
                kept.append(index)
            except (ImageInputError, OSError) as exc:
                skipped[str(photos[index])] = str(exc)
        if inputs:
            with torch.inference_mode():
                chunks.append(model(torch.stack(inputs)))
        progress.advance("features", min(FEATURE_BATCH, len(photos) - start))
    features = torch.cat(chunks) if chunks else torch.empty(0, 1280)
    return features, kept, skipped


def train_head(
    features: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    train_idx: list[int],
    validation_idx: list[int],
    config: TrainingConfig,
    on_epoch: Callable[[EpochReport], None] = lambda _: None,
) -> tuple[nn.Linear, EpochReport, int]:
    """The best head by validation loss, its epoch's figures, and the number of epochs run."""
    loss_fn = nn.CrossEntropyLoss()
    x_train, y_train = features[train_idx], targets[train_idx]
    x_val, y_val = features[validation_idx], targets[validation_idx]
    with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's random state
        torch.manual_seed(config.seed)
        head = nn.Linear(features.shape[1], num_classes)
    optimiser = torch.optim.Adam(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    shuffle = torch.Generator().manual_seed(config.seed)
    best: EpochReport | None = None
    best_state = {k: v.clone() for k, v in head.state_dict().items()}
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        head.train()
        total = 0.0
        for batch in torch.randperm(len(train_idx), generator=shuffle).split(config.batch_size):
            optimiser.zero_grad()
            loss = loss_fn(head(x_train[batch]), y_train[batch])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        head.eval()
        with torch.no_grad():
            logits = head(x_val)
            report = EpochReport(epoch, total / len(train_idx), float(loss_fn(logits, y_val)),
                                 float((logits.argmax(1) == y_val).float().mean()))
        on_epoch(report)
        if best is None or report.validation_loss < best.validation_loss - config.min_improvement:
            best = report
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        elif epoch - best.epoch >= config.patience:
            break
    head.load_state_dict(best_state)
    assert best is not None  # max_epochs >= 1
    return head.eval(), best, epoch


def train(
    directory: Path,
    version: str,
    model_store: Path,
    config: TrainingConfig | None = None,
    batching: Batching | None = None,
    force: bool = False,
    progress: Progress | None = None,
    runtime: str | None = None,
) -> TrainingResult:
    """Train a head on DIR's label folders and write model_store/classifier-<version>.mar."""
    config = config or TrainingConfig()
    progress = progress or Progress()
    if not 0 < config.validation_share < 1:
        raise DatasetError("the validation share must be between 0 and 1")
    target = check_version(model_store, version)
    if target.exists() and not force:
        raise DatasetError(f"{target} exists: choose another --version, or --force to replace it")
    collection = label_folders(directory)
    labels = list(collection)
    if len(labels) < 2:
        raise DatasetError(f"{directory} has one label folder ({labels[0]}); a classifier needs at least 2")
    few_files = [label for label, paths in collection.items() if len(paths) < 2]
    if few_files:  # checked again below once the photos are read: some may not decode
        raise DatasetError(_too_few(few_files))
    photos = [path for paths in collection.values() for path in paths]
    label_of = [labels.index(label) for label, paths in collection.items() for _ in paths]

    model, prep, meta = backbone()
    features, kept, skipped = features_of(model, prep, photos, progress)
    targets = [label_of[i] for i in kept]
    too_few = [labels[c] for c in range(len(labels)) if targets.count(c) < 2]
    if too_few:
        raise DatasetError(_too_few(too_few))
    train_idx, validation_idx = stratified_split(targets, config.validation_share, config.seed)
    y = torch.tensor(targets)

    progress.start("epochs", config.max_epochs)

    def on_epoch(report: EpochReport) -> None:
        progress.advance("epochs", note=f"validation loss {report.validation_loss:.3f}, "
                                        f"accuracy {report.validation_accuracy:.0%}")

    head, best, epochs = train_head(features, y, len(labels), train_idx, validation_idx, config, on_epoch)
    progress.finish("epochs")
    with torch.no_grad():
        train_accuracy = float((head(features[train_idx]).argmax(1) == y[train_idx]).float().mean())

    model._fc = head  # backbone + new head: the eager model the archive builder verifies against
    archive = write_archive(model_store, model, replace(meta, num_classes=len(labels)), labels, version, batching,
                            runtime=runtime)  # type: ignore[arg-type]
    return TrainingResult(
        archive=archive,
        labels=labels,
        train_size=len(train_idx),
        validation_size=len(validation_idx),
        epochs=epochs,
        best=best,
        train_accuracy=train_accuracy,
        stopped_early=epochs < config.max_epochs,
        skipped=skipped,
    )


def _too_few(labels: list[str]) -> str:
    return (f"every label needs at least 2 readable photos (one to train on, one to validate with); "
            f"too few in: {', '.join(labels)}")
