"""The public surface: `import jaxhooks as jh` code keeps working when the
package is reorganised. A name added to or removed from `jaxhooks.__all__`
is a change of the API and must be made here too."""

import jaxhooks as jh

PUBLIC = [
    "CheckpointError", "CheckpointMismatchError", "CheckpointSaverHook",
    "CheckpointSaverListener", "CoordinationTimeoutError", "Coordinator",
    "CsvWriter", "DeviceMonitor", "DistributedCoordinator",
    "EarlyStoppingHook", "FeedFnHook", "FinalOpsHook", "GLOBAL_STEP",
    "GlobalStepWaiterHook", "Hook", "HookedStep", "JsonlWriter",
    "LambdaHook", "LifecycleError", "LoggingTensorHook", "MetricWriter",
    "MonitoredTrainingSession", "MultiWriter", "NEVER",
    "NanLossDuringTrainingError", "NanTensorHook", "NonFiniteStateError",
    "PreemptionNotice", "ProfilerHook", "ProgressBarHook", "RunArgs",
    "RunContext", "RunValues", "SecondOrStepTimer", "Session",
    "SessionRunArgs", "SessionRunContext", "SessionRunHook",
    "SessionRunValues", "StallError", "StepCounterHook", "StepMismatchError",
    "StopAtStepHook", "SummarySaverHook", "TensorBoardWriter",
    "default_writer", "wrap",
]


def test_all_lists_exactly_the_public_names():
  assert sorted(jh.__all__) == sorted(PUBLIC)
  assert len(set(jh.__all__)) == len(jh.__all__)


def test_every_public_name_is_there():
  assert [name for name in PUBLIC if not hasattr(jh, name)] == []


def test_tensorflow_names_are_the_same_objects():
  assert (jh.SessionRunHook, jh.SessionRunArgs, jh.SessionRunContext,
          jh.SessionRunValues) == (jh.Hook, jh.RunArgs, jh.RunContext,
                                   jh.RunValues)


def test_the_version_is_a_string():
  assert isinstance(jh.__version__, str) and jh.__version__.count(".") == 2
