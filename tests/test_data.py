"""The input pipeline: transforms against torchvision's own, folder listing and its errors, and the
grain pipeline's guarantees (same batches for any worker or host count, exact resume, bad images)."""

import math
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest
import torch
from helpers import WatchedImages
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from resnet_bottleneck.data import (
    DataError,
    ImageArrays,
    digits,
    eval_transform,
    evaluation_batches,
    evaluation_steps,
    image_folder_splits,
    list_images,
    normalize,
    random_resized_crop_box,
    train_transform,
    training_batches,
)
from resnet_bottleneck.data.synthetic import write_image_folder

ONE_HOST = grain.sharding.ShardOptions(0, 1)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """An ImageNet-like folder: 3 classes x 12 JPEGs of 500x375."""
    return write_image_folder(tmp_path_factory.mktemp("jpegs") / "flat", classes=3, per_class=12)


def decoded(path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)


def hwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).numpy().astype(np.int16)


# --- transforms ------------------------------------------------------------------------


def test_training_crop_is_torchvisions_resized_crop(jpegs):
    """Our crop of the full decode = torchvision's resized_crop (bilinear, antialiased) of the same box,
    within one uint8 level, and its flip; aliased or nearest resizing of the same box is well off."""
    files = list_images(jpegs)
    for i in range(6):
        path = files.path(i)
        full = decoded(path)
        draws = np.random.default_rng(i)
        top, left, h, w = random_resized_crop_box(500, 375, draws)
        mirrored = draws.random() < 0.5
        ours = train_transform(path, 64, np.random.default_rng(i), draft=False).astype(np.int16)

        def torchvision(**how):
            out = F.resized_crop(full, top, left, h, w, [64, 64], **how)
            return hwc(F.horizontal_flip(out) if mirrored else out)

        assert np.abs(ours - torchvision(antialias=True)).max() <= 1, path
        for wrong in (dict(antialias=False), dict(interpolation=v2.InterpolationMode.NEAREST)):
            off = np.abs(ours - torchvision(**wrong))
            assert off.max() > 10 and off.mean() > 1, (path, wrong)


def test_reduced_size_decoding_stays_close_to_the_full_decode(jpegs):
    """With draft (1/2..1/8 DCT scaling when the crop is >= 2x the output), within 1 level on average
    of torchvision's result from the full decode, and not bit for bit (so the lever is really used)."""
    files = list_images(jpegs)
    used = 0
    for i in range(len(files)):
        box = random_resized_crop_box(500, 375, np.random.default_rng(i))
        fast = train_transform(files.path(i), 32, np.random.default_rng(i), flip=False).astype(np.int16)
        exact = hwc(F.resized_crop(decoded(files.path(i)), *box, [32, 32], antialias=True))
        assert np.abs(fast - exact).mean() < 1.0, files.path(i)
        used += not np.array_equal(
            fast, train_transform(files.path(i), 32, np.random.default_rng(i), flip=False, draft=False)
        )
    assert used >= len(files) // 2


def test_crop_box_follows_torchvisions_distribution():
    """Area fraction and aspect ratio inside the bounds, their means as torchvision's sampler's,
    and its fallback (a central crop at the nearest ratio) for a strip no try fits."""
    ours = [random_resized_crop_box(500, 375, np.random.default_rng([7, i])) for i in range(3000)]
    torch.manual_seed(0)
    theirs = [
        v2.RandomResizedCrop.get_params(torch.zeros(3, 375, 500), scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3])
        for _ in range(3000)
    ]
    for boxes in (ours, theirs):
        area = np.array([h * w / (500 * 375) for _, _, h, w in boxes])
        ratio = np.array([w / h for _, _, h, w in boxes])
        assert area.min() >= 0.075 and area.max() <= 1 and ratio.min() > 0.7 and ratio.max() < 1.4
    stats = [
        (np.mean([h * w for _, _, h, w in b]), np.mean([np.log(w / h) for _, _, h, w in b])) for b in (ours, theirs)
    ]
    assert abs(stats[0][0] / stats[1][0] - 1) < 0.03 and abs(stats[0][1] - stats[1][1]) < 0.02, stats
    tops = np.array([t / (375 - h) for t, _, h, _ in ours if h < 375])
    assert abs(tops.mean() - 0.5) < 0.03  # placed uniformly
    strip = torch.zeros(3, 10, 1000)
    assert random_resized_crop_box(1000, 10, np.random.default_rng(0)) == tuple(
        v2.RandomResizedCrop.get_params(strip, scale=[0.9, 1.0], ratio=[3 / 4, 4 / 3])
    )


