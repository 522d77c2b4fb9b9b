#!/usr/bin/env python3
"""Checks the Helm chart deploy/k8s/strait with the real Helm engine and kubernetes-validate.

- `helm lint --strict` and a render for each value set below, in both modes;
- every rendered manifest and every CRD passes `kubernetes-validate --strict` against the
  Kubernetes version below;
- values that cannot work are refused at render time, with a message that names the value;
- every example resource of deploy/examples, as a custom resource, passes its CRD's schema;
- what the restricted Pod Security profile and least privilege require of every workload.

Exit status 0 when everything holds; otherwise each failure is printed and the status is 1.
"""
import copy
import glob
import json
import os
import subprocess
import sys
import tempfile

import jsonschema
import yaml
import helm_python as helm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from render_chart import CHART, render  # noqa: E402

KUBERNETES_VERSION = "1.34.0"
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

ZONE = {
    "mode": "zone",
    "zone": {
        "name": "zone-1",
        "globalAddress": "https://global.example:7685",
        "token": "a.zone.token",
        "globalCa": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    },
    "gateway": {"proxyToken": "a.proxy.token", "advertiseIngressAddress": "203.0.113.10:10001"},
}


def merged(base, change):
    out = copy.deepcopy(base)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


VALUE_SETS = {
    "global (defaults)": {"mode": "global"},
    "global behind a load balancer": {
        "mode": "global",
        "global": {"service": {"type": "LoadBalancer", "annotations": {"example.com/lb": "internal"}}, "tlsNames": ["global.example"]},
        "imagePullSecrets": [{"name": "registry"}],
        "logFormat": "text",
    },
    "zone with a load balancer": ZONE,
    "zone with a node port": merged(ZONE, {"gateway": {"service": {"type": "NodePort", "nodePort": 31001}, "advertiseIngressAddress": "192.0.2.4:31001"}}),
    "zone with its own secrets": merged(ZONE, {"zone": {"token": "", "globalCa": "", "existingSecret": "my-zone", "dpsCa": {"existingSecret": "my-ca", "caCert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}}, "gateway": {"proxyToken": "", "existingSecret": "my-gw"}}),
    "zone without a gateway or PDB": merged(ZONE, {"gateway": {"enabled": False, "advertiseIngressAddress": ""}, "zone": {"podDisruptionBudget": {"enabled": False}}}),
    "zone with three replicas and no injection": merged(ZONE, {"zone": {"replicas": 3, "injection": {"enabled": False}}}),
}

# Values that cannot work, and a word the refusal must contain.
REFUSED = {
    "zone without a name": (merged(ZONE, {"zone": {"name": ""}}), "zone.name"),
    "zone without its global": (merged(ZONE, {"zone": {"globalAddress": ""}}), "zone.globalAddress"),
    "zone without its token": (merged(ZONE, {"zone": {"token": ""}}), "zone.token"),
    "gateway without its address": (merged(ZONE, {"gateway": {"advertiseIngressAddress": ""}}), "advertiseIngressAddress"),
    "gateway without its token": (merged(ZONE, {"gateway": {"proxyToken": ""}}), "gateway.proxyToken"),
    "a zone name that is no DNS label": (merged(ZONE, {"zone": {"name": "Zone_1"}}), "name"),
    "an unknown injection failure policy": (merged(ZONE, {"zone": {"injection": {"failurePolicy": "Retry"}}}), "failurePolicy"),
    "its own DPS CA without its certificate": (merged(ZONE, {"zone": {"dpsCa": {"existingSecret": "my-ca"}}}), "zone.dpsCa.caCert"),
    "an unknown mode": ({"mode": "both"}, "mode"),
    "a node port out of range": (merged(ZONE, {"gateway": {"service": {"type": "NodePort", "nodePort": 80}}}), "nodePort"),
}

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}")


def validate_files(paths, what):
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--kubernetes-version", KUBERNETES_VERSION, *paths],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        fail(f"{what}: kubernetes-validate --strict:\n{result.stdout}{result.stderr}")
    return result


def check_workloads(name, documents):
    """Restricted pod security, resources and probes on every container; no token mounted."""
    for doc in documents:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = doc["spec"]["template"]["spec"]
        where = f"{name}: {doc['kind']} {doc['metadata']['name']}"
        security = pod.get("securityContext", {})
        if not security.get("runAsNonRoot") or security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            fail(f"{where}: pod is not restricted ({security})")
        # Only the zone control plane talks to the Kubernetes API (Pods, Services, TokenReview,
        # its Lease); no other workload mounts a token.
        uses_api = doc["metadata"]["name"] == "strait-zone"
        if pod.get("automountServiceAccountToken") is not uses_api:
            fail(f"{where}: automountServiceAccountToken must be {uses_api} (only the zone uses the Kubernetes API)")
        for container in pod["containers"]:
            c = container.get("securityContext", {})
            if c.get("allowPrivilegeEscalation") is not False or c.get("capabilities", {}).get("drop") != ["ALL"] or not c.get("readOnlyRootFilesystem"):
                fail(f"{where}: container {container['name']} is not restricted ({c})")
            for field in ("resources", "readinessProbe", "livenessProbe"):
                if field not in container:
                    fail(f"{where}: container {container['name']} has no {field}")
            if not container.get("resources", {}).get("limits"):
                fail(f"{where}: container {container['name']} has no limits")


def check_webhook(name, documents):
    """The injection webhook verifies the zone with the CA the zone's DPS certificate chains to."""
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    hooks = [d for d in documents if d["kind"] == "MutatingWebhookConfiguration"]
    ca = by_kind.get(("Secret", "strait-zone-dps-ca"))
    for webhook in [w for hook in hooks for w in hook["webhooks"]]:
        bundle = webhook["clientConfig"]["caBundle"]
        if ca is not None and bundle != ca["data"]["ca.crt"]:
            fail(f"{name}: the caBundle of webhook {webhook['name']} is not the DPS CA of Secret strait-zone-dps-ca")
        service = webhook["clientConfig"]["service"]
        ports = by_kind[("Service", service["name"])]["spec"]["ports"]
        if not any(p["port"] == service["port"] for p in ports):
            fail(f"{name}: webhook {webhook['name']} calls port {service['port']} of Service {service['name']}, which has none")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for name, values in VALUE_SETS.items():
            report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES_VERSION}")
            problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
            if problems:
                fail(f"{name}: helm lint --strict: {problems}")
            try:
                documents = render(values)
            except Exception as error:
                fail(f"{name}: render: {error}")
                continue
            kinds = sorted(d["kind"] for d in documents)
            print(f"ok   {name}: {len(documents)} manifests ({', '.join(kinds)})")
            path = os.path.join(tmp, name.replace(" ", "-").replace("(", "").replace(")", "") + ".yaml")
            with open(path, "w") as out:
                yaml.safe_dump_all(documents, out)
            validate_files([path], name)
            check_workloads(name, documents)
            check_webhook(name, documents)
            # Only the zone control plane writes Strait's objects: an admission policy refuses the rest.
            policy = [d["kind"] for d in documents if d["kind"].startswith("ValidatingAdmissionPolicy")]
            if sorted(policy) != ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]:
                fail(f"{name}: the read-only admission policy and its binding are not rendered ({policy})")
            expected = {"global": {"StatefulSet", "Service", "Secret", "ServiceAccount"}, "zone": {"Deployment", "Service", "ServiceAccount"}}[values["mode"]]
            if not expected <= set(kinds):
                fail(f"{name}: expected {sorted(expected)} among {kinds}")
        for name, (values, word) in REFUSED.items():
            try:
                render(values)
                fail(f"{name}: rendered, but should be refused")
            except Exception as error:
                if word not in str(error):
                    fail(f"{name}: refused without naming {word}: {error}")
                else:
                    print(f"ok   {name}: refused ({str(error).splitlines()[0][:120]})")

    crd_files = sorted(glob.glob(os.path.join(CHART, "crds", "*.yaml")))
    if not crd_files:
        fail("the chart has no CRDs")
    validate_files(crd_files, "CRDs")
    schemas = {}
    policies = []
    for path in crd_files:
        for doc in yaml.safe_load_all(open(path)):
            if doc["kind"] == "CustomResourceDefinition":
                schemas[doc["spec"]["names"]["kind"]] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            else:
                policies.append(doc["kind"])
    print(f"ok   {len(schemas)} CRDs")
    if policies:
        fail(f"the chart's crds/ hold {policies} besides the CRDs (Helm takes only CRDs there)")

    examples = 0
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy", "examples", "*.yaml"))):
        for doc in yaml.safe_load_all(open(path)):
            if not doc or doc.get("type") not in schemas:
                continue
            custom = {"apiVersion": "strait.io/v1alpha1", "kind": doc["type"], "metadata": {"name": doc["name"]}}
            if "spec" in doc:
                custom["spec"] = doc["spec"]
            try:
                jsonschema.validate(custom, schemas[doc["type"]])
                examples += 1
            except jsonschema.ValidationError as error:
                fail(f"{os.path.basename(path)} {doc['type']}/{doc['name']}: its CRD refuses it: {error.message}")
    print(f"ok   {examples} example resources pass their CRDs")
    if examples < 5:
        fail("fewer than 5 example resources were checked against the CRDs")
    bad = {"apiVersion": "strait.io/v1alpha1", "kind": "MeshTimeout", "metadata": {"name": "t"},
           "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "5 parsecs"}}]}}
    try:
        jsonschema.validate(bad, schemas["MeshTimeout"])
        fail("a MeshTimeout with idleTimeout '5 parsecs' passes its CRD")
    except jsonschema.ValidationError:
        print("ok   a bad duration is refused by the CRD's schema")

    if failures:
        print(f"\n{len(failures)} failure(s)")
        sys.exit(1)
    print("\nthe chart and the CRDs hold")


if __name__ == "__main__":
    main()
