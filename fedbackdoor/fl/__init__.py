"""The only code that knows Flower: apps, strategy, array conversion, launcher."""

import os

# Ray's announced default (leave CUDA_VISIBLE_DEVICES alone for clients with num_gpus=0); set
# here so that every Ray start, ours or Flower's (`flwr run`), skips its FutureWarning.
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
