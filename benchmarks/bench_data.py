"""The input pipeline: our grain loader against PyTorch's DataLoader, a training run on JPEGs against
the same run on in-memory batches, and peak memory against the data set's size.

1. Loader: the same generated folder (ImageNet-like 500x375 JPEGs, quality 90), RandomResizedCrop
   (scale 0.08-1) + horizontal flip + normalisation, batches of --batch at --image-size. PyTorch:
   ``DataLoader(ImageFolder(root, transforms.v2...), shuffle=True, num_workers=W)``, as its
   reference scripts build it (PIL crop and resize, then tensor, float, normalise), its main
   process on one intra-op thread as its workers are. Ours: ``data.training_batches`` (uint8
   batches; the normalisation runs in the jitted step, so part 2 times it), and the same with
   the normalisation done on the host as PyTorch's is. Each round starts a fresh loader per contestant, waits for its
   first batch (reported separately: worker start-up) and times the next --batches; rounds
   interleaved, medians.
2. Training: ``training.train`` of --train-model on the folder's JPEGs (``train``'s default workers,
   or --train-workers) against the same run on in-memory random images of the final size (nothing
   to decode, no workers), images/s after the first step's compilation, evaluation excluded;
   alternating runs, medians.
3. Memory: peak RSS of ``train`` (the main process; it and its workers, summed) on 600 and 3,000 JPEGs,
   with one worker process per core (--train-workers to change), so that the workers' memory counts too.

    python benchmarks/bench_data.py [--batch 32] [--image-size 224] [--rounds 5] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grain  # noqa: E402
import numpy as np  # noqa: E402
from _report import SYSTEM_MALLOC, cores, write_section  # noqa: E402

import resnet_bottleneck as rb  # noqa: E402
from resnet_bottleneck import data  # noqa: E402
from resnet_bottleneck.data.synthetic import write_image_folder  # noqa: E402

ONE_HOST = grain.sharding.ShardOptions(0, 1)


def torch_loader(root, batch, image_size, workers):
    import torch
    import torchvision
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.RandomResizedCrop(image_size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(data.transforms.IMAGENET_MEAN, data.transforms.IMAGENET_STD),
        ]
    )
    dataset = torchvision.datasets.ImageFolder(str(root), transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)


def our_loader(root, batch, image_size, workers, seed):
    return data.training_batches(
        data.list_images(root),
        image_size=image_size,
        batch_size=batch,
        seed=seed,
        epochs=100,
        workers=workers,
        shard=ONE_HOST,
    )


def time_loader(loader, batches: int, finish=None) -> tuple[float, float]:
    """(seconds to the first batch, seconds per batch over the next ``batches``), each batch passed
    through ``finish`` if given."""
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        if finish is not None:
            finish(batch)
    per_batch = (time.perf_counter() - first) / batches
    if hasattr(iterator, "close"):
        iterator.close()
    del iterator
    return first - start, per_batch


CONTESTANTS = ("PyTorch", "ours", "ours + host normalisation")


def loader_table(root, args) -> str:
    results = {}
    for r in range(args.rounds):
        for workers in args.workers:
            for name in CONTESTANTS:
                if name == "PyTorch":
                    timed = time_loader(torch_loader(root, args.batch, args.image_size, workers), args.batches)
                else:  # the second: as PyTorch's, float32 normalised on the host (ours does it on the device)
                    timed = time_loader(
                        our_loader(root, args.batch, args.image_size, workers, seed=r),
                        args.batches,
                        (lambda b: data.normalize(b["image"])) if name != "ours" else None,
                    )
                results.setdefault((workers, name), []).append(timed)
    lines = [
        "| workers | PyTorch DataLoader | ours (grain, uint8) | vs PyTorch | ours + normalising on the host "
        "| vs PyTorch | first batch: PyTorch, ours |",
        "|---|---|---|---|---|---|---|",
    ]
    for workers in args.workers:
        rate = {n: args.batch / statistics.median([t for _, t in results[(workers, n)]]) for n in CONTESTANTS}
        first = {n: statistics.median([f for f, _ in results[(workers, n)]]) for n in CONTESTANTS}
        host = rate["ours + host normalisation"]
        lines.append(
            f"| {workers} | {rate['PyTorch']:,.0f} img/s | {rate['ours']:,.0f} img/s | "
            f"**{rate['ours'] / rate['PyTorch']:.2f}x** | {host:,.0f} img/s | {host / rate['PyTorch']:.2f}x | "
            f"{first['PyTorch']:.2f} s, {first['ours']:.2f} s |"
        )
    return "\n".join(lines)


def training_runs(root, args) -> str:
    from resnet_bottleneck.training import Config, RunOptions, train

    config = Config(
        model=args.train_model, data=str(root), image_size=args.image_size, batch_size=args.train_batch, epochs=1
    )
    train_files, val_files = data.image_folder_splits(root, 0.2, 0)
    rng = np.random.default_rng(0)
    synthetic = (
        data.ImageArrays(
            rng.integers(0, 256, (len(train_files),) + (args.image_size,) * 2 + (3,), dtype=np.uint8),
            train_files.labels,
            train_files.classes,
        ),
        data.ImageArrays(
            rng.integers(0, 256, (len(val_files),) + (args.image_size,) * 2 + (3,), dtype=np.uint8),
            val_files.labels,
            val_files.classes,
        ),
    )
    workers = data.default_workers(train_files) if args.train_workers is None else args.train_workers
    rates = {"JPEG folder": [], "in-memory batches": []}
    for _ in range(args.train_rounds):
        for label in rates:
            result = train(
                config,
                options=RunOptions(workers=workers if label == "JPEG folder" else 0),
                progress=False,
                datasets=None if label == "JPEG folder" else synthetic,
            )
            rates[label].append(result.images_per_second)
    rate = {k: statistics.median(v) for k, v in rates.items()}
    ratio = rate["JPEG folder"] / rate["in-memory batches"]
    runs = "; ".join(f"{k}: " + ", ".join(f"{r:.2f}" for r in v) for k, v in rates.items())
    text = (
        f"Training {args.train_model} at {args.image_size}x{args.image_size}, batch {args.train_batch}, one epoch "
        f"of {len(train_files)} images ({len(train_files) // args.train_batch} steps; images/s after the first "
        f"step, evaluation excluded; medians of {args.train_rounds} alternating runs): "
        f"{rate['JPEG folder']:.2f} img/s from the JPEG folder ({workers} "
        f"workers) against {rate['in-memory batches']:.2f} img/s from in-memory batches: **{ratio:.2f}x** "
        f"(each run, img/s: {runs})."
    )
    return text


def _tree_rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` and all its descendants (Linux /proc), summed, in MiB."""
    total, todo = 0, [pid]
    while todo:
        pid = todo.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            total += int(status.split("VmRSS:")[1].split()[0])
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError):
            continue  # gone meanwhile
    return total / 1024


