"""``cmsr submit``: hand a job to a Dask cluster or to a Prefect deployment, return the run id.

Both need a Prefect API that outlives this command (``PREFECT_API_URL``: the compose file's
Prefect server, or any ``prefect server start``) — the run id must mean something after we exit.

* ``--deployment FLOW/NAME``: ``run_deployment(..., timeout=0)``; whoever serves the deployment
  (``cmsr serve``) runs it.
* ``--scheduler ADDR``: the flow run is created in the API first (so its id is known), then the
  flow itself is sent to the cluster as one detached Dask task (``fire_and_forget``) that
  ``secede``s from its worker thread and fans the tiles out on the same cluster.
"""

from __future__ import annotations

import os

from .engine import configure_environment
from .errors import UsageError


def _require_api(what: str) -> str:
    configure_environment()
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise UsageError(
            f"{what} needs a Prefect server that outlives this command: set PREFECT_API_URL "
            "(e.g. http://HOST:4200/api, the compose file's prefect-server)"
        )
    return str(url)


def to_deployment(name: str, rgb: str, target: str, out: str, config: dict) -> str:
    """Create a flow run of deployment ``name`` (``superresolve-survey/<name>``); its id."""
    _require_api("submit --deployment")
    from prefect.deployments import run_deployment

    if "/" not in name:
        name = f"superresolve-survey/{name}"
    flow_run = run_deployment(name, parameters={"rgb": rgb, "target": target, "out": out, "config": config}, timeout=0)
    return str(flow_run.id)


def to_scheduler(address: str, rgb: str, target: str, out: str, config: dict) -> str:
    """Create the flow run, start it on the Dask cluster at ``address`` (detached); its id."""
    api = _require_api("submit --scheduler")
    import distributed
    from prefect import get_client

    from .survey import superresolve_survey

    params = {"rgb": rgb, "target": target, "out": out, "config": config}
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(superresolve_survey, parameters=params)
    with distributed.Client(address, set_as_default=False, timeout="60s") as dask_client:
        fut = dask_client.submit(run_flow_run_on_cluster, str(flow_run.id), api, pure=False, key=f"cmsr-flow-{flow_run.id}")
        distributed.fire_and_forget(fut)
    return str(flow_run.id)


def run_flow_run_on_cluster(flow_run_id: str, api_url: str) -> str:
    """Runs inside a Dask worker: execute the pre-created flow run against this cluster."""
    import distributed

    distributed.secede()  # free this worker thread for tile tasks while the flow waits on them
    os.environ["PREFECT_API_URL"] = api_url
    configure_environment()
    from prefect import get_client
    from prefect.flow_engine import run_flow
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_dask import DaskTaskRunner

    from .survey import superresolve_survey

    address = distributed.get_worker().scheduler.address
    with temporary_settings({PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(flow_run_id)
        f = superresolve_survey.with_options(task_runner=DaskTaskRunner(address=address))
        state = run_flow(f, flow_run=flow_run, parameters=dict(flow_run.parameters), return_type="state")
    return str(state.type.value if hasattr(state, "type") else state)


__all__ = ["to_deployment", "to_scheduler", "run_flow_run_on_cluster"]
