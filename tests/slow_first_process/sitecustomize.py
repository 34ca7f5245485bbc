"""On PYTHONPATH, holds back the first process of a torchrun launch for 2 s when it starts, once (train.py may
restart itself under jemalloc), so that the other processes get ahead of it (tests/test_distributed.py)."""

import os
import time

if os.environ.get("RANK") == "0" and "LOCAL_WORLD_SIZE" in os.environ and not os.environ.get("HELD_BACK"):
    os.environ["HELD_BACK"] = "1"
    time.sleep(2)
