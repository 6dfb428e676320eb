"""A training run that kills itself with SIGKILL at a chosen point (used by test_kill_resume.py).

    python kill_worker.py WORKDIR KILL_AT OVERRIDE...

KILL_AT is ``step:N`` (SIGKILL right after step N's loss is logged, before anything else is
written; the loop logs the steps fetched together from the devices, so the ones after N in the
same fetch are lost too, as in a real kill) or ``save:N`` (SIGKILL inside the checkpoint save of step N, after steps.csv was
flushed but before the checkpoint is written). Earlier checkpoints are waited for, so the kill
lands at a known point rather than racing orbax's background writer.
"""
import os
import signal
import sys

# The same devices and numerics as the test process (tests/conftest.py), so losses compare.
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from jaxseg import xla_flags  # noqa: E402

xla_flags.apply()  # jaxseg's CPU flags, as tests/conftest.py (and the jaxseg command) set them

import jax  # noqa: E402
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", os.path.join(ROOT, ".pytest_cache", "jax-compilation"))


def main() -> None:
    workdir, kill_at = sys.argv[1:3]
    overrides = sys.argv[3:]
    where, number = kill_at.split(":")
    from jaxseg import config as config_lib
    from jaxseg.train import checkpoint, loop
    from jaxseg.train import log as log_lib

    def die() -> None:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    real_steps, real_save = log_lib.RunLog.steps, checkpoint.RunCheckpoints.save

    def steps(self, losses, batch_size):
        real_steps(self, losses, batch_size)
        if where == "step" and int(number) in [step for step, _ in losses]:
            die()

    def save(self, state, data_iterator, meta, *, best):
        if where == "save" and int(jax.device_get(state.step)) == int(number):
            die()
        real_save(self, state, data_iterator, meta, best=best)
        self.wait()

    log_lib.RunLog.steps, checkpoint.RunCheckpoints.save = steps, save
    cfg = config_lib.load("demo", [*config_lib.SMOKE_OVERRIDES, *overrides])
    loop.train(cfg, workdir, quiet=True)
    print("finished without being killed")


if __name__ == "__main__":
    main()
