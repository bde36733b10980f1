"""Trains a small Flax MLP on scikit-learn's handwritten digits, with hooks.

The data (1,797 8x8 images) ships with scikit-learn: nothing is downloaded.

  python examples/train_digits.py                 # 1,500 steps
  python examples/train_digits.py --steps 300     # a quick run
  tensorboard --logdir runs/digits                # the curves

Hooks: stop at a step, log loss and accuracy every 100 steps, steps/sec,
a NaN check, TensorBoard summaries, a progress bar, Orbax checkpoints every
500 steps (with the data position) and the test accuracy of the final
parameters. Run it again and it resumes from the latest checkpoint: with the
same --steps there is nothing left to train; a larger --steps goes on.
"""

from __future__ import annotations

import argparse
import logging
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax.training import train_state
from sklearn.datasets import load_digits

import jaxhooks as jh


class MLP(nn.Module):
  hidden: int = 128

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(self.hidden)(x))
    x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(10)(x)


class Batches:
  """Endless shuffled batches whose position can be saved and restored."""

  def __init__(self, x, y, batch_size, seed=0):
    self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
    self.epoch, self.index = 0, 0
    self._order = self._permutation()

  def _permutation(self):
    return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.x))

  def __iter__(self):
    return self

  def __next__(self):
    if self.index + self.batch_size > len(self.x):
      self.epoch, self.index = self.epoch + 1, 0
      self._order = self._permutation()
    idx = self._order[self.index:self.index + self.batch_size]
    self.index += self.batch_size
    return self.x[idx], self.y[idx]

  def get_state(self):
    return {"epoch": self.epoch, "index": self.index}

  def set_state(self, state):
    self.epoch, self.index = int(state["epoch"]), int(state["index"])
    self._order = self._permutation()


def load_data(test_fraction=0.2, seed=0):
  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(x))
  n_test = int(len(x) * test_fraction)
  test, train = order[:n_test], order[n_test:]
  return (x[train], y[train]), (x[test], y[test])


def create_state(seed=0, learning_rate=1e-3):
  model = MLP()
  params = model.init(jax.random.key(seed), jnp.ones((1, 64)))["params"]
  return train_state.TrainState.create(
      apply_fn=model.apply, params=params, tx=optax.adam(learning_rate))


@jax.jit
def train_step(state, batch):
  x, y = batch
  def loss_fn(params):
    logits = state.apply_fn({"params": params}, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, logits
  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
  return state.apply_gradients(grads=grads), {"loss": loss,
                                              "accuracy": accuracy}


def accuracy_on(x, y):
  """A function of the state: accuracy of its parameters on (x, y)."""
  def fn(state):
    logits = state.apply_fn({"params": state.params}, x)
    return jnp.mean(jnp.argmax(logits, -1) == y)
  return fn


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--log-every", type=int, default=100)
  parser.add_argument("--logdir", default="runs/digits")
  parser.add_argument("--summary-every", type=int, default=10)
  parser.add_argument("--checkpoint-dir", default="runs/digits/ckpt")
  parser.add_argument("--save-every", type=int, default=500)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s",
                      stream=sys.stdout, force=True)
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's chatter

  (x_train, y_train), (x_test, y_test) = load_data()
  batches = Batches(x_train, y_train, args.batch_size)
  final = jh.FinalOpsHook({"test_accuracy": accuracy_on(x_test, y_test)})
  summaries = jh.SummarySaverHook(save_steps=args.summary_every,
                                  output_dir=args.logdir,
                                  scalars=["loss", "accuracy"])
  step = jh.wrap(train_step, hooks=[
      jh.StopAtStepHook(last_step=args.steps),
      jh.NanTensorHook("loss"),
      jh.LoggingTensorHook({"step": jh.GLOBAL_STEP, "loss": "loss",
                            "accuracy": "accuracy"},
                           every_n_iter=args.log_every),
      jh.StepCounterHook(every_n_steps=args.log_every,
                         writer=summaries.writer),
      summaries,
      jh.ProgressBarHook(metrics=["loss", "accuracy"]),
      jh.CheckpointSaverHook(args.checkpoint_dir, save_steps=args.save_every,
                             data_iterator=batches),
      final,
  ])
  state = step.begin(create_state())
  stop = step.should_stop
  while not stop:
    state, _, stop = step(state, next(batches))
  state = step.end(state)
  print(f"trained {step.step} steps; test accuracy "
        f"{final.final_ops_values['test_accuracy']:.4f}")
  return final.final_ops_values["test_accuracy"]


if __name__ == "__main__":
  main()
