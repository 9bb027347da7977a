"""The eager model of the naive baseline archive (bench only): EfficientNet-Lite2 as a class
with a no-argument constructor, which is what TorchServe's eager mode (`--model-file`) needs;
TorchServe's BaseHandler loads the archive's state_dict into it."""

from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import get_model_params


class Lite2(EfficientNet):
    def __init__(self) -> None:
        blocks_args, global_params = get_model_params("efficientnet-lite2", {})
        super().__init__(blocks_args, global_params)
