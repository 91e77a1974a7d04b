#!/usr/bin/env python3
"""Checks the output of `helm template` for the orch-operator chart.

usage: check_rendered.py RENDERED.yaml [--expect-namespaced-rbac] [--expect KIND ...]
                         [--expect-slurm-secret NAME]

Fails (exit 1, one line per problem) on:
- a `*` anywhere in an RBAC rule (apiGroups, resources, verbs, resourceNames, nonResourceURLs);
- an RBAC verb outside the allow-list below (least privilege: a new verb must be added here,
  on purpose, with the controller that uses it);
- a container without the restricted securityContext, a pod without RuntimeDefault seccomp,
  host namespaces, hostPath volumes, missing probes, missing memory limit;
- a Secret rendered by the chart, or an env var that carries a secret by value;
- a NetworkPolicy that allows all egress.
"""
import sys

import yaml

# (apiGroup, resource) -> verbs the controllers may have. Nothing else is allowed.
ALLOWED = {
    ("orch.dev", "orchjobs"): {"get", "list", "watch", "patch"},
    ("orch.dev", "taskgroups"): {"get", "list", "watch", "create", "patch"},
    ("orch.dev", "ratelimits"): {"get", "list", "watch"},
    ("orch.dev", "orchpolicies"): {"get", "list", "watch"},
    ("", "secrets"): {"get"},
    ("orch.dev", "orchjobs/status"): {"patch"},
    ("orch.dev", "ratelimits/status"): {"patch"},
    ("orch.dev", "taskgroups/status"): {"patch"},
    ("orch.dev", "orchjobs/finalizers"): {"update"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("batch", "jobs"): {"create", "list", "patch", "delete"},
    ("", "pods"): {"list", "delete"},
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
}
# Cluster-scoped resources: granted by a ClusterRole whatever the mode.
CLUSTER_SCOPED = {"orchpolicies"}
# Resources that may only be granted in a namespaced Role.
NAMESPACED_ONLY = {("coordination.k8s.io", "leases"), ("", "secrets")}
# Resources that may only be granted by name (resourceNames).
BY_NAME_ONLY = {("", "secrets")}
SECRETISH = ("TOKEN", "SECRET", "PASSWORD", "JWT", "KEY", "CREDENTIAL")
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod", "ReplicaSet"}
NAMESPACED_KINDS = {"Deployment", "ServiceAccount", "Service", "Role", "RoleBinding", "PodDisruptionBudget",
                    "NetworkPolicy", "ServiceMonitor", "ConfigMap"}

problems = []


def bad(where, msg):
    problems.append(f"{where}: {msg}")


def check_rbac(doc, where):
    kind = doc["kind"]
    for i, rule in enumerate(doc.get("rules") or []):
        w = f"{where} rules[{i}]"
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            for v in rule.get(field) or []:
                if "*" in str(v):
                    bad(w, f"wildcard in {field}: {v!r}")
        if rule.get("nonResourceURLs"):
            bad(w, "nonResourceURLs are not needed")
        if not rule.get("verbs"):
            bad(w, "no verbs")
        for g in rule.get("apiGroups") or []:
            for r in rule.get("resources") or []:
                allowed = ALLOWED.get((g, r))
                if allowed is None:
                    bad(w, f"resource {g or 'core'}/{r} is not on the allow-list")
                    continue
                extra = set(rule.get("verbs") or []) - allowed
                if extra:
                    bad(w, f"{g}/{r}: verbs {sorted(extra)} are not used by the controllers")
                if kind == "ClusterRole" and (g, r) in NAMESPACED_ONLY:
                    bad(w, f"{g}/{r} must be granted in a namespaced Role, not cluster-wide")
                if (g, r) in BY_NAME_ONLY and not rule.get("resourceNames"):
                    bad(w, f"{g or 'core'}/{r} must be granted by name (resourceNames)")


def check_container(c, where):
    w = f"{where} container {c.get('name')}"
    sc = c.get("securityContext") or {}
    want = {"runAsNonRoot": True, "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False}
    for k, v in want.items():
        if sc.get(k) is not v:
            bad(w, f"securityContext.{k} must be {v}, got {sc.get(k)!r}")
    if sc.get("privileged"):
        bad(w, "privileged")
    if (sc.get("runAsUser") or 1) == 0:
        bad(w, "runAsUser 0")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        bad(w, "capabilities.drop must contain ALL")
    if caps.get("add"):
        bad(w, f"capabilities.add {caps['add']}")
    if (sc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        bad(w, "seccompProfile.type must be RuntimeDefault")
    image = str(c.get("image", ""))
    if not image or image.endswith(":latest") or (":" not in image.rsplit("/", 1)[-1] and "@" not in image):
        bad(w, f"image {image!r} must be pinned (tag or digest, not latest)")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        p = c.get(probe)
        if not p:
            bad(w, f"no {probe}")
        elif (p.get("httpGet") or {}).get("path") != path:
            bad(w, f"{probe} must GET {path}")
    if not ((c.get("resources") or {}).get("limits") or {}).get("memory"):
        bad(w, "no memory limit")
    for e in c.get("env") or []:
        name = e.get("name", "")
        if "value" in e and any(s in name.upper() for s in SECRETISH) and not name.upper().endswith("_FILE"):
            bad(w, f"env {name} carries a secret by value; use secretKeyRef or a mounted file")
        vf = e.get("valueFrom") or {}
        if "secretKeyRef" in vf and not vf["secretKeyRef"].get("name"):
            bad(w, f"env {name}: secretKeyRef without a name")
    for a in c.get("args") or []:
        if any(s.lower() in str(a).lower() for s in ("token=", "password=", "secret=")) \
                and not str(a).startswith("--slurm-token-file="):
            bad(w, f"argument {a!r} looks like an inline secret")


def check_pod(doc, where):
    spec = doc["spec"]["template"]["spec"] if doc["kind"] != "Pod" else doc["spec"]
    for k in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(k):
            bad(where, f"{k} is set")
    psc = spec.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        bad(where, "pod securityContext.runAsNonRoot must be true")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        bad(where, "pod securityContext.seccompProfile.type must be RuntimeDefault")
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            bad(where, f"hostPath volume {v.get('name')}")
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    if not containers:
        bad(where, "no containers")
    for c in containers:
        check_container(c, where)
    mounts = {m["mountPath"] for c in containers for m in c.get("volumeMounts") or []}
    if "/tmp" not in mounts:
        bad(where, "no writable /tmp (emptyDir) with a read-only root filesystem")
    return spec


def main(argv):
    path = argv[1]
    expect = set()
    namespaced = False
    slurm_secret = None
    i = 2
    while i < len(argv):
        if argv[i] == "--expect":
            expect.add(argv[i + 1]); i += 2
        elif argv[i] == "--expect-namespaced-rbac":
            namespaced = True; i += 1
        elif argv[i] == "--expect-slurm-secret":
            slurm_secret = argv[i + 1]; i += 2
        else:
            sys.exit(f"unknown argument {argv[i]}")
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
        where = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in NAMESPACED_KINDS and not d["metadata"].get("namespace"):
            bad(where, "no metadata.namespace")
        if "app.kubernetes.io/name" not in (d["metadata"].get("labels") or {}):
            bad(where, "no app.kubernetes.io/name label")
        if d["kind"] == "Secret":
            bad(where, "the chart must not render Secrets (values would hold the secret)")
        if d["kind"] in ("Role", "ClusterRole"):
            check_rbac(d, where)
        if d["kind"] in POD_KINDS:
            spec = check_pod(d, where)
            if slurm_secret:
                vols = [v for v in spec.get("volumes") or []
                        if (v.get("secret") or {}).get("secretName") == slurm_secret]
                if not vols:
                    bad(where, f"Secret {slurm_secret} is not mounted as a volume")
                for v in vols:
                    for c in spec["containers"]:
                        for m in c.get("volumeMounts") or []:
                            if m["name"] == v["name"]:
                                if m.get("subPath"):
                                    bad(where, "token mounted with subPath: rotation would not show")
                                if not m.get("readOnly"):
                                    bad(where, "token mount must be readOnly")
                args = [a for c in spec["containers"] for a in c.get("args") or []]
                if "--slurm-token-file=/var/run/orch/slurm-jwt" not in args:
                    bad(where, "no --slurm-token-file=/var/run/orch/slurm-jwt")
        if d["kind"] == "NetworkPolicy":
            spec = d["spec"]
            if "Egress" not in (spec.get("policyTypes") or []):
                bad(where, "policyTypes must include Egress")
            for j, rule in enumerate(spec.get("egress") or []):
                if not rule.get("ports"):
                    bad(where, f"egress[{j}] allows every port")
    for k in ("Deployment", "ServiceAccount"):
        if k not in kinds:
            bad("chart", f"no {k} rendered")
    for k in expect:
        if k not in kinds:
            bad("chart", f"expected a {k}")
    if namespaced:
        # Only cluster-scoped resources (OrchPolicy) may be granted cluster-wide then.
        for d in kinds.get("ClusterRole", []):
            for r in d.get("rules") or []:
                if set(r.get("resources") or []) - CLUSTER_SCOPED:
                    bad("chart", f"watchNamespaces is set but ClusterRole {d['metadata']['name']} "
                                 f"grants {r.get('resources')} cluster-wide")
        # Every namespace the operator is told to watch has the controllers' Role, bound to
        # the operator's service account, and no other namespace does.
        args = [a for d in kinds.get("Deployment", [])
                for c in d["spec"]["template"]["spec"]["containers"] for a in c.get("args") or []]
        flags = [a.split("=", 1)[1] for a in args if a.startswith("--watch-namespace=")]
        watched = set(flags[0].split(",")) if flags else set()
        if not watched:
            bad("chart", "namespaced RBAC but no --watch-namespace")
        controller_roles = {(d["metadata"]["namespace"], d["metadata"]["name"])
                            for d in kinds.get("Role", [])
                            if any("orchjobs" in (r.get("resources") or []) for r in d.get("rules") or [])}
        bound = {d["metadata"]["namespace"] for d in kinds.get("RoleBinding", [])
                 if (d["metadata"]["namespace"], d["roleRef"]["name"]) in controller_roles}
        if bound != watched:
            bad("chart", f"controller Roles bound in {sorted(bound)}, operator watches {sorted(watched)}")
    else:
        if "ClusterRole" not in kinds:
            bad("chart", "no ClusterRole rendered (watchNamespaces empty)")
    leases = [r for d in kinds.get("Role", []) for r in d.get("rules") or []
              if "leases" in (r.get("resources") or [])]
    if not leases:
        bad("chart", "no Role for leader election (leases)")
    for r in leases:
        if set(r["verbs"]) & {"get", "update"} and not r.get("resourceNames"):
            bad("chart", "lease get/update must be limited by resourceNames")
    if problems:
        for p in problems:
            print(f"FAIL {path}: {p}")
        return 1
    print(f"ok   {path}: {len(docs)} objects ({', '.join(sorted(kinds))})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
