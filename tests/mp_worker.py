"""One process of a multi-process test job (2 processes x 2 CPU devices).

Run by tests/test_multiprocess.py as
  python tests/mp_worker.py SCENARIO PROCESS_ID NUM_PROCESSES PORT OUT_DIR
Each process writes OUT_DIR/result-<process>.json with what it saw.
"""

import json
import logging
import os
import sys

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import jaxhooks as jh  # noqa: E402


def make_job():
  """A train state sharded over every device of every process."""
  mesh = jax.make_mesh((jax.device_count(),), ("d",))
  rows = NamedSharding(mesh, P("d"))
  whole = NamedSharding(mesh, P())
  n = 4 * jax.device_count()
  w = jax.device_put(jnp.linspace(-1.0, 1.0, n, dtype=jnp.float32), rows)
  step = jax.device_put(jnp.array(0, jnp.int32), whole)

  @jax.jit
  def train_step(state, batch):
    grad = 2 * (state["w"] - batch)
    w = state["w"] - 0.1 * grad
    return ({"w": w, "step": state["step"] + 1},
            {"loss": jnp.mean((w - batch) ** 2)})

  def batch_for(step):
    local = np.full((n // jax.process_count(),), 0.01 * step, np.float32)
    return jax.make_array_from_process_local_data(rows, local)

  return {"w": w, "step": step}, train_step, batch_for


class Trace(jh.SessionRunHook):
  """Records the steps this process ran and what it decided."""

  def __init__(self):
    self.steps = []

  def after_run(self, run_context, run_values):
    self.steps.append(run_context.step)


class LocalStop(jh.SessionRunHook):
  """Requests stop on one process only, at one step."""

  def __init__(self, process, step):
    self.process, self.step = process, step

  def after_run(self, run_context, run_values):
    if (jax.process_index() == self.process
        and run_context.step == self.step):
      run_context.request_stop()


class TimeStop(jh.SessionRunHook):
  """Stops when its time timer fires (after the first firing)."""

  def __init__(self, secs, clock):
    self.timer = jh.SecondOrStepTimer(every_secs=secs, clock=clock)
    self.fired = []

  def timers(self):
    return (self.timer,)   # shared: process 0's clock decides

  def before_run(self, run_context):
    if self.timer.should_trigger_for_step(run_context.step):
      self.timer.update_last_triggered_step(run_context.step)
      self.fired.append(run_context.step)
      if len(self.fired) == 2:  # the decision is agreed: same on all
        run_context.request_stop(deterministic=True)


class StepClock:
  """Process 0's clock advances 3 s per reading; others' never move."""

  def __init__(self):
    self.t = 0.0

  def __call__(self):
    if jax.process_index() == 0:
      self.t += 3.0
    return self.t


def run(step, state, batch_for):
  state = step.begin(state)
  stop = step.should_stop
  while not stop:
    state, _, stop = step(state, batch_for(step.step + 1))
  return step.end(state)


class Lines(logging.Handler):
  def __init__(self):
    super().__init__()
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


def scenario_stop_at_step(out):
  state, train_step, batch_for = make_job()
  trace = Trace()
  lines = Lines()
  logging.getLogger("jaxhooks").addHandler(lines)
  logging.getLogger("jaxhooks").setLevel(logging.INFO)
  step = jh.wrap(train_step, hooks=[
      jh.StopAtStepHook(last_step=7), trace,
      jh.LoggingTensorHook({"step": jh.GLOBAL_STEP}, every_n_iter=3)])
  assert isinstance(step.coord, jh.DistributedCoordinator)
  state = run(step, state, batch_for)
  out.update(steps=trace.steps, final=step.step, logged=lines.lines,
             w=np.asarray(jax.device_get(
                 jax.experimental.multihost_utils.process_allgather(
                     state["w"], tiled=True))).tolist())


def scenario_local_stop(out):
  state, train_step, batch_for = make_job()
  trace = Trace()
  coord = jh.DistributedCoordinator(check_every_n_steps=5, timeout_secs=60)
  step = jh.wrap(train_step, coord=coord, hooks=[
      jh.StopAtStepHook(last_step=100), LocalStop(process=1, step=12), trace])
  run(step, state, batch_for)
  out.update(steps=trace.steps, final=step.step,
             reasons=list(coord.stop_reasons))


def scenario_time_stop(out):
  state, train_step, batch_for = make_job()
  trace = Trace()
  timed = TimeStop(secs=8.0, clock=StepClock())
  coord = jh.DistributedCoordinator(check_every_n_steps=4, timeout_secs=60)
  step = jh.wrap(train_step, coord=coord, hooks=[
      jh.StopAtStepHook(last_step=100), timed, trace])
  run(step, state, batch_for)
  out.update(fired=timed.fired, final=step.step)


def scenario_dies(out):
  """Process 1 dies at step 6; process 0 must fail at the check of step 10."""
  state, train_step, batch_for = make_job()
  coord = jh.DistributedCoordinator(check_every_n_steps=5, timeout_secs=4)

  def die(ctx, values):
    if jax.process_index() == 1 and ctx.step == 6:
      os._exit(17)
  step = jh.wrap(train_step, coord=coord, hooks=[
      jh.StopAtStepHook(last_step=50), jh.LambdaHook(after_run=die)])
  try:
    run(step, state, batch_for)
  except jh.CoordinationTimeoutError as e:
    out.update(error=str(e), step=e.step, missing=e.process)
    write(out)
    # jax.distributed's own shutdown would wait for the dead peer.
    os._exit(3)


def scenario_waiter(out):
  """Independent loops: process 1 waits until process 0 reached step 12."""
  steps = []
  coord = jh.DistributedCoordinator(check_every_n_steps=3, independent=True,
                                    timeout_secs=60)

  @jax.jit
  def local_step(state, batch):
    return {"step": state["step"] + 1}, {}

  seen = []
  hooks = [jh.StopAtStepHook(num_steps=20 if jax.process_index() == 0 else 2),
           jh.LambdaHook(after_run=lambda c, v: steps.append(c.step))]
  if jax.process_index() == 1:
    hooks.insert(0, jh.GlobalStepWaiterHook(
        12, poll_secs=0.01, timeout_secs=60,
        step_source=lambda: seen.append(coord.global_step()) or seen[-1]))
  step = jh.wrap(local_step, coord=coord, hooks=hooks)
  state = step.begin({"step": jnp.array(0)})
  stop = step.should_stop
  while not stop:
    state, _, stop = step(state)
  step.end(state)
  out.update(steps=steps, last_seen=seen[-1] if seen else None)


def _gathered_w(state):
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(
      state["w"], tiled=True)).tolist()


def scenario_ckpt(out, ckpt_dir, last_step, sigterm_at=None):
  """Trains to `last_step` with async Orbax saves every 4 steps into a
  directory shared by both processes (restoring what is there). With
  `sigterm_at`, process 1 gets SIGTERM after that step."""
  import signal
  state, train_step, batch_for = make_job()
  trace = Trace()
  saver = jh.CheckpointSaverHook(ckpt_dir, save_steps=4)
  hooks = [jh.StopAtStepHook(last_step=int(last_step)), saver, trace]
  if sigterm_at is not None and jax.process_index() == 1:
    hooks.append(jh.LambdaHook(after_run=lambda c, v: c.step == int(
        sigterm_at) and os.kill(os.getpid(), signal.SIGTERM) and None))
  coord = jh.DistributedCoordinator(check_every_n_steps=5, timeout_secs=60)
  step = jh.wrap(train_step, hooks=hooks, coord=coord)
  state = run(step, state, batch_for)
  out.update(steps=trace.steps, final=step.step, restored=saver.restored_step,
             saved=saver.all_steps(), w=_gathered_w(state),
             shard_devices=sorted(d.id for d in state["w"].sharding.device_set),
             all_devices=sorted(d.id for d in jax.devices()),
             reasons=list(coord.stop_reasons))


def scenario_preempt_fused(out, ckpt_dir):
  """4-step calls, checks every 10 steps; process 1 alone gets SIGTERM in
  its data loading after step 8, just before the call that ends at the
  check step 10."""
  import signal
  state, train_step, batch_for = make_job()

  def batches(n, first):
    if jax.process_index() == 1 and first == 9:
      os.kill(os.getpid(), signal.SIGTERM)
    return jax.numpy.stack([batch_for(first + i) for i in range(n)])

  saver = jh.CheckpointSaverHook(ckpt_dir)
  coord = jh.DistributedCoordinator(check_every_n_steps=10, timeout_secs=60)
  step = jh.wrap(train_step, coord=coord, steps_per_call=4, hooks=[
      jh.StopAtStepHook(last_step=30), saver])
  state = step.begin(state)
  calls, stop = [], False
  while not stop:
    start = step.step
    state, _, stop = step(state, batches(step.steps_next_call, start + 1))
    calls.append([start, step.step])
  step.end(state)
  out.update(calls=calls, saved=saver.all_steps(), final=step.step,
             reasons=list(coord.stop_reasons))


class FetchLoss(jh.SessionRunHook):
  """Reads the loss after every step: the loop waits for each step."""

  def before_run(self, run_context):
    return jh.RunArgs(fetches="loss")


def next_batch(batch_for, step, stuck_at):
  """Process 1's data loading hangs before step `stuck_at`."""
  if jax.process_index() == 1 and step == stuck_at:
    import threading
    threading.Event().wait()
  return batch_for(step)


def scenario_stuck(out):
  """Process 1 hangs in its data loading before step 12, alive; process 0
  waits in step 12's collectives. Checks are far apart (step 1000)."""
  state, train_step, batch_for = make_job()
  coord = jh.DistributedCoordinator(check_every_n_steps=1000, timeout_secs=4,
                                    stall_timeout_secs=6)
  step = jh.wrap(train_step, coord=coord, hooks=[
      jh.StopAtStepHook(last_step=50), FetchLoss()])
  state = step.begin(state)
  stop = False
  while not stop:
    state, _, stop = step(state, next_batch(batch_for, step.step + 1, 12))


def scenario_killed(out, wait_in):
  """Process 1 publishes its pid after step 6 and waits; process 0 kills it
  with SIGKILL after its step 6. Then process 0 waits in the check of step
  10 (`wait_in` "check"), or in step 7's collectives ("step": it reads the
  loss after every step)."""
  import signal
  import threading
  from jaxhooks.distributed import distributed_client
  client = distributed_client()
  state, train_step, batch_for = make_job()

  def after_run(ctx, values):
    if jax.process_index() == 1 and ctx.step == 6:
      client.key_value_set("victim", str(os.getpid()))
      threading.Event().wait()
    if jax.process_index() == 0 and ctx.step == 6:
      os.kill(int(client.blocking_key_value_get("victim", 60_000)),
              signal.SIGKILL)
  coord = jh.DistributedCoordinator(check_every_n_steps=5, timeout_secs=4)
  hooks = [jh.StopAtStepHook(last_step=50), jh.LambdaHook(after_run=after_run)]
  if wait_in == "step":
    hooks.append(FetchLoss())
  step = jh.wrap(train_step, coord=coord, hooks=hooks)
  run(step, state, batch_for)   # raises CoordinationTimeoutError, or hangs


class Stream:
  """Process i's data stream: it moves i + 1 items per batch, so the two
  processes are at different positions."""

  def __init__(self):
    self.position = 0

  def __next__(self):
    self.position += jax.process_index() + 1
    return self.position

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]


