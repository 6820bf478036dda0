"""The peers' generated configuration, venv stamps, launcher commands and /proc parsing (no peer started)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.peers.mlserver import RUNTIME_CLASS, MLServerVariant, model_settings, server_settings, write_repository
from bench.peers.procs import ProcStat, busy_cpu_seconds, parse_stat, tree_cpu_seconds
from bench.peers.ray_serve import RAY_APP, RayServeConfig, launcher_command, launcher_env
from bench.peers.venvs import MLSERVER_ENV, RAY_SERVE_ENV, PeerEnv, install_command, needs_install
from bench.scenarios.peer_gateway import gateway_env
from gateway_plugin.cli import _parser

MODEL = Path(__file__).resolve().parents[3] / "worker" / "bundled_models" / "digits" / "model.onnx"


def test_mlserver_settings_are_loopback_quiet_and_on_distinct_ports() -> None:
    settings = server_settings(http_port=9001, grpc_port=9002, metrics_port=9003, parallel_workers=1)

    assert settings["host"] == "127.0.0.1"
    assert settings["debug"] is False  # uvicorn access log off, as for the distinfer processes
    assert (settings["http_port"], settings["grpc_port"], settings["metrics_port"]) == (9001, 9002, 9003)
    assert settings["parallel_workers"] == 1
    with pytest.raises(ValueError, match="ports must differ"):
        server_settings(http_port=9001, grpc_port=9001, metrics_port=9003, parallel_workers=1)


def test_model_settings_name_the_onnx_runtime_and_batch_only_when_asked(tmp_path: Path) -> None:
    plain = model_settings(name="digits", model_path=Path("rel/model.onnx"), threads=1)

    assert plain["implementation"] == RUNTIME_CLASS
    assert Path(plain["parameters"]["uri"]).is_absolute()  # MLServer runs with the repository as cwd
    assert plain["parameters"]["extra"] == {"threads": 1}
    assert "max_batch_size" not in plain
    assert "max_batch_time" not in plain

    batched = model_settings(name="digits", model_path=MODEL, threads=1, max_batch_size=256, max_batch_time_s=0.002)
    assert (batched["max_batch_size"], batched["max_batch_time"]) == (256, 0.002)
    with pytest.raises(ValueError, match="threads"):
        model_settings(name="digits", model_path=MODEL, threads=0)


def test_repository_holds_settings_model_settings_and_the_runtime_module(tmp_path: Path) -> None:
    variant = MLServerVariant("mlserver-batching", parallel_workers=0, max_batch_size=8, max_batch_time_s=0.001)

    write_repository(tmp_path, model_name="digits", model_path=MODEL, variant=variant, threads=1, ports=(1, 2, 3))

    settings = json.loads((tmp_path / "settings.json").read_text())
    model = json.loads((tmp_path / "digits" / "model-settings.json").read_text())
    assert settings["parallel_workers"] == 0
    assert model["name"] == "digits"
    assert model["max_batch_size"] == 8
    module, _, cls = RUNTIME_CLASS.partition(".")
    runtime = (tmp_path / "digits" / f"{module}.py").read_text()
    assert f"class {cls}(MLModel)" in runtime
    assert "intra_op_num_threads" in runtime
    assert variant.batching
    assert not MLServerVariant().batching


def test_peer_requirements_are_pinned_and_mlserver_keeps_a_compatible_uvloop() -> None:
    for env in (MLSERVER_ENV, RAY_SERVE_ENV):
        assert all("==" in requirement for requirement in env.requirements), env.requirements
        assert not any(requirement.startswith("torch") for requirement in env.requirements)
    assert "uvloop==0.21.0" in MLSERVER_ENV.requirements
    command = install_command(Path("/v/bin/python"), MLSERVER_ENV)
    assert command[:4] == ["/v/bin/python", "-m", "pip", "install"]
    assert command[-len(MLSERVER_ENV.requirements) :] == list(MLSERVER_ENV.requirements)


def test_a_venv_is_reinstalled_unless_its_stamp_lists_the_same_requirements(tmp_path: Path) -> None:
    env = PeerEnv("peer", ("a==1", "b==2"), ("a",), ("a",))
    root = tmp_path / "peer"
    assert needs_install(root, env)  # nothing there

    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").touch()
    assert needs_install(root, env)  # a venv with no stamp: a half-made one

    stamp = root / ".distinfer-peer.json"
    stamp.write_text(json.dumps({"requirements": ["a==1", "b==2"]}))
    assert not needs_install(root, env)

    stamp.write_text(json.dumps({"requirements": ["a==1", "b==3"]}))
    assert needs_install(root, env)
    stamp.write_text("{not json")
    assert needs_install(root, env)


def test_ray_launcher_command_and_environment(tmp_path: Path) -> None:
    config = RayServeConfig(replicas=2, threads=1)
    command = launcher_command(
        Path("/v/bin/python"), port=8123, model_name="digits", model_path=MODEL, config=config, temp_dir=tmp_path
    )

    assert command[:2] == ["/v/bin/python", str(RAY_APP)]
    pairs = dict(zip(command[2::2], command[3::2], strict=True))
    assert pairs == {
        "--port": "8123",
        "--model-name": "digits",
        "--model-path": str(MODEL),
        "--replicas": "2",
        "--threads": "1",
        "--temp-dir": str(tmp_path),
        "--max-ongoing-requests": "64",  # Serve's default of 5 queues a c=64 client in the proxy
    }
    serve_default = RayServeConfig(max_ongoing_requests=None)
    assert "--max-ongoing-requests" not in launcher_command(
        Path("p"), port=1, model_name="m", model_path=MODEL, config=serve_default, temp_dir=tmp_path
    )
    assert launcher_env()["RAY_USAGE_STATS_ENABLED"] == "0"
    with pytest.raises(ValueError, match="replicas"):
        RayServeConfig(replicas=0)


def test_gateway_env_routes_to_every_node_with_auth_off() -> None:
    env = gateway_env(["http://127.0.0.1:1", "http://127.0.0.1:2"])

    assert env["DISTINFER_NODES"] == "http://127.0.0.1:1,http://127.0.0.1:2"
    assert env["ENABLE_DISTRIBUTED_INFERENCE"] == "true"
    assert env["DISTINFER_AUTH_DISABLED"] == "true"


def test_proc_stat_parsing_survives_names_with_spaces_and_parentheses() -> None:
    line = "4242 (ray::ServeReplica:a (b)) S 17 4242 4200 0 -1 4194304 10 0 0 0 250 50 0 0 20 0 9 0 100 0 0"

    stat = parse_stat(line)

    assert (stat.pid, stat.ppid, stat.session, stat.cpu_ticks) == (4242, 17, 4200, 300)


def test_tree_cpu_counts_roots_and_descendants_only() -> None:
    stats = [
        ProcStat(pid=10, ppid=1, session=10, cpu_ticks=100),
        ProcStat(pid=11, ppid=10, session=10, cpu_ticks=50),
        ProcStat(pid=12, ppid=11, session=12, cpu_ticks=25),  # a grandchild in its own session (a Ray actor)
        ProcStat(pid=20, ppid=1, session=20, cpu_ticks=1000),  # someone else's
    ]
    ticks = tree_cpu_seconds([10], stats) * os.sysconf("SC_CLK_TCK")

    assert round(ticks) == 175
    assert tree_cpu_seconds([99], stats) == 0.0


def test_machine_busy_time_counts_tasks_and_steal_not_idle_or_interrupts() -> None:
    stat = "cpu  100 10 50 1000 40 5 7 20 0 0\ncpu0 50 5 25 500 20 2 3 10 0 0\n"

    assert round(busy_cpu_seconds(stat) * os.sysconf("SC_CLK_TCK")) == 100 + 10 + 50 + 20


def test_bench_peer_command_lines() -> None:
    peer = _parser().parse_args(["bench", "peer", "--quick", "--rounds", "2"])
    gateway = _parser().parse_args(["bench", "peer-gateway", "--replicas", "2", "--ray-max-ongoing", "0"])

    assert (peer.scenario, peer.quick, peer.rounds, peer.venvs) == ("peer", True, 2, Path("build/venvs"))
    assert (gateway.scenario, gateway.replicas, gateway.ray_max_ongoing) == ("peer-gateway", 2, 0)
    assert _parser().parse_args(["bench", "peer-gateway"]).ray_max_ongoing == 64
    assert peer.run is gateway.run
