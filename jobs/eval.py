"""`ray job submit` entrypoint for evaluation.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/eval.py --model /ckpt/global_step_125/actor --bench-dir /data/TimeLens-Bench \
            --output /ckpt/eval_step125 [--datasets charades-timelens] [--config jobs/configs/tempsamp.yaml]

Inside a Ray job RAY_ADDRESS is set, so the evaluation joins the running cluster instead of starting one.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tempsamp.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
