"""Two JAX processes on 127.0.0.1 train exactly like one process."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg.train import loop

WORKER = Path(__file__).with_name("multihost_worker.py")
OVERRIDES = ["train.epochs=1", "train.steps_per_epoch=3", "train.batch_size=4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_get_the_same_loss_as_one(tmp_path):
    port = free_port()
    workdir = tmp_path / "two"
    outs = [tmp_path / f"process{i}.json" for i in range(2)]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), "2", str(port), str(workdir), str(outs[i]),
                               *OVERRIDES], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            tails = "\n---\n".join(q.communicate()[0][-3000:] for q in procs)
            pytest.fail(f"the two-process run did not finish in 5 minutes; worker logs:\n{tails}")
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    two = [json.loads(o.read_text()) for o in outs]
    assert [r["processes"] for r in two] == [2, 2] and two[0]["devices"] == 2

    cfg = config_lib.load("demo", [*config_lib.SMOKE_OVERRIDES, *OVERRIDES])
    one = loop.train(cfg, tmp_path / "one", quiet=True)
    one_sums = [float(np.asarray(x).sum()) for x in jax.tree.leaves(one.state.params)]

    for result in two:  # both processes hold the same replicated result
        assert result["history"][0]["train_loss"] == pytest.approx(one.history[0]["train_loss"], rel=1e-5)
        assert result["history"][0]["val_dice"] == pytest.approx(one.history[0]["val_dice"], abs=1e-5)
        np.testing.assert_allclose(result["param_sums"], one_sums, rtol=1e-4, atol=1e-5)
