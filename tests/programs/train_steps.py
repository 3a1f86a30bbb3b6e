"""Two steps of 32 on a JPEG folder, as one process of a run; writes the final variables (process 0).

    python train_steps.py OUT.npz DATA_DIR [WORKERS]

With ``OPEN_LOG`` set, every image file this process (or one of its workers: they import this
module too) opens is appended to ``OPEN_LOG.<JAX_PROCESS_ID>``: which host read what.
"""

import os
import sys

if os.environ.get("OPEN_LOG"):
    _log = os.open(
        f"{os.environ['OPEN_LOG']}.{os.environ.get('JAX_PROCESS_ID', '0')}", os.O_WRONLY | os.O_APPEND | os.O_CREAT
    )

    def _note(event, args):
        if event == "open" and isinstance(args[0], str) and args[0].endswith(".jpg"):
            os.write(_log, (args[0] + "\n").encode())

    sys.addaudithook(_note)


def main():
    import jax
    import numpy as np

    from resnet_bottleneck.training import Config, RunOptions, maybe_initialize_distributed, train

    maybe_initialize_distributed()
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    result = train(
        Config(data=sys.argv[2], image_size=16, batch_size=32, epochs=1, test_fraction=0.2),
        options=RunOptions(workers=workers),
        progress=False,
    )
    assert result.steps == 2, result.steps
    if jax.process_index() == 0:
        variables = {"params": result.state.params, "batch_stats": result.state.batch_stats}
        np.savez(
            sys.argv[1],
            devices=len(jax.devices()),
            processes=jax.process_count(),
            **{
                jax.tree_util.keystr(k): np.asarray(jax.device_get(v))
                for k, v in jax.tree_util.tree_leaves_with_path(variables)
            },
        )


if __name__ == "__main__":
    main()
