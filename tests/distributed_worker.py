"""One process of a local two-process `jax.distributed` run (tests/test_distributed.py starts two).

Usage: python distributed_worker.py PROCESS_ID NUM_PROCESSES PORT CONFIG_JSON WORKDIR
"""

import json
import sys

import jax

jax.config.update("jax_num_cpu_devices", 1)  # one CPU device per process (docs/libraries.md T6)

from ml_collections import ConfigDict  # noqa: E402

from inception_jax.cpu import runtime  # noqa: E402
from inception_jax.training.loop import train_and_evaluate  # noqa: E402

pid, nproc, port, config_json, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
config = ConfigDict(json.loads(config_json))
config.distributed.enabled = True
config.distributed.coordinator_address = f"127.0.0.1:{port}"
config.distributed.num_processes = nproc
config.distributed.process_id = pid
runtime.setup(config)
result = train_and_evaluate(config, workdir)
print(f"process {jax.process_index()}/{jax.process_count()} devices {jax.device_count()} status {result.status}",
      flush=True)
