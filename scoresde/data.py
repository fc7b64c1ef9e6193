"""Training data that needs no download, and a plain way to bring your own.

Built-in sets (``get_dataset(name)``; :data:`DATASETS` lists them):

* 2-D toy sets drawn fresh at every step (an infinite stream): ``moons``, ``swiss_roll``,
  ``checkerboard``, and ``8gaussians`` (a :class:`~scoresde.targets.GaussianMixture`, so its
  score and density are exact);
* the analytic targets ``mixture`` (three anisotropic, unequally weighted 2-D modes) and
  ``gaussian`` (a correlated 2-D Gaussian); any :class:`GaussianMixture` passes too;
* ``digits``: scikit-learn's 1,797 8x8 handwritten digits (shipped inside scikit-learn, the
  optional ``data`` extra), scaled from ``0..16`` to ``[-1, 1]``, shape ``(1, 8, 8)``, 10 classes.

Your own data: :func:`as_data` accepts a path (an image folder, ``.npy`` or ``.npz``:
:mod:`scoresde.datafiles`), a tensor ``(N, ...)``, a ``TensorDataset`` (``(x,)`` or
``(x, y)``), any map-style ``torch.utils.data.Dataset`` returning ``x`` or ``(x, y)``, or a
``DataLoader`` (its dataset, ``collate_fn``, ``num_workers`` and ``pin_memory`` are kept; the
trainer draws batches with its own sampler so that the data order is reproducible).

Reproducibility: the batch of optimisation step ``k`` on DDP rank ``r`` is a deterministic
function of ``(seed, k, r)`` and the world size. Streams of finite datasets walk through epochs
of a :class:`torch.utils.data.DistributedSampler` (``seed``, ``set_epoch(epoch)``), dropping the
last incomplete batch; synthetic streams draw batch ``k`` from a generator seeded with
``derive_seed(seed, k, r)``. A resumed run therefore sees exactly the batches it would have seen.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from .targets import GaussianMixture

Batch = tuple[Tensor, Tensor | None]
_MASK64 = (1 << 64) - 1


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, by chained splitmix64 (Steele et al. 2014):

    ``z <- (z + p + 0x9E3779B97F4A7C15) mod 2^64``, then ``z ^= z >> 30; z *= 0xBF58476D1CE4E5B9;
    z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31`` for each part ``p``. Nearby inputs
    ``(seed, step, rank)`` give unrelated seeds.
    """
    z = 0x2545F4914F6CDD1D
    for p in parts:
        z = (z + (int(p) & _MASK64) + 0x9E3779B97F4A7C15) & _MASK64
        z ^= z >> 30
        z = (z * 0xBF58476D1CE4E5B9) & _MASK64
        z ^= z >> 27
        z = (z * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
    return z >> 1


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data (stored in checkpoints as a plain dict).

    Attributes:
        name: the dataset's name.
        shape: the shape of one sample (``(2,)`` for 2-D points, ``(C, H, W)`` for images).
        num_classes: number of label classes (``None`` if unlabelled).
        sigma_data: per-coordinate standard deviation of the data (for input scaling).
        value_range: ``(lo, hi)`` of bounded data such as images, else ``None``.
    """

    name: str
    shape: tuple[int, ...]
    num_classes: int | None = None
    sigma_data: float = 1.0
    value_range: tuple[float, float] | None = None

    @property
    def is_2d(self) -> bool:
        """Points in the plane (scatter plots)."""
        return tuple(self.shape) == (2,)

    @property
    def is_image(self) -> bool:
        """``(C, H, W)`` with ``C`` in {1, 3} (image grids, U-Net)."""
        return len(self.shape) == 3 and self.shape[0] in (1, 3)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (lists, no tuples) for checkpoints and JSON."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "is_2d": self.is_2d,
            "is_image": self.is_image,
            "num_classes": self.num_classes,
            "sigma_data": self.sigma_data,
            "value_range": None if self.value_range is None else list(self.value_range),
        }


class BatchStream(abc.ABC):
    """Batches of one rank: ``batch(step) -> (x, y or None)`` on the stream's device."""

    @abc.abstractmethod
    def batch(self, step: int) -> Batch:
        """The batch of optimisation step ``step`` (a deterministic function of the seed)."""


class Data(abc.ABC):
    """A training set: :attr:`info`, :meth:`stream` for the trainer and :meth:`reference` samples."""

    info: DataInfo
    target: GaussianMixture | None = None

    @abc.abstractmethod
    def stream(
        self,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
    ) -> BatchStream:
        """The batches of rank ``rank`` (``batch_size`` is per rank)."""

    @abc.abstractmethod
    def reference(self, n: int, seed: int = 0) -> Tensor:
        """Up to ``n`` data samples (for plots and evaluation)."""

    def heldout(self, n: int, seed: int = 0) -> tuple[Tensor, str] | None:
        """Up to ``n`` samples the trainer never sees, with a description of them; ``None`` when
        the set has no held-out part (then only :meth:`reference`, training data, is left)."""
        return None


def _check_batch_args(batch_size: int, rank: int, world_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    if not (isinstance(world_size, int) and world_size >= 1 and 0 <= rank < world_size):
        raise ValueError(
            f"rank={rank!r}, world_size={world_size!r}: expected 0 <= rank < world_size"
        )


# -- synthetic streams ----------------------------------------------------------------------------
Sampler = Callable[[int, torch.Generator], Tensor]


class _SyntheticStream(BatchStream):
    def __init__(self, data: SyntheticData, batch_size: int, seed: int, rank: int, device) -> None:
        self.data, self.batch_size, self.seed, self.rank = data, batch_size, seed, rank
        self.device = torch.device(device)
        self.gen = torch.Generator()

    def batch(self, step: int) -> Batch:
        self.gen.manual_seed(derive_seed(self.seed, step, self.rank, 0xDA7A))
        x = self.data.sampler(self.batch_size, self.gen)
        return x.to(self.device, non_blocking=True), None


class SyntheticData(Data):
    """An infinite stream: ``sampler(n, generator) -> (n, *shape)`` draws fresh points each step.

    Args:
        name: the dataset's name.
        sampler: draws ``n`` float32 samples with the given CPU generator.
        target: the exact :class:`GaussianMixture` when the data come from one.
    """

    def __init__(self, name: str, sampler: Sampler, target: GaussianMixture | None = None) -> None:
        self.sampler = sampler
        self.target = target
        probe = sampler(20_000, torch.Generator().manual_seed(12345))
        if not isinstance(probe, Tensor) or probe.dim() < 2 or probe.shape[0] != 20_000:
            raise ValueError(f"sampler of {name!r} must return an (n, ...) tensor")
        self.info = DataInfo(
            name, tuple(probe.shape[1:]), None, float(probe.double().std(0).mean())
        )

    def stream(self, batch_size, seed, rank=0, world_size=1, device="cpu") -> BatchStream:
        _check_batch_args(batch_size, rank, world_size)
        return _SyntheticStream(self, batch_size, seed, rank, device)

    def reference(self, n: int, seed: int = 0) -> Tensor:
        return self.sampler(int(n), torch.Generator().manual_seed(derive_seed(seed, 0xF1)))

    def heldout(self, n: int, seed: int = 0) -> tuple[Tensor, str]:
        # the training stream draws from other seeds: these are fresh points, not training ones
        x = self.sampler(int(n), torch.Generator().manual_seed(derive_seed(seed, 0x7E57)))
        return x, "fresh draws from the data distribution (not training points)"

    def __repr__(self) -> str:
        return f"SyntheticData({self.info.name!r}, shape={self.info.shape})"


# -- finite datasets --------------------------------------------------------------------------
class _Indexable:
    """A length-only stand-in that DistributedSampler can shuffle."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class _EpochIndices:
    """Per-epoch index order of one rank from a DistributedSampler (shuffle, seed, set_epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        self.sampler = DistributedSampler(
            _Indexable(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed
        )
        self.batch_size = batch_size
        self.per_epoch = len(self.sampler) // batch_size
        if self.per_epoch < 1:
            raise ValueError(
                f"batch_size={batch_size} per rank exceeds the {len(self.sampler)} samples each of "
                f"the {world_size} rank(s) gets from a dataset of {n}"
            )

    def indices(self, epoch: int) -> list[int]:
        self.sampler.set_epoch(epoch)
        return list(iter(self.sampler))


class _TensorStream(BatchStream):
    def __init__(self, data: TensorData, batch_size, seed, rank, world_size, device) -> None:
        self.device = torch.device(device)
        self.x = data.x.to(self.device)
        self.y = None if data.y is None else data.y.to(self.device)
        self.order = _EpochIndices(len(data.x), batch_size, seed, rank, world_size)
        self._epoch, self._idx = -1, None

    def batch(self, step: int) -> Batch:
        epoch, k = divmod(int(step), self.order.per_epoch)
        if epoch != self._epoch:
            idx = self.order.indices(epoch)
            self._idx = torch.tensor(idx, dtype=torch.long, device=self.device)
            self._epoch = epoch
        B = self.order.batch_size
        sel = self._idx[k * B : (k + 1) * B]
        return self.x[sel], None if self.y is None else self.y[sel]


class TensorData(Data):
    """An in-memory dataset ``x`` (``(N, ...)``) with optional integer labels ``y`` (``(N,)``).

    The whole set is moved to the training device once and batches are gathered there (no
    DataLoader on the hot path). ``test`` (``(M, ...)``), if given, is a held-out set that is
    never trained on (:meth:`heldout`).
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor | None = None,
        name: str = "tensor",
        num_classes: int | None = None,
        value_range: tuple[float, float] | None = None,
        test: Tensor | None = None,
    ) -> None:
        x = torch.as_tensor(x)
        if x.dim() < 2 or x.shape[0] < 1:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (N, ...) with N >= 1")
        if not x.is_floating_point():
            x = x.float()
        if y is not None:
            y = torch.as_tensor(y)
            if y.shape != (x.shape[0],) or y.is_floating_point():
                raise ValueError(
                    f"labels y have shape {tuple(y.shape)} and dtype {y.dtype}; expected "
                    f"integers of shape ({x.shape[0]},)"
                )
            y = y.long()
            if num_classes is None:
                num_classes = int(y.max()) + 1
        if test is not None:
            test = torch.as_tensor(test).to(x.dtype)
            if tuple(test.shape[1:]) != tuple(x.shape[1:]) or test.shape[0] < 1:
                raise ValueError(
                    f"test has shape {tuple(test.shape)}; expected (M, {', '.join(map(str, x.shape[1:]))})"
                )
        self.x, self.y, self.test = x, y, test
        std = float(x.double().std()) if x.numel() > 1 else 1.0
        self.info = DataInfo(
            name, tuple(x.shape[1:]), num_classes, std if std > 0 else 1.0, value_range
        )

    def stream(self, batch_size, seed, rank=0, world_size=1, device="cpu") -> BatchStream:
        _check_batch_args(batch_size, rank, world_size)
        return _TensorStream(self, batch_size, seed, rank, world_size, device)

    def reference(self, n: int, seed: int = 0) -> Tensor:
        g = torch.Generator().manual_seed(derive_seed(seed, 0xF1))
        idx = torch.randperm(len(self.x), generator=g)[: int(n)]
        return self.x[idx]

    def heldout(self, n: int, seed: int = 0) -> tuple[Tensor, str] | None:
        if self.test is None:
            return None
        g = torch.Generator().manual_seed(derive_seed(seed, 0xF1))
        idx = torch.randperm(len(self.test), generator=g)[: int(n)]
        return self.test[idx], f"the held-out split ({len(self.test)} samples never trained on)"

    def __repr__(self) -> str:
        return f"TensorData({self.info.name!r}, n={len(self.x)}, shape={self.info.shape})"


def _split_batch(b: Any) -> Batch:
    if isinstance(b, Tensor):
        return b, None
    if isinstance(b, (tuple, list)) and len(b) in (1, 2) and isinstance(b[0], Tensor):
        return b[0], (b[1] if len(b) == 2 else None)
    raise ValueError(
        f"a dataset item/batch must be a tensor x or a pair (x, y); got {type(b).__name__}"
    )


class _LoaderStream(BatchStream):
    def __init__(self, data: DatasetData, batch_size, seed, rank, world_size, device) -> None:
        self.data, self.batch_size, self.device = data, batch_size, torch.device(device)
        self.order = _EpochIndices(len(data.dataset), batch_size, seed, rank, world_size)
        self._next: tuple[int, int] | None = None
        self._it = None
        self._it_epoch = -1

    def _start(self, epoch: int, k: int) -> None:
        B = self.batch_size
        idx = self.order.indices(epoch)[k * B : self.order.per_epoch * B]
        loader = DataLoader(
            self.data.dataset, batch_size=B, sampler=idx, drop_last=True, **self.data.loader_kwargs
        )
        self._it = iter(loader)
        self._it_epoch = epoch

    def batch(self, step: int) -> Batch:
        epoch, k = divmod(int(step), self.order.per_epoch)
        if self._next != (epoch, k) or self._it_epoch != epoch:  # new epoch, resume or jump
            self._start(epoch, k)
        x, y = _split_batch(next(self._it))
        self._next = (epoch, k + 1) if k + 1 < self.order.per_epoch else (epoch + 1, 0)
        nb = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=nb)
        return x, None if y is None else torch.as_tensor(y).to(self.device, non_blocking=nb)


class DatasetData(Data):
    """Any map-style ``Dataset`` whose items are ``x`` or ``(x, y)``, loaded through a
    ``DataLoader`` (``loader_kwargs``: ``num_workers``, ``collate_fn``, ``pin_memory``, ...)."""

    def __init__(
        self,
        dataset: Dataset,
        name: str = "dataset",
        num_classes: int | None = None,
        **loader_kwargs: Any,
    ) -> None:
        try:
            n = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError(
                "the dataset has no len(); iterable-style datasets cannot be resumed exactly: "
                "use a map-style Dataset"
            ) from None
        if n < 1:
            raise ValueError("the dataset is empty")
        self.dataset = dataset
        self.loader_kwargs = loader_kwargs
        x0, _ = _split_batch(dataset[0])
        self.info = DataInfo(name, tuple(x0.shape), num_classes, 1.0)

    def stream(self, batch_size, seed, rank=0, world_size=1, device="cpu") -> BatchStream:
        _check_batch_args(batch_size, rank, world_size)
        return _LoaderStream(self, batch_size, seed, rank, world_size, device)

    def reference(self, n: int, seed: int = 0) -> Tensor:
        g = torch.Generator().manual_seed(derive_seed(seed, 0xF1))
        idx = torch.randperm(len(self.dataset), generator=g)[: int(n)].tolist()
        return torch.stack([_split_batch(self.dataset[i])[0] for i in idx])

    def __repr__(self) -> str:
        return f"DatasetData({self.info.name!r}, n={len(self.dataset)}, shape={self.info.shape})"


# -- built-in toy sets ----------------------------------------------------------------------------
def moons(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> Tensor:
    """Two interleaving half circles (as ``sklearn.datasets.make_moons`` with random angles):
    upper ``(cos a, sin a)``, lower ``(1 - cos a, 1/2 - sin a)``, ``a ~ U(0, pi)``, plus
    ``N(0, noise^2)``; then centred on ``(1/2, 1/4)`` and divided by 0.7 (unit RMS std)."""
    a = math.pi * torch.rand(n, generator=generator)
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(a), 1 - torch.cos(a))
    y = torch.where(upper, torch.sin(a), 0.5 - torch.sin(a))
    pts = torch.stack([x, y], 1) + noise * torch.randn(n, 2, generator=generator)
    return (pts - torch.tensor([0.5, 0.25])) / 0.7


def swiss_roll(n: int, generator: torch.Generator | None = None, noise: float = 0.5) -> Tensor:
    """The 2-D Swiss roll: ``s ~ U(3 pi / 2, 9 pi / 2)``, ``(s cos s, s sin s) + N(0, noise^2)``,
    centred on ``(2, 0.2)`` and divided by 6.8 (unit RMS std)."""
    s = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    pts = torch.stack([s * torch.cos(s), s * torch.sin(s)], 1)
    pts = pts + noise * torch.randn(n, 2, generator=generator)
    return (pts - torch.tensor([2.0, 0.2])) / 6.8


def checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform on the 8 dark squares of a 4x4 checkerboard on ``[-2, 2]^2`` (FFJORD's set):
    ``x1 ~ U(-2, 2)``, ``x2 = u - 2 b + (floor(x1) mod 2)``, ``u ~ U(0, 1)``, ``b ~ B(1/2)``."""
    x1 = 4 * torch.rand(n, generator=generator) - 2
    x2 = torch.rand(n, generator=generator) - 2 * torch.randint(0, 2, (n,), generator=generator)
    x2 = x2 + torch.remainder(torch.floor(x1), 2)
    return torch.stack([x1, x2], 1)


def eight_gaussians_target(std: float = 0.1) -> GaussianMixture:
    """Eight equal isotropic modes on a circle of radius ``r = sqrt(2 (1 - std^2))`` (unit
    per-coordinate variance ``r^2 / 2 + std^2 = 1``)."""
    r = math.sqrt(2 * (1 - std**2))
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = r * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    return GaussianMixture(torch.ones(8), means, torch.full((8,), std**2))


def mixture_target() -> GaussianMixture:
    """Three anisotropic, unequally weighted 2-D modes (the project's standard 2-D target)."""
    return GaussianMixture(
        weights=[0.5, 0.3, 0.2],
        means=[[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]],
        covs=[[[0.4, 0.15], [0.15, 0.2]], [[0.15, 0.0], [0.0, 0.5]], [[0.3, -0.1], [-0.1, 0.1]]],
    )


def gaussian_target() -> GaussianMixture:
    """A correlated 2-D Gaussian ``N((0.5, -0.5), [[1, 0.6], [0.6, 0.8]])``."""
    from .targets import Gaussian

    return Gaussian([0.5, -0.5], [[1.0, 0.6], [0.6, 0.8]])


def from_target(target: GaussianMixture, name: str = "target") -> SyntheticData:
    """A synthetic stream drawn from an analytic target (exact score available as ``.target``)."""
    if not isinstance(target, GaussianMixture):
        raise ValueError(f"target={target!r} must be a scoresde GaussianMixture / Gaussian")

    def draw(n: int, generator: torch.Generator) -> Tensor:
        return target.sample(n, generator=generator, dtype=torch.float32)

    return SyntheticData(name, draw, target)


DIGITS_SPLITS = ("train", "all")


def digits(split: str = "train") -> TensorData:
    """scikit-learn's 8x8 digits in ``[-1, 1]`` (``x / 8 - 1``), labels 0..9.

    ``split="train"``: 1,500 training images, with the other 297 as the held-out ``test`` set
    (a fixed permutation, ``torch.randperm(1797, generator=manual_seed(0))``); ``"all"``: all
    1,797, no held-out set.
    """
    if split not in DIGITS_SPLITS:
        raise ValueError(f"split={split!r}; expected one of {', '.join(DIGITS_SPLITS)}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits dataset needs scikit-learn, the optional 'data' extra: "
            "pip install 'scoresde[data]' (or pip install scikit-learn)"
        ) from err
    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    if split == "all":
        return TensorData(x, y, name="digits", num_classes=10, value_range=(-1.0, 1.0))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1500], perm[1500:]
    return TensorData(
        x[tr], y[tr], name="digits", num_classes=10, value_range=(-1.0, 1.0), test=x[te]
    )


DATASETS: dict[str, Callable[[], Data]] = {
    "moons": lambda: SyntheticData("moons", moons),
    "swiss_roll": lambda: SyntheticData("swiss_roll", swiss_roll),
    "8gaussians": lambda: from_target(eight_gaussians_target(), "8gaussians"),
    "checkerboard": lambda: SyntheticData("checkerboard", checkerboard),
    "mixture": lambda: from_target(mixture_target(), "mixture"),
    "gaussian": lambda: from_target(gaussian_target(), "gaussian"),
    "digits": digits,
}


def get_dataset(name: str) -> Data:
    """The built-in dataset ``name``; unknown names list the valid ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name]()


def as_data(obj: Any, name: str | None = None) -> Data:
    """Turn a dataset name, :class:`Data`, tensor, ``TensorDataset``, ``Dataset``,
    ``DataLoader`` or :class:`GaussianMixture` into a :class:`Data`."""
    if isinstance(obj, Data):
        return obj
    if isinstance(obj, str):
        import os

        if obj not in DATASETS and os.path.exists(obj):
            from .datafiles import load_path

            return load_path(obj)
        return get_dataset(obj)
    if isinstance(obj, GaussianMixture):
        return from_target(obj, name or "target")
    if isinstance(obj, Tensor):
        return TensorData(obj, name=name or "tensor")
    if isinstance(obj, TensorDataset):
        ts: Sequence[Tensor] = obj.tensors
        if len(ts) not in (1, 2):
            raise ValueError(
                f"a TensorDataset must hold (x,) or (x, y); it holds {len(ts)} tensors"
            )
        return TensorData(ts[0], ts[1] if len(ts) == 2 else None, name=name or "tensor")
    if isinstance(obj, DataLoader):
        if isinstance(obj.dataset, TensorDataset) and _default_collate(obj):
            return as_data(obj.dataset, name)
        kwargs: dict[str, Any] = {"collate_fn": obj.collate_fn, "pin_memory": obj.pin_memory}
        if obj.num_workers > 0:
            kwargs.update(num_workers=obj.num_workers, worker_init_fn=obj.worker_init_fn)
        return DatasetData(obj.dataset, name=name or "dataset", **kwargs)
    if isinstance(obj, Dataset):
        return DatasetData(obj, name=name or "dataset")
    raise ValueError(
        f"cannot use {type(obj).__name__} as training data; expected a dataset name "
        f"({', '.join(DATASETS)}), a tensor, a TensorDataset, a Dataset, a DataLoader or a "
        "GaussianMixture"
    )


def _default_collate(loader: DataLoader) -> bool:
    from torch.utils.data import default_collate

    return loader.collate_fn is default_collate


__all__ = [
    "DATASETS",
    "BatchStream",
    "Data",
    "DataInfo",
    "DatasetData",
    "SyntheticData",
    "TensorData",
    "as_data",
    "checkerboard",
    "derive_seed",
    "digits",
    "eight_gaussians_target",
    "from_target",
    "get_dataset",
    "gaussian_target",
    "mixture_target",
    "moons",
    "swiss_roll",
]
