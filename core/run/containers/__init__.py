"""Projects as Docker containers: the container executor (engine access, per-project
networks and volumes, starting, stopping and adopting containers, their limits and
identity, the proxy to them).

Used by the Dockerfile runtime (which builds the images itself:
`tee_daemon_plugins.runtime_dockerfile.image`) and by the process runtimes under
``--backend docker`` (`backend`). The modules: `engine` (settings, client, names,
networks, volumes, clean-up), `facts` (what /_api/substrate says), `mounts` (uid:gid,
binds), `instance` (`ContainerInstance`), `watch` (its log follower and OOM watcher),
`backend` (a process runtime's plan as a container).

Everything goes through the engine's API (docker-py, found the standard way: DOCKER_HOST),
so it works the same when the daemon itself runs in a container next to the engine.

Per project, on one engine, every object carries the labels ``tee-daemon.daemon`` (this
daemon's id: a hash of its data dir, or TEE_DAEMON_DOCKER_ID), ``tee-daemon.project`` and,
for images and containers, ``tee-daemon.version``:

* images ``tee-daemon/<project>:<id>-v<version>``, built with pull=False from a bounded
  context in bounded time, each build step under the project's memory and CPU limits on
  the project's own network; kept while the version is kept (rollback stays instant);
* one bridge network ``tee-<id>-<project>`` (``...-internal``, with no route out, when
  TEE_DAEMON_PROJECT_EGRESS=deny): containers of other projects are on other bridges,
  which the engine isolates from each other;
* one named volume ``tee-<id>-<project>-data`` mounted at /data (DATA_DIR), owned by the
  project's uid;
* one container per running version, its port published on 127.0.0.1 only (with egress
  deny the daemon connects to its address on the internal network instead). Hostile
  tenants are the norm (SPEC section 9), so every container runs as a uid:gid of the
  project's own (never root, whatever the image's USER), with every capability dropped,
  no-new-privileges, a read-only root and a size-limited tmpfs /tmp, memory (no swap),
  CPU and pids limits (TEE_DAEMON_PROJECT_*, overridden by TEE_DAEMON_DOCKER_*), never
  privileged, no devices, no host namespace, no engine socket; a restart policy
  on-failure with a cap, the configured OCI runtime. A kill for exceeding the memory
  limit is a line in the project's log. `hardening_facts` says all of it for
  /_api/substrate, and what the engine cannot do.

`stop()` always removes the container (a version retired after a switch, a delete, a
failed start); `detach()` (daemon shutdown) leaves a ready container running so that the
next daemon adopts it by its labels instead of recreating it. After a delete the runtime's
`runtime_forget` hook calls `forget_project` for the images, network and volume.
"""

from tee_daemon.run.containers.backend import (
    backend_facts,
    container_daemon_id,
    container_images,
    container_spec,
    process_spec,
    project_network,
    runtime_image,
    start_process,
)
from tee_daemon.run.containers.engine import (
    CFS_PERIOD_US,
    DEFAULT_PORT,
    LABEL_CONFIG,
    LABEL_DAEMON,
    LABEL_PROJECT,
    LABEL_RUNTIME,
    LABEL_VERSION,
    MiB,
    DockerConfig,
    EngineUnavailable,
    client,
    config,
    configure,
    cpu_quota,
    daemon_id,
    docker_config,
    ensure_network,
    ensure_volume,
    filters,
    forget_project,
    images,
    labels,
    memory_bytes,
    network_name,
    note_projects_dir,
    projects_dir_of,
    remove_project,
    short,
    sweep,
    volume_name,
)
from tee_daemon.run.containers.facts import check_oci_runtime, hardening_facts, substrate
from tee_daemon.run.containers.instance import ContainerInstance, ContainerSpec, forward_app, start_container
from tee_daemon.run.containers.mounts import binds, check_binds, container_identity, passages
from tee_daemon.run.containers.watch import parse_ts
