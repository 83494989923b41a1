"""Tests for we/train/datasets.py and we/train/pipeline.py (datasets, both pipelines, augmentation, determinism)."""

from __future__ import annotations

import pickle
from pathlib import Path
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from scipy import stats

from we.train import datasets as D
from we.train.datasets import DATASETS, DatasetInfo, dataset_info
from we.train.pipeline import augment_batch, build_data

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# helpers


def _collect(iterable):
    xs, ys = [], []
    for x, y in iterable:
        xs.append(x)
        ys.append(y)
    return xs, ys


def _same_batches(a, b) -> bool:
    return len(a[0]) == len(b[0]) and all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for x1, x2, y1, y2 in zip(a[0], b[0], a[1], b[1])
    )


def _write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _fake_images(rng, n):
    return rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)  # row: R(1024) G B, as CIFAR


@pytest.fixture
def no_md5(monkeypatch):
    """Fake CIFAR files cannot match torchvision's MD5 sums: skip the check, in this test only."""
    import torchvision.datasets.cifar as cifar_mod

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar_mod, "check_integrity", lambda *a, **k: True)  # used by _load_meta


CIFAR10_PER_BATCH = 20
CIFAR10_TEST = 30


@pytest.fixture
def cifar10_dir(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "c10"
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    arrays = {}
    for i in range(1, 6):
        x = _fake_images(rng, CIFAR10_PER_BATCH)
        y = rng.integers(0, 10, CIFAR10_PER_BATCH).tolist()
        arrays[f"data_batch_{i}"] = (x, y)
        _write_pickle(d / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "labels": y,
                                               "data": x, "filenames": [f"{i}_{k}.png" for k in range(len(y))]})
    x = _fake_images(rng, CIFAR10_TEST)
    y = rng.integers(0, 10, CIFAR10_TEST).tolist()
    arrays["test_batch"] = (x, y)
    _write_pickle(d / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": y, "data": x,
                                     "filenames": [f"t_{k}.png" for k in range(len(y))]})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _write_pickle(d / "batches.meta", {"num_cases_per_batch": CIFAR10_PER_BATCH, "label_names": names,
                                       "num_vis": 3072})
    return root, arrays


