"""Stopping ``train`` with SIGTERM or SIGINT: the step in flight ends, a checkpoint of it is written
(with the epoch's running sums), one line says where, exit 0 or 130; the same command then ends
exactly as an uninterrupted run (``metrics.jsonl`` byte for byte, the same accuracy). Two processes
stop at the same step when only one is signalled. Signals are sent when a checkpoint (or a save)
is seen on disk, never after a blind sleep; ``programs/train_paced.py`` slows each step a little so
that the run is still going when they land."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import SMALL_TRAIN as SMALL

from resnet_bottleneck.cli import main
from resnet_bottleneck.training import Config, RunOptions, Stopped, loop, train

PACED = Path(__file__).parent / "programs" / "train_paced.py"
LINE = re.compile(
    r"stopped by (SIGTERM|SIGINT) at step (\d+) \(epoch (\d+)\); checkpoint (\S+); run the same command to resume"
)
STEPS_PER_EPOCH = 22  # SMALL on the digits: 1437 training images in batches of 64


def paced(*args, env=None, group=False):
    """The paced ``train``; ``group``: in a process group of its own (with its workers), as a terminal runs it."""
    return subprocess.Popen(
        [sys.executable, str(PACED), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=group,
    )


def wait_for(found, process, timeout=240):
    """Polls until ``found()`` holds; fails at once if ``process`` ended first."""
    deadline = time.monotonic() + timeout
    while not found():
        if process.poll() is not None:
            pytest.fail(f"the run ended (status {process.returncode}) first: {process.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def steps(run: Path) -> list[int]:
    return sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())


def position(run: Path, step: int, process: int = 0, processes: int = 1) -> dict:
    return json.loads((run / "checkpoints" / str(step) / "data" / f"process_{process}-of-{processes}.json").read_text())


@pytest.mark.parametrize(
    "signals,status,group",
    [((signal.SIGTERM,), 0, False), ((signal.SIGINT, signal.SIGINT), 130, True)],
    ids=["sigterm", "ctrl-c-twice-while-saving-with-workers"],
)
def test_signal_stops_at_a_step_and_the_same_command_ends_as_if_never_stopped(
    signals, status, group, digits_run, tmp_path, capsys
):
    """SIGTERM to the process; or SIGINT twice to its process group, as Ctrl-C twice in a terminal,
    its 2 worker processes included (they must outlive the stop), the second during the stop's save.
    Resumed in this process without workers: the same metrics (the stream depends on the step only)."""
    straight, straight_summary = digits_run  # SMALL, uninterrupted (conftest)
    run, saving = tmp_path / "run", tmp_path / "saving"
    workers = ["--workers", "2"] if group else []
    victim = paced(*SMALL, *workers, "--out", str(run), "--json", env=dict(os.environ, SAVING=str(saving)), group=group)

    def send(number):
        os.killpg(victim.pid, number) if group else victim.send_signal(number)

    try:
        wait_for(lambda: (run / "checkpoints" / "25").is_dir(), victim)  # epoch 2, its third step
        send(signals[0])
        if len(signals) > 1:  # the second one as soon as the stop's checkpoint is being written
            wait_for(lambda: any(int(p.suffix[1:]) > 25 for p in tmp_path.glob("saving.*")), victim)
            send(signals[1])
        out, err = victim.communicate(timeout=120)
    finally:
        if victim.poll() is None:  # a hung run (workers dead, say) is not left behind
            send(signal.SIGKILL)
    assert victim.returncode == status, err
    assert out == "" and "Traceback" not in err, err
    # With workers, multiprocessing's resource_tracker may add its shared-memory warning (issue 25, item 8).
    assert len(err.strip().splitlines()) == 1 or (group and "resource_tracker" in err), err
    match = LINE.fullmatch(err.strip().splitlines()[0])
    assert match, err
    name, step, epoch, checkpoint = match[1], int(match[2]), int(match[3]), match[4]
    assert name == signals[0].name and 25 < step < 2 * STEPS_PER_EPOCH and epoch == 2
    assert checkpoint == str((run / "checkpoints" / str(step)).resolve()) and step == max(steps(run))
    if len(signals) > 1:
        assert (tmp_path / f"saving.{step}").exists()  # the save the second signal interrupted
    saved = position(run, step)
    assert saved["step"] == step and saved["sums"]["seen"] == (step - STEPS_PER_EPOCH) * 64
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]  # the unfinished epoch is not reported

    capsys.readouterr()
    assert main(["train", *SMALL, "--out", str(run), "--json"]) == 0  # the same command
    summary = json.loads(capsys.readouterr().out)
    assert summary["resumed_from_step"] == step and summary["steps"] == 2 * STEPS_PER_EPOCH
    assert summary["test_accuracy"] == straight_summary["test_accuracy"]
    assert (run / "metrics.jsonl").read_bytes() == (straight / "metrics.jsonl").read_bytes()
    assert [json.loads(line)["epoch"] for line in (run / "timing.jsonl").read_text().splitlines()] == [1, 2]


def in_a_fresh_process(body: str, *args: Path) -> None:
    """Runs ``body(*args)`` of this module in an interpreter of its own: these tests signal their own
    process, and what earlier tests loaded into pytest's (OpenVINO's CPU plugin among them) must not decide
    how that process takes a signal (seen: a segfault in ``os.kill`` after the int8 tests)."""
    program = (
        f"import sys; sys.path[:0] = [{str(Path(__file__).parent)!r}]; from pathlib import Path; "
        f"import test_signals; test_signals.{body}(*[Path(a) for a in sys.argv[1:]])"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", program, *map(str, args)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]


def test_stopped_at_an_epochs_last_step_reports_that_epoch_on_resume(digits_run, tmp_path):
    """SIGTERM while the batch of an epoch's last step is fetched (in the process, through the
    library): the run stops before that epoch's evaluation, raising ``Stopped``, and restores the
    handler it replaced; the resume evaluates the epoch from its saved sums first."""
    in_a_fresh_process("stopped_at_an_epochs_last_step", digits_run[0], tmp_path)


def stopped_at_an_epochs_last_step(straight: Path, tmp_path: Path) -> None:
    config = Config(image_size=16, batch_size=64, epochs=2)
    options = RunOptions(checkpoint_every=5, keep=2)
    following = loop._Input.next

    def next_batch(self, step):
        if step == STEPS_PER_EPOCH - 1:
            os.kill(os.getpid(), signal.SIGTERM)  # noted by train's handler; the step goes on
        return following(self, step)

    loop._Input.next = next_batch  # a process of its own: nothing to undo
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as stopped:
        train(config, out=tmp_path, options=options, progress=False)
    assert signal.getsignal(signal.SIGTERM) is before
    assert (stopped.value.signal, stopped.value.step, stopped.value.epoch, stopped.value.status) == (
        signal.SIGTERM,
        STEPS_PER_EPOCH,
        1,
        0,
    )
    assert stopped.value.checkpoint == str((tmp_path / "checkpoints" / str(STEPS_PER_EPOCH)).resolve())
    assert position(tmp_path, STEPS_PER_EPOCH)["sums"]["seen"] == STEPS_PER_EPOCH * 64
    assert not (tmp_path / "metrics.jsonl").exists()

    loop._Input.next = following
    result = train(config, out=tmp_path, options=options, progress=False)
    assert result.resumed_from == STEPS_PER_EPOCH and result.steps == 2 * STEPS_PER_EPOCH
    assert (tmp_path / "metrics.jsonl").read_bytes() == (straight / "metrics.jsonl").read_bytes()


def test_a_signal_while_the_run_is_set_up_stops_it_before_its_first_step(tmp_path):
    """SIGINT before the first step (here: as the input pipeline is built): no step is taken, a
    checkpoint of step 0 is kept, status 130, and Python's own SIGINT handler is back afterwards."""
    in_a_fresh_process("signal_while_set_up", tmp_path)


