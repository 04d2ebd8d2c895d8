"""The network and its files: GenreClassifier, and the one place that writes and reads them.

A checkpoint is a plain dict, loaded with torch.load(path, weights_only=True):
    model_state_dict                       the weights
    num_channels, height, width            the input shape (C, H, W) = (1, frames, n_mfcc)
    num_classes, mapping                   the genres, in label order
    norm_min, norm_max                     the training split's range, scaled to [0, 1]
    features, features_assumed             the MFCC recipe of the training data
    train_config, split, source_sha256     how the model was made, from what
    versions, trained_at                   with which libraries, and when
    test_loss, test_accuracy, track_test_accuracy   the test figures (once tested)
The best checkpoint also holds optimizer_state_dict, epoch, val_loss and val_accuracy.
Everything but the weights is the model's "card": the ONNX export carries it as metadata.

Usage:
    import model
    net, checkpoint = model.load_model("saved_models/final_model_pytorch.pt")
"""
import io
import json
import platform
import warnings

import numpy as np
import torch
from torch import nn

from common import DataError, atomic_write, check_replaceable

CONV_DROPOUT = 0.35  # Dropout2d after each convolutional block
FC_DROPOUT = 0.7  # Dropout before the output layer
ONNX_CARD_KEY = "genre_classifier"  # the ONNX metadata entry that holds the card, as JSON
ONNX_OPSET = 17  # ONNX operator set of the export: onnxruntime has run it since 1.11
# Entries every checkpoint holds, with their types: what it takes to rebuild and use the model.
REQUIRED = {"model_state_dict": dict, "num_channels": int, "height": int, "width": int,
            "num_classes": int, "mapping": list, "norm_min": float, "norm_max": float}


class GenreClassifier(nn.Module):
    """Two conv blocks (conv, ReLU, max-pool, batch norm, spatial dropout) and a dense head."""

    def __init__(self, num_channels, height, width, num_classes):
        super().__init__()
        if height < 4 or width < 4:
            raise DataError(f"segments of {height}x{width} are too small for two 2x2 poolings: "
                            f"they need at least 4 frames and 4 coefficients")
        self.conv1 = nn.Conv2d(num_channels, 32, kernel_size=3, padding=1)
        self.pool1 = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(32)
        self.drop1 = nn.Dropout2d(CONV_DROPOUT)
        self.conv2 = nn.Conv2d(32, 48, kernel_size=3, padding=1)
        self.pool2 = nn.MaxPool2d(2)
        self.bn2 = nn.BatchNorm2d(48)
        self.drop2 = nn.Dropout2d(CONV_DROPOUT)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(48 * (height // 4) * (width // 4), 64)
        self.bn3 = nn.BatchNorm1d(64)
        self.drop3 = nn.Dropout(FC_DROPOUT)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x):
        """Logits (N, num_classes) of segments (N, C, H, W)."""
        # Pooling before ReLU gives exactly conv -> ReLU -> pool (both are monotone), with ReLU
        # applied to a quarter of the values.
        x = self.drop1(self.bn1(torch.relu(self.pool1(self.conv1(x)))))
        x = self.drop2(self.bn2(torch.relu(self.pool2(self.conv2(x)))))
        x = self.drop3(self.bn3(torch.relu(self.fc1(self.flatten(x)))))
        return self.fc2(x)


class Deployed(nn.Module):
    """Raw MFCC segments (N, C, H, W) -> genre probabilities: the training split's scaling to
    [0, 1] (as preprocess.normalize does it), the network, softmax. What predict.py runs."""

    def __init__(self, net, norm_min, norm_max):
        super().__init__()
        self.net = net
        scale = (norm_max - norm_min) or 1.0  # constant training data: preprocess maps it to 0
        self.register_buffer("low", torch.tensor(np.float32(norm_min)))
        self.register_buffer("scale", torch.tensor(np.float32(scale)))

    def forward(self, x):
        return torch.softmax(self.net((x - self.low) / self.scale), dim=1)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def versions():
    """Versions of what made a model, for its card."""
    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "numpy": str(np.__version__)}


def is_checkpoint(path):
    """True when path holds a checkpoint written by train.py (loaded safely, never executed)."""
    checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    return isinstance(checkpoint, dict) and {"model_state_dict", "mapping"} <= checkpoint.keys()


