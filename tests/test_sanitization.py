from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import FastICA
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from fedbackdoor.models import ResNet18, SmallCNN
from fedbackdoor.sanitization import (
    _sanitize_per_group,
    activation_clustering,
    isolation_forest,
    penultimate_activations,
    score,
)
from fedbackdoor.seeding import seeded_init
from fedbackdoor.training import train


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One thread for torch and (through it) for the sanitizers' scikit-learn calls, as a
    client with the default one CPU runs; busy-waiting thread pools crawl on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _feature_model(d: int, classes: int = 2) -> nn.Module:
    """A model whose penultimate activations are its inputs: Flatten, identity Linear, head."""
    identity = nn.Linear(d, d)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(d))
        identity.bias.zero_()
    return nn.Sequential(nn.Flatten(), identity, nn.Linear(d, classes))


def _blob(n: int, d: int, center: float, generator: torch.Generator, scale: float = 1.0) -> Tensor:
    return scale * torch.randn(n, d, generator=generator) + center


# --------------------------------------------------------------------------------------------
# score
# --------------------------------------------------------------------------------------------


def test_score_counts_a_hand_case() -> None:
    keep = torch.tensor([True, False, False, True, False, True, True])
    poisoned = torch.tensor([False, True, False, False, True, True, True])

    report = score(keep, poisoned)

    # removed {1, 2, 4}; of them poisoned {1, 4}; poisoned {1, 4, 5, 6}
    assert (report.removed, report.removed_poisoned, report.poisoned) == (3, 2, 4)
    assert report.precision == pytest.approx(2 / 3)
    assert report.recall == pytest.approx(1 / 2)


def test_score_is_nan_where_the_rate_has_no_denominator() -> None:
    nothing_removed = score(torch.ones(4, dtype=torch.bool), torch.tensor([1, 0, 0, 1]).bool())
    nothing_poisoned = score(torch.tensor([1, 0, 1, 1]).bool(), torch.zeros(4, dtype=torch.bool))

    assert math.isnan(nothing_removed.precision) and nothing_removed.recall == 0.0
    assert math.isnan(nothing_poisoned.recall) and nothing_poisoned.precision == 0.0


@pytest.mark.parametrize(
    ("keep", "poisoned"),
    [
        (torch.ones(3), torch.zeros(3, dtype=torch.bool)),  # not bool
        (torch.ones(3, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)),  # shapes differ
        (torch.ones(2, 2, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.bool)),  # not 1-D
    ],
)
def test_score_rejects_bad_masks(keep: Tensor, poisoned: Tensor) -> None:
    with pytest.raises(ValueError):
        score(keep, poisoned)


# --------------------------------------------------------------------------------------------
# penultimate_activations
# --------------------------------------------------------------------------------------------


def test_penultimate_activations_are_the_hidden_layer_by_hand() -> None:
    hidden = nn.Linear(3, 2)
    with torch.no_grad():
        hidden.weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [0.5, 0.5, 2.0]]))
        hidden.bias.copy_(torch.tensor([0.0, -1.0]))
    model = nn.Sequential(nn.Flatten(), hidden, nn.ReLU(), nn.Linear(2, 4))
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 1.0, -1.0], [0.0, 0.0, 0.0]])
    model.train()

    acts = penultimate_activations(model, x, batch_size=2)

    # relu([1-2, .5+1+6-1]) = [0, 6.5]; relu([4-1, 2+.5-2-1]) = [3, 0]; relu([0, -1]) = [0, 0]
    expected = torch.tensor([[0.0, 6.5], [3.0, 0.0], [0.0, 0.0]])
    assert torch.equal(acts, expected)
    assert model.training  # its mode is given back


