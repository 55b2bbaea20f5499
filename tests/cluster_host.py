"""A two-node Ray cluster on this machine for tests (ray.cluster_utils; every node on 127.0.0.1, no dashboard),
run in its own process: Cluster resets Ray's module state in whatever process it runs in (its shutdown drops the
internal KV client), which would break the test session's own local Ray.

    python tests/cluster_host.py   -> prints {"address", "head", "worker"} (node ids) as one JSON line, then
    reads commands: `kill-worker` kills the worker node's processes at once (answers `killed`); end of input
    shuts the cluster down.

Ray's "current cluster" file (/tmp/ray/ray_current_cluster, what address="auto" reads) is put back as it was,
so a test running beside this one is not pointed at this cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ray._common.utils import get_ray_address_file
from ray.cluster_utils import Cluster

MEMORY = {"object_store_memory": 100 * 1024**2, "memory": 2 * 1024**3}  # counted once per node: set both


def main() -> None:
    current = Path(get_ray_address_file(None))
    before = current.read_text() if current.is_file() else None

    def put_back() -> None:
        if before is None:
            current.unlink(missing_ok=True)
        else:
            current.write_text(before)

    # A killed node is declared dead after 1 s x 3 missed health checks instead of Ray's 3 s x 5: its task's retry
    # is not offered to it meanwhile.
    health = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "node_ip_address": "127.0.0.1", "_system_config": health,
                                                            **MEMORY})
    try:
        put_back()
        worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", **MEMORY)
        cluster.wait_for_nodes()
        print(json.dumps({"address": cluster.address, "head": cluster.head_node.node_id,
                          "worker": worker.node_id}), flush=True)
        for line in sys.stdin:
            if line.strip() == "kill-worker":
                cluster.remove_node(worker, allow_graceful=False)
                print("killed", flush=True)
    finally:
        cluster.shutdown()
        put_back()


if __name__ == "__main__":
    main()