def test_eval_transform_is_torchvisions_bit_for_bit(tmp_path, jpegs):
    """Resize(image_size / 0.875) + CenterCrop(image_size) on the PIL image, torchvision's own."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (301, 259, 3), dtype=np.uint8)).save(tmp_path / "tall.png")
    Image.fromarray(rng.integers(0, 256, (240, 333), dtype=np.uint8)).save(tmp_path / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (90, 120, 4), dtype=np.uint8)).save(tmp_path / "alpha.png")
    paths = [tmp_path / "tall.png", tmp_path / "gray.jpg", tmp_path / "alpha.png", list_images(jpegs).path(0)]
    for size in (224, 64, 33):
        reference = v2.Compose([v2.Resize(int(size / 0.875)), v2.CenterCrop(size), v2.PILToTensor()])
        for path in paths:
            expected = hwc(reference(Image.open(path).convert("RGB")))
            np.testing.assert_array_equal(eval_transform(path, size), expected, err_msg=f"{path} {size}")


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("crop_pct", [0.875, 0.95, 1.0, 0.9, 0.91])
def test_eval_transform_with_a_crop_is_torchvisions_bit_for_bit(tmp_path, crop_pct, interpolation):
    """Resize(floor(image_size / crop_pct), interpolation) + CenterCrop(image_size): timm's eval transform,
    composed of torchvision's own pieces (timm's own is compared in test_data_configs.py)."""
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (333, 517, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(rng.integers(0, 256, (517, 333, 3), dtype=np.uint8)).save(tmp_path / "tall.jpg")
    mode = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}[interpolation]
    for size in (224, 97):
        reference = v2.Compose(
            [v2.Resize(math.floor(size / crop_pct), interpolation=mode), v2.CenterCrop(size), v2.PILToTensor()]
        )
        for name in ("wide.png", "tall.jpg"):
            with Image.open(tmp_path / name) as image:
                expected = hwc(reference(image.convert("RGB")))
            ours = eval_transform(tmp_path / name, size, crop_pct=crop_pct, interpolation=interpolation)
            np.testing.assert_array_equal(ours, expected, err_msg=f"{name} {size}")


def test_normalize_is_torchvisions():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    reference = v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    )
    expected = reference(torch.from_numpy(pixels).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(normalize(pixels), expected, atol=1e-6)
    import jax.numpy as jnp

    np.testing.assert_allclose(np.asarray(normalize(jnp.asarray(pixels))), expected, atol=1e-6)
    np.testing.assert_allclose(normalize(pixels[0, 0, 0]), expected[0, 0, 0], atol=1e-6)


def test_unreadable_images_are_named(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg")
    write_image_folder(tmp_path / "f", classes=1, per_class=1)
    whole = (tmp_path / "f" / "class_000" / "00000.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    for name, fragment in (("junk.jpg", "as an image"), ("cut.jpg", "cannot decode"), ("none.jpg", "no such file")):
        for transform in (lambda p: eval_transform(p, 32), lambda p: train_transform(p, 32, np.random.default_rng(0))):
            with pytest.raises(OSError, match=fragment) as err:
                transform(tmp_path / name)
            assert str(tmp_path / name) in str(err.value)


# --- folders ---------------------------------------------------------------------------


def test_flat_folder_holds_out_a_share_and_train_val_layout_uses_val(tmp_path, jpegs):
    train, held = image_folder_splits(jpegs, 0.25, seed=0)
    assert len(train) == 27 and len(held) == 9 and train.classes == ("class_000", "class_001", "class_002")
    assert not set(train.files) & set(held.files)
    for files in (train, held):  # labels are the folder's class
        assert all(files.path(i).split("/")[-2] == files.classes[files.labels[i]] for i in range(len(files)))
    assert [held.path(i) for i in range(9)] != [image_folder_splits(jpegs, 0.25, seed=1)[1].path(i) for i in range(9)]

    root = write_image_folder(
        tmp_path / "imagenet", classes=2, per_class=5, size=(40, 30), layout="imagenet", val_per_class=2
    )
    (root / "train" / "class_001" / "notes.txt").write_text("not an image, ignored")
    train, val = image_folder_splits(root, 0.25, seed=0)
    assert (len(train), len(val)) == (10, 4)
    assert all("/val/" in val.path(i) for i in range(4)) and all("/train/" in train.path(i) for i in range(10))


@pytest.mark.parametrize(
    "setup,fragment",
    [
        (lambda r: r.mkdir(), "data: {root} has no class folders"),
        (lambda r: (r / "a").mkdir(parents=True), "data: class folder {root}/a has no images"),
        (lambda r: None, "data: {root} is not a directory"),
        (
            lambda r: (
                write_image_folder(r, 2, 2, (20, 16), layout="imagenet", val_per_class=1),
                (r / "val" / "class_001").rename(r / "val" / "class_009"),
            ),
            "data: {root}/val has other classes than {root}/train (train/ only: class_001; val/ only: class_009)",
        ),
        (
            lambda r: (
                write_image_folder(r, 1, 1, (20, 16), layout="imagenet", val_per_class=1),
                (r / "val" / "class_000" / "00000.jpg").unlink(),
            ),
            "data: class folder {root}/val/class_000 has no images",
        ),
        (lambda r: write_image_folder(r, 1, 1, (20, 16)), "data: {root} has 1 images: too few to hold out"),
    ],
)
def test_folder_errors_name_the_field_and_the_folder(setup, fragment, tmp_path):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError) as err:
        image_folder_splits(root, 0.2, seed=0)
    assert fragment.format(root=root) in str(err.value) and err.value.field == "data"
    assert err.value.message in str(err.value) and not err.value.message.startswith("data")


# --- the pipeline ----------------------------------------------------------------------


def take(stream, n, state=None, more=0):
    """``n`` batches (as plain arrays) and the state after them; then ``more`` batches."""
    iterator = iter(stream)
    if state is not None:
        iterator.set_state(state)
    batches = [next(iterator) for _ in range(n)]
    state = iterator.get_state()
    batches += [next(iterator) for _ in range(more)]
    iterator.close()
    return [{k: np.array(v) for k, v in b.items()} for b in batches], state


def assert_same_batches(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batches_are_the_same_for_any_worker_count_and_resume_exactly(jpegs):
    """Workers only share the work: 0 and 2 give the same batches. A fresh iterator set to a saved
    state (same workers) or started at the step (any) continues with the same batches, mid-epoch
    and across the epoch boundary."""
    files = list_images(jpegs)

    def make(workers, start=0):
        return training_batches(
            files, image_size=24, batch_size=8, seed=3, epochs=3, workers=workers, shard=ONE_HOST, start_step=start
        )

    inline, _ = take(make(0), 7)
    pooled, state = take(make(2), 3, more=4)
    assert_same_batches(pooled, inline)
    resumed, _ = take(make(2), 4, state)  # steps 4-7: the epoch of 4 steps ends inside
    assert_same_batches(resumed, inline[3:])
    assert_same_batches(take(make(0, start=3), 4)[0], inline[3:])
    assert {b["image"].shape for b in inline} == {(8, 24, 24, 3)} and inline[0]["image"].dtype == np.uint8
    # an epoch is a permutation of its images (4 steps of 8 from 36): no image twice
    first = np.concatenate([b["image"] for b in inline[:4]]).reshape(32, -1)
    assert len({row.tobytes() for row in first}) == 32
    assert not np.array_equal(inline[0]["image"], inline[4]["image"])  # the next epoch: another order
    other_seed, _ = take(training_batches(files, image_size=24, batch_size=8, seed=4, epochs=1, shard=ONE_HOST), 1)
    assert not np.array_equal(other_seed[0]["image"], inline[0]["image"])


def test_each_host_reads_only_its_rows_and_the_hosts_together_make_one_hosts_batches():
    train, held = digits(0.2, seed=0)
    whole, _ = take(training_batches(train, image_size=8, batch_size=16, seed=0, epochs=1, shard=ONE_HOST), 5)
    halves, reads = [], []
    for host in range(2):
        log = []
        source = ImageArrays(WatchedImages(train.images, log.append), train.labels, train.classes)
        stream = training_batches(
            source, image_size=8, batch_size=16, seed=0, epochs=1, shard=grain.sharding.ShardOptions(host, 2)
        )
        halves.append(take(stream, 5)[0])
        reads.append(set(log))
    for step in range(5):
        for key in ("image", "label"):
            np.testing.assert_array_equal(
                np.concatenate([halves[0][step][key], halves[1][step][key]]), whole[step][key]
            )
    assert not reads[0] & reads[1] and len(reads[0]) >= 40  # disjoint shares, each host's 8 a step (plus prefetch)
    # evaluation: in order, padded; the two hosts together see every image once
    masks = []
    for host in range(2):
        stream = evaluation_batches(held, image_size=8, batch_size=16, shard=grain.sharding.ShardOptions(host, 2))
        batches, _ = take(stream, evaluation_steps(held, 16))
        masks.append(np.concatenate([b["mask"] for b in batches]))
    assert sum(int(m.sum()) for m in masks) == len(held) and evaluation_steps(held, 16) == math.ceil(len(held) / 16)


def test_an_unreadable_image_is_replaced_and_reported(tmp_path):
    """Training: the next image of the epoch's order takes its place, and ``bad`` names it;
    evaluation: it is masked out and named. The run's shapes and determinism are kept."""
    root = write_image_folder(tmp_path / "d", classes=2, per_class=4, size=(60, 45))
    broken = root / "class_001" / "00002.jpg"
    broken.write_bytes(broken.read_bytes()[:200])
    files = list_images(root)
    index = [files.path(i) for i in range(len(files))].index(str(broken))
    batches, _ = take(training_batches(files, image_size=16, batch_size=4, seed=0, epochs=1, shard=ONE_HOST), 2)
    bad = np.concatenate([b["bad"] for b in batches])
    assert sorted(set(bad.tolist()) - {-1}) == [index] and all(b["mask"].all() for b in batches)
    evaluated, _ = take(evaluation_batches(files, image_size=16, batch_size=4, shard=ONE_HOST), 2)
    mask, bad = np.concatenate([b["mask"] for b in evaluated]), np.concatenate([b["bad"] for b in evaluated])
    assert not mask[index] and mask.sum() == len(files) - 1 and bad[index] == index

    for i in range(len(files)):  # nothing readable left: a clear error, not a hang
        (root / files.files[i].decode()).write_bytes(b"broken")
    with pytest.raises(DataError, match="images in a row are unreadable"):
        take(training_batches(files, image_size=16, batch_size=4, seed=0, epochs=1, shard=ONE_HOST), 1)