def test_penultimate_activations_of_the_repo_models() -> None:
    with seeded_init(0, "sanitization-models"):
        cnn, resnet = SmallCNN(1, 10), ResNet18(3, 10)
    resnet.train()
    norm = resnet.stem[1]
    assert isinstance(norm, nn.BatchNorm2d) and norm.running_mean is not None
    running_mean = norm.running_mean.clone()
    g = _gen(0)

    cnn_acts = penultimate_activations(cnn, torch.rand(5, 1, 28, 28, generator=g))
    resnet_acts = penultimate_activations(resnet, torch.rand(3, 3, 32, 32, generator=g))

    assert cnn_acts.shape == (5, 100) and (cnn_acts >= 0).all()  # after the hidden ReLU
    assert resnet_acts.shape == (3, 512)
    # eval mode: BatchNorm used its running statistics and did not update them
    assert torch.equal(norm.running_mean, running_mean)


def test_penultimate_activations_need_a_linear_layer() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())

    with pytest.raises(ValueError, match="Sequential"):
        penultimate_activations(model, torch.zeros(2, 1, 5, 5))


# --------------------------------------------------------------------------------------------
# activation_clustering
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduce", ["ica", "pca"])
@pytest.mark.parametrize("d", [2, 12])  # clustered as they are (d <= dims) / reduced to 10
def test_activation_clustering_drops_a_planted_cluster_and_keeps_a_clean_class(
    reduce: Literal["ica", "pca"], d: int
) -> None:
    g = _gen(d)
    x = torch.cat(
        [
            _blob(80, d, 0.0, g),  # class 0, clean
            _blob(20, d, 10.0, g),  # class 0, poisoned: a sub-population of its own
            _blob(300, d, -10.0, g),  # class 1: one clean blob, which 2-means splits ~50/50
        ]
    )
    y = torch.cat([torch.zeros(100), torch.ones(300)]).long()
    poisoned = torch.zeros(400, dtype=torch.bool)
    poisoned[80:100] = True

    keep = activation_clustering(
        _feature_model(d), x, y, generator=_gen(1), num_classes=2, reduce=reduce
    )

    report = score(keep, poisoned)
    assert (report.removed, report.precision, report.recall) == (20, 1.0, 1.0)


def test_silhouette_analysis_gates_on_a_real_split() -> None:
    g = _gen(0)
    # One skewed blob: 2-means cuts off its tail (~23 %) though there is no second cluster.
    skewed = torch.cat(
        [-2.0 * torch.log(torch.rand(300, 1, generator=g)), torch.randn(300, 9, generator=g)], 1
    )
    # Two well-separated blobs, 80/20.
    separated = torch.cat([_blob(80, 2, 0.0, g), _blob(20, 2, 10.0, g)])

    def removed(x: Tensor, **settings: Any) -> int:
        y = torch.zeros(len(x), dtype=torch.long)
        model = _feature_model(x.shape[1])
        keep = activation_clustering(model, x, y, generator=_gen(1), num_classes=1, **settings)
        return int((~keep).sum())

    tail = removed(skewed, analysis="relative_size")
    gated = removed(skewed, analysis="silhouette", silhouette_threshold=0.5)
    split = removed(separated, analysis="silhouette", silhouette_threshold=0.5)

    assert 0 < tail <= 0.35 * 300  # relative size alone drops the tail ...
    assert gated == 0  # ... its silhouette (~0.23) is too low to count as two clusters
    assert split == 20  # two real clusters score ~0.8: the smaller goes


def test_silhouette_analysis_with_size_threshold_half_drops_any_smaller_real_cluster() -> None:
    g = _gen(2)
    x = torch.cat([_blob(60, 2, 0.0, g), _blob(40, 2, 10.0, g)])
    y = torch.zeros(100, dtype=torch.long)
    model = _feature_model(2)

    default = activation_clustering(
        model, x, y, generator=_gen(1), num_classes=1, analysis="silhouette"
    )
    silhouette_alone = activation_clustering(
        model, x, y, generator=_gen(1), num_classes=1, analysis="silhouette", size_threshold=0.5
    )

    assert default.all()  # 40 % is above the size gate of 0.35
    assert torch.equal(~silhouette_alone, torch.arange(100) >= 60)


