"""``resnet-bottleneck train`` with each training batch held back ``PACE`` seconds (default 0.05), so a
test's signal lands mid-run; with ``SAVING`` set, each checkpoint save first creates the file
``SAVING.<step>`` (a test then signals while the save runs). Exits with ``main``'s status.

    python train_paced.py [train's arguments]
"""

import os
import sys
import time


def main() -> int:
    from resnet_bottleneck.cli import main as cli
    from resnet_bottleneck.training import checkpoints, loop

    pace = float(os.environ.get("PACE", "0.05"))
    following = loop._Input.next

    def paced(self, step):
        time.sleep(pace)
        return following(self, step)

    loop._Input.next = paced
    if os.environ.get("SAVING"):
        save = checkpoints.Checkpoints.save

        def marked(self, step, state, position):
            open(f"{os.environ['SAVING']}.{step}", "w").close()
            return save(self, step, state, position)

        checkpoints.Checkpoints.save = marked
    return cli(["train", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