@pytest.mark.parametrize(
    "batch_size,shard,fragment",
    [
        (2000, ONE_HOST, "batch_size: 2000 is larger than the 1438 training images"),
        (15, grain.sharding.ShardOptions(0, 2), "batch_size: 15 does not divide over 2 processes"),
    ],
)
def test_batch_size_errors_name_the_field(batch_size, shard, fragment):
    train, _ = digits(0.2, seed=0)
    with pytest.raises(DataError, match=fragment) as err:
        training_batches(train, image_size=8, batch_size=batch_size, seed=0, epochs=1, shard=shard)
    assert err.value.field == "batch_size" and err.value.message[0].isdigit()


def test_default_workers_leave_the_cpu_to_the_step(tmp_path):
    """Worker processes by default only where there is something to decode and the model is not on the CPU."""
    from resnet_bottleneck.data import available_cores, default_workers

    folder = list_images(write_image_folder(tmp_path / "f", classes=2, per_class=2, size=(40, 30)))
    in_memory = digits()[0]
    assert default_workers(folder, "cpu") == 0 and default_workers(in_memory, "gpu") == 0
    assert default_workers(folder, "gpu") == default_workers(folder, "tpu") == available_cores() >= 1
    assert default_workers(folder) == (0 if jax.default_backend() == "cpu" else available_cores())