def test_activation_clustering_keeps_small_classes_whole() -> None:
    g = _gen(3)
    x = torch.cat([_blob(7, 2, 0.0, g), _blob(1, 2, 20.0, g)])  # 8 samples, one far away
    y = torch.zeros(8, dtype=torch.long)
    model = _feature_model(2)

    default = activation_clustering(model, x, y, generator=_gen(1), num_classes=1)
    analysed = activation_clustering(model, x, y, generator=_gen(1), num_classes=1, min_samples=3)

    assert default.all()  # 8 < 5 * dims
    assert torch.equal(~analysed, torch.arange(8) == 7)


def test_activation_clustering_on_fewer_samples_than_dims() -> None:
    # 12 features > dims = 10, but 6 samples span only 5 directions. PCA keeps them (distances
    # intact); whitened in all 5 (ICA) the 6 points are equidistant, so the class is kept.
    g = _gen(4)
    x = torch.cat([_blob(4, 12, 0.0, g), _blob(2, 12, 10.0, g)])
    y = torch.zeros(6, dtype=torch.long)
    model = _feature_model(12)

    pca = activation_clustering(
        model, x, y, generator=_gen(1), num_classes=1, min_samples=3, reduce="pca"
    )
    ica = activation_clustering(
        model, x, y, generator=_gen(1), num_classes=1, min_samples=3, reduce="ica"
    )

    assert torch.equal(~pca, torch.arange(6) >= 4)
    assert ica.all()


@pytest.mark.parametrize(
    "sanitizer",
    [
        activation_clustering,
        # "auto" would call every one of a set of identical points an outlier
        functools.partial(isolation_forest, contamination="auto"),
    ],
)
def test_sanitizers_keep_classes_they_cannot_analyse(sanitizer: object) -> None:
    assert callable(sanitizer)
    g = _gen(5)
    identical = torch.full((60, 2), 3.0)  # class 0: e.g. every unit a dead ReLU
    broken = torch.full((60, 2), math.nan)  # class 1: a diverged global model
    planted = torch.cat([_blob(50, 2, 0.0, g), _blob(10, 2, 10.0, g)])  # class 2
    x = torch.cat([identical, broken, planted])
    y = torch.arange(3).repeat_interleave(60)

    keep = sanitizer(_feature_model(2, 3), x, y, generator=_gen(1), num_classes=3, device="cpu")

    assert keep[:120].all()
    assert not keep[120:].all()  # class 2 was analysed, so the result is not a fallback


def test_ica_reduction_clusters_as_sklearn_fastica_does() -> None:
    # The naive pipeline (ART's FastICA settings, then 2-means with the same seed, relative
    # size) against activation_clustering, on ReLU features (40 > dims) with planted groups.
    g = _gen(6)
    mixing = torch.randn(8, 40, generator=g)
    latent = torch.randn(600, 8, generator=g)
    latent[:40] += 4.0 * torch.randn(1, 8, generator=g)  # a group in class 0
    latent[200:260] += 4.0 * torch.randn(1, 8, generator=g)  # and one in class 1
    x = torch.relu(latent @ mixing)
    y = torch.arange(600) // 200  # three classes of 200
    seeds = torch.randint(0, 2**31 - 1, (3,), generator=_gen(1)).tolist()  # as drawn inside
    reference = np.ones(600, dtype=bool)
    for c in range(3):
        members = (y == c).numpy()
        ica = FastICA(10, whiten="unit-variance", max_iter=1000, tol=0.005, random_state=seeds[c])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            sources = ica.fit_transform(x[members].double().numpy())
        labels = KMeans(2, n_init=10, random_state=seeds[c]).fit_predict(sources)
        sizes = np.bincount(labels)
        if sizes.min() < sizes.max() and sizes.min() / labels.size <= 0.35:
            reference[np.flatnonzero(members)[labels == sizes.argmin()]] = False

    keep = activation_clustering(_feature_model(40, 3), x, y, generator=_gen(1), num_classes=3)

    assert not reference.all()  # the comparison covers a drop
    assert np.array_equal(keep.numpy(), reference)


