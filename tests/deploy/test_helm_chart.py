"""The Helm chart, rendered by the real Helm library and checked against the Kubernetes schemas."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from gateway_plugin.settings import ENVIRONMENT
from tests.deploy.rendering import CHART, NAMESPACE, RELEASE, VARIANTS, Rendered, render

# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest the schemas know.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.utils.latest_version())
GATEWAY = f"{RELEASE}-distinfer-gateway"
NODE = f"{RELEASE}-distinfer-node"
HEADLESS = f"{RELEASE}-distinfer-node-headless"
CONTRACT = CHART.parent.parent / "shared" / "CONTRACT.md"
# Settings named by CONTRACT.md and by the issues in flight, whether or not settings.py has them yet.
CONTRACT_NAMES = {
    "ENABLE_DISTRIBUTED_INFERENCE",
    "DISTRIBUTED_INFERENCE_ROLLOUT_PERCENT",
    "DISTRIBUTED_INFERENCE_MODE",
    "DISTINFER_DISCOVERY",
    "DISTINFER_NODES",
    "DISTINFER_NODES_FILE",
    "DISTINFER_CONSUL_URL",
    "DISTINFER_CONSUL_SERVICE",
    "DISTINFER_CONSUL_TOKEN",
    "DISTINFER_DNS_SRV",
    "DISTINFER_JWT_SECRET",
    "DISTINFER_JWT_PUBLIC_KEY",
    "DISTINFER_JWT_JWKS_URL",
    "DISTINFER_JWT_AUDIENCE",
    "DISTINFER_JWT_ISSUER",
    "DISTINFER_AUTH_DISABLED",
    "DISTINFER_NODE_TOKEN",
    "DISTINFER_TASK_STORE",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
}
# Values the schema accepts for the typed settings ("1" does for the others).
SAMPLES = {
    "DISTINFER_API_PREFIX": "/api/v2/cluster",
    "DISTRIBUTED_INFERENCE_MODE": "shadow",
    "DISTINFER_STRATEGY": "latency",
}
SECRET_NAMES = {
    "DISTINFER_JWT_SECRET",
    "DISTINFER_JWT_PUBLIC_KEY",
    "DISTINFER_NODE_TOKEN",
    "DISTINFER_CONSUL_TOKEN",
    "DISTINFER_TASK_STORE",
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, Rendered]:
    return {name: render(values) for name, values in VARIANTS.items()}


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]
    return list(spec["containers"])


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return dict(workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"])


# ---------------------------------------------------------------- lint and schemas


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_chart_lints_clean_in_strict_mode(variant: str) -> None:
    report = helm.lint(CHART, VARIANTS[variant], strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    assert report["errors"] == []
    # Severity 1 is informational ("icon is recommended"); warnings and errors would be 2 and 3.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_manifest_validates_strictly_against_kubernetes(
    rendered: dict[str, Rendered], variant: str, kube_version: str
) -> None:
    checked = 0
    for manifest in rendered[variant].manifests:
        if manifest.kind == "ServiceMonitor":
            continue  # a Prometheus Operator CRD: no upstream schema; checked by its own test below
        try:
            kubernetes_validate.validate(manifest.doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{manifest.template} {manifest.kind}/{manifest.name}: {where}: {exc.message}")
        checked += 1
    assert checked >= 10


def test_kubernetes_validate_cli_strict_accepts_the_rendered_files(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    """The same check through the tool's own command line, as a CI job would run it."""
    files = []
    for variant in ("default", "consul", "dns", "autoscaling"):
        docs = [m.doc for m in rendered[variant].manifests if m.kind != "ServiceMonitor"]
        path = tmp_path / f"{variant}.yaml"
        path.write_text(yaml.safe_dump_all(docs), encoding="utf-8")
        files.append(str(path))
    cli = Path(sys.executable).with_name("kubernetes-validate")
    result = subprocess.run(
        [str(cli), "--strict", "--quiet", "-k", KUBE_VERSIONS[0], *files], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout


def test_values_yaml_validates_against_values_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(schema).validate(values)
    for variant in VARIANTS.values():
        with helm.Chart.load(CHART) as chart:
            chart.validate_schema(variant)


BAD_VALUES = {
    "unknown top-level key": {"replicaCount": 3},
    "typo in a section": {"gateway": {"replica": 3}},
    "node kind": {"nodes": {"kind": "DaemonSet"}},
    "discovery source": {"discovery": {"sources": ["etcd"]}},
    "strategy": {"gateway": {"settings": {"DISTINFER_STRATEGY": "fastest"}}},
    "rollout percent": {"gateway": {"settings": {"DISTRIBUTED_INFERENCE_ROLLOUT_PERCENT": 150}}},
    "max attempts": {"gateway": {"settings": {"DISTINFER_MAX_ATTEMPTS": 0}}},
    "unknown setting name": {"gateway": {"settings": {"MAX_ATTEMPTS": 2}}},
    # Regression: any DISTINFER_* name passed, so a typo was rendered and silently ignored.
    "misspelt setting name": {"gateway": {"settings": {"DISTINFER_MAX_ATTEMPT": 2}}},
    "a setting settings.py has no name for": {"gateway": {"settings": {"DISTINFER_HEDGE": "true"}}},
    "negative replicas": {"nodes": {"replicas": -1}},
    "task store": {"tasks": {"store": "postgres"}},
    "port": {"gateway": {"port": 70000}},
    "consul url": {"discovery": {"consul": {"url": "consul:8500"}}},
    "a key as a plain setting": {"gateway": {"settings": {"DISTINFER_JWT_SECRET": "hunter2"}}},
    # The image has the OTLP/HTTP protobuf exporter only: anything else crash-looped every pod at start.
    "otlp over grpc": {"otel": {"protocol": "grpc"}},
    "otlp http/json": {"otel": {"protocol": "http/json"}},
    # A ConfigMap is readable by far more than Secrets are: the password goes in tasks.redisUrlSecret.
    "a password in the redis url": {"tasks": {"store": "redis", "redisUrl": "redis://:s3cr3t@redis:6379/0"}},
    "a user and password in the redis url": {"tasks": {"store": "redis", "redisUrl": "rediss://u:p@redis/0"}},
    "a password in the redis url's query": {"tasks": {"store": "redis", "redisUrl": "redis://r:6379/0?password=x"}},
}


def test_a_submit_only_gateway_is_accepted() -> None:
    """DISTINFER_TASK_WORKERS=0 (take submissions, run none: README) was refused by the schema."""
    env = render({"gateway": {"settings": {"DISTINFER_TASK_WORKERS": 0}}}).gateway_environment()
    assert env["DISTINFER_TASK_WORKERS"] == "0"


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_a_bad_value_is_rejected_by_the_schema(case: str) -> None:
    bad = BAD_VALUES[case]
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    merged = _merge(values, bad)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(merged)
    # ...and Helm itself refuses to render with it.
    with pytest.raises(helm.HelmValuesError):
        render(bad)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"nodes": {"autoscaling": {"enabled": True}}}, "static node list cannot follow"),
        ({"auth": {"createSecret": False}}, "auth is on"),
        ({"tasks": {"store": "redis"}}, "tasks.store=redis needs"),
        ({"gateway": {"replicas": 2}}, "tasks.store=memory keeps each gateway replica's tasks"),
        ({"gateway": {"autoscaling": {"enabled": True}}}, "tasks.store=memory keeps each gateway replica's tasks"),
        ({"nodes": {"kind": "Deployment"}}, "static discovery has no nodes"),
    ],
)
def test_combinations_the_schema_cannot_express_fail_the_render_with_the_fix(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(values)


# ---------------------------------------------------------------- what each variant wires


def test_default_values_serve_static_nodes_by_their_statefulset_names(rendered: dict[str, Rendered]) -> None:
    out = rendered["default"]
    env = out.gateway_environment()
    assert env["DISTINFER_DISCOVERY"] == "static"
    assert env["DISTINFER_NODES"] == ",".join(
        f"http://{NODE}-{i}.{HEADLESS}.{NAMESPACE}.svc.cluster.local:8001" for i in range(2)
    )
    statefulset = out.one("StatefulSet", NODE)
    assert statefulset["spec"]["serviceName"] == HEADLESS
    assert statefulset["spec"]["replicas"] == 2
    assert env["ENABLE_DISTRIBUTED_INFERENCE"] == "true"
    # Only what the operator sets: the code's own defaults are not pinned by the chart.
    assert "DISTINFER_STRATEGY" not in env
    assert out.of_kind("HorizontalPodAutoscaler") == []
    assert {pdb.name for pdb in out.of_kind("PodDisruptionBudget")} == {GATEWAY, NODE}


def test_probes_hit_the_v2_and_health_endpoints(rendered: dict[str, Rendered]) -> None:
    out = rendered["default"]
    gateway = _containers(out.one("Deployment", GATEWAY))[0]
    node = _containers(out.one("StatefulSet", NODE))[0]
    # Not the plugin's <prefix>/health: it answers 404 while the flag is off (a runtime kill switch
    # once made every pod fail its probes and restart with the flag back on).
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["startupProbe"]["httpGet"]["path"] == "/livez"
    assert node["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert node["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    for container in (gateway, node):
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] == "http"
        assert container["resources"]["requests"]["cpu"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_pod_runs_non_root_on_a_read_only_root_filesystem(rendered: dict[str, Rendered], variant: str) -> None:
    workloads = list(rendered[variant].workloads())
    assert len(workloads) >= 3  # gateway, nodes, helm test pod
    for workload in workloads:
        pod = _pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for container in _containers(workload):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]


def test_the_generated_auth_secret_feeds_gateway_and_nodes(rendered: dict[str, Rendered]) -> None:
    out = rendered["default"]
    secret = out.one("Secret", f"{RELEASE}-distinfer-auth")
    assert set(secret["data"]) == {"jwt-secret", "node-token"}
    assert all(len(value) >= 48 for value in secret["data"].values())
    gateway_env = {e["name"]: e for e in _containers(out.one("Deployment", GATEWAY))[0]["env"]}
    node_env = {e["name"]: e for e in _containers(out.one("StatefulSet", NODE))[0]["env"]}
    for name in ("DISTINFER_JWT_SECRET", "DISTINFER_JWT_PUBLIC_KEY", "DISTINFER_NODE_TOKEN"):
        assert gateway_env[name]["valueFrom"]["secretKeyRef"]["name"] == f"{RELEASE}-distinfer-auth"
    assert node_env["DISTINFER_NODE_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == f"{RELEASE}-distinfer-auth"
    assert out.gateway_environment()["DISTINFER_AUTH_DISABLED"] == "false"
    assert "distinfer token" in out.notes


def test_with_a_jwks_url_the_chart_still_gives_gateway_and_nodes_their_node_token() -> None:
    """Regression: a JWKS URL turned off the generated Secret, and with it the node token: nodes ran
    without one, open to any pod in the cluster."""
    out = render({"auth": {"jwksUrl": "https://idp.example/.well-known/jwks.json"}})
    secret = out.one("Secret", f"{RELEASE}-distinfer-auth")
    assert set(secret["data"]) == {"node-token"}  # no HS256 secret beside the JWKS
    gateway_env = {e["name"]: e for e in _containers(out.one("Deployment", GATEWAY))[0]["env"]}
    node_env = {e["name"]: e for e in _containers(out.one("StatefulSet", NODE))[0]["env"]}
    for env in (gateway_env, node_env):
        assert env["DISTINFER_NODE_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "node-token"
        assert env["DISTINFER_NODE_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == f"{RELEASE}-distinfer-auth"
    assert "the JWKS at https://idp.example/" in out.notes
    assert "HS256" not in out.notes


def test_an_existing_secret_is_referenced_and_none_is_created(rendered: dict[str, Rendered]) -> None:
    out = rendered["everything"]
    assert out.of_kind("Secret") == []
    env = {e["name"]: e for e in _containers(out.one("Deployment", GATEWAY))[0]["env"]}
    assert env["DISTINFER_JWT_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "distinfer-keys",
        "key": "jwt-secret",
        "optional": True,
    }
    assert env["DISTINFER_JWT_PUBLIC_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "distinfer-keys"
    assert env["DISTINFER_TASK_STORE"]["valueFrom"]["secretKeyRef"] == {"name": "redis-url", "key": "url"}
    plain = out.gateway_environment()
    assert plain["DISTINFER_JWT_JWKS_URL"] == "https://idp.example/.well-known/jwks.json"
    assert plain["DISTINFER_JWT_AUDIENCE"] == "distinfer"
    assert plain["DISTINFER_JWT_ISSUER"] == "https://idp.example/"
    # No secret value ever lands in a ConfigMap.
    for configmap in out.of_kind("ConfigMap"):
        assert not any("SECRET" in key or "TOKEN" in key for key in configmap.doc["data"])


def test_auth_disabled_sets_the_flag_and_references_no_secret() -> None:
    out = render({"auth": {"disabled": True}})
    assert out.gateway_environment()["DISTINFER_AUTH_DISABLED"] == "true"
    assert out.of_kind("Secret") == []
    assert "DISTINFER_JWT_SECRET" not in out.gateway_environment()
    assert "WARNING: auth is disabled" in out.notes


def test_dns_variant_points_the_gateway_at_the_headless_services_srv_record(rendered: dict[str, Rendered]) -> None:
    out = rendered["dns"]
    env = out.gateway_environment()
    assert env["DISTINFER_DISCOVERY"] == "dns"
    assert env["DISTINFER_DNS_SRV"] == f"_http._tcp.{HEADLESS}.{NAMESPACE}.svc.cluster.local"
    assert "DISTINFER_NODES" not in env
    headless = out.one("Service", HEADLESS)
    assert headless["spec"]["clusterIP"] == "None"
    # The SRV record `_http._tcp` exists only for a port named "http".
    assert [port["name"] for port in headless["spec"]["ports"]] == ["http"]
    nodes = out.one("Deployment", NODE)
    pod_labels = nodes["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= pod_labels.items()
    assert "clusterIP" not in out.one("Service", NODE)["spec"]


def test_consul_variant_registers_nodes_and_watches_the_service(rendered: dict[str, Rendered]) -> None:
    out = rendered["consul"]
    env = out.gateway_environment()
    assert env["DISTINFER_DISCOVERY"] == "consul"
    assert env["DISTINFER_CONSUL_URL"] == "http://consul.consul.svc:8500"
    assert env["DISTINFER_CONSUL_SERVICE"] == "distinfer-node"
    node = _containers(out.one("Deployment", NODE))[0]
    assert "--consul-url=http://consul.consul.svc:8500" in node["args"]
    assert "--advertise-host=$(POD_IP)" in node["args"]
    node_config = out.one("ConfigMap", NODE)["data"]
    assert node_config["DISTINFER_CONSUL_URL"] == "http://consul.consul.svc:8500"
    for container in (node, _containers(out.one("Deployment", GATEWAY))[0]):
        token = {e["name"]: e for e in container["env"]}["DISTINFER_CONSUL_TOKEN"]
        assert token["valueFrom"]["secretKeyRef"] == {"name": "consul-acl", "key": "token"}


def test_autoscaling_variant_scales_both_workloads_by_cpu(rendered: dict[str, Rendered]) -> None:
    out = rendered["autoscaling"]
    hpas = {hpa.name: hpa.doc for hpa in out.of_kind("HorizontalPodAutoscaler")}
    assert set(hpas) == {GATEWAY, NODE}
    for name, hpa in hpas.items():
        target = hpa["spec"]["scaleTargetRef"]
        workload = out.one(target["kind"], target["name"])
        assert target["name"] == name
        assert "replicas" not in workload["spec"]  # the HPA owns the count
        assert _containers(workload)[0]["resources"]["requests"]["cpu"]  # utilisation needs a request
    assert hpas[NODE]["spec"]["minReplicas"] == 2
    assert hpas[NODE]["spec"]["maxReplicas"] == 8
    assert hpas[NODE]["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"


def _scraped(out: Rendered) -> dict[str, str]:
    """Service name -> the path a ServiceMonitor scrapes it on."""
    paths: dict[str, str] = {}
    for monitor in out.of_kind("ServiceMonitor"):
        assert monitor.doc["apiVersion"] == "monitoring.coreos.com/v1"
        selector = monitor.doc["spec"]["selector"]["matchLabels"]
        [endpoint] = monitor.doc["spec"]["endpoints"]
        for service in out.of_kind("Service"):
            if selector.items() <= service.doc["metadata"]["labels"].items():
                assert service.name not in paths, f"{service.name} scraped twice"
                assert endpoint["port"] in [port["name"] for port in service.doc["spec"]["ports"]]
                paths[service.name] = endpoint["path"]
    return paths


def test_the_service_monitor_scrapes_the_gateway_and_every_node(rendered: dict[str, Rendered]) -> None:
    out = rendered["everything"]
    assert all(m.doc["metadata"]["labels"]["release"] == "prometheus" for m in out.of_kind("ServiceMonitor"))
    # Not the node ClusterIP Service too: that would scrape every node twice.
    assert _scraped(out) == {GATEWAY: "/metrics", HEADLESS: "/metrics"}
    assert out.gateway_environment()["DISTINFER_METRICS_PATH"] == "/metrics"
    assert rendered["default"].of_kind("ServiceMonitor") == []


def test_metrics_path_moves_the_gateways_metrics_and_its_scrape_not_the_nodes() -> None:
    """Regression: metrics.path reached only the ServiceMonitor (the gateway kept /metrics), and the
    one endpoint scraped the nodes on it too (they serve /metrics): every target was a 404."""
    out = render({**VARIANTS["everything"], "metrics": {"path": "/prom", "serviceMonitor": {"enabled": True}}})
    assert _scraped(out) == {GATEWAY: "/prom", HEADLESS: "/metrics"}
    assert out.gateway_environment()["DISTINFER_METRICS_PATH"] == "/prom"
    with pytest.raises(helm.HelmError, match=re.escape("set metrics.path")):
        render({"gateway": {"settings": {"DISTINFER_METRICS_PATH": "/other"}}})


def test_own_gateway_image_nodes_file_and_model_volume(rendered: dict[str, Rendered]) -> None:
    out = rendered["everything"]
    gateway = _containers(out.one("Deployment", GATEWAY))[0]
    assert gateway["image"] == "registry.example/acme/api:2.3.1"
    assert gateway["command"] == ["uvicorn"]
    assert gateway["args"][0] == "acme.app:app"
    env = out.gateway_environment()
    assert env["DISTINFER_NODES_FILE"] == "/etc/distinfer/nodes/nodes.yaml"
    assert env["DISTINFER_NODES"].endswith(",http://gpu-box.example:8001")
    assert env["DISTINFER_DISCOVERY"] == "static,dns"
    assert env["DISTINFER_LOCAL_MODEL_REPOSITORY"] == "/opt/distinfer/models"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert env["OTEL_BSP_MAX_QUEUE_SIZE"] == "4096"
    nodes_file = yaml.safe_load(out.one("ConfigMap", f"{GATEWAY}-nodes")["data"]["nodes.yaml"])
    assert nodes_file == {"nodes": VARIANTS["everything"]["discovery"]["static"]["nodesFile"]}
    mounts = {m["name"]: m["mountPath"] for m in gateway["volumeMounts"]}
    assert mounts["nodes-file"] == "/etc/distinfer/nodes"
    node = out.one("StatefulSet", NODE)
    node_container = _containers(node)[0]
    assert "--models=digits,digits_a" in node_container["args"]
    volumes = {v["name"]: v for v in _pod_spec(node)["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "models"
    assert {m["name"]: m for m in node_container["volumeMounts"]}["models"]["readOnly"] is True


def test_every_setting_is_wired_into_the_gateway(rendered: dict[str, Rendered]) -> None:
    """Each name of the settings table and of CONTRACT.md reaches the gateway: computed by the chart,
    from a Secret (keys and tokens, never a ConfigMap), or passed through `gateway.settings`."""
    wanted = set(ENVIRONMENT) | CONTRACT_NAMES
    if CONTRACT.is_file():
        text = CONTRACT.read_text(encoding="utf-8")
        wanted |= set(re.findall(r"`((?:DISTINFER|DISTRIBUTED_INFERENCE|ENABLE_DISTRIBUTED)_?[A-Z_]*)`", text))
    wired: dict[str, str | None] = {}
    for out in rendered.values():
        wired |= out.gateway_environment()
    for name in sorted(wanted & SECRET_NAMES):
        assert name in wired, f"{name} is not wired from a Secret"
        assert wired[name] is None, f"{name} must come from a Secret, not a plain value"
    missing = {name: SAMPLES.get(name, "1") for name in sorted(wanted - set(wired))}
    passed = render({"gateway": {"settings": missing}}).gateway_environment()
    assert [name for name, value in missing.items() if passed.get(name) != value] == []


def test_the_schema_knows_exactly_the_names_settings_py_reads() -> None:
    """`gateway.settings` takes the names of the settings table (and OTEL_*), no others: a typo fails
    the install. A new setting must be added here too, or the chart could not pass it."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    names = schema["properties"]["gateway"]["properties"]["settings"]["propertyNames"]["allOf"][1]["anyOf"][1]
    assert sorted(names["enum"]) == sorted(ENVIRONMENT)


def test_keys_and_chart_computed_names_are_refused_as_plain_settings() -> None:
    for name in sorted(SECRET_NAMES | {"DISTINFER_NODES", "DISTINFER_DISCOVERY"}):
        with pytest.raises(helm.HelmValuesError):
            render({"gateway": {"settings": {name: "x"}}})


def test_an_image_of_your_own_is_probed_on_the_plugins_health_paths(rendered: dict[str, Rendered]) -> None:
    """Regression: the /livez and /readyz defaults, which only `distinfer gateway` serves, went to
    images that mount the plugin in their own app too: their probes failed for ever."""
    own = _containers(rendered["everything"].one("Deployment", GATEWAY))[0]
    assert own["args"][0] != "gateway"  # the variant runs its own app
    assert own["livenessProbe"]["httpGet"]["path"] == "/api/v1/distributed/health/live"
    assert own["readinessProbe"]["httpGet"]["path"] == "/api/v1/distributed/health/ready"
    # With the flag off that path is 404: such an image must name its own health endpoints.
    own_image = {key: VARIANTS["everything"]["gateway"][key] for key in ("image", "command", "args")}
    for off in ("false", "0", "off", "no"):
        with pytest.raises(helm.HelmError, match="livenessPath"):
            render({"gateway": {**own_image, "settings": {"ENABLE_DISTRIBUTED_INFERENCE": off}}})
    with pytest.raises(helm.HelmError, match="livenessPath and readinessPath"):  # both: readiness is 404 too
        render(
            {
                "gateway": {
                    **own_image,
                    "probes": {"livenessPath": "/healthz"},
                    "settings": {"ENABLE_DISTRIBUTED_INFERENCE": "0"},
                }
            }
        )
    # The chart's own gateway needs nothing: its /livez and /readyz ignore the flag, as does helm test,
    # also when args only change its flags (the image's entrypoint still runs `distinfer gateway`).
    off = {"ENABLE_DISTRIBUTED_INFERENCE": "false"}
    for gateway in ({"settings": off}, {"settings": off, "args": ["gateway", "--log-level=debug"]}):
        out = render({"gateway": gateway})
        container = _containers(out.one("Deployment", GATEWAY))[0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        [pod] = [m.doc for m in out.of_kind("Pod")]
        assert f"http://{GATEWAY}:80/readyz" in pod["spec"]["containers"][0]["args"]


def test_the_helm_test_hook_checks_gateway_and_node_readiness(rendered: dict[str, Rendered]) -> None:
    out = rendered["default"]
    [pod] = [m.doc for m in out.of_kind("Pod")]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = pod["spec"]["containers"][0]["args"]
    assert f"http://{GATEWAY}:80/api/v1/distributed/health/ready" in args
    assert f"http://{NODE}:8001/v2/health/ready" in args
    assert f"helm test {RELEASE}" in out.notes


def test_numbers_reach_the_process_as_the_integers_it_parses() -> None:
    values = {"DISTINFER_MAX_BODY_BYTES": 16777216, "DISTRIBUTED_INFERENCE_ROLLOUT_PERCENT": 12.5}
    env = render({"gateway": {"settings": values}}).gateway_environment()
    assert env["DISTINFER_MAX_BODY_BYTES"] == "16777216"  # not Go's 1.6777216e+07
    assert env["DISTRIBUTED_INFERENCE_ROLLOUT_PERCENT"] == "12.5"


def test_changing_a_setting_rolls_the_gateway(rendered: dict[str, Rendered]) -> None:
    before = rendered["default"].one("Deployment", GATEWAY)["spec"]["template"]["metadata"]["annotations"]
    changed = render({"gateway": {"settings": {"DISTINFER_MAX_ATTEMPTS": 3}}})
    after = changed.one("Deployment", GATEWAY)["spec"]["template"]["metadata"]["annotations"]
    assert before["checksum/config"] != after["checksum/config"]
