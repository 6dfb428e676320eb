"""One process of a two-process run on 127.0.0.1 (used by test_multihost.py).

    python multihost_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR OUT_JSON OVERRIDE...
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from jaxseg import xla_flags  # noqa: E402

xla_flags.apply()  # jaxseg's CPU flags, as tests/conftest.py (and the jaxseg command) set them

import jax  # noqa: E402
import numpy as np  # noqa: E402


def main() -> None:
    process_id, num_processes, port, workdir, out = sys.argv[1:6]
    overrides = sys.argv[6:]
    from jaxseg import config as config_lib
    from jaxseg.train import loop
    loop.initialize_distributed(f"127.0.0.1:{port}", int(num_processes), int(process_id))
    cfg = config_lib.load("demo", [*config_lib.SMOKE_OVERRIDES, *overrides])
    result = loop.train(cfg, workdir, quiet=True)
    params = [np.asarray(jax.device_get(x)) for x in jax.tree.leaves(result.state.params)]
    with open(out, "w") as f:
        json.dump({"devices": jax.device_count(), "processes": jax.process_count(),
                   "history": result.history, "param_sums": [float(p.sum()) for p in params]}, f)


if __name__ == "__main__":
    main()
