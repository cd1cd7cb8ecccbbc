"""`ray job submit` entrypoint for training.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py --config jobs/configs/tempsamp.yaml [dotted.overrides=...]

Inside a Ray job RAY_ADDRESS is set, so the trainer joins the running cluster instead of starting one.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tempsamp.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