def signal_while_set_up(tmp_path: Path) -> None:
    # Python's own handler, as in a terminal: a process started in the background (nohup, `&` in a script) begins
    # with SIGINT ignored, and Python then leaves it so
    signal.signal(signal.SIGINT, signal.default_int_handler)
    following = loop._Input.__init__

    def interrupted(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # noted by train's handler: no KeyboardInterrupt
        following(self, *args, **kwargs)

    loop._Input.__init__ = interrupted
    with pytest.raises(Stopped) as stopped:
        train(Config(image_size=8, batch_size=64, epochs=1), out=tmp_path, progress=False)
    assert (stopped.value.signal, stopped.value.step, stopped.value.epoch, stopped.value.status) == (
        signal.SIGINT,
        0,
        1,
        130,
    )
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert steps(tmp_path) == [0] and position(tmp_path, 0)["sums"] == {"loss": 0.0, "correct": 0, "seen": 0}


def test_two_processes_stop_at_the_same_step_when_one_is_signalled(tmp_path):
    """jax.distributed on the CPU, one device each; only process 1 gets SIGTERM. Both stop after the
    same step, write their parts of its checkpoint and exit 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    run = tmp_path / "run"
    args = ["--image-size", "8", "--batch-size", "32", "--epochs", "1", "--checkpoint-every", "2", "--keep", "5"]
    processes = [
        paced(
            *args,
            "--out",
            str(run),
            "--json",
            env=dict(
                env, PACE="0", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)
            ),
        )
        for i in range(2)
    ]
    try:
        wait_for(lambda: (run / "checkpoints" / "2").is_dir(), processes[0])
        processes[1].send_signal(signal.SIGTERM)
        ends = [p.communicate(timeout=120) for p in processes]
    finally:
        for p in processes:
            p.kill()
    lines = [LINE.search(err) for _, err in ends]
    assert all(lines) and [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in ends]
    assert lines[0][0] == lines[1][0]  # the same step, epoch and checkpoint
    step = int(lines[0][2])
    assert 2 < step < 44 and step == max(steps(run))
    assert [position(run, step, i, 2)["step"] for i in range(2)] == [step, step]
