"""Render test of the ehr chart: `helm template` with the default values and with
values-nondefault.yaml (a hospital's production shape), then checks of what came out.

    HELM=target/ci-venv/bin/helm target/ci-venv/bin/python -m unittest discover -s helm/ehr/tests

Run by .ci/chart. Needs helm (HELM, else target/ci-venv/bin/helm, else helm on PATH) and PyYAML.
With EHR_BIN set to a built `ehr` binary, each rendered TOML is also loaded by the server's own
configuration loader (`ehr --config F dev-token`, which loads the configuration and then refuses
because the development key is off).
"""

import base64
import os
import shutil
import subprocess
import tempfile
import tomllib
import unittest
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent.parent
REPO = CHART.parent.parent
NONDEFAULT = CHART / "tests" / "values-nondefault.yaml"
RELEASE = "rel"
PREFIX = "rel-ehr"
KUBE_VERSION = "1.30.0"
ALL_TARGETS = [
    "gateway",
    "patient-record",
    "orders",
    "lab-interface",
    "data-export",
    "clins-adapter",
    "eprescription-adapter",
]
SERVICES = ALL_TARGETS[1:]
RECOMMENDED_LABELS = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
]


def helm_binary() -> str:
    for candidate in (os.environ.get("HELM"), str(REPO / "target" / "ci-venv" / "bin" / "helm"), shutil.which("helm")):
        if candidate and Path(candidate).exists():
            return candidate
    raise unittest.SkipTest("helm not found: set HELM or run .ci/chart")


def helm_template(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [helm_binary(), "template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, *args],
        capture_output=True,
        text=True,
        check=False,
    )


class Rendered:
    """The manifests of one render, indexed by kind and name."""

    def __init__(self, *args: str):
        out = helm_template(*args)
        if out.returncode != 0:
            raise AssertionError(f"helm template {' '.join(args)} failed:\n{out.stderr}")
        self.docs = [d for d in yaml.safe_load_all(out.stdout) if d]
        self.by_key = {}
        for d in self.docs:
            key = (d["kind"], d["metadata"]["name"])
            assert key not in self.by_key, f"{key} rendered twice"
            self.by_key[key] = d

    def get(self, kind: str, name: str) -> dict:
        try:
            return self.by_key[(kind, name)]
        except KeyError:
            raise AssertionError(f"no {kind} {name}; rendered: {sorted(self.by_key)}") from None

    def names(self, kind: str) -> set:
        return {n for (k, n) in self.by_key if k == kind}

    def deployment(self, target: str) -> dict:
        return self.get("Deployment", f"{PREFIX}-{target}")

    def pod(self, target: str) -> dict:
        return self.deployment(target)["spec"]["template"]

    def container(self, target: str) -> dict:
        containers = self.pod(target)["spec"]["containers"]
        assert len(containers) == 1, containers
        return containers[0]

    def toml(self, target: str) -> dict:
        cm = self.get("ConfigMap", f"{PREFIX}-config")
        return tomllib.loads(cm["data"][f"{target}.toml"])

    def netpol(self, target: str) -> dict:
        return self.get("NetworkPolicy", f"{PREFIX}-{target}")["spec"]


def selector(component: str) -> dict:
    return {
        "app.kubernetes.io/name": "ehr",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": component,
    }


def mounted_files(pod_spec: dict, container: dict) -> dict:
    """File path -> (Secret name, key) of every Secret item the container mounts."""
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    files = {}
    for m in container["volumeMounts"]:
        v = volumes[m["name"]]
        sources = []
        if "projected" in v:
            sources = [s["secret"] for s in v["projected"]["sources"] if "secret" in s]
        elif "secret" in v:
            sources = [dict(v["secret"], name=v["secret"]["secretName"])]
        for s in sources:
            for item in s["items"]:
                files[f"{m['mountPath']}/{item['path']}"] = (s["name"], item["key"])
    return files


def file_keys(table: dict, path: str = "") -> dict:
    """Every `*_file` key of a parsed TOML, as dotted name -> value."""
    out = {}
    for k, v in table.items():
        name = f"{path}.{k}" if path else k
        if isinstance(v, dict):
            out.update(file_keys(v, name))
        elif k.endswith("_file"):
            out[name] = v
    return out


def egress_peers(rule: dict) -> list:
    return rule.get("to", [])


def rule_ports(rule: dict) -> set:
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}