def test_activation_clustering_detects_a_backdoor_learned_by_a_small_cnn() -> None:
    # Four classes told apart by a bar's position; 30 class-1 images carry a bright 3x3 corner
    # patch and the label 0 (20 % of label 0). After 300 SGD steps the network has learned the
    # patch, and its hidden layer separates the poisoned images within label 0.
    g = _gen(0)

    def images(label: int, n: int) -> Tensor:
        x = 0.3 * torch.rand(n, 1, 16, 16, generator=g)
        x[:, :, 1 + 3 * label : 3 + 3 * label, 2:12] += 0.6
        return x

    triggered = images(1, 30)
    triggered[:, :, -4:-1, -4:-1] = 1.0
    x = torch.cat([images(c, 120) for c in range(4)] + [triggered]).clamp(0, 1)
    y = torch.cat([torch.arange(4).repeat_interleave(120), torch.zeros(30, dtype=torch.long)])
    poisoned = torch.arange(510) >= 480
    with seeded_init(0, "sanitization-backdoor"):
        model = SmallCNN(1, 4, (16, 16))
    train(model, x, y, epochs=100, batch_size=32, lr=0.05, generator=g, steps=300)

    keep = activation_clustering(
        model, x, y, generator=_gen(1), num_classes=4, analysis="silhouette"
    )

    report = score(keep, poisoned)
    assert report.recall >= 0.9 and report.precision >= 0.9


# --------------------------------------------------------------------------------------------
# isolation_forest
# --------------------------------------------------------------------------------------------


def _outliers_within_their_label() -> tuple[Tensor, Tensor, Tensor]:
    """Label 0 around (0, 0), label 1 around (12, 12), and 5 samples labelled 0 in the core of
    label 1's cloud: outliers within label 0, not within the whole set."""
    g = _gen(3)
    x = torch.cat([_blob(200, 2, 0.0, g), _blob(200, 2, 12.0, g), _blob(5, 2, 12.0, g, 0.3)])
    y = torch.cat([torch.zeros(200), torch.ones(200), torch.zeros(5)]).long()
    return x, y, torch.arange(405) >= 400


@pytest.mark.parametrize("contamination", [0.025, "auto"])
def test_isolation_forest_per_class_removes_the_outliers_of_a_label(
    contamination: float | Literal["auto"],
) -> None:
    x, y, poisoned = _outliers_within_their_label()

    keep = isolation_forest(
        _feature_model(2), x, y, generator=_gen(1), num_classes=2, contamination=contamination
    )

    assert score(keep, poisoned).recall == 1.0
    if contamination == 0.025:
        assert int((~keep).sum()) <= 12  # ~2.5 % of each label


def test_isolation_forest_over_all_samples_misses_them() -> None:
    x, y, poisoned = _outliers_within_their_label()

    keep = isolation_forest(
        _feature_model(2),
        x,
        y,
        generator=_gen(1),
        num_classes=2,
        contamination=0.025,
        per_class=False,
    )

    assert score(keep, poisoned).removed_poisoned == 0


# --------------------------------------------------------------------------------------------
# Both sanitizers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sanitizer", [activation_clustering, isolation_forest])
def test_same_generator_state_same_mask_and_num_classes_draws(sanitizer: object) -> None:
    assert callable(sanitizer)
    g = _gen(7)
    x = torch.cat([_blob(60, 3, 0.0, g), _blob(15, 3, 6.0, g), _blob(75, 3, -6.0, g)])
    y = torch.cat([torch.zeros(75), torch.ones(75)]).long()
    first, second = _gen(11), _gen(11)

    a = sanitizer(_feature_model(3), x, y, generator=first, num_classes=2, device="cpu")
    b = sanitizer(_feature_model(3), x, y, generator=second, num_classes=2, device="cpu")

    assert torch.equal(a, b) and not a.all()
    after = _gen(11)
    torch.randint(0, 2**31 - 1, (2,), generator=after)
    assert torch.equal(first.get_state(), after.get_state())


