"""The digits example as one JAX job of several processes, data parallel.

Start N local processes (here 2, each with 2 CPU devices) that share one
checkpoint directory:

  for i in 0 1; do
    JAX_NUM_CPU_DEVICES=2 python examples/multiprocess_digits.py \\
        --process-id $i --num-processes 2 --port 12355 &
  done; wait

Each process feeds its half of every global batch; the parameters are
replicated over all devices of all processes. Stop and save decisions are
the same on every process: StopAtStepHook needs no exchange, and a
host-local cause (SIGTERM to one process, say) is agreed at the next check
step, where every process saves the same step and stops. Run the command
again and the job resumes from the latest checkpoint. Logs and summaries are
written by process 0 only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import (Batches, accuracy_on, create_state,  # noqa: E402
                          load_data, train_step)

import jaxhooks as jh  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--process-id", type=int, required=True)
  parser.add_argument("--num-processes", type=int, default=2)
  parser.add_argument("--port", type=int, default=12355)
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--global-batch-size", type=int, default=64)
  parser.add_argument("--checkpoint-dir", default="runs/multiprocess_digits")
  parser.add_argument("--save-every", type=int, default=100)
  parser.add_argument("--check-every", type=int, default=10)
  args = parser.parse_args(argv)
  jax.distributed.initialize(f"127.0.0.1:{args.port}",
                             num_processes=args.num_processes,
                             process_id=args.process_id)
  logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True,
                      format=f"[process {jax.process_index()}] %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's chatter

  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  replicated = NamedSharding(mesh, P())
  by_example = NamedSharding(mesh, P("data"))
  (x_train, y_train), (x_test, y_test) = load_data()
  # Every process walks the same global batches and feeds its own slice.
  batches = Batches(x_train, y_train, args.global_batch_size)
  per_process = args.global_batch_size // jax.process_count()
  mine = slice(jax.process_index() * per_process,
               (jax.process_index() + 1) * per_process)

  def global_batch():
    x, y = next(batches)
    return tuple(jax.make_array_from_process_local_data(by_example, a[mine])
                 for a in (x, y))

  state = jax.device_put(create_state(), replicated)
  final = jh.FinalOpsHook({"test_accuracy": accuracy_on(
      jax.device_put(x_test, replicated), jax.device_put(y_test, replicated))})
  # A lost peer is reported within timeout_secs, below jax.distributed's
  # heartbeat_timeout_seconds (100): JAX aborts the job after that. A job
  # that completes no step for stall_timeout_secs ends with exit code 75.
  coord = jh.DistributedCoordinator(check_every_n_steps=args.check_every,
                                    timeout_secs=60, stall_timeout_secs=300)
  step = jh.wrap(train_step, coord=coord, hooks=[
      jh.StopAtStepHook(last_step=args.steps),
      jh.NanTensorHook("loss"),
      jh.LoggingTensorHook({"step": jh.GLOBAL_STEP, "loss": "loss",
                            "accuracy": "accuracy"}, every_n_iter=100),
      jh.CheckpointSaverHook(args.checkpoint_dir, save_steps=args.save_every,
                             data_iterator=batches),
      final,
  ])
  state = step.begin(state)
  stop = step.should_stop
  while not stop:
    state, _, stop = step(state, global_batch())
  state = step.end(state)
  if jax.process_index() == 0:
    print(f"trained to step {step.step}; test accuracy "
          f"{final.final_ops_values['test_accuracy']:.4f}; checkpoints in "
          f"{args.checkpoint_dir}")
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