@pytest.fixture
def cifar100_dir(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "c100"
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", 60), ("test", 25)):
        x = _fake_images(rng, n)
        fine = rng.integers(0, 100, n).tolist()
        arrays[split] = (x, fine)
        _write_pickle(d / split, {"filenames": [f"{k}.png" for k in range(n)], "batch_label": split,
                                  "fine_labels": fine, "coarse_labels": [f // 5 for f in fine], "data": x})
    _write_pickle(d / "meta", {"fine_label_names": [f"c{i}" for i in range(100)],
                               "coarse_label_names": [f"s{i}" for i in range(20)]})
    return root, arrays


def _nchw(rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rows.reshape(-1, 3, 32, 32).copy())


def _normalise(x_uint8: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)
    return (x_uint8.float() / 255 - mean) / std


# --------------------------------------------------------------------------------------------
# dataset_info and argument checks


def test_dataset_info_constants():
    assert DATASETS == ("digits", "cifar10", "cifar100", "imagenet", "fashion_mnist")
    c10 = dataset_info("cifar10")
    assert (c10.num_classes, c10.image_size, c10.num_train) == (10, 32, 50000)
    assert c10.mean == (0.4914, 0.4822, 0.4465) and c10.std == (0.2470, 0.2435, 0.2616)
    c100 = dataset_info("cifar100")
    assert (c100.num_classes, c100.num_train) == (100, 50000)
    assert c100.mean == (0.5071, 0.4865, 0.4409) and c100.std == (0.2673, 0.2564, 0.2762)
    for name in ("cifar10", "cifar100"):
        off = dataset_info(name, "official")
        assert off.mean == (0.4914, 0.4822, 0.4465) and off.std == (0.2023, 0.1994, 0.2010)
    im = dataset_info("imagenet")
    assert (im.num_classes, im.image_size, im.num_train) == (1000, 224, None)
    assert im.mean == (0.485, 0.456, 0.406) and im.std == (0.229, 0.224, 0.225)
    assert dataset_info("imagenet", image_size=128).image_size == 128
    dg = dataset_info("digits")
    assert (dg.num_classes, dg.image_size, dg.num_train) == (10, 32, 1437)
    assert dataset_info("digits", "official") == dg
    with pytest.raises(Exception):
        c10.name = "x"  # frozen


def test_unknown_values_raise_valueerror_naming_them():
    with pytest.raises(ValueError, match=r"'mnist'.*digits, cifar10, cifar100, imagenet"):
        dataset_info("mnist")
    with pytest.raises(ValueError, match=r"'zca'.*paper, official"):
        dataset_info("cifar10", "zca")
    with pytest.raises(ValueError, match="32"):
        dataset_info("cifar10", image_size=64)
    with pytest.raises(ValueError, match=r"'mnist'"):
        build_data("mnist", "/nonexistent", batch_size=8)
    with pytest.raises(ValueError, match=r"'zca'"):
        build_data("digits", "/nonexistent", batch_size=8, normalization="zca")
    with pytest.raises(ValueError, match=r"'gpu'.*loader, device"):
        build_data("digits", "/nonexistent", batch_size=8, data_path="gpu")
    with pytest.raises(ValueError, match=r"'device'.*'imagenet'"):
        build_data("imagenet", "/nonexistent", batch_size=8, data_path="device")


# --------------------------------------------------------------------------------------------
# digits


def test_digits_split_shapes_balance_and_fixed():
    xtr, ytr = D.load_digits_uint8(train=True)
    xte, yte = D.load_digits_uint8(train=False)
    assert xtr.shape == (1437, 32, 32, 3) and xte.shape == (360, 32, 32, 3)
    assert xtr.dtype == np.uint8 and ytr.dtype == np.int64
    assert np.array_equal(xtr[..., 0], xtr[..., 1]) and np.array_equal(xtr[..., 0], xtr[..., 2])
    assert xtr.max() == 255 and xtr.min() == 0
    # stratified 80/20: every class's test share within one example of 20 %
    from sklearn.datasets import load_digits

    total = np.bincount(load_digits().target, minlength=10)
    te_counts = np.bincount(yte, minlength=10)
    assert np.all(np.abs(te_counts - 0.2 * total) <= 1)
    assert np.array_equal(np.bincount(ytr, minlength=10) + te_counts, total)


def test_digits_upsampling_matches_originals():
    """32x32x3 uint8 = 0..16 scaled to 0..255, bilinear x4, gray replicated; split = the fixed
    stratified 80/20 split (random_state 0), each part in the original order."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torchvision.transforms import InterpolationMode

    d = load_digits()
    tr, te = train_test_split(np.arange(len(d.target)), test_size=0.2, stratify=d.target, random_state=0)
    for train, idx in ((True, np.sort(tr)), (False, np.sort(te))):
        x, y = D.load_digits_uint8(train=train)
        assert np.array_equal(y, d.target[idx])
        src = torch.from_numpy(d.images[idx] * (255 / 16)).float().unsqueeze(1)
        ref = TF.resize(src, [32, 32], interpolation=InterpolationMode.BILINEAR, antialias=False)
        got = torch.from_numpy(x.copy()).permute(0, 3, 1, 2).float()
        assert (got - ref).abs().max() <= 0.51  # rounding only


def test_digits_normalisation_constants():
    xtr, _ = D.load_digits_uint8(train=True)
    x = xtr.astype(np.float64) / 255
    for c in range(3):
        assert abs(x[..., c].mean() - D.DIGITS_MEAN[c]) < 1e-4
        assert abs(x[..., c].std() - D.DIGITS_STD[c]) < 1e-4


@pytest.mark.parametrize("data_path", ["loader", "device"])
def test_digits_build_shapes_and_split_independent_of_seed(data_path):
    a = build_data("digits", "unused", batch_size=100, eval_batch_size=128, data_path=data_path, workers=0, seed=0)
    b = build_data("digits", "unused", batch_size=100, eval_batch_size=128, data_path=data_path, workers=0, seed=7)
    assert (a.num_train, a.num_test) == (1437, 360)
    assert a.info == dataset_info("digits")
    assert len(a.train) == 15 and len(a.test) == 3
    xa, ya = _collect(a.test)
    xb, yb = _collect(b.test)
    assert [x.shape for x in xa] == [(128, 3, 32, 32), (128, 3, 32, 32), (104, 3, 32, 32)]
    assert all(x.dtype == torch.float32 for x in xa) and all(y.dtype == torch.int64 for y in ya)
    assert _same_batches((xa, ya), (xb, yb))  # test split and its order do not depend on the seed
    # train split: same examples (as a multiset of labels / pixel sums) whatever the seed
    tr_a, tr_b = _collect(a.train), _collect(b.train)
    assert torch.equal(torch.cat(tr_a[1]).sort().values, torch.cat(tr_b[1]).sort().values)
    assert not _same_batches(tr_a, tr_b)
    xt, yt = D.load_digits_uint8(train=False)
    assert torch.equal(torch.cat(ya), torch.from_numpy(yt.copy()))
    assert torch.allclose(torch.cat(xa), _normalise(torch.from_numpy(xt.copy()).permute(0, 3, 1, 2), a.info), atol=1e-5)


# --------------------------------------------------------------------------------------------
# CIFAR through torchvision's real loader


@pytest.mark.parametrize("normalization", ["paper", "official"])
def test_cifar10_fake_files_both_paths(cifar10_dir, no_md5, normalization):
    root, arrays = cifar10_dir
    train_rows = np.concatenate([arrays[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_y = sum((arrays[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    test_x, test_y = arrays["test_batch"]
    outs = {}
    for path in ("loader", "device"):
        data = build_data("cifar10", str(root), batch_size=32, eval_batch_size=16, data_path=path,
                          workers=0, download=False, normalization=normalization)
        assert (data.num_train, data.num_test) == (100, 30)
        assert data.info.num_train == 100 and data.info.num_classes == 10
        assert data.info.std == dataset_info("cifar10", normalization).std
        assert len(data.train) == 4 and len(data.test) == 2
        xs, ys = _collect(data.train)
        assert [x.shape[0] for x in xs] == [32, 32, 32, 4]  # last partial batch kept
        assert all(x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) for x in xs)
        assert sorted(torch.cat(ys).tolist()) == sorted(train_y)
        outs[path] = _collect(data.test)
        assert torch.equal(torch.cat(outs[path][1]), torch.tensor(test_y))
        expect = _normalise(_nchw(test_x), data.info)
        assert torch.allclose(torch.cat(outs[path][0]), expect, atol=1e-5)
    # both pipelines give the same test batches (same ops as ToTensor + Normalize)
    assert torch.allclose(torch.cat(outs["loader"][0]), torch.cat(outs["device"][0]), atol=1e-6)
    # the device path keeps the raw train set in order, as uint8 NCHW
    data = build_data("cifar10", str(root), batch_size=32, data_path="device", download=False)
    assert data.train.x.dtype == torch.uint8 and torch.equal(data.train.x, _nchw(train_rows))
    assert torch.equal(data.train.y, torch.tensor(train_y))


def test_cifar100_fake_files(cifar100_dir, no_md5):
    root, arrays = cifar100_dir
    for path in ("loader", "device"):
        data = build_data("cifar100", str(root), batch_size=16, data_path=path, workers=0, download=False,
                          drop_last=True, limit_train=40)
        assert data.info.num_classes == 100 and data.info.num_train == 60
        assert (data.num_train, data.num_test) == (40, 25)
        assert len(data.train) == 2
        xs, ys = _collect(data.train)
        assert [x.shape[0] for x in xs] == [16, 16]
        assert set(torch.cat(ys).tolist()) <= set(arrays["train"][1][:40])
        xt, yt = _collect(data.test)
        assert torch.equal(torch.cat(yt), torch.tensor(arrays["test"][1]))  # fine labels
        assert torch.allclose(torch.cat(xt), _normalise(_nchw(arrays["test"][0]), data.info), atol=1e-5)


def test_missing_cifar_clear_error(tmp_path, monkeypatch):
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as exc:
        build_data("cifar10", str(root), batch_size=8, download=False)
    msg = str(exc.value)
    assert str(root / "cifar-10-batches-py") in msg and "\n" not in msg
    assert isinstance(exc.value, D.DatasetNotFoundError)

    def fail(self):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", fail)
    for name, folder in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")):
        with pytest.raises(FileNotFoundError) as exc:
            build_data(name, str(root), batch_size=8, download=True)
        msg = str(exc.value)
        assert str(root / folder) in msg and "download failed" in msg and "\n" not in msg


def test_corrupt_cifar_not_accepted_without_patch(cifar10_dir):
    """The library keeps torchvision's MD5 check: fake files are refused unless a test patches it."""
    root, _ = cifar10_dir
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        build_data("cifar10", str(root), batch_size=8, download=False)


# --------------------------------------------------------------------------------------------
# ImageNet layout through ImageFolder


@pytest.fixture
def imagefolder_dir(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    root = tmp_path / "imnet"
    for split, n in (("train", 5), ("val", 3)):
        for cls in ("n01", "n02"):
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(n):
                h, w = int(rng.integers(40, 60)), int(rng.integers(40, 60))
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{k}.png")
    return root


def test_imagefolder(imagefolder_dir):
    from PIL import Image

    data = build_data("imagenet", str(imagefolder_dir), batch_size=4, eval_batch_size=4, image_size=32,
                      workers=0, seed=3)
    assert data.info.num_classes == 2 and data.info.image_size == 32 and data.info.num_train == 10
    assert data.info.mean == (0.485, 0.456, 0.406)
    assert (data.num_train, data.num_test) == (10, 6) and len(data.train) == 3 and len(data.test) == 2
    data.train.set_epoch(1)
    xs, ys = _collect(data.train)
    assert [tuple(x.shape) for x in xs] == [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)]
    assert sorted(torch.cat(ys).tolist()) == [0] * 5 + [1] * 5
    assert _same_batches((xs, ys), _collect(data.train))
    xv, yv = _collect(data.test)
    assert torch.cat(yv).tolist() == [0, 0, 0, 1, 1, 1]
    # val: Resize(int(32 / 0.875) = 36) then CenterCrop(32), ImageNet mean/std
    img = Image.open(imagefolder_dir / "val" / "n01" / "0.png").convert("RGB")
    ref = TF.normalize(TF.to_tensor(TF.center_crop(TF.resize(img, 36), 32)), data.info.mean, data.info.std)
    assert torch.allclose(xv[0][0], ref, atol=1e-6)
    # default size 224, val resize 256
    big = build_data("imagenet", str(imagefolder_dir), batch_size=4, workers=0)
    assert big.info.image_size == 224 and next(iter(big.test))[0].shape == (6, 3, 224, 224)
    with pytest.raises(FileNotFoundError, match="missing"):
        build_data("imagenet", str(imagefolder_dir / "missing"), batch_size=4)


# --------------------------------------------------------------------------------------------
# device-side augmentation


def test_augment_batch_matches_torchvision_ops():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=g)
    out, off, flip = augment_batch(x, torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert off.shape == (300, 2) and flip.shape == (300,) and flip.dtype == torch.bool
    assert off.min() >= 0 and off.max() <= 8  # RandomCrop(32, padding=4).get_params range on 40x40
    for i in range(len(x)):
        ref = TF.crop(TF.pad(x[i], [4], fill=0), int(off[i, 0]), int(off[i, 1]), 32, 32)
        if flip[i]:
            ref = TF.hflip(ref)
        assert torch.equal(out[i], ref)


def test_augment_batch_padding_is_zero():
    x = torch.full((500, 3, 32, 32), 255, dtype=torch.uint8)
    out, off, flip = augment_batch(x, torch.Generator().manual_seed(5))
    for i in range(len(x)):
        t, l = int(off[i, 0]), int(off[i, 1])
        rows = torch.arange(32) + t
        cols = torch.arange(32) + l
        if flip[i]:
            cols = cols.flip(0)
        inside = ((rows >= 4) & (rows < 36))[:, None] & ((cols >= 4) & (cols < 36))[None, :]
        assert torch.equal(out[i], torch.where(inside, 255, 0).to(torch.uint8).expand(3, -1, -1))
    assert (out == 0).any()


def test_augment_batch_distribution_uniform():
    g = torch.Generator().manual_seed(1234)
    x = torch.zeros((1000, 1, 4, 4), dtype=torch.uint8)  # tiny images: only the draws matter here
    offs, flips = [], []
    for _ in range(30):
        _, o, f = augment_batch(x, g)
        offs.append(o)
        flips.append(f)
    off = torch.cat(offs).numpy()
    flip = torch.cat(flips).numpy()
    n = len(flip)
    joint = np.bincount(off[:, 0] * 9 + off[:, 1], minlength=81)
    assert stats.chisquare(joint).pvalue > 1e-3
    for axis in range(2):
        assert stats.chisquare(np.bincount(off[:, axis], minlength=9)).pvalue > 1e-3
    assert stats.chisquare(np.bincount(flip.astype(int), minlength=2)).pvalue > 1e-3
    # flips independent of offsets
    table = np.stack([np.bincount(off[flip, 0] * 9 + off[flip, 1], minlength=81),
                      np.bincount(off[~flip, 0] * 9 + off[~flip, 1], minlength=81)])
    assert stats.chi2_contingency(table).pvalue > 1e-3
    assert n == 30000


def test_device_path_padding_zero_before_normalisation():
    data = build_data("digits", "unused", batch_size=256, data_path="device", limit_train=512)
    data.train.x.fill_(255)  # all-white images: every padded pixel must show up as 0 before Normalize
    info = data.info
    zero = (0 - info.mean[0]) / info.std[0]
    white = (1 - info.mean[0]) / info.std[0]
    xs, _ = _collect(data.train)
    x = torch.cat(xs)
    is_zero = torch.isclose(x, torch.tensor(zero), atol=1e-5)
    assert torch.all(is_zero | torch.isclose(x, torch.tensor(white), atol=1e-5))
    frac = is_zero.float().mean().item()
    # expected zero fraction: 1 - E[(32 - |t - 4|)]^2 / 32^2 with t uniform on 0..8
    e = np.mean([32 - abs(t - 4) for t in range(9)]) / 32
    assert abs(frac - (1 - e * e)) < 0.01


# --------------------------------------------------------------------------------------------
# determinism per (seed, epoch)


def _epoch(data, e, disturb=0):
    torch.manual_seed(1000 + disturb)  # global RNG state must not matter
    torch.rand(disturb + 1)
    data.train.set_epoch(e)
    return _collect(data.train)


def test_device_path_determinism():
    data = build_data("digits", "unused", batch_size=128, data_path="device", seed=11, limit_train=600)
    other = build_data("digits", "unused", batch_size=128, data_path="device", seed=11, limit_train=600)
    a = _epoch(data, 3)
    assert _same_batches(a, _epoch(data, 3, disturb=5))
    assert _same_batches(a, _epoch(other, 3, disturb=9))
    assert not _same_batches(a, _epoch(data, 4))
    seed12 = build_data("digits", "unused", batch_size=128, data_path="device", seed=12, limit_train=600)
    assert not _same_batches(a, _epoch(seed12, 3))
    # every epoch is a permutation of the train set
    assert torch.equal(torch.cat(a[1]).sort().values, data.train.y.sort().values)
    assert len(a[0]) == len(data.train) == 5 and a[0][-1].shape[0] == 600 - 4 * 128


def test_loader_path_determinism_workers_0_and_2():
    kw = dict(batch_size=64, data_path="loader", seed=5, limit_train=192)
    d0 = build_data("digits", "unused", workers=0, **kw)
    d2 = build_data("digits", "unused", workers=2, **kw)
    a0 = _epoch(d0, 2, disturb=0)
    b0 = _epoch(d0, 2, disturb=3)
    assert _same_batches(a0, b0)
    assert not _same_batches(a0, _epoch(d0, 1))
    a2 = _epoch(d2, 2, disturb=1)
    assert _same_batches(a2, _epoch(d2, 2, disturb=4))
    assert not _same_batches(a2, _epoch(d2, 3))
    # a sample's augmentation depends on (seed, epoch, index) only: same with 0 or 2 workers
    assert _same_batches(a0, a2)


def test_loader_path_leaves_global_rng_alone():
    data = build_data("digits", "unused", batch_size=64, workers=0, limit_train=128)
    torch.manual_seed(42)
    before = torch.get_rng_state()
    _collect(data.train)
    assert torch.equal(torch.get_rng_state(), before)


def test_loader_augmentation_is_crop_and_flip_of_source():
    """Loader path: each train image is a 4-padded 32-crop (maybe flipped) of some source image."""
    data = build_data("digits", "unused", batch_size=32, workers=0, limit_train=32, seed=1)
    src = torch.from_numpy(D.load_digits_uint8(True)[0][:32].copy()).permute(0, 3, 1, 2)
    xs, ys = _collect(data.train)
    info = data.info
    x = torch.cat(xs)
    raw = torch.round((x * torch.tensor(info.std).view(1, 3, 1, 1) + torch.tensor(info.mean).view(1, 3, 1, 1)) * 255)
    raw = raw.to(torch.uint8)
    ytr = torch.from_numpy(D.load_digits_uint8(True)[1][:32].copy())
    for img, y in zip(raw, torch.cat(ys)):
        found = False
        for j in torch.nonzero(ytr == y).flatten().tolist():
            padded = TF.pad(src[j], [4])
            for t in range(9):
                for l in range(9):
                    crop = padded[:, t:t + 32, l:l + 32]
                    if torch.equal(crop, img) or torch.equal(TF.hflip(crop), img):
                        found = True
                        break
                if found:
                    break
            if found:
                break
        assert found


def test_drop_last_and_lengths():
    for path in ("loader", "device"):
        keep = build_data("digits", "unused", batch_size=32, data_path=path, workers=0, limit_train=100)
        drop = build_data("digits", "unused", batch_size=32, data_path=path, workers=0, limit_train=100,
                          drop_last=True)
        assert keep.num_train == 100 and keep.info.num_train == 1437
        assert len(keep.train) == 4 and [x.shape[0] for x in _collect(keep.train)[0]] == [32, 32, 32, 4]
        assert len(drop.train) == 3 and [x.shape[0] for x in _collect(drop.train)[0]] == [32, 32, 32]


def test_loading_digits_leaves_the_python_rng_as_seeded():
    """A run's Python RNG stream must not depend on whether scikit-learn was imported before (its first import
    draws from the global RNG in some versions): in a fresh process, loading digits after seeding keeps the state."""
    code = ("import random, sys\nrandom.seed(3)\nfresh = random.getstate()\n"
            "from we.train import datasets\nrandom.seed(3)\ndatasets._digits_arrays()\n"
            "assert 'sklearn' in sys.modules\nsys.exit(0 if random.getstate() == fresh else 1)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
