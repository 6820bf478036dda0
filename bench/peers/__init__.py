"""Peers the bench measures distinfer against (MLServer, Ray Serve), each from its own venv.

Nothing here is imported by the `distinfer` command at start-up; `bench/peers/mlserver_runtime.py`
and `bench/peers/ray_app.py` run only inside the peers' venvs.
"""

__all__: list[str] = []