LEAK_SCRIPT = """
import sys, time
from grain.multiprocessing import SharedMemoryArray
from resnet_bottleneck.data.synthetic import write_image_folder
from resnet_bottleneck.training import Config, RunOptions, train

# grain unlinks shared memory on a background thread; slowed down, as on a busy machine, a block still
# waiting for it when the program ends is reported by the resource tracker as leaked
unlink_now = SharedMemoryArray.close_shm_async.__func__
SharedMemoryArray.close_shm_async = classmethod(lambda cls, *args: (time.sleep(0.05), unlink_now(cls, *args)))

if __name__ == "__main__":
    folder = write_image_folder(sys.argv[1], classes=2, per_class=12, size=(24, 20))
    config = Config(data=str(folder), image_size=16, batch_size=8, epochs=1)
    result = train(config, options=RunOptions(workers=2), progress=False)
    print(result.steps)
"""


def test_train_with_workers_leaves_no_shared_memory_behind(tmp_path):
    """The Python ``train()`` with worker processes, ending the program right after: the resource
    tracker finds no shared memory block left to clean up (it warned of "leaked shared_memory objects")."""
    script = tmp_path / "run.py"
    script.write_text(LEAK_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "data")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2"]  # 19 training images, batches of 8: it trained
    assert "leaked" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_folder_that_cannot_be_listed_is_a_data_error(tmp_path, monkeypatch):
    """A permission or a lost mount while listing the tree is bad data naming the folder, not a bug's traceback
    (root ignores permissions, so the listing itself is made to fail)."""
    from resnet_bottleneck.data import folder

    root = write_image_folder(tmp_path / "d", classes=2, per_class=1, size=(8, 8))

    def refuse(directory):
        raise PermissionError(13, "Permission denied", str(directory))

    monkeypatch.setattr(folder, "_class_dirs", refuse)
    with pytest.raises(DataError, match=f"data: cannot list {root} \\(Permission denied\\)"):
        list_images(root)
