"""
Start a one-machine Ray cluster that also comes up on a busy machine.

``ray.init()`` without an address starts a node whose raylet waits a fixed 15 s
for the agents (Python processes) to write their ports to files; on a loaded
machine they take longer and the node dies at start ("timed out during
startup"). Giving the agents fixed free ports removes those waits.
"""

from __future__ import annotations

import socket

from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_local_cluster(*, num_cpus: int | None = None, object_store_bytes: int | None = None) -> Any:
    """A head node on this machine (``ray.cluster_utils.Cluster``); connect with ``ray.init(address=c.address)``."""
    from ray.cluster_utils import Cluster

    args: dict[str, Any] = {
        "include_dashboard": False, "metrics_agent_port": _free_port(),
        "metrics_export_port": _free_port(), "runtime_env_agent_port": _free_port(),
        "dashboard_agent_listen_port": _free_port(),
    }
    if num_cpus is not None:
        args["num_cpus"] = num_cpus
    if object_store_bytes is not None:
        args["object_store_memory"] = object_store_bytes
    return Cluster(initialize_head=True, head_node_args=args)


__all__ = ["start_local_cluster"]
