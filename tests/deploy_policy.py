"""Checks rendered Kubernetes manifests (multi-document YAML files) against
the rules the deploy files promise (issue 17) beyond the API schemas:

- every container (init containers too) has CPU and memory requests and a
  memory limit;
- every container has startup, liveness and readiness probes, each an
  httpGet on a *named* port that the container declares; for the broker,
  readiness /readyz and liveness /healthz on the port named "ops";
- the securityContext: runAsNonRoot (pod or container),
  readOnlyRootFilesystem, allowPrivilegeEscalation false, capabilities
  drop ALL, seccompProfile RuntimeDefault (pod or container);
- images pinned (a tag, not :latest) with imagePullPolicy IfNotPresent;
- Secret volumes with defaultMode 0440 or 0400;
- each StatefulSet has a headless Service named by its serviceName, a
  PodDisruptionBudget and a NetworkPolicy selecting its pods.

Usage: python3 deploy_policy.py RENDERED.yaml...  (exit 1 with one line per
problem). Needs PyYAML (in the deploy-check venv).
"""

import sys

import yaml

WORKLOADS = {"StatefulSet", "Deployment", "DaemonSet", "Job"}


def selects(selector, labels):
    match = (selector or {}).get("matchLabels", selector or {})
    return all(labels.get(k) == v for k, v in match.items())


def check_container(where, c, pod_sc, problems):
    bad = lambda msg: problems.append(f"{where} container {c.get('name')}: {msg}")
    res = c.get("resources") or {}
    req, lim = res.get("requests") or {}, res.get("limits") or {}
    for key in ("cpu", "memory"):
        if key not in req:
            bad(f"no {key} request")
    if "memory" not in lim:
        bad("no memory limit")
    image = c.get("image", "")
    if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
        bad(f"image {image!r} is not pinned to a tag")
    if c.get("imagePullPolicy") != "IfNotPresent":
        bad("imagePullPolicy is not IfNotPresent")
    port_names = {p.get("name") for p in c.get("ports") or [] if p.get("name")}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        p = c.get(probe)
        if not p:
            bad(f"no {probe}")
            continue
        http = p.get("httpGet")
        if not http:
            bad(f"{probe} is not an httpGet")
            continue
        port = http.get("port")
        if not isinstance(port, str) or port not in port_names:
            bad(f"{probe} port {port!r} is not a named port of the container")
    if c.get("name") == "caseshare":
        want = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
        for probe, path in want.items():
            http = (c.get(probe) or {}).get("httpGet") or {}
            if http.get("path") != path or http.get("port") != "ops":
                bad(f"{probe} must be {path} on the port named ops")
    sc = c.get("securityContext") or {}
    if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
        bad("runAsNonRoot is not true")
    if sc.get("readOnlyRootFilesystem") is not True:
        bad("readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        bad("allowPrivilegeEscalation is not false")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        bad("capabilities do not drop ALL")
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp != "RuntimeDefault":
        bad("seccompProfile is not RuntimeDefault")


def check(docs):
    problems = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    for w in (d for k in WORKLOADS for d in by_kind.get(k, [])):
        where = f"{w['kind']}/{w['metadata']['name']}"
        spec = w["spec"]["template"]["spec"]
        pod_sc = spec.get("securityContext") or {}
        containers = (spec.get("initContainers") or []) + spec.get("containers", [])
        for c in containers:
            check_container(where, c, pod_sc, problems)
        for v in spec.get("volumes") or []:
            if "secret" in v and v["secret"].get("defaultMode") not in (0o440, 0o400):
                problems.append(f"{where} volume {v['name']}: Secret defaultMode is not 0440 or 0400")
        labels = w["spec"]["template"]["metadata"].get("labels") or {}
        if w["kind"] == "StatefulSet":
            svc = next((s for s in by_kind.get("Service", [])
                        if s["metadata"]["name"] == w["spec"].get("serviceName")), None)
            if svc is None or svc["spec"].get("clusterIP") != "None":
                problems.append(f"{where}: no headless Service named {w['spec'].get('serviceName')!r}")
        if not any(selects(p["spec"].get("selector"), labels)
                   for p in by_kind.get("PodDisruptionBudget", [])):
            problems.append(f"{where}: no PodDisruptionBudget selects its pods")
        if not any(selects(n["spec"].get("podSelector"), labels)
                   for n in by_kind.get("NetworkPolicy", [])):
            problems.append(f"{where}: no NetworkPolicy selects its pods")
    if not any(by_kind.get(k) for k in WORKLOADS):
        problems.append("no workload found")
    return problems


def main(paths):
    failed = False
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        problems = check(docs)
        for p in problems:
            print(f"{path}: {p}")
        failed |= bool(problems)
        if not problems:
            print(f"{path}: {len(docs)} objects pass the deploy policy")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
