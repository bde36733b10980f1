"""jaxhooks: TensorFlow 1 training-loop hooks for JAX, Flax, Optax and Orbax.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxhooks as jh
  >>> train_step = jax.jit(lambda s, b: ({"step": s["step"] + 1}, {}))
  >>> step = jh.wrap(train_step, hooks=[jh.StopAtStepHook(last_step=2)])
  >>> state = step.begin({"step": jnp.array(0)})
  >>> stop = step.should_stop
  >>> while not stop:
  ...   state, outputs, stop = step(state, None)
  >>> step.step
  2
"""

from jaxhooks.basic_hooks import FeedFnHook, FinalOpsHook, LambdaHook
from jaxhooks.checkpoint import CheckpointSaverHook, CheckpointSaverListener
from jaxhooks.coord import Coordinator
from jaxhooks.distributed import DistributedCoordinator
from jaxhooks.early_stopping import EarlyStoppingHook
from jaxhooks.errors import (CheckpointError, CheckpointMismatchError,
                             CoordinationTimeoutError, LifecycleError,
                             NanLossDuringTrainingError, NonFiniteStateError,
                             StallError, StepMismatchError)
from jaxhooks.hook import (GLOBAL_STEP, NEVER, DeviceMonitor, Hook, RunArgs,
                           RunContext, RunValues, Session, SessionRunArgs,
                           SessionRunContext, SessionRunHook, SessionRunValues)
from jaxhooks.log_hooks import LoggingTensorHook, StepCounterHook
from jaxhooks.nan_hook import NanTensorHook
from jaxhooks.preemption import PreemptionNotice
from jaxhooks.profiler_hook import ProfilerHook
from jaxhooks.progress import ProgressBarHook
from jaxhooks.runner import HookedStep
from jaxhooks.wrapper import wrap
from jaxhooks.session import MonitoredTrainingSession
from jaxhooks.stop_hooks import GlobalStepWaiterHook, StopAtStepHook
from jaxhooks.summary_hook import SummarySaverHook
from jaxhooks.timer import SecondOrStepTimer
from jaxhooks.writers import (CsvWriter, JsonlWriter, MetricWriter,
                              MultiWriter, TensorBoardWriter, default_writer)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointSaverHook",
    "CheckpointSaverListener",
    "CoordinationTimeoutError",
    "Coordinator",
    "CsvWriter",
    "default_writer",
    "DeviceMonitor",
    "DistributedCoordinator",
    "EarlyStoppingHook",
    "FeedFnHook",
    "FinalOpsHook",
    "GLOBAL_STEP",
    "GlobalStepWaiterHook",
    "Hook",
    "HookedStep",
    "JsonlWriter",
    "LambdaHook",
    "LifecycleError",
    "LoggingTensorHook",
    "MetricWriter",
    "MonitoredTrainingSession",
    "MultiWriter",
    "NanLossDuringTrainingError",
    "NanTensorHook",
    "NEVER",
    "NonFiniteStateError",
    "PreemptionNotice",
    "ProfilerHook",
    "ProgressBarHook",
    "RunArgs",
    "RunContext",
    "RunValues",
    "SecondOrStepTimer",
    "Session",
    "SessionRunArgs",
    "SessionRunContext",
    "SessionRunHook",
    "SessionRunValues",
    "StallError",
    "StepCounterHook",
    "StepMismatchError",
    "StopAtStepHook",
    "SummarySaverHook",
    "TensorBoardWriter",
    "wrap",
]
