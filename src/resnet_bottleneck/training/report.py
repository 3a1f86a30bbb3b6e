"""What a run reports: a progress bar (tqdm), ``metrics.jsonl`` (one object an epoch: what the seed decides,
equal line for line across resumes), ``timing.jsonl`` (the epoch's speed) and the curves."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .._files import atomic_write


class Progress:
    """A live tqdm bar per epoch on a terminal; elsewhere one line per epoch."""

    def __init__(self, enabled: bool = True, stream=sys.stderr):
        self.enabled, self.stream = enabled, stream
        self.live = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.bar = None

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        if self.live:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=steps,
                initial=done,
                desc=f"epoch {epoch}/{epochs}",
                unit="step",
                file=self.stream,
                leave=True,
                dynamic_ncols=True,
            )

    def update(self, steps: int, loss: float, accuracy: float, images_per_second: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{loss:.4f}", acc=f"{accuracy:.3f}", img_s=f"{images_per_second:,.0f}", refresh=False
            )
            self.bar.update(steps)

    def end_epoch(self, record: dict, epochs: int, images_per_second: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{record['train_loss']:.4f}",
                acc=f"{record['train_accuracy']:.3f}",
                test=f"{record['test_accuracy']:.3f}",
            )
            self.bar.close()
            self.bar = None
        elif self.enabled:
            print(
                f"epoch {record['epoch']}/{epochs}: loss {record['train_loss']:.4f} acc "
                f"{record['train_accuracy']:.3f} test {record['test_accuracy']:.3f} "
                f"{images_per_second:,.0f} img/s",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def resume_history(path, step: int) -> list[dict]:
    """The epochs a resumed run already logged (``metrics.jsonl`` or ``timing.jsonl``), up to its
    checkpoint's ``step``; later lines are dropped."""
    path = Path(path)
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(record, dict) and record.get("step", step + 1) <= step:
            kept.append(record)
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))
    return kept


def plot_curves(history: list[dict], path) -> None:
    """Loss and accuracy per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
    left.plot(epochs, [h["train_loss"] for h in history], "o-")
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    right.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    right.plot(epochs, [h["test_accuracy"] for h in history], "s-", label="test")
    right.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.01))
    right.legend()
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