def rss_child(root: str, image_size: int, workers: int) -> None:
    """One training run in this process; prints its peak RSS and the peak of it plus its workers, in MiB."""
    import threading

    from resnet_bottleneck.training import Config, RunOptions, train

    peak, done = [0.0], threading.Event()

    def sample():
        while not done.wait(0.1):
            peak[0] = max(peak[0], _tree_rss_mib(os.getpid()))

    threading.Thread(target=sample, daemon=True).start()
    result = train(
        Config(data=root, image_size=image_size, batch_size=64, epochs=1, model="resnet_tiny"),
        options=RunOptions(workers=workers),
        progress=False,
    )
    done.set()
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would hold the benchmark's own peak
    own = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    print(json.dumps({"main": own, "tree": peak[0], "steps": result.steps}))


def memory_rows(scratch: Path, args) -> str:
    lines = [
        "| JPEGs | training steps | peak RSS, main process | peak RSS, main process + workers (summed) |",
        "|---|---|---|---|",
    ]
    peaks = {}
    for count in args.rss_images:
        root = write_image_folder(
            scratch / f"rss{count}", classes=10, per_class=count // 10, size=(250, 188), seed=count
        )
        workers = cores() if args.train_workers is None else args.train_workers  # workers, to count their memory
        done = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(root), str(args.rss_image_size), str(workers)],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ, BENCH_SYSTEM_MALLOC="1"),
        )  # as `train` runs
        peak = json.loads(done.stdout.strip().splitlines()[-1])
        peaks[count] = peak
        lines.append(f"| {count:,} | {peak['steps']} | {peak['main']:,.0f} MiB | {peak['tree']:,.0f} MiB |")
    low, high = (peaks[min(peaks)], peaks[max(peaks)])
    lines += [
        "",
        f"Peak RSS from {min(peaks):,} to {max(peaks):,} JPEGs: main process "
        f"**{(high['main'] / low['main'] - 1) * 100:+.1f}%**, with its workers "
        f"**{(high['tree'] / low['tree'] - 1) * 100:+.1f}%** (`train` of resnet_tiny at "
        f"{args.rss_image_size}x{args.rss_image_size}, batch 64, one epoch, the system allocator; 250x188 JPEGs).",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400, help="JPEGs in the loader's folder")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=10, help="batches timed per round, after the first")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-model", default="resnet50")
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--train-images", type=int, default=160, help="JPEGs of the training run's folder")
    parser.add_argument("--train-rounds", type=int, default=2)
    parser.add_argument("--train-workers", type=int, default=None)
    parser.add_argument("--rss-images", type=int, nargs=2, default=[600, 3000])
    parser.add_argument("--rss-image-size", type=int, default=112)
    parser.add_argument("--skip", nargs="*", default=[], choices=["loader", "train", "memory"])
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--rss-child", nargs=3, metavar=("ROOT", "SIZE", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]), int(args.rss_child[2]))
        return
    args.reused = (
        not SYSTEM_MALLOC and rb.xla.reuse_freed_memory()
    )  # before any JAX work; the memory part's runs go without
    if args.images // args.batch <= args.batches:  # PyTorch's loader must not end its epoch inside a round
        parser.error(f"--images {args.images} make fewer than --batches {args.batches} + 1 batches of {args.batch}")

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if "loader" not in args.skip:
            import torch

            torch.set_num_threads(1)  # as in its workers: threads on one image's ops only add contention
            root = write_image_folder(scratch / "loader", classes=4, per_class=args.images // 4)
            size_kb = sum(p.stat().st_size for p in root.rglob("*.jpg")) / args.images / 1e3
            report(
                args,
                "data-loader",
                "Input pipeline: our loader against PyTorch's DataLoader",
                f"{args.images} JPEGs of 500x375 (quality 90, {size_kb:.0f} KB on average), batch {args.batch} at "
                f"{args.image_size}x{args.image_size}; medians of {args.rounds} interleaved rounds of "
                f"{args.batches} batches after each loader's first.\n\n" + loader_table(root, args),
            )
        if "train" not in args.skip:
            root = write_image_folder(scratch / "train", classes=4, per_class=args.train_images // 4 * 5 // 4, seed=1)
            report(
                args,
                "data-train",
                "Input pipeline: training on JPEGs against in-memory batches",
                training_runs(root, args),
            )
        if "memory" not in args.skip:
            report(
                args,
                "data-memory",
                "Input pipeline: peak memory against the data set's size",
                memory_rows(scratch, args),
            )


def report(args, name: str, title: str, body: str) -> None:
    print(body, flush=True)
    if args.write:
        write_section(
            name,
            title,
            body,
            reused_memory=args.reused and name != "data-memory",
            note=f" (load average {os.getloadavg()[0]:.1f} when this part finished)",
        )


if __name__ == "__main__":
    main()
