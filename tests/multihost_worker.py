"""One of two JAX processes that search the toy model together (for test_distributed).

Run as `python tests/multihost_worker.py PROCESS_ID PORT OUTPUT.npz` with
JAX_PLATFORMS=cpu, once per process id 0 and 1. Process 0 starts JAX's coordination
service on 127.0.0.1:PORT. Each process searches its block of the images and saves the
merged flips of both, with its process index and block, to OUTPUT.npz.
"""

import sys

import jax
import numpy as np
from toy_search import SEARCH_KEY, search_options, toy_data

from defuse_jax import distributed

NUM_IMAGES = 11  # Blocks of 6 and 5 images, each with a padded last batch of 4.


def main(process_id: int, port: int, output: str) -> None:
    distributed.enable_cpu_collectives()
    address = f"127.0.0.1:{port}"
    jax.distributed.initialize(
        address,
        num_processes=2,
        process_id=process_id,
        # The default binds every interface; the test needs loopback only.
        coordinator_bind_address=address,
        initialization_timeout=60,
    )
    try:
        images, labels = toy_data(NUM_IMAGES)
        flips = distributed.identify_across_processes(
            None,
            None,
            images,
            labels,
            jax.random.key(SEARCH_KEY),
            **search_options(),
        )
        block = distributed.process_block(NUM_IMAGES)
        np.savez(
            output,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            block=np.asarray([block.start, block.stop]),
            **flips._asdict(),
        )
    finally:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