class NonDefaultValues(unittest.TestCase):
    """values-nondefault.yaml: replicas, a disabled target, existing Secrets, lab CIDRs, OTLP."""

    @classmethod
    def setUpClass(cls):
        cls.r = Rendered("-f", str(NONDEFAULT))
        cls.values = yaml.safe_load(NONDEFAULT.read_text())
        cls.enabled = [t for t in ALL_TARGETS if t != "eprescription-adapter"]

    def test_one_deployment_per_enabled_target_and_nothing_for_the_disabled_one(self):
        self.assertEqual(self.r.names("Deployment"), {f"{PREFIX}-{t}" for t in self.enabled})
        for kind in ("Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
            self.assertNotIn(f"{PREFIX}-eprescription-adapter", self.r.names(kind), kind)
        cm = self.r.get("ConfigMap", f"{PREFIX}-config")
        self.assertEqual(set(cm["data"]), {f"{t}.toml" for t in self.enabled})
        self.assertNotIn("eprescription-adapter", self.r.toml("gateway")["gateway"]["upstreams"])

    def test_replicas_and_autoscalers(self):
        for t in ("patient-record", "orders"):
            self.assertEqual(self.r.deployment(t)["spec"]["replicas"], 3, t)
        self.assertEqual(self.r.deployment("data-export")["spec"]["replicas"], 2)
        # An HPA owns the replica count: the Deployment must not carry one.
        self.assertNotIn("replicas", self.r.deployment("gateway")["spec"])
        self.assertEqual(
            self.r.names("HorizontalPodAutoscaler"), {f"{PREFIX}-gateway", f"{PREFIX}-lab-interface"}
        )
        hpa = self.r.get("HorizontalPodAutoscaler", f"{PREFIX}-gateway")["spec"]
        self.assertEqual(hpa["scaleTargetRef"], {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{PREFIX}-gateway"})
        self.assertEqual((hpa["minReplicas"], hpa["maxReplicas"]), (3, 12))
        self.assertEqual(hpa["metrics"][0]["resource"]["target"]["averageUtilization"], 60)

    def test_every_container_runs_its_target_from_the_one_image(self):
        for t in self.enabled:
            c = self.r.container(t)
            self.assertEqual(c["args"], ["serve", "--target", t, "--config", "/etc/ehr/ehr.toml"])
            self.assertEqual(c["image"], "registry.example.jp/ehr/ehr:2026.11.1")
            self.assertEqual(c["imagePullPolicy"], "Always")
            self.assertEqual(self.r.pod(t)["spec"]["imagePullSecrets"], [{"name": "regcred"}])
        self.assertEqual(
            self.r.container("orders")["env"], [{"name": "EHR_DATABASE__STATEMENT_TIMEOUT_MS", "value": "20000"}]
        )

    def test_pods_are_locked_down(self):
        sa = self.r.get("ServiceAccount", PREFIX)
        self.assertIs(sa["automountServiceAccountToken"], False)
        for t in self.enabled:
            spec = self.r.pod(t)["spec"]
            self.assertEqual(spec["serviceAccountName"], PREFIX)
            self.assertIs(spec["automountServiceAccountToken"], False, t)
            psc = spec["securityContext"]
            self.assertIs(psc["runAsNonRoot"], True)
            self.assertEqual(psc["runAsUser"], 65532)
            self.assertEqual(psc["seccompProfile"], {"type": "RuntimeDefault"})
            csc = self.r.container(t)["securityContext"]
            self.assertIs(csc["readOnlyRootFilesystem"], True, t)
            self.assertIs(csc["allowPrivilegeEscalation"], False, t)
            self.assertEqual(csc["capabilities"], {"drop": ["ALL"]})
            self.assertEqual(csc["runAsUser"], 65532)
            volumes = {v["name"]: v for v in spec["volumes"]}
            tmp = [m for m in self.r.container(t)["volumeMounts"] if m["mountPath"] == "/tmp"]
            self.assertEqual(len(tmp), 1, t)
            self.assertIn("emptyDir", volumes[tmp[0]["name"]])

    def test_probes(self):
        for t in self.enabled:
            c = self.r.container(t)
            self.assertEqual(c["livenessProbe"]["httpGet"], {"path": "/livez", "port": "http"})
            self.assertEqual(c["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "http"})
            self.assertEqual(c["startupProbe"]["httpGet"]["path"], "/livez")
            self.assertIn({"name": "http", "containerPort": 8080, "protocol": "TCP"}, c["ports"])

    def test_every_file_key_of_the_toml_names_a_mounted_secret(self):
        expected = {
            "gateway": {
                "database.url_file": ("hospital-a-gateway-db", "DATABASE_URL"),
                "gateway.redis_url_file": (f"{PREFIX}-secrets", "redis-url"),
                "gateway.secret_key_file": ("hospital-a-kek", "kek"),
            },
        }
        for t in SERVICES:
            expected[t] = {
                "database.url_file": ("hospital-a-clinical-db", "DATABASE_URL"),
                "gateway.redis_url_file": (f"{PREFIX}-secrets", "redis-url"),
            }
        for t in self.enabled:
            files = mounted_files(self.r.pod(t)["spec"], self.r.container(t))
            keys = file_keys(self.r.toml(t))
            self.assertEqual(set(keys), set(expected[t]), t)
            for key, secret in expected[t].items():
                self.assertEqual(files.get(keys[key]), secret, f"{t}: {key} = {keys[key]}")
            # A service never sees the gateway's database or key-encryption key.
            if t != "gateway":
                self.assertNotIn(("hospital-a-gateway-db", "DATABASE_URL"), files.values())
                self.assertNotIn(("hospital-a-kek", "kek"), files.values())

    def test_the_chart_secret_holds_only_the_inline_values(self):
        secret = self.r.get("Secret", f"{PREFIX}-secrets")
        self.assertEqual(set(secret["data"]), {"redis-url"})
        self.assertEqual(base64.b64decode(secret["data"]["redis-url"]).decode(), self.values["redis"]["url"])
        self.assertNotIn(self.values["redis"]["url"], self.r.get("ConfigMap", f"{PREFIX}-config")["data"]["gateway.toml"])

    def test_toml_wires_the_processes_together(self):
        gw = self.r.toml("gateway")
        issuer = "https://ehr.hospital-a.example.jp"
        self.assertEqual(gw["listen"], "0.0.0.0:8080")
        self.assertEqual(gw["public_url"], issuer)
        self.assertEqual(gw["auth"], {"development_key": False})
        self.assertEqual(gw["gateway"]["issuer"], issuer)
        services = self.r.names("Service")
        upstreams = gw["gateway"]["upstreams"]
        self.assertEqual(set(upstreams), set(self.enabled) - {"gateway"})
        for t, url in upstreams.items():
            self.assertEqual(url, f"http://{PREFIX}-{t}:8080")
            self.assertIn(f"{PREFIX}-{t}", services)
        self.assertEqual(gw["gateway"]["trusted_proxies"], 1)
        self.assertEqual(gw["gateway"]["rate_limit"], {"login_burst": 60})
        for t in self.enabled:
            cfg = self.r.toml(t)
            self.assertEqual(cfg["gateway"]["redis_prefix"], "hospital-a", t)
            self.assertEqual(cfg["telemetry"]["otlp_endpoint"], "http://otel-collector.monitoring:4318")
            self.assertEqual(cfg["telemetry"]["sample_ratio"], 0.25)
            self.assertEqual(cfg["shutdown"], {"drain_secs": 20, "requests_timeout_secs": 10, "workers_timeout_secs": 20})
            self.assertEqual(cfg["log"], {"format": "json", "level": "info,tower_http=warn"})
            # Whole numbers must stay integers: the server's integer keys refuse 24.0.
            self.assertIs(type(cfg["database"]["max_connections"]), int)
            self.assertEqual(cfg["database"]["max_connections"], 24)
            self.assertEqual(cfg["export"]["max_import_bytes"], 536870912)
            metrics_port = int(cfg["telemetry"]["metrics_listen"].rsplit(":", 1)[1])
            self.assertIn({"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"}, self.r.container(t)["ports"])
            if t != "gateway":
                self.assertIs(cfg["auth"]["development_key"], False)
                self.assertEqual(cfg["auth"]["issuer"], issuer)
                self.assertEqual(cfg["auth"]["jwks_url"], f"http://{PREFIX}-gateway:8080/.well-known/jwks.json")
                self.assertNotIn("upstreams", cfg["gateway"])
                self.assertNotIn("secret_key_file", cfg["gateway"])
        self.assertEqual(self.r.toml("clins-adapter")["clins"]["max_attempts"], 12)
        self.assertEqual(self.r.toml("lab-interface")["lab"]["allowed_destinations"], ["lab-a.example.jp:2575"])

    def test_lab_interface_listens_for_mllp_behind_its_own_service(self):
        lab = self.r.toml("lab-interface")["lab"]
        self.assertEqual(lab["listen"], "0.0.0.0:2600")
        self.assertIn({"name": "mllp", "containerPort": 2600, "protocol": "TCP"}, self.r.container("lab-interface")["ports"])
        svc = self.r.get("Service", f"{PREFIX}-lab-interface-mllp")["spec"]
        self.assertEqual(svc["type"], "LoadBalancer")
        self.assertEqual(svc["externalTrafficPolicy"], "Local")
        self.assertEqual(svc["loadBalancerSourceRanges"], ["203.0.113.0/24"])
        self.assertEqual(svc["ports"], [{"name": "mllp", "port": 2600, "targetPort": "mllp", "protocol": "TCP"}])
        self.assertEqual(svc["selector"], selector("lab-interface"))
        # The HTTP Services stay inside the cluster.
        for t in self.enabled:
            self.assertEqual(self.r.get("Service", f"{PREFIX}-{t}")["spec"]["type"], "ClusterIP")
        files = [m for m in self.r.container("lab-interface")["volumeMounts"] if m["mountPath"] == lab["file_root"]]
        self.assertEqual(len(files), 1)
        volume = {v["name"]: v for v in self.r.pod("lab-interface")["spec"]["volumes"]}[files[0]["name"]]
        self.assertEqual(volume["persistentVolumeClaim"]["claimName"], "hospital-a-lab-files")

    def test_export_root_is_the_shared_volume(self):
        root = self.r.toml("data-export")["export"]["root"]
        mounts = [m for m in self.r.container("data-export")["volumeMounts"] if m["mountPath"] == root]
        self.assertEqual(len(mounts), 1)
        volume = {v["name"]: v for v in self.r.pod("data-export")["spec"]["volumes"]}[mounts[0]["name"]]
        claim = volume["persistentVolumeClaim"]["claimName"]
        pvc = self.r.get("PersistentVolumeClaim", claim)["spec"]
        self.assertEqual(pvc["accessModes"], ["ReadWriteMany"])
        self.assertEqual(pvc["storageClassName"], "efs")
        self.assertEqual(pvc["resources"]["requests"]["storage"], "50Gi")

    def test_grace_period_covers_drain_requests_and_workers(self):
        self.assertEqual(self.r.pod("gateway")["spec"]["terminationGracePeriodSeconds"], 120)
        for t in SERVICES:
            if t in self.enabled:
                grace = self.r.pod(t)["spec"]["terminationGracePeriodSeconds"]
                self.assertGreater(grace, 20 + 10 + 20, t)
                self.assertEqual(grace, 20 + 10 + 20 + 15, t)

    def test_network_policies(self):
        gw = self.r.netpol("gateway")
        self.assertEqual(gw["podSelector"]["matchLabels"], selector("gateway"))
        self.assertEqual(sorted(gw["policyTypes"]), ["Egress", "Ingress"])
        http = [r for r in gw["ingress"] if ("TCP", "http") in rule_ports(r)]
        self.assertEqual(len(http), 1)
        self.assertEqual(http[0]["from"], self.values["networkPolicy"]["gateway"]["from"])
        # The gateway reaches exactly the enabled services.
        to_services = [r for r in gw["egress"] if ("TCP", 8080) in rule_ports(r)]
        self.assertEqual(len(to_services), 1)
        reached = {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in to_services[0]["to"]}
        self.assertEqual(reached, set(self.enabled) - {"gateway"})
        monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}, "podSelector": {}}
        for t in self.enabled:
            np = self.r.netpol(t)
            self.assertEqual(np["podSelector"]["matchLabels"], selector(t))
            for rule in np["ingress"]:
                ports = rule_ports(rule)
                if ("TCP", "metrics") in ports:
                    self.assertEqual(rule["from"], [monitoring])
                elif t != "gateway" and ("TCP", "http") in ports:
                    self.assertEqual(rule["from"], [{"podSelector": {"matchLabels": selector("gateway")}}], t)
                elif t == "lab-interface" and ("TCP", "mllp") in ports:
                    self.assertEqual(rule["from"], [{"ipBlock": {"cidr": "203.0.113.0/24"}}])
                elif t != "gateway":
                    self.fail(f"{t}: unexpected ingress rule {rule}")
            http_rules = [r for r in np["ingress"] if ("TCP", "http") in rule_ports(r)]
            self.assertEqual(len(http_rules), 1, t)
            # No egress rule may leave its destination open.
            for rule in np["egress"]:
                self.assertTrue(egress_peers(rule), f"{t}: egress rule to anywhere: {rule}")
            egress = {frozenset(rule_ports(r)): r for r in np["egress"]}
            self.assertEqual(egress[frozenset({("TCP", 5432)})]["to"], [{"ipBlock": {"cidr": "10.10.0.0/24"}}])
            self.assertEqual(egress[frozenset({("TCP", 6379)})]["to"], [{"ipBlock": {"cidr": "10.10.1.0/24"}}])
            self.assertEqual(egress[frozenset({("TCP", 4318)})]["to"], self.values["networkPolicy"]["otlp"]["peers"])
            self.assertIn(frozenset({("UDP", 53), ("TCP", 53)}), egress)
            if t != "gateway":
                to_gateway = {"podSelector": {"matchLabels": selector("gateway")}}
                jwks = [r for r in np["egress"] if to_gateway in r["to"]]
                self.assertEqual(len(jwks), 1, t)
                self.assertEqual(jwks[0]["to"], [to_gateway], t)
                self.assertEqual(rule_ports(jwks[0]), {("TCP", 8080)}, t)
        lab_egress = [r for r in self.r.netpol("lab-interface")["egress"] if ("TCP", 2575) in rule_ports(r)]
        self.assertEqual([r["to"] for r in lab_egress], [[{"ipBlock": {"cidr": "203.0.113.0/24"}}]])
        clins_egress = [r for r in self.r.netpol("clins-adapter")["egress"] if {"ipBlock": {"cidr": "10.200.0.10/32"}} in r["to"]]
        self.assertEqual(len(clins_egress), 1)
        self.assertEqual(rule_ports(clins_egress[0]), {("TCP", 8080)})
        # Only lab-interface may talk to the labs, only clins-adapter to the CLINS service.
        for t in self.enabled:
            flat = str(self.r.netpol(t)["egress"])
            self.assertEqual("203.0.113.0/24" in flat, t == "lab-interface", t)
            self.assertEqual("10.200.0.10/32" in flat, t == "clins-adapter", t)

    def test_pod_disruption_budgets(self):
        self.assertEqual(self.r.names("PodDisruptionBudget"), {f"{PREFIX}-{t}" for t in self.enabled})
        for t in self.enabled:
            pdb = self.r.get("PodDisruptionBudget", f"{PREFIX}-{t}")["spec"]
            self.assertEqual(pdb["maxUnavailable"], 1)
            self.assertEqual(pdb["selector"]["matchLabels"], selector(t))
            pod_labels = self.r.pod(t)["metadata"]["labels"]
            self.assertTrue(pdb["selector"]["matchLabels"].items() <= pod_labels.items(), t)

    def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(self):
        job = self.r.get("Job", f"{PREFIX}-migrate")
        ann = job["metadata"]["annotations"]
        self.assertEqual(set(ann["helm.sh/hook"].split(",")), {"pre-install", "pre-upgrade"})
        self.assertEqual(set(ann["helm.sh/hook-delete-policy"].split(",")), {"before-hook-creation", "hook-succeeded"})
        spec = job["spec"]["template"]["spec"]
        self.assertEqual(spec["restartPolicy"], "Never")
        self.assertIs(spec["automountServiceAccountToken"], False)
        self.assertEqual(job["spec"]["backoffLimit"], 1)
        steps = spec["initContainers"] + spec["containers"]
        self.assertEqual([c["args"][:3] for c in steps], [["migrate", "--target", "gateway"], ["migrate", "--target", "patient-record"]])
        secrets = {}
        for c in steps:
            env = {e["name"]: e["value"] for e in c["env"]}
            secrets[c["name"]] = mounted_files(spec, c)[env["EHR_DATABASE__URL_FILE"]]
            self.assertIs(c["securityContext"]["readOnlyRootFilesystem"], True)
        self.assertEqual(
            secrets,
            {
                "migrate-gateway": ("hospital-a-gateway-db", "DATABASE_URL"),
                "migrate-clinical": ("hospital-a-clinical-db", "DATABASE_URL"),
            },
        )
        # The hook's ServiceAccount exists before the Job (the release's does not yet at install).
        sa = self.r.get("ServiceAccount", f"{PREFIX}-migrate")
        self.assertEqual(spec["serviceAccountName"], f"{PREFIX}-migrate")
        self.assertIn("pre-install", sa["metadata"]["annotations"]["helm.sh/hook"])
        self.assertLess(int(sa["metadata"]["annotations"]["helm.sh/hook-weight"]), int(ann["helm.sh/hook-weight"]))
        # The URLs come from existing Secrets: no hook Secret.
        self.assertNotIn(f"{PREFIX}-migrate", self.r.names("Secret"))

    def test_checksum_annotations_follow_config_and_secrets(self):
        def checksums(r: Rendered) -> dict:
            return {
                t: (
                    r.pod(t)["metadata"]["annotations"]["checksum/config"],
                    r.pod(t)["metadata"]["annotations"]["checksum/secrets"],
                )
                for t in self.enabled
            }

        base = checksums(self.r)
        for t, (config, secrets) in base.items():
            self.assertRegex(config, r"^[0-9a-f]{64}$")
            self.assertRegex(secrets, r"^[0-9a-f]{64}$")
        self.assertEqual(len({c for c, _ in base.values()}), len(self.enabled), "each target has its own config")
        orders = checksums(Rendered("-f", str(NONDEFAULT), "--set", "targets.orders.config.log.level=debug"))
        for t in self.enabled:
            self.assertEqual(orders[t][0] != base[t][0], t == "orders", t)
            self.assertEqual(orders[t][1], base[t][1], t)
        redis = checksums(Rendered("-f", str(NONDEFAULT), "--set", "redis.url=redis://:rotated@10.10.1.5:6379/0"))
        for t in self.enabled:
            self.assertEqual(redis[t][0], base[t][0], t)
            self.assertNotEqual(redis[t][1], base[t][1], t)
        kek = checksums(Rendered("-f", str(NONDEFAULT), "--set", "gatewaySecretKey.existingSecret=hospital-a-kek-2"))
        for t in self.enabled:
            self.assertEqual(kek[t][1] != base[t][1], t == "gateway", t)

    def test_metrics_ingress_and_labels(self):
        sm = self.r.get("ServiceMonitor", PREFIX)
        self.assertEqual(sm["metadata"]["labels"]["release"], "kube-prometheus")
        self.assertEqual(sm["spec"]["endpoints"][0]["port"], "metrics")
        for t in self.enabled:
            ports = {p["name"]: p for p in self.r.get("Service", f"{PREFIX}-{t}")["spec"]["ports"]}
            self.assertEqual(ports["metrics"]["targetPort"], "metrics")
            self.assertEqual(self.r.get("Service", f"{PREFIX}-{t}")["spec"]["selector"], selector(t))
        ing = self.r.get("Ingress", f"{PREFIX}-gateway")["spec"]
        backend = ing["rules"][0]["http"]["paths"][0]["backend"]["service"]
        self.assertEqual(backend, {"name": f"{PREFIX}-gateway", "port": {"name": "http"}})
        self.assertEqual(ing["tls"][0]["secretName"], "ehr-hospital-a-tls")
        for d in self.r.docs:
            labels = d["metadata"].get("labels", {})
            for label in RECOMMENDED_LABELS:
                self.assertIn(label, labels, f"{d['kind']}/{d['metadata']['name']}")
            self.assertEqual(labels["app.kubernetes.io/version"], "2026.11.1")


class DefaultValues(unittest.TestCase):
    """values.yaml as shipped."""

    @classmethod
    def setUpClass(cls):
        cls.r = Rendered()

    def test_every_target_is_deployed(self):
        self.assertEqual(self.r.names("Deployment"), {f"{PREFIX}-{t}" for t in ALL_TARGETS})
        self.assertEqual(
            self.r.names("HorizontalPodAutoscaler"), {f"{PREFIX}-{t}" for t in ("gateway", "patient-record", "orders")}
        )
        for t in ("gateway", "patient-record", "orders"):
            self.assertNotIn("replicas", self.r.deployment(t)["spec"], t)
        self.assertEqual(self.r.deployment("lab-interface")["spec"]["replicas"], 2)
        self.assertEqual(self.r.deployment("data-export")["spec"]["replicas"], 1)
        self.assertEqual(self.r.container("gateway")["image"], "ehr:0.1.0")

    def test_secrets_come_from_the_default_existing_secrets(self):
        self.assertNotIn(f"{PREFIX}-secrets", self.r.names("Secret"))
        self.assertNotIn(f"{PREFIX}-migrate", self.r.names("Secret"))
        gw = mounted_files(self.r.pod("gateway")["spec"], self.r.container("gateway"))
        self.assertEqual(
            set(gw.values()), {("ehr-gateway-database", "url"), ("ehr-redis", "url"), ("ehr-gateway-secret-key", "key")}
        )
        orders = mounted_files(self.r.pod("orders")["spec"], self.r.container("orders"))
        self.assertEqual(set(orders.values()), {("ehr-clinical-database", "url"), ("ehr-redis", "url")})

    def test_defaults_of_the_toml(self):
        gw = self.r.toml("gateway")
        self.assertNotIn("public_url", gw)
        self.assertEqual(gw["gateway"]["issuer"], "urn:ehr:gateway")
        self.assertEqual(self.r.toml("orders")["auth"]["issuer"], "urn:ehr:gateway")
        for t in ALL_TARGETS:
            cfg = self.r.toml(t)
            self.assertNotIn("otlp_endpoint", cfg["telemetry"], t)
            self.assertEqual(cfg["gateway"]["redis_prefix"], "ehr")
            self.assertEqual(cfg["shutdown"], {"drain_secs": 10, "requests_timeout_secs": 30, "workers_timeout_secs": 15})
        self.assertEqual(self.r.pod("gateway")["spec"]["terminationGracePeriodSeconds"], 10 + 30 + 15 + 30 + 15)
        self.assertEqual(self.r.pod("orders")["spec"]["terminationGracePeriodSeconds"], 10 + 30 + 15 + 15)
        self.assertEqual(self.r.toml("lab-interface")["lab"]["listen"], "0.0.0.0:2575")

    def test_default_network_policies(self):
        gw = self.r.netpol("gateway")
        http = [r for r in gw["ingress"] if ("TCP", "http") in rule_ports(r)]
        self.assertEqual(http, [{"ports": [{"protocol": "TCP", "port": "http"}]}], "gateway open to anyone")
        lab = self.r.netpol("lab-interface")
        self.assertFalse([r for r in lab["ingress"] if ("TCP", "mllp") in rule_ports(r)], "no lab CIDRs: no MLLP rule")
        for t in ALL_TARGETS:
            np = self.r.netpol(t)
            self.assertFalse([r for r in np["egress"] if ("TCP", 4318) in rule_ports(r)], t)
            for rule in np["egress"]:
                self.assertTrue(egress_peers(rule), f"{t}: egress rule to anywhere: {rule}")
        mllp = self.r.get("Service", f"{PREFIX}-lab-interface-mllp")["spec"]
        self.assertEqual(mllp["type"], "ClusterIP")
        self.assertNotIn("externalTrafficPolicy", mllp)

    def test_optional_resources_are_off(self):
        for kind in ("ServiceMonitor", "Ingress"):
            self.assertFalse(self.r.names(kind), kind)
        pvc = self.r.get("PersistentVolumeClaim", f"{PREFIX}-exports")["spec"]
        self.assertEqual(pvc["accessModes"], ["ReadWriteMany"])
        self.assertIn("Job", {k for (k, _) in self.r.by_key})


class InlineSecrets(unittest.TestCase):
    """URLs given as values: the chart's Secret, and a hook copy for the migration Job."""

    def test_inline_database_urls_reach_the_migration_job_through_a_hook_secret(self):
        gateway_url = "postgres://gw:pw@10.0.0.5/ehr_gateway"
        r = Rendered("--set", f"database.gateway.url={gateway_url}")
        hook = r.get("Secret", f"{PREFIX}-migrate")
        self.assertIn("pre-install", hook["metadata"]["annotations"]["helm.sh/hook"])
        self.assertEqual(base64.b64decode(hook["data"]["gateway-database-url"]).decode(), gateway_url)
        self.assertNotIn("clinical-database-url", hook["data"])
        job = r.get("Job", f"{PREFIX}-migrate")
        spec = job["spec"]["template"]["spec"]
        gw = spec["initContainers"][0]
        path = {e["name"]: e["value"] for e in gw["env"]}["EHR_DATABASE__URL_FILE"]
        self.assertEqual(mounted_files(spec, gw)[path], (f"{PREFIX}-migrate", "gateway-database-url"))
        self.assertEqual(int(hook["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0, True)
        gw_pod = mounted_files(r.pod("gateway")["spec"], r.container("gateway"))
        self.assertEqual(gw_pod["/run/secrets/ehr/database-url"], (f"{PREFIX}-secrets", "gateway-database-url"))


class RefusedValues(unittest.TestCase):
    """Values that cannot work fail the render with a message."""

    def assertRefused(self, message: str, *args: str):
        out = helm_template(*args)
        self.assertNotEqual(out.returncode, 0, f"{args} rendered")
        self.assertIn(message, out.stderr)

    def test_schema(self):
        self.assertRefused("targets: Additional property foo is not allowed", "--set", "targets.foo.enabled=true")
        self.assertRefused("networkPolicy.labs.cidrs.0", "--set", "networkPolicy.labs.cidrs[0]=10.0.0.1")
        self.assertRefused("gatewaySecretKey.value", "--set", "gatewaySecretKey.value=short")
        self.assertRefused("config: Additional property lgo", "--set", "config.lgo.level=debug")
        self.assertRefused("image.pullPolicy", "--set", "image.pullPolicy=Sometimes")
        self.assertRefused("redis.url", "--set", "redis.url=http://10.0.0.6:6379")
        self.assertRefused("database.clinical.url", "--set", "database.clinical.url=mysql://u:p@10.0.0.5/ehr")

    def test_checks_of_the_templates(self):
        self.assertRefused(
            "more than one replica needs persistence.accessModes",
            "--set", "targets.data-export.replicas=2",
            "--set", "targets.data-export.persistence.accessModes[0]=ReadWriteOnce",
        )
        self.assertRefused(
            "more than one replica needs persistence.enabled",
            "--set", "targets.data-export.replicas=2",
            "--set", "targets.data-export.persistence.enabled=false",
        )
        self.assertRefused("must exceed 85 s", "--set", "targets.gateway.terminationGracePeriodSeconds=55")
        self.assertRefused("must exceed 55 s", "--set", "targets.orders.terminationGracePeriodSeconds=20")
        self.assertRefused("set shutdown.drainSecs instead", "--set", "config.shutdown.drain_secs=3")
        self.assertRefused("set redis.prefix instead", "--set", "targets.orders.config.gateway.redis_prefix=x")
        self.assertRefused("the gateway requires the patient-record service", "--set", "targets.patient-record.enabled=false")
        self.assertRefused("enable the gateway", "--set", "targets.gateway.enabled=false")
        self.assertRefused("maxReplicas (1) is below minReplicas (2)", "--set", "targets.gateway.autoscaling.maxReplicas=1")
        # The schema already refuses a key of another length; the template checks it again for
        # --skip-schema-validation.
        self.assertRefused(
            "base64 of 32 random bytes",
            "--skip-schema-validation",
            "--set", "gatewaySecretKey.value=" + base64.b64encode(b"x" * 31).decode(),
        )
        self.assertRefused("database.gateway: set database.gateway.url or database.gateway.existingSecret",
                           "--set", "database.gateway.existingSecret=")
        self.assertRefused("networkPolicy.postgresql: set cidrs or peers", "--set-json", "networkPolicy.postgresql.cidrs=[]")


@unittest.skipUnless(os.environ.get("EHR_BIN"), "EHR_BIN (a built ehr binary) not set")
class ServerLoadsTheRenderedConfig(unittest.TestCase):
    """Each rendered TOML passes the server's own loader (unknown keys and types are refused)."""

    def test_every_target_config_loads(self):
        for args in ((), ("-f", str(NONDEFAULT))):
            r = Rendered(*args)
            cm = r.get("ConfigMap", f"{PREFIX}-config")
            for key, text in cm["data"].items():
                with tempfile.TemporaryDirectory() as d:
                    path = Path(d) / key
                    path.write_text(text)
                    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
                    out = subprocess.run(
                        [os.environ["EHR_BIN"], "--config", str(path), "dev-token", "--tenant", "t"],
                        capture_output=True, text=True, env=env, check=False,
                    )
                self.assertNotEqual(out.returncode, 0)
                self.assertNotIn("invalid configuration", out.stderr, f"{key} ({args}): {out.stderr}")
                self.assertIn("no development signing key", out.stderr, f"{key} ({args}): {out.stderr}")


if __name__ == "__main__":
    unittest.main()