def save_checkpoint(payload, path, flag="--model-dir"):
    """torch.save a plain dict atomically, replacing only a checkpoint of ours.

    It is serialized in memory first, so that a full disk fails in the file write, one line,
    and not inside torch's zip writer.
    """
    check_replaceable(path, flag, "a model checkpoint", is_checkpoint)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_write(path, flag=flag) as handle:
        handle.write(buffer.getbuffer())


def read_checkpoint(path, device="cpu"):
    """The checkpoint dict of a model file, checked; DataError for a file train.py did not write."""
    not_ours = f"{path} is not a genre model saved by train.py"
    try:
        with warnings.catch_warnings():  # torch warns about old pickles before refusing them
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, weights_only=True, map_location=device)
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - zipfile, pickle and torch each raise their own
        # The safe unpickler refuses code and classes (it names the GLOBAL it would have had to
        # import); say so, as users ask whether it ran.
        why = ("it holds Python objects that a safe load refuses, so it was not loaded"
               if "GLOBAL" in str(exc) else "not a PyTorch checkpoint, or a damaged one")
        raise DataError(f"{not_ours} ({why}): pass one with --model") from None
    if not isinstance(checkpoint, dict) or not REQUIRED.keys() <= checkpoint.keys():
        raise DataError(f"{not_ours} (it lacks the model's entries): pass one with --model")
    for key, kind in REQUIRED.items():
        value = checkpoint[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            if not (kind is float and isinstance(value, int) and not isinstance(value, bool)):
                raise DataError(f"{path}: '{key}' is a {type(value).__name__}, not a "
                                f"{kind.__name__}: the model file is damaged; train it again")
    return checkpoint


def build_model(checkpoint, device="cpu"):
    """The GenreClassifier a checkpoint describes, with its weights, in evaluation mode."""
    try:
        net = GenreClassifier(checkpoint["num_channels"], checkpoint["height"],
                              checkpoint["width"], checkpoint["num_classes"])
        net.load_state_dict(checkpoint["model_state_dict"])
    except (RuntimeError, ValueError, TypeError, MemoryError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"its weights do not fit the model it describes ({first}): train it "
                        f"again") from None
    # Channels-last, the layout of training, so that the convolutions compute what was tested.
    return net.to(device, memory_format=torch.channels_last).eval()


def load_model(path, device="cpu"):
    """(network in evaluation mode, checkpoint dict) of a model file; DataError if unfit."""
    checkpoint = read_checkpoint(path, device)
    try:
        return build_model(checkpoint, device), checkpoint
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


def card(checkpoint):
    """The checkpoint without its tensors: everything but the weights and the optimizer."""
    return {key: value for key, value in checkpoint.items()
            if key not in ("model_state_dict", "optimizer_state_dict")}


# ---------------------------------------------------------------------------------------------
# ONNX


def is_onnx_model(path):
    """True when path holds an ONNX model exported by train.py (its card is in the metadata)."""
    import onnx

    proto = onnx.load(path, load_external_data=False)
    return any(entry.key == ONNX_CARD_KEY for entry in proto.metadata_props)


def export_onnx(net, checkpoint, path, flag="--model-dir"):
    """Write the network as ONNX: raw MFCC segments (N, C, H, W) in, probabilities out, with the
    training split's scaling inside and the card as metadata. ImportError without onnx."""
    import onnx

    check_replaceable(path, flag, "an ONNX model", is_onnx_model)
    deployed = Deployed(net, checkpoint["norm_min"], checkpoint["norm_max"]).to("cpu").eval()
    example = torch.zeros(2, checkpoint["num_channels"], checkpoint["height"], checkpoint["width"])
    buffer = io.BytesIO()
    # The TorchScript exporter: a plain graph of convolutions needs no more, in a fraction of
    # the dynamo exporter's time and without its extra dependencies.
    torch.onnx.export(deployed, (example,), buffer, input_names=["mfcc"],
                      output_names=["probabilities"], opset_version=ONNX_OPSET, dynamo=False,
                      dynamic_axes={"mfcc": {0: "segments"}, "probabilities": {0: "segments"}})
    proto = onnx.load_from_string(buffer.getvalue())
    proto.metadata_props.add(key=ONNX_CARD_KEY, value=json.dumps(card(checkpoint)))
    with atomic_write(path, flag=flag) as handle:
        handle.write(proto.SerializeToString())
