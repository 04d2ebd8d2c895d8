"""Tests that pin the published model and training figures against independent references:
numbers written out by hand here, plain torch.nn.functional code, and sklearn used directly."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split
from torch import nn

import preprocess
import train

# The architecture as published, in the order the layers run (the ReLUs are functional):
# (layer type, the attributes that define it). For a 1 x 130 x 13 input, two 2x2 poolings leave
# 48 channels of 32 x 3 (130 -> 65 -> 32, 13 -> 6 -> 3).
PUBLISHED_LAYERS = [
    (nn.Conv2d, dict(in_channels=1, out_channels=32, kernel_size=(3, 3), padding=(1, 1))),
    (nn.MaxPool2d, dict(kernel_size=2, stride=2)),
    (nn.BatchNorm2d, dict(num_features=32)),
    (nn.Dropout2d, dict(p=0.35)),
    (nn.Conv2d, dict(in_channels=32, out_channels=48, kernel_size=(3, 3), padding=(1, 1))),
    (nn.MaxPool2d, dict(kernel_size=2, stride=2)),
    (nn.BatchNorm2d, dict(num_features=48)),
    (nn.Dropout2d, dict(p=0.35)),
    (nn.Flatten, dict()),
    (nn.Linear, dict(in_features=48 * 32 * 3, out_features=64)),
    (nn.BatchNorm1d, dict(num_features=64)),
    (nn.Dropout, dict(p=0.7)),
    (nn.Linear, dict(in_features=64, out_features=10)),
]


def layers_in_call_order(model, x):
    """The leaf modules of model in the order a forward pass on x calls them."""
    called = []
    hooks = [module.register_forward_hook(lambda m, i, o: called.append(m))
             for module in model.modules() if not list(module.children())]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return called


def test_layers_kernels_widths_and_dropout_rates_are_the_published_ones():
    model = train.GenreClassifier(1, 130, 13, 10).eval()
    called = layers_in_call_order(model, torch.zeros(2, 1, 130, 13))
    assert [type(layer) for layer in called] == [kind for kind, _ in PUBLISHED_LAYERS]
    for layer, (kind, attributes) in zip(called, PUBLISHED_LAYERS):
        for name, value in attributes.items():
            assert getattr(layer, name) == value, (kind.__name__, name)
    # Every parameterised layer is used, and used once.
    assert len(called) == len(set(called)) == len(list(model.children()))


def test_parameter_count_for_a_1x130x13_input_and_10_genres():
    conv1 = 1 * 32 * 3 * 3 + 32  # weights + biases = 320
    bn1 = 2 * 32  # scale and shift = 64
    conv2 = 32 * 48 * 3 * 3 + 48  # 13,872
    bn2 = 2 * 48  # 96
    fc1 = (48 * 32 * 3) * 64 + 64  # 294,976
    bn3 = 2 * 64  # 128
    fc2 = 64 * 10 + 10  # 650
    by_hand = conv1 + bn1 + conv2 + bn2 + fc1 + bn3 + fc2
    assert by_hand == 310_106
    model = train.GenreClassifier(1, 130, 13, 10)
    assert sum(p.numel() for p in model.parameters()) == by_hand


def published_forward(model, x, training):
    """conv -> ReLU -> pool -> batch norm -> dropout, twice, then the dense head, in plain F calls.

    Only the weights and batch-norm statistics come from model; the order and the rates are
    written out here.
    """
    x = F.max_pool2d(F.relu(model.conv1(x)), 2)
    x = F.dropout2d(model.bn1(x), 0.35, training)
    x = F.max_pool2d(F.relu(model.conv2(x)), 2)
    x = F.dropout2d(model.bn2(x), 0.35, training)
    x = F.dropout(model.bn3(F.relu(model.fc1(x.flatten(1)))), 0.7, training)
    return model.fc2(x)


@pytest.mark.parametrize("training", [True, False], ids=["train-mode", "eval-mode"])
def test_pooling_before_relu_is_exactly_the_published_order(training):
    torch.manual_seed(0)
    model = train.GenreClassifier(1, 16, 8, 4).train(training)
    reference = copy.deepcopy(model)  # batch norm updates its statistics in training mode
    x = torch.randn(6, 1, 16, 8)
    torch.manual_seed(1)  # the same dropout masks for both
    got = model(x)
    torch.manual_seed(1)
    expected = published_forward(reference, x, training)
    assert torch.equal(got, expected)  # max and ReLU commute exactly, not just approximately


def test_reported_train_loss_and_accuracy_are_per_segment_over_the_whole_epoch():
    torch.manual_seed(0)
    x, y = torch.randn(10, 1, 4, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    # A plain linear model without dropout or batch norm, and a learning rate of 0: the model is
    # the same at every step, so the epoch's figures can be recomputed in one pass.
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    config = train.TrainConfig(batch_size=4)  # batches of 4, 4 and 2: unequal on purpose
    loss, accuracy = train.train_one_epoch(model, optimizer, x, y, config,
                                           torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
    expected_loss = F.cross_entropy(logits, y).item()
    expected_accuracy = accuracy_score(y.numpy(), logits.argmax(dim=1).numpy())
    assert expected_accuracy > 0  # so that an accuracy never counted would show
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    assert accuracy == pytest.approx(expected_accuracy)


def sklearn_track_split(tracks, labels, val=0.2, test=0.1, seed=42):
    """The track ids of each split, from train_test_split on the sorted unique tracks."""
    genre_of = dict(zip(tracks, labels))
    ids = np.array(sorted(genre_of))
    unit_labels = np.array([genre_of[track] for track in ids])
    rest, test_ids = train_test_split(ids, test_size=test, stratify=unit_labels,
                                      random_state=seed)
    rest_labels = np.array([genre_of[track] for track in rest])
    train_ids, val_ids = train_test_split(rest, test_size=val / (1 - test), stratify=rest_labels,
                                          random_state=seed)
    return {"train": train_ids, "val": val_ids, "test": test_ids}


@pytest.mark.parametrize("seed", [42, 9])
def test_track_split_equals_sklearn_track_by_track(build_cache, seed):
    data = preprocess.make_demo_data(genres=4, tracks_per_genre=11, segments_per_track=3,
                                     frames=4, coeffs=3)
    cache = build_cache(data, "--split-seed", seed)
    expected = sklearn_track_split(data["tracks"], data["labels"], seed=seed)
    segments_of = {track: data["tracks"].count(track) for track in set(data["tracks"])}
    for name, ids in expected.items():
        got = cache[f"tracks_{name}"].tolist()
        assert sorted(set(got)) == sorted(ids.tolist()), name
        assert len(got) == sum(segments_of[track] for track in ids)  # whole tracks only