@pytest.mark.parametrize("sanitizer", [activation_clustering, isolation_forest])
def test_sanitizers_share_one_signature_settings_bound_by_partial(sanitizer: object) -> None:
    assert callable(sanitizer)
    parameters = inspect.signature(sanitizer).parameters
    names = list(parameters)
    settings = [p for p in parameters.values() if p.name not in ("model", "x", "y")]
    g = _gen(8)
    x, y = torch.randn(30, 3, generator=g), torch.arange(30) % 2
    bound = functools.partial(sanitizer, batch_size=7)  # as Hydra's _partial_: true

    keep = bound(_feature_model(3), x, y, generator=_gen(1), num_classes=2, device="cpu")

    assert names[:3] == ["model", "x", "y"]
    assert {"generator", "num_classes", "device"} <= set(names)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in settings)
    assert all(
        p.default is not inspect.Parameter.empty
        for p in settings
        if p.name not in ("generator", "num_classes")
    )
    assert keep.dtype == torch.bool and keep.shape == (30,)


def test_a_sanitizer_never_returns_an_empty_dataset() -> None:
    x, y = torch.randn(20, 2, generator=_gen(9)), torch.zeros(20, dtype=torch.long)

    keep = _sanitize_per_group(
        "drop_everything",
        lambda acts, seed, eps: np.ones(len(acts), dtype=bool),
        _feature_model(2),
        x,
        y,
        generator=_gen(1),
        num_classes=1,
        per_class=True,
        min_samples=2,
        device="cpu",
        batch_size=256,
    )

    assert keep.all()


@pytest.mark.parametrize(
    ("sanitizer", "setting", "value"),
    [
        (activation_clustering, "dims", 0),
        (activation_clustering, "reduce", "tsne"),
        (activation_clustering, "analysis", "smaller"),
        (activation_clustering, "size_threshold", 0.6),
        (activation_clustering, "size_threshold", 0.0),
        (activation_clustering, "silhouette_threshold", 1.5),
        (activation_clustering, "min_samples", 2),
        (activation_clustering, "n_init", 0),
        (activation_clustering, "batch_size", 0),
        (isolation_forest, "contamination", 0.9),
        (isolation_forest, "contamination", "sometimes"),
        (isolation_forest, "per_class", "yes"),
        (isolation_forest, "n_estimators", 0),
        (isolation_forest, "min_samples", 1),
        (isolation_forest, "num_classes", 0),
    ],
)
def test_bad_settings_are_named(sanitizer: object, setting: str, value: object) -> None:
    assert callable(sanitizer)
    x, y = torch.randn(20, 2, generator=_gen(10)), torch.zeros(20, dtype=torch.long)
    kwargs: dict[str, object] = {"generator": _gen(1), "num_classes": 1, setting: value}

    with pytest.raises(ValueError, match=f"{setting}="):
        sanitizer(_feature_model(2), x, y, **kwargs)


@pytest.mark.parametrize(
    ("y", "generator", "message"),
    [
        (torch.zeros(19, dtype=torch.long), _gen(1), "shape"),
        (torch.zeros(20), _gen(1), "integer labels"),
        (torch.full((20,), 2), _gen(1), r"\[0, 2\)"),
        (torch.zeros(20, dtype=torch.long), 1, "torch.Generator"),
    ],
)
def test_bad_inputs_are_rejected(y: Tensor, generator: object, message: str) -> None:
    x = torch.randn(20, 2, generator=_gen(10))

    with pytest.raises(ValueError, match=message):
        activation_clustering(_feature_model(2), x, y, generator=generator, num_classes=2)  # type: ignore[arg-type]