def scenario_data(out, ckpt_dir):
  """A session runs to step 6 (saves 4 and 6); a second one restores step 6
  and runs to 8. Each process must get its own data position back."""
  state, train_step, batch_for = make_job()
  positions = []
  for last_step in (6, 8):
    stream = Stream()
    saver = jh.CheckpointSaverHook(ckpt_dir, save_steps=4,
                                   data_iterator=stream)
    step = jh.wrap(train_step, hooks=[jh.StopAtStepHook(last_step=last_step),
                                      saver])
    resumed = step.begin(state)
    restored = stream.position
    stop = step.should_stop
    while not stop:
      next(stream)
      resumed, _, stop = step(resumed, batch_for(step.step + 1))
    step.end(resumed)
    positions.append([saver.restored_step, restored, stream.position])
  out.update(positions=positions)


def write(out):
  path = os.path.join(out["dir"], f"result-{out['process']}.json")
  with open(path + ".tmp", "w") as f:
    json.dump(out, f)
  os.replace(path + ".tmp", path)


def main():
  scenario, pid, nproc, port, out_dir = sys.argv[1:6]
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=int(nproc),
                             process_id=int(pid), initialization_timeout=60,
                             heartbeat_timeout_seconds=10,
                             shutdown_timeout_seconds=10)
  out = {"dir": out_dir, "process": jax.process_index()}
  globals()["scenario_" + scenario](out, *sys.argv[6:])
  write(out)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
