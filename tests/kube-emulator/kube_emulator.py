#!/usr/bin/env python3
"""A test-only Kubernetes API server emulator (Python standard library only).

No real API server can run on the project's test machines (tests/README.md), so the operator's
end-to-end tests talk to this process instead. It serves enough of the Kubernetes REST API for
the real `kubectl` and kube-rs: discovery and OpenAPI v3 stubs, CRUD/LIST/WATCH for a few
built-in kinds and for any applied CRD, resourceVersion conflicts, the status subresource,
generation, finalizers, owner-reference garbage collection, structural-schema validation with
defaults and pruning, server-side Table output, and (with --run-jobs) a tiny job controller that
runs batch/v1 Jobs as local processes. README.md beside this file lists what is approximated.

Start:  python3 kube_emulator.py --port 0 --kubeconfig /tmp/kubeconfig [--run-jobs]
It prints one line `READY <port>` on stdout once it accepts connections.
"""

import argparse
import base64
import bisect
import copy
import ctypes
import hashlib
import http.client
import json
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import builtin_schemas

SERVER_VERSION = {"major": "1", "minor": "36", "gitVersion": "v1.36.0-emulator",
                  "gitCommit": "emulator", "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                  "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}
GENERATION_KINDS = ("pods", "jobs", "customresourcedefinitions", "deployments", "replicasets",
                    "poddisruptionbudgets", "networkpolicies")    # built-ins whose objects have a generation
ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Metadata fields a client may send; anything else under metadata is unknown (pruned or refused).
META_FIELDS = {"name", "generateName", "namespace", "uid", "resourceVersion", "generation",
               "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
               "annotations", "ownerReferences", "finalizers", "managedFields", "selfLink"}
# Lists that strategic-merge and apply patches merge by key on built-in kinds ("" = a set of scalars).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort", "conditions": "type",
              "ownerReferences": "uid", "imagePullSecrets": "name", "finalizers": ""}


def now_iso():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s):
    try:
        return datetime.strptime(s[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return None


def human_age(ts):
    """Age the way kubectl shows it: 45s, 3m20s, 2h5m, 4d."""
    t = parse_time(ts)
    if t is None:
        return "<unknown>"
    s = int((datetime.now(timezone.utc) - t).total_seconds())
    if s < 0:
        return "0s"
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 120:
        return "%ds" % s
    if m < 10:
        return "%dm%ds" % (m, s % 60) if s % 60 else "%dm" % m
    if h < 3:
        return "%dm" % m
    if h < 8:
        return "%dh%dm" % (h, m % 60) if m % 60 else "%dh" % h
    if h < 48:
        return "%dh" % h
    if d < 8:
        return "%dd%dh" % (d, h % 24) if h % 24 else "%dd" % d
    return "%dd" % d if d < 730 else "%dy" % (d // 365)


def dig(obj, *keys):
    for k in keys:
        if isinstance(obj, dict):
            obj = obj.get(k)
        elif isinstance(obj, list) and isinstance(k, int) and -len(obj) <= k < len(obj):
            obj = obj[k]
        else:
            return None
    return obj


def random_suffix(n=5):
    return "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(n))


# ----------------------------------------------------------------------------------------------
# Errors: every failure is a metav1.Status with the reason and code the real server uses.

class ApiError(Exception):
    def __init__(self, code, reason, message, details=None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self):
        st = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
              "message": self.message, "reason": self.reason, "code": self.code}
        if not self.reason:
            del st["reason"]    # a plain error of the server (reason Unknown) has none
        if self.details:
            st["details"] = self.details
        return st


def not_found(rt, name):
    return ApiError(404, "NotFound", '%s "%s" not found' % (rt.qualified, name),
                    {"name": name, "group": rt.group, "kind": rt.plural})


def conflict(rt, name, why):
    return ApiError(409, "Conflict", 'Operation cannot be fulfilled on %s "%s": %s' % (rt.qualified, name, why),
                    {"name": name, "group": rt.group, "kind": rt.plural})


def bad_request(message):
    return ApiError(400, "BadRequest", message)


def fmt_value(v):
    """A value inside a field error, formatted as the Go server does (strings quoted, 1.0 as 1)."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return json.dumps(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else str(v)


def path_str(path):
    out = ""
    for p in path:
        out += "[%d]" % p if isinstance(p, int) else ("." if out else "") + str(p)
    return out


class FieldError:
    def __init__(self, path, reason, detail):
        self.field, self.reason, self.detail = path_str(path), reason, detail

    def __str__(self):
        return "%s: %s" % (self.field, self.detail)


def invalid(rt, name, errors):
    """422 Invalid with the aggregate message and details.causes of the real server."""
    errs = [str(e) for e in errors]
    msg = '%s "%s" is invalid: %s' % (rt.group_kind, name, errs[0] if len(errs) == 1 else "[" + ", ".join(errs) + "]")
    causes = [{"reason": e.reason, "message": e.detail, "field": e.field} for e in errors]
    return ApiError(422, "Invalid", msg, {"name": name, "group": rt.group, "kind": rt.kind, "causes": causes})


# ----------------------------------------------------------------------------------------------
# Resource types: the built-ins, plus one per CRD (all served versions share one store).

class ResourceType:
    def __init__(self, group, versions, plural, kind, namespaced, short_names=(), categories=(),
                 singular=None, status=False, schemas=None, columns=None, crd=None, verbs=None):
        self.group, self.versions, self.plural, self.kind = group, list(versions), plural, kind
        self.verbs = verbs or ALL_VERBS     # create-only kinds (reviews) serve ["create"]
        self.namespaced, self.short_names, self.categories = namespaced, list(short_names), list(categories)
        self.singular = singular or kind.lower()
        self.has_status = status
        self.schemas = schemas or {}    # version -> openAPIV3Schema (CRDs only)
        self.columns = columns or {}    # version -> additionalPrinterColumns (CRDs only)
        self.crd = crd                  # the CRD's name, None for built-ins

    key = property(lambda self: (self.group, self.plural))
    qualified = property(lambda self: self.plural + ("." + self.group if self.group else ""))
    group_kind = property(lambda self: self.kind + ("." + self.group if self.group else ""))

    def api_version(self, version):
        return "%s/%s" % (self.group, version) if self.group else version


BUILTINS = [
    # group, version, plural, kind, namespaced, short names, categories, status subresource
    ("", "v1", "namespaces", "Namespace", False, ["ns"], [], True),
    ("", "v1", "pods", "Pod", True, ["po"], ["all"], True),
    ("", "v1", "events", "Event", True, ["ev"], [], False),
    ("", "v1", "secrets", "Secret", True, [], [], False),
    ("", "v1", "configmaps", "ConfigMap", True, ["cm"], [], False),
    ("", "v1", "serviceaccounts", "ServiceAccount", True, ["sa"], [], False),
    ("events.k8s.io", "v1", "events", "Event", True, ["ev"], [], False),
    ("coordination.k8s.io", "v1", "leases", "Lease", True, [], [], False),
    ("batch", "v1", "jobs", "Job", True, [], ["all"], True),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
     ["crd", "crds"], ["api-extensions"], True),
    ("", "v1", "services", "Service", True, ["svc"], ["all"], True),
    ("apps", "v1", "deployments", "Deployment", True, ["deploy"], ["all"], True),
    ("apps", "v1", "replicasets", "ReplicaSet", True, ["rs"], ["all"], True),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, ["pdb"], [], True),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, ["netpol"], [], False),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", True, [], [], False),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True, [], [], False),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False, [], [], False),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False, [], [], False),
]
# Create-only kinds: nothing is stored, the answer is computed (authorization reviews, whoami).
REVIEWS = [
    ("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview", False),
    ("authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview", False),
    ("authorization.k8s.io", "v1", "selfsubjectrulesreviews", "SelfSubjectRulesReview", False),
    ("authentication.k8s.io", "v1", "selfsubjectreviews", "SelfSubjectReview", False),
]
RBAC_GROUP = "rbac.authorization.k8s.io"


def version_priority(v):
    """Kubernetes orders versions GA > beta > alpha, higher numbers first."""
    m = re.match(r"^v(\d+)(?:(alpha|beta)(\d+))?$", v)
    if not m:
        return (3, 0, 0, v)
    stage = {"None": 0, "beta": 1, "alpha": 2}[str(m.group(2))]
    return (stage, -int(m.group(1)), -int(m.group(3) or 0), v)


def crd_resource_type(crd):
    spec = crd["spec"]
    names = spec["names"]
    served = [v for v in spec["versions"] if v.get("served", True)]
    return ResourceType(
        spec["group"], sorted((v["name"] for v in served), key=version_priority), names["plural"],
        names["kind"], spec.get("scope", "Namespaced") == "Namespaced", names.get("shortNames", []),
        names.get("categories", []), names.get("singular"),
        status=any("status" in (v.get("subresources") or {}) for v in served),
        schemas={v["name"]: dig(v, "schema", "openAPIV3Schema") or {"type": "object",
                 "x-kubernetes-preserve-unknown-fields": True} for v in served},
        columns={v["name"]: v.get("additionalPrinterColumns", []) for v in served},
        crd=crd["metadata"]["name"])


# ----------------------------------------------------------------------------------------------
# Structural schemas: one walk prunes unknown fields, applies defaults and collects errors.

JSON_TYPES = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string",
              list: "array", dict: "object"}


def type_matches(typ, v):
    if typ == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if typ == "integer" and isinstance(v, float):
        return v.is_integer()       # 3.0 is an integer to the real server too
    return JSON_TYPES.get(type(v)) == typ


class SchemaWalk:
    """Checks a value against a structural schema, the way the API server does for CRs.

    `walk` returns the value with unknown fields dropped (recorded in `unknown`, so that
    fieldValidation=Strict can refuse them instead) and defaults filled in; errors go to `errors`.
    """

    def __init__(self, prune=True):
        self.errors, self.unknown, self.prune = [], [], prune

    def err(self, path, reason, detail):
        self.errors.append(FieldError(path, reason, detail))

    def invalid(self, path, value, msg):
        self.err(path, "FieldValueInvalid", "Invalid value: %s: %s in body %s" % (fmt_value(value), path_str(path), msg))

    def walk(self, s, v, path):
        if v is None:
            if not s.get("nullable"):
                self.type_error(path, v, s.get("type") or "object")
            return v
        if s.get("x-kubernetes-int-or-string"):
            if not (isinstance(v, str) or type_matches("integer", v)):
                self.type_error(path, v, "integer,string")
                return v
        elif s.get("type") and not type_matches(s["type"], v):
            self.type_error(path, v, s["type"])
            return v
        if isinstance(v, float) and (s.get("type") == "integer" or s.get("x-kubernetes-int-or-string")):
            v = int(v)
        if "enum" in s and not any(v == e and type(v) is type(e) or (type_matches("number", v) and v == e)
                                   for e in s["enum"]):
            self.err(path, "FieldValueNotSupported", "Unsupported value: %s: supported values: %s"
                     % (fmt_value(v), ", ".join(fmt_value(e) for e in s["enum"])))
        if isinstance(v, dict):
            v = self.walk_object(s, v, path)
        elif isinstance(v, list):
            v = self.walk_array(s, v, path)
        elif isinstance(v, str):
            self.check_string(s, v, path)
        elif not isinstance(v, bool):
            self.check_number(s, v, path)
        self.check_combinators(s, v, path)
        return v

    def type_error(self, path, v, typ):
        tname = JSON_TYPES.get(type(v), "object")
        self.err(path, "FieldValueTypeInvalid", 'Invalid value: "%s": %s in body must be of type %s: "%s"'
                 % (tname, path_str(path), typ, tname))

    def walk_object(self, s, v, path):
        props = s.get("properties") or {}
        addl = s.get("additionalProperties")
        keep = s.get("x-kubernetes-preserve-unknown-fields") or addl is True
        embedded = s.get("x-kubernetes-embedded-resource")
        out = {}
        for k, val in v.items():
            sub = props.get(k, addl if isinstance(addl, dict) else None)
            if sub is not None:
                if val is None and not sub.get("nullable") and (self.prune or "default" in sub):
                    continue    # non-nullable nulls are pruned (and defaulted below when possible)
                out[k] = self.walk(sub, val, path + [k])
            elif keep or (embedded and k in ("apiVersion", "kind", "metadata")):
                out[k] = val
            else:
                self.unknown.append(path + [k])
                if not self.prune:
                    out[k] = val
        for k, sub in props.items():
            if k not in out and "default" in sub and self.prune:
                out[k] = self.walk(sub, copy.deepcopy(sub["default"]), path + [k])
        for k in s.get("required") or []:
            if k not in out:
                self.err(path + [k], "FieldValueRequired", "Required value")
        if "maxProperties" in s and len(out) > s["maxProperties"]:
            self.err(path, "FieldValueTooMany", "Too many: %d: must have at most %d items" % (len(out), s["maxProperties"]))
        if "minProperties" in s and len(out) < s["minProperties"]:
            self.invalid(path, len(out), "should have at least %d properties" % s["minProperties"])
        return out

    def walk_array(self, s, v, path):
        items = s.get("items")
        out = [self.walk(items, x, path + [i]) if isinstance(items, dict) else x for i, x in enumerate(v)]
        if "maxItems" in s and len(out) > s["maxItems"]:
            self.err(path, "FieldValueTooMany", "Too many: %d: must have at most %d items" % (len(out), s["maxItems"]))
        if "minItems" in s and len(out) < s["minItems"]:
            self.invalid(path, len(out), "should have at least %d items" % s["minItems"])
        list_type, keys = s.get("x-kubernetes-list-type"), s.get("x-kubernetes-list-map-keys") or []
        if s.get("uniqueItems") or list_type in ("set", "map"):
            seen = []
            for i, x in enumerate(out):
                ident = [dig(x, k) for k in keys] if list_type == "map" else x
                if ident in seen:
                    self.err(path + [i], "FieldValueDuplicate", "Duplicate value: %s" % fmt_value(ident))
                seen.append(ident)
        return out

    def check_string(self, s, v, path):
        if "maxLength" in s and len(v) > s["maxLength"]:
            self.err(path, "FieldValueTooLong", "Too long: may not be more than %d bytes" % s["maxLength"])
        if "minLength" in s and len(v) < s["minLength"]:
            self.invalid(path, v, "should be at least %d chars long" % s["minLength"])
        if "pattern" in s and not re.search(s["pattern"], v):
            self.invalid(path, v, "should match '%s'" % s["pattern"])
        if s.get("format") == "date-time" and not re.match(r"^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d", v):
            self.invalid(path, v, "must be of type date-time")

    def check_number(self, s, v, path):
        if "minimum" in s:
            lo = s["minimum"]
            if v < lo or (s.get("exclusiveMinimum") is True and v == lo):
                self.invalid(path, v, "should be greater than %s%s" % ("" if s.get("exclusiveMinimum") else "or equal to ", fmt_value(lo)))
        if "maximum" in s:
            hi = s["maximum"]
            if v > hi or (s.get("exclusiveMaximum") is True and v == hi):
                self.invalid(path, v, "should be less than %s%s" % ("" if s.get("exclusiveMaximum") else "or equal to ", fmt_value(hi)))
        if s.get("multipleOf") and (v / s["multipleOf"]) % 1:
            self.invalid(path, v, "should be a multiple of %s" % fmt_value(s["multipleOf"]))

    def passes(self, s, v, path):
        w = SchemaWalk(prune=False)
        w.walk(s, copy.deepcopy(v), path)
        return not w.errors

    def check_combinators(self, s, v, path):
        # Structural schemas keep combinators to validation only: they never prune or default.
        if "allOf" in s and not all(self.passes(x, v, path) for x in s["allOf"]):
            self.invalid(path, v, "must validate all the schemas (allOf)")
        if "anyOf" in s and not any(self.passes(x, v, path) for x in s["anyOf"]):
            self.invalid(path, v, "must validate at least one schema (anyOf)")
        if "oneOf" in s and sum(self.passes(x, v, path) for x in s["oneOf"]) != 1:
            self.invalid(path, v, "must validate one and only one schema (oneOf)")
        if "not" in s and self.passes(s["not"], v, path):
            self.invalid(path, v, "must not validate the schema (not)")


def check_custom_resource(rt, version, obj):
    """Prune, default and validate a custom resource; returns (object, errors, unknown field paths)."""
    schema = rt.schemas.get(version) or {}
    w = SchemaWalk()
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    root = dict(schema, properties={k: v for k, v in (schema.get("properties") or {}).items() if k != "metadata"})
    root.pop("required", None)
    out = w.walk(root, body, [])
    for k in schema.get("required") or []:
        if k not in out and k not in ("apiVersion", "kind", "metadata"):
            w.err([k], "FieldValueRequired", "Required value")
    meta = obj.get("metadata") or {}
    w.unknown += [["metadata", k] for k in meta if k not in META_FIELDS]
    out.update(apiVersion=obj.get("apiVersion"), kind=obj.get("kind"),
               metadata={k: v for k, v in meta.items() if k in META_FIELDS})
    return out, w.errors, w.unknown


# ----------------------------------------------------------------------------------------------
# Built-in kinds: decoded the way the real server's Go types decode JSON, from the schemas of
# builtin_schemas.py: unknown fields dropped (warned about, or refused with Strict), the first
# value of a wrong JSON type refused with encoding/json's error, required fields checked.

QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
OPEN_SCHEMA = {"t": "object", "go": "runtime.RawExtension", "struct": None}


def json_kind(v):
    return {bool: "bool", str: "string", list: "array", dict: "object"}.get(type(v), "number")


class BuiltinDecode:
    """One walk over a built-in object: unknown fields (dropped, remembered for fieldValidation),
    the first value of a wrong type, and required fields that are missing."""

    def __init__(self):
        self.unknown, self.missing, self.wrong = [], [], None   # wrong: (path, go path, value, schema, detail)

    def bad(self, path, gp, v, s, detail=None):
        if self.wrong is None:
            self.wrong = (path, gp, v, s, detail)

    def walk(self, s, v, path, gp=()):
        t = s["t"]
        if v is None:
            return None         # null is the Go zero value: the field is dropped
        if t == "struct":
            if not isinstance(v, dict):
                return self.bad(path, gp, v, s)
            out = {}
            for k, val in v.items():
                sub = s["props"].get(k)
                if sub is None:
                    self.unknown.append(path + [k])
                    continue
                val = self.walk(sub, val, path + [k], gp + (k,))
                if val is not None:
                    out[k] = val
            for k in s["required"]:
                if k not in out:
                    self.missing.append(path + [k])
            return out
        if t == "list":
            if not isinstance(v, list):
                return self.bad(path, gp, v, s)
            return [self.walk(s["items"], x, path + [i], gp) for i, x in enumerate(v)]
        if t == "map":
            if not isinstance(v, dict):
                return self.bad(path, gp, v, s)
            return {k: self.walk(s["values"], x, path + [k], gp) for k, x in v.items()}
        ok, detail = True, None
        if t == "string":
            ok = isinstance(v, str)
        elif t in ("int32", "int64"):
            ok = type_matches("integer", v)
            if isinstance(v, float) and not ok:
                detail = "json: cannot unmarshal number %s into Go struct field {} of type %s" % (fmt_value(v), t)
            elif ok:
                v = int(v)
        elif t == "boolean":
            ok = isinstance(v, bool)
        elif t == "number":
            ok = type_matches("number", v)
        elif t == "bytes":
            ok = isinstance(v, str)
            if ok and not (BASE64.match(v) and len(v) % 4 == 0):
                at = next((i for i, c in enumerate(v) if not re.match(r"[A-Za-z0-9+/=]", c)), len(v) - len(v) % 4)
                ok, detail = False, "illegal base64 data at input byte %d" % at
        elif t == "quantity":
            ok = type_matches("number", v) or (isinstance(v, str) and bool(QUANTITY.match(v)))
            if not ok:
                detail = "quantities must match the regular expression '%s'" % QUANTITY.pattern
        elif t == "intstr":
            ok = isinstance(v, str) or type_matches("integer", v)
        elif t in ("time", "microtime"):
            ok = isinstance(v, str) and bool(TIME.match(v))
            if isinstance(v, str) and not ok:
                detail = 'parsing time "%s" as "2006-01-02T15:04:05Z07:00": cannot parse "%s" as "2006"' % (v, v)
        elif t == "object":
            ok = isinstance(v, dict)
        if not ok:
            return self.bad(path, gp, v, s, detail)
        return v

    def decode_error(self, rt, version):
        """The error of the real server's decoder (400): the body cannot become the Go type."""
        path, gp, v, s, detail = self.wrong
        field = "%s.%s" % (s.get("struct") or rt.kind, ".".join(gp))
        if detail:
            detail = detail.replace("{}", field)
        else:
            detail = "json: cannot unmarshal %s into Go struct field %s of type %s" % (json_kind(v), field, s["go"])
        return bad_request('%s in version "%s" cannot be handled as a %s: %s' % (rt.kind, version, rt.kind, detail))

    def typed_patch_error(self, rt, version, ns, name, schema, applied):
        """Server-side apply's error when the applied configuration does not fit the type: a
        plain server error (500, no reason), as structured-merge-diff reports it."""
        if self.wrong:
            path, _, v, s, _ = self.wrong
            want = {"string": "string", "int32": "numeric (int or float)", "int64": "numeric (int or float)",
                    "number": "numeric (int or float)", "boolean": "boolean", "struct": "map", "map": "map",
                    "list": "list", "object": "map"}.get(s["t"], "string or number")
            detail = "expected %s, got %s" % (want, json_kind(v))
        else:
            path, detail = self.unknown[0], "field not declared in schema"
        where = ""
        cur, sch = applied, schema
        for p in path:
            if isinstance(p, int):
                item = cur[p] if isinstance(cur, list) and p < len(cur) else None
                keys = sch.get("keys") or []
                if keys and isinstance(item, dict) and all(k in item for k in keys):
                    where += "[%s]" % ",".join("%s=%s" % (k, json.dumps(item[k])) for k in keys)
                else:
                    where += "[%d]" % p
                cur, sch = item, sch.get("items") or OPEN_SCHEMA
            else:
                where += "." + p
                cur = cur.get(p) if isinstance(cur, dict) else None
                sch = sub_schema(sch, p)
        gvk = "%s/%s, Kind=%s" % (rt.group, version, rt.kind)
        return ApiError(500, None, "failed to create typed patch object (%s/%s; %s): %s: %s"
                        % (ns or "", name, gvk, where, detail))


def builtin_schema(rt, version):
    return None if rt.crd else builtin_schemas.schema_of(rt.group, version, rt.kind)


def sub_schema(s, k):
    """The schema of field (or map value) `k` under `s`; free-form where the schema says nothing."""
    if s["t"] == "struct":
        return s["props"].get(k) or OPEN_SCHEMA
    if s["t"] == "map":
        return s["values"]
    return OPEN_SCHEMA


def list_merge_key(s, k):
    """How the list in field `k` merges: its merge key ("" = a set), or None (atomic). Without a
    schema (s None) the usual keys of Kubernetes lists (MERGE_KEYS)."""
    if s is None:
        return MERGE_KEYS.get(k)
    sub = sub_schema(s, k)
    return sub.get("merge") if sub["t"] == "list" else None


# ----------------------------------------------------------------------------------------------
# Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902), an approximation of strategic
# merge patch, and the merge step of server-side apply.

def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def json_pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", "JSON pointer must start with /: %r" % path)
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc, ops):
    """Applies an RFC 6902 patch; a failed `test` or a bad path is a 422 like the real server's."""
    if not isinstance(ops, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(doc)

    def parent(tokens):
        cur = doc
        for t in tokens[:-1]:
            cur = cur[int(t)] if isinstance(cur, list) else cur[t]
        return cur, tokens[-1]

    def get(tokens):
        cur = doc
        for t in tokens:
            cur = cur[int(t)] if isinstance(cur, list) else cur[t]
        return cur

    def remove(tokens):
        p, k = parent(tokens)
        return p.pop(int(k)) if isinstance(p, list) else p.pop(k)

    def add(tokens, value):
        p, k = parent(tokens)
        if isinstance(p, list):
            p.insert(len(p) if k == "-" else int(k), value)
        else:
            p[k] = value

    for op in ops:
        try:
            kind, path = op["op"], json_pointer(op.get("path", ""))
            if kind == "add":
                add(path, copy.deepcopy(op["value"]))
            elif kind == "remove":
                remove(path)
            elif kind == "replace":
                remove(path)
                add(path, copy.deepcopy(op["value"]))
            elif kind in ("move", "copy"):
                src = json_pointer(op["from"])
                value = remove(src) if kind == "move" else copy.deepcopy(get(src))
                add(path, value)
            elif kind == "test":
                if get(path) != op["value"]:
                    raise ApiError(422, "Invalid", "the server rejected our request due to an error in our request: "
                                   "testing value %s failed" % op.get("path"))
            else:
                raise bad_request("unknown json patch operation %r" % kind)
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
            raise ApiError(422, "Invalid", "the server rejected our request due to an error in our request: %s: %r"
                           % (op.get("op") if isinstance(op, dict) else op, e))
    return doc


def merge_list(old, new, key, strategic, s=None):
    """Merges two lists item by item on `key` ("" = a set of scalars such as finalizers); `s` is
    the items' schema (None: no schema)."""
    if key == "":
        return list(old) + [x for x in new if x not in old]
    out = [copy.deepcopy(x) for x in old]
    for item in new:
        if not isinstance(item, dict):
            return copy.deepcopy(new)
        at = next((i for i, x in enumerate(out) if isinstance(x, dict) and x.get(key) == item.get(key)), None)
        if strategic and item.get("$patch") == "delete":
            if at is not None:
                out.pop(at)
        elif at is None:
            out.append(strip_directives(item))
        else:
            out[at] = strategic_merge(out[at], item, s) if strategic else apply_merge(out[at], item, True, s)
    return out


def strip_directives(v):
    if isinstance(v, dict):
        return {k: strip_directives(x) for k, x in v.items() if not k.startswith("$")}
    return [strip_directives(x) for x in v] if isinstance(v, list) else v


def strategic_merge(target, patch, s=None):
    """Strategic merge patch, approximated: JSON merge patch plus the merge keys of lists (from
    the kind's schema `s`, else the usual ones: containers by name, conditions by type,
    finalizers as a set, ...) and the $patch, $retainKeys and $deleteFromPrimitiveList
    directives; $setElementOrder is ignored."""
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return strip_directives(patch)
    if patch.get("$patch") == "replace":
        return strip_directives(patch)
    out = dict(target)
    for k, v in patch.items():
        if k.startswith("$deleteFromPrimitiveList/"):
            field = k.split("/", 1)[1]
            out[field] = [x for x in out.get(field) or [] if x not in v]
        elif k.startswith("$"):
            continue
        elif v is None or (isinstance(v, dict) and v.get("$patch") == "delete"):
            out.pop(k, None)
        elif isinstance(v, list) and isinstance(out.get(k), list) and list_merge_key(s, k) is not None:
            out[k] = merge_list(out[k], v, list_merge_key(s, k), True, None if s is None else sub_schema(s, k).get("items"))
        else:
            out[k] = strategic_merge(out.get(k), v, None if s is None else sub_schema(s, k))
    if isinstance(patch.get("$retainKeys"), list):
        out = {k: v for k, v in out.items() if k in patch["$retainKeys"]}
    return out


def apply_merge(base, applied, builtin, s=None):
    """The merge step of server-side apply: maps merge key by key, lists are atomic (replaced)
    except, on built-in kinds, the lists that Kubernetes declares as maps (from the kind's
    schema `s`, else MERGE_KEYS)."""
    if not isinstance(applied, dict) or not isinstance(base, dict):
        return copy.deepcopy(applied)
    out = dict(base)
    for k, v in applied.items():
        sub = None if s is None else sub_schema(s, k)
        if builtin and isinstance(v, list) and isinstance(out.get(k), list) and list_merge_key(s, k) is not None:
            out[k] = merge_list(out[k], v, list_merge_key(s, k), False, None if sub is None else sub.get("items"))
        else:
            out[k] = apply_merge(out.get(k), v, builtin, sub)
    return out


def leaf_paths(obj, prefix=()):
    """The field paths an applied configuration sets (maps descend, anything else is a leaf)."""
    for k, v in obj.items():
        if isinstance(v, dict) and v:
            yield from leaf_paths(v, prefix + (k,))
        else:
            yield prefix + (k,)


def owned_paths(applied, status_only):
    """Paths a manager owns after an apply: not the identity fields, only status on /status."""
    out = set()
    for p in leaf_paths(applied):
        if p[0] in ("apiVersion", "kind") or (p[0] == "metadata" and (len(p) < 2 or p[1] not in (
                "labels", "annotations", "finalizers", "ownerReferences"))):
            continue
        if (p[0] == "status") == status_only:
            out.add(p)
    return out


def paths_to_fields(paths):
    root = {}
    for p in sorted(paths):
        cur = root
        for k in p:
            cur = cur.setdefault("f:" + k, {})
    return root


def fields_to_paths(fields, prefix=()):
    out = set()
    for k, v in (fields or {}).items():
        if not k.startswith("f:"):
            out.add(prefix)     # "k:{...}", "v:..." or "." entries: treat the parent as one leaf
        elif v:
            out |= fields_to_paths(v, prefix + (k[2:],))
        else:
            out.add(prefix + (k[2:],))
    return {p for p in out if p}


_MISSING = object()


def get_path(obj, path):
    for k in path:
        if not isinstance(obj, dict) or k not in obj:
            return _MISSING
        obj = obj[k]
    return obj


def delete_path(obj, path):
    for k in path[:-1]:
        obj = obj.get(k) if isinstance(obj, dict) else None
    if isinstance(obj, dict):
        obj.pop(path[-1], None)


# ----------------------------------------------------------------------------------------------
# Label and field selectors.

def parse_label_selector(text):
    """Returns a predicate over label maps for `a=b,c!=d,e in (x,y),f notin (z),g,!h`."""
    reqs = []
    for part in re.split(r",(?![^()]*\))", text or ""):
        part = part.strip()
        if not part:
            continue
        m = re.match(r"^([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)$", part)
        if m:
            values = {v.strip() for v in m.group(3).split(",") if v.strip()}
            reqs.append((m.group(1), m.group(2), values))
        elif part.startswith("!"):
            reqs.append((part[1:].strip(), "!", None))
        elif "!=" in part:
            k, v = part.split("!=", 1)
            reqs.append((k.strip(), "!=", v.strip()))
        elif "=" in part:
            k, v = re.split(r"==?", part, maxsplit=1)
            reqs.append((k.strip(), "=", v.strip()))
        elif re.match(r"^[A-Za-z0-9._/-]+$", part):
            reqs.append((part, "exists", None))
        else:
            raise bad_request("unable to parse requirement: %r" % part)

    def match(labels):
        labels = labels or {}
        for k, op, v in reqs:
            have = labels.get(k)
            if ((op == "=" and have != v) or (op == "!=" and have == v) or (op == "in" and have not in v)
                    or (op == "notin" and have in v) or (op == "exists" and k not in labels)
                    or (op == "!" and k in labels)):
                return False
        return True
    return match


def parse_field_selector(text):
    """`metadata.name=x,metadata.namespace!=y`; any dotted path is compared as a string."""
    reqs = []
    for part in (text or "").split(","):
        if part.strip():
            m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(!=|==|=)\s*(.*?)\s*$", part)
            if not m:
                raise bad_request("invalid field selector: %r" % part)
            reqs.append((m.group(1).split("."), m.group(2) == "!=", m.group(3)))

    def match(obj):
        for path, negate, value in reqs:
            have = dig(obj, *path)
            have = "" if have is None else str(have).lower() if isinstance(have, bool) else str(have)
            if (have == value) == negate:
                return False
        return True
    return match


# ----------------------------------------------------------------------------------------------
# Admission of built-in kinds: the few defaults and checks the operator's tests can notice.

def admit_namespace(cluster, obj, old):
    obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
    obj.setdefault("status", {}).setdefault("phase", "Active")
    return []


def admit_pod(cluster, obj, old):
    obj.setdefault("spec", {}).setdefault("restartPolicy", "Always")
    obj.setdefault("status", {}).setdefault("phase", "Pending")
    if not obj["spec"].get("containers"):
        return [FieldError(["spec", "containers"], "FieldValueRequired", "Required value")]
    return []


def admit_secret(cluster, obj, old):
    # stringData is write-only: it is folded into data (base64) the way the real server does.
    for k, v in (obj.pop("stringData", None) or {}).items():
        obj.setdefault("data", {})[k] = base64.b64encode(str(v).encode()).decode()
    obj.setdefault("type", "Opaque")
    return []


def admit_job(cluster, obj, old):
    spec = obj.setdefault("spec", {})
    meta = obj["metadata"]
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    spec.setdefault("parallelism", 1)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("backoffLimit", 2147483647 if spec.get("backoffLimitPerIndex") is not None else 6)
    spec.setdefault("suspend", False)
    uid_labels = {"batch.kubernetes.io/controller-uid": meta["uid"], "controller-uid": meta["uid"]}
    spec.setdefault("selector", {"matchLabels": dict(uid_labels)})
    tmeta = spec.setdefault("template", {}).setdefault("metadata", {})
    tmeta["labels"] = dict(tmeta.get("labels") or {}, **uid_labels, **{
        "batch.kubernetes.io/job-name": meta["name"], "job-name": meta["name"]})
    errors = []
    pod = spec["template"].get("spec") or {}
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        errors.append(FieldError(["spec", "template", "spec", "restartPolicy"], "FieldValueRequired",
                                 'Required value: valid values: "OnFailure", "Never"'))
    if not pod.get("containers"):
        errors.append(FieldError(["spec", "template", "spec", "containers"], "FieldValueRequired", "Required value"))
    if spec["completionMode"] == "Indexed" and spec.get("completions") is None:
        errors.append(FieldError(["spec", "completions"], "FieldValueRequired", "Required value: when completion mode is Indexed"))
    if old is None:
        obj["status"] = {}
    return errors


def admit_crd(cluster, obj, old):
    spec = obj.get("spec") or {}
    names = spec.get("names") or {}
    errors = []
    for path, ok in ((["spec", "group"], spec.get("group")), (["spec", "names", "plural"], names.get("plural")),
                     (["spec", "names", "kind"], names.get("kind")), (["spec", "versions"], spec.get("versions"))):
        if not ok:
            errors.append(FieldError(path, "FieldValueRequired", "Required value"))
    if errors:
        return errors
    name = obj["metadata"]["name"]
    if name != "%s.%s" % (names["plural"], spec["group"]):
        errors.append(FieldError(["metadata", "name"], "FieldValueInvalid",
                                 'Invalid value: "%s": must be spec.names.plural+"."+spec.group' % name))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        errors.append(FieldError(["spec", "scope"], "FieldValueNotSupported", 'Unsupported value: %s: supported values: '
                                 '"Cluster", "Namespaced"' % fmt_value(spec.get("scope"))))
    if sum(1 for v in spec["versions"] if v.get("storage")) != 1:
        errors.append(FieldError(["spec", "versions"], "FieldValueInvalid", "Invalid value: %s: must have exactly one version "
                                 "marked as storage version" % fmt_value([v.get("name") for v in spec["versions"]])))
    names.setdefault("singular", names["kind"].lower())
    names.setdefault("listKind", names["kind"] + "List")
    spec.setdefault("conversion", {"strategy": "None"})
    # The real apiextensions controllers accept the names and establish the CRD within moments; here
    # it happens in the same write, so discovery serves the new resource as soon as apply returns.
    conds = (old or {}).get("status", {}).get("conditions") or [
        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found",
         "lastTransitionTime": now_iso()},
        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
         "message": "the initial names have been accepted", "lastTransitionTime": now_iso()}]
    obj["status"] = {"conditions": conds, "acceptedNames": copy.deepcopy(names),
                     "storedVersions": [v["name"] for v in spec["versions"] if v.get("storage")]}
    return errors


def go_map(m):
    """A map[string]string as Go's %#v prints it in field errors."""
    return "map[string]string{%s}" % ", ".join('"%s":"%s"' % kv for kv in sorted((m or {}).items()))


def selector_matches(selector, labels):
    """A metav1.LabelSelector (matchLabels, matchExpressions) against a label map."""
    labels = labels or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        k, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if ((op == "In" and labels.get(k) not in values) or (op == "NotIn" and k in labels and labels[k] in values)
                or (op == "Exists" and k not in labels) or (op == "DoesNotExist" and k in labels)):
            return False
    return True


def check_pod_template(path, tmpl, errors, restart=("Always",)):
    """The checks of a pod template that the operator's tests can notice."""
    spec = tmpl.get("spec") or {}
    if spec.get("restartPolicy", "Always") not in restart:
        errors.append(FieldError(path + ["spec", "restartPolicy"], "FieldValueNotSupported", "Unsupported value: %s: "
                                 "supported values: %s" % (fmt_value(spec["restartPolicy"]), ", ".join(map(fmt_value, restart)))))
    names = set()
    for i, c in enumerate(spec.get("containers") or []):
        if not c.get("name"):
            errors.append(FieldError(path + ["spec", "containers", i, "name"], "FieldValueRequired", "Required value"))
        if not c.get("image"):
            errors.append(FieldError(path + ["spec", "containers", i, "image"], "FieldValueRequired", "Required value"))
        if c.get("name") in names:
            errors.append(FieldError(path + ["spec", "containers", i, "name"], "FieldValueDuplicate",
                                     "Duplicate value: %s" % fmt_value(c["name"])))
        names.add(c.get("name"))
        for j, port in enumerate(c.get("ports") or []):
            if not 1 <= port.get("containerPort", 0) <= 65535:
                errors.append(FieldError(path + ["spec", "containers", i, "ports", j, "containerPort"], "FieldValueInvalid",
                                         "Invalid value: %s: must be between 1 and 65535, inclusive" % port.get("containerPort")))
            port.setdefault("protocol", "TCP")
    mounts = {v.get("name") for v in spec.get("volumes") or []}
    for i, c in enumerate(spec.get("containers") or []):
        for j, m in enumerate(c.get("volumeMounts") or []):
            if m.get("name") not in mounts:
                errors.append(FieldError(path + ["spec", "containers", i, "volumeMounts", j, "name"], "FieldValueNotFound",
                                         "Not found: %s" % fmt_value(m.get("name"))))
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})


def admit_replicated(cluster, obj, old, kind):
    """Deployments and ReplicaSets: a selector that selects the template's labels, immutable."""
    spec, errors = obj.setdefault("spec", {}), []
    spec.setdefault("replicas", 1)
    if spec["replicas"] < 0:
        errors.append(FieldError(["spec", "replicas"], "FieldValueInvalid",
                                 "Invalid value: %d: must be greater than or equal to 0" % spec["replicas"]))
    selector, tmpl = spec.get("selector") or {}, spec.get("template") or {}
    labels = dig(tmpl, "metadata", "labels") or {}
    if not selector.get("matchLabels") and not selector.get("matchExpressions"):
        errors.append(FieldError(["spec", "selector"], "FieldValueInvalid",
                                 "Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]"
                                 "v1.LabelSelectorRequirement(nil)}: empty selector is invalid for %s" % kind))
    elif not selector_matches(selector, labels):
        errors.append(FieldError(["spec", "template", "metadata", "labels"], "FieldValueInvalid",
                                 "Invalid value: %s: `selector` does not match template `labels`" % go_map(labels)))
    if old is not None and (old.get("spec") or {}).get("selector") != selector:
        errors.append(FieldError(["spec", "selector"], "FieldValueInvalid", "Invalid value: %s: field is immutable"
                                 % json.dumps(selector, sort_keys=True)))
    if kind == "deployment" and not spec.get("template", {}).get("spec", {}).get("containers"):
        errors.append(FieldError(["spec", "template", "spec", "containers"], "FieldValueRequired", "Required value"))
    if tmpl:
        check_pod_template(["spec", "template"], tmpl, errors)
    if kind == "deployment":
        strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            strategy.setdefault("type", "RollingUpdate")
            strategy.setdefault("rollingUpdate", {"maxUnavailable": "25%", "maxSurge": "25%"})
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
    if old is None:
        obj["status"] = {}
    return errors


def admit_deployment(cluster, obj, old):
    return admit_replicated(cluster, obj, old, "deployment")


def admit_replicaset(cluster, obj, old):
    return admit_replicated(cluster, obj, old, "replicaset")


def admit_service(cluster, obj, old):
    """Defaults and a cluster IP, as the service REST storage allocates one (kept on update)."""
    spec, errors = obj.setdefault("spec", {}), []
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    old_spec = (old or {}).get("spec") or {}
    if spec["type"] != "ExternalName":
        ip = spec.get("clusterIP") or old_spec.get("clusterIP")
        if not ip:
            cluster.service_ips += 1
            ip = "10.96.%d.%d" % (cluster.service_ips // 250, 1 + cluster.service_ips % 250)
        spec["clusterIP"], spec["clusterIPs"] = ip, [ip]
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        if not spec.get("ports") and ip != "None":
            errors.append(FieldError(["spec", "ports"], "FieldValueRequired", "Required value"))
    for i, port in enumerate(spec.get("ports") or []):
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
        if not 1 <= port.get("port", 0) <= 65535:
            errors.append(FieldError(["spec", "ports", i, "port"], "FieldValueInvalid",
                                     "Invalid value: %s: must be between 1 and 65535, inclusive" % port.get("port")))
        if len(spec["ports"]) > 1 and not port.get("name"):
            errors.append(FieldError(["spec", "ports", i, "name"], "FieldValueRequired", "Required value"))
        if spec["type"] in ("NodePort", "LoadBalancer") and not port.get("nodePort"):
            old_port = next((p for p in old_spec.get("ports") or [] if p.get("port") == port.get("port")), {})
            port["nodePort"] = old_port.get("nodePort") or 30000 + (cluster.service_ips * 7 + i) % 2768
    if old is None:
        obj["status"] = {"loadBalancer": {}}
    return errors


def admit_pdb(cluster, obj, old):
    spec = obj.setdefault("spec", {})
    if old is None:
        obj["status"] = {"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0}
    if spec.get("minAvailable") is not None and spec.get("maxUnavailable") is not None:
        return [FieldError(["spec"], "FieldValueInvalid", "Invalid value: %s: minAvailable and maxUnavailable cannot be both set"
                           % json.dumps(spec, sort_keys=True))]
    return []


def admit_networkpolicy(cluster, obj, old):
    spec = obj.setdefault("spec", {})
    spec.setdefault("podSelector", {})
    if not spec.get("policyTypes"):
        spec["policyTypes"] = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
    errors = []
    for i, t in enumerate(spec["policyTypes"]):
        if t not in ("Ingress", "Egress"):
            errors.append(FieldError(["spec", "policyTypes", i], "FieldValueNotSupported",
                                     'Unsupported value: %s: supported values: "Ingress", "Egress"' % fmt_value(t)))
    return errors


def admit_role(cluster, obj, old, namespaced=True):
    """PolicyRules: verbs, and apiGroups with resources (or, in ClusterRoles, nonResourceURLs)."""
    errors = []
    for i, rule in enumerate(obj.get("rules") or []):
        path = ["rules", i]
        if not rule.get("verbs"):
            errors.append(FieldError(path + ["verbs"], "FieldValueRequired", "Required value: verbs must contain at least one value"))
        if rule.get("nonResourceURLs"):
            if namespaced:
                errors.append(FieldError(path + ["nonResourceURLs"], "FieldValueInvalid", "Invalid value: %s: namespaced "
                                         "rules cannot apply to non-resource URLs" % json.dumps(rule["nonResourceURLs"])))
            if rule.get("resources") or rule.get("apiGroups"):
                errors.append(FieldError(path + ["nonResourceURLs"], "FieldValueInvalid", "Invalid value: %s: rules cannot "
                                         "apply to both regular resources and non-resource URLs" % json.dumps(rule["nonResourceURLs"])))
        else:
            if not rule.get("apiGroups"):
                errors.append(FieldError(path + ["apiGroups"], "FieldValueRequired",
                                         "Required value: resource rules must supply at least one api group"))
            if not rule.get("resources"):
                errors.append(FieldError(path + ["resources"], "FieldValueRequired",
                                         "Required value: resource rules must supply at least one resource"))
    return errors


def admit_clusterrole(cluster, obj, old):
    return admit_role(cluster, obj, old, namespaced=False)


def admit_binding(cluster, obj, old, namespaced=True):
    """roleRef (immutable; a Role only from a RoleBinding) and subjects, defaulted as in rbac/v1."""
    errors, ref = [], obj.get("roleRef") or {}
    kinds = ("Role", "ClusterRole") if namespaced else ("ClusterRole",)
    if ref.get("apiGroup") != RBAC_GROUP:
        errors.append(FieldError(["roleRef", "apiGroup"], "FieldValueNotSupported", "Unsupported value: %s: supported values: "
                                 '"%s"' % (fmt_value(ref.get("apiGroup")), RBAC_GROUP)))
    if ref.get("kind") not in kinds:
        errors.append(FieldError(["roleRef", "kind"], "FieldValueNotSupported", "Unsupported value: %s: supported values: %s"
                                 % (fmt_value(ref.get("kind")), ", ".join(map(fmt_value, kinds)))))
    if old is not None and old.get("roleRef") != ref:
        errors.append(FieldError(["roleRef"], "FieldValueInvalid", "Invalid value: rbac.RoleRef{APIGroup:\"%s\", Kind:\"%s\", "
                                 "Name:\"%s\"}: cannot change roleRef" % (ref.get("apiGroup"), ref.get("kind"), ref.get("name"))))
    for i, subject in enumerate(obj.get("subjects") or []):
        kind, path = subject.get("kind"), ["subjects", i]
        if kind in ("User", "Group"):
            subject.setdefault("apiGroup", RBAC_GROUP)
        if kind == "ServiceAccount":
            if subject.get("apiGroup"):
                errors.append(FieldError(path + ["apiGroup"], "FieldValueNotSupported",
                                         'Unsupported value: %s: supported values: ""' % fmt_value(subject["apiGroup"])))
            if not namespaced and not subject.get("namespace"):
                errors.append(FieldError(path + ["namespace"], "FieldValueRequired", "Required value"))
        elif kind in ("User", "Group"):
            if subject["apiGroup"] != RBAC_GROUP:
                errors.append(FieldError(path + ["apiGroup"], "FieldValueNotSupported", "Unsupported value: %s: supported "
                                         'values: "%s"' % (fmt_value(subject["apiGroup"]), RBAC_GROUP)))
        else:
            errors.append(FieldError(path + ["kind"], "FieldValueNotSupported", 'Unsupported value: %s: supported values: '
                                     '"ServiceAccount", "User", "Group"' % fmt_value(kind)))
    return errors


def admit_clusterrolebinding(cluster, obj, old):
    return admit_binding(cluster, obj, old, namespaced=False)


BUILTIN_ADMISSION = {"namespaces": admit_namespace, "pods": admit_pod, "secrets": admit_secret,
                     "jobs": admit_job, "customresourcedefinitions": admit_crd, "deployments": admit_deployment,
                     "replicasets": admit_replicaset, "services": admit_service, "poddisruptionbudgets": admit_pdb,
                     "networkpolicies": admit_networkpolicy, "roles": admit_role, "clusterroles": admit_clusterrole,
                     "rolebindings": admit_binding, "clusterrolebindings": admit_clusterrolebinding}


# ----------------------------------------------------------------------------------------------
# The store: objects, one global resourceVersion counter, and a bounded history of watch events.

class Cluster:
    def __init__(self, history=10000):
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.rv = 0
        self.types = {}       # (group, plural) -> ResourceType
        self.objects = {}     # (group, plural) -> {(namespace, name): stored object}
        self.uids = {}        # uid -> (group, plural), for owner-reference lookups
        self.history = []     # (rv, key, namespace, event type, object, previous object), oldest first
        self.history_max = max(1, history)
        self.forgotten = 0    # events up to this resourceVersion have left `history` (410 Gone)
        self.generation = 0   # bumps whenever the set of served resources changes
        self.stopping = False
        self.service_ips = 0  # cluster IPs handed out
        self.default_service_accounts = False     # with --rbac: each namespace gets its `default`
        for group, version, plural, kind, namespaced, short, cats, status in BUILTINS:
            self.add_type(ResourceType(group, [version], plural, kind, namespaced, short, cats, status=status))
        for group, version, plural, kind, namespaced in REVIEWS:
            self.add_type(ResourceType(group, [version], plural, kind, namespaced, verbs=["create"]))
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(self.type("", "namespaces"), None, {"metadata": {"name": ns}}, {})
        for plural, obj in BOOTSTRAP_RBAC:
            self.create(self.type(RBAC_GROUP, plural), None, copy.deepcopy(obj), {})

    # -- resource types

    def add_type(self, rt):
        self.types[rt.key] = rt
        self.objects.setdefault(rt.key, {})
        self.generation += 1

    def type(self, group, plural, version=None):
        rt = self.types.get((group, plural))
        return rt if rt and (version is None or version in rt.versions) else None

    def view(self, rt, obj, version=None):
        out = copy.deepcopy(obj)
        out["apiVersion"], out["kind"] = rt.api_version(version or rt.versions[0]), rt.kind
        return out

    def find(self, rt, ns, name):
        return self.objects[rt.key].get((ns or "", name))

    def get(self, rt, ns, name, version=None):
        with self.lock:
            obj = self.find(rt, ns, name)
            if obj is None:
                raise not_found(rt, name)
            return self.view(rt, obj, version)

    def list(self, rt, ns, labels=None, fields=None, version=None):
        label_match, field_match = parse_label_selector(labels), parse_field_selector(fields)
        with self.lock:
            items = [self.view(rt, o, version) for (ons, _), o in sorted(self.objects[rt.key].items())
                     if (not ns or ons == ns) and label_match(o["metadata"].get("labels")) and field_match(o)]
            return items, self.rv

    # -- the event log

    def record(self, rt, etype, obj, old):
        """Stores (or removes) an object under a new resourceVersion and tells the watchers."""
        self.rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.rv)
        key = (meta.get("namespace", ""), meta["name"])
        if etype == "DELETED":
            self.objects[rt.key].pop(key, None)
            self.uids.pop(meta["uid"], None)
        else:
            self.objects[rt.key][key] = obj
            self.uids[meta["uid"]] = rt.key
        self.history.append((self.rv, rt.key, key[0], etype, obj, old))
        if len(self.history) > self.history_max + self.history_max // 10:
            cut = len(self.history) - self.history_max
            self.forgotten = self.history[cut - 1][0]
            del self.history[:cut]
        self.changed.notify_all()

    def events_after(self, rv):
        return self.history[bisect.bisect_right(self.history, rv, key=lambda e: e[0]):]

    # -- writes

    def create(self, rt, ns, body, opts):
        with self.lock:
            version = opts.get("version") or rt.versions[0]
            obj = self.check_body(rt, version, body)
            meta = obj["metadata"]
            if rt.namespaced:
                if meta.get("namespace") not in (None, "", ns):
                    raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
                meta["namespace"] = ns
                self.check_namespace(ns)
            else:
                meta.pop("namespace", None)
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + random_suffix()
            for k in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                      "deletionGracePeriodSeconds", "generation", "selfLink"):
                meta.pop(k, None)   # server-owned; a client cannot create an object being deleted
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_iso())
            if rt.crd or rt.plural in GENERATION_KINDS:
                meta["generation"] = 1
            if rt.has_status:
                obj.pop("status", None)     # written through /status only
            obj = self.admit(rt, version, obj, None, opts)
            if self.find(rt, ns, obj["metadata"]["name"]) is not None:
                name = obj["metadata"]["name"]
                raise ApiError(409, "AlreadyExists", '%s "%s" already exists' % (rt.qualified, name),
                               {"name": name, "group": rt.group, "kind": rt.plural})
            if opts.get("dry_run"):
                return self.view(rt, obj, version)
            self.record(rt, "ADDED", obj, None)
            self.after_write(rt, obj, None)
            return self.view(rt, obj, version)

    def check_body(self, rt, version, body):
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        obj = copy.deepcopy(body)
        want = rt.api_version(version)
        if obj.get("apiVersion") not in (None, "", want) or obj.get("kind") not in (None, "", rt.kind):
            raise bad_request("the API version in the data (%s) does not match the expected API version (%s)"
                              % (obj.get("apiVersion"), want) if obj.get("apiVersion") not in (None, "", want) else
                              "%s in version %s cannot be handled as a %s: wrong kind %s" % (rt.kind, version, rt.kind, obj.get("kind")))
        obj["apiVersion"], obj["kind"] = want, rt.kind
        if not isinstance(obj.setdefault("metadata", {}), dict):
            raise bad_request("metadata must be an object")
        return obj

    def check_namespace(self, ns):
        nsobj = self.find(self.type("", "namespaces"), None, ns)
        if nsobj is None:
            raise ApiError(404, "NotFound", 'namespaces "%s" not found' % ns, {"name": ns, "kind": "namespaces"})
        if nsobj["metadata"].get("deletionTimestamp"):
            raise ApiError(403, "Forbidden", "unable to create new content in namespace %s because it is being terminated" % ns,
                           {"name": ns, "kind": "namespaces"})

    def admit(self, rt, version, obj, old, opts):
        """Name checks, then the CRD schema (prune, default, validate) or a built-in's admission."""
        meta = obj["metadata"]
        name = meta.get("name")
        errors = []
        label = rt.plural == "namespaces"     # namespace names are DNS labels, other names DNS subdomains
        if not name:
            errors.append(FieldError(["metadata", "name"], "FieldValueRequired", "Required value: name or generateName is required"))
        elif rt.group == RBAC_GROUP:
            if name in (".", "..") or "/" in name or "%" in name:      # RBAC names are path segments
                errors.append(FieldError(["metadata", "name"], "FieldValueInvalid", 'Invalid value: "%s": may not '
                                         "contain '/' or '%%' and may not be '.' or '..'" % name))
        elif len(name) > 253 or not (DNS_LABEL if label else DNS_SUBDOMAIN).match(name):
            errors.append(FieldError(["metadata", "name"], "FieldValueInvalid", 'Invalid value: "%s": a lowercase RFC 1123 %s must '
                                     "consist of lower case alphanumeric characters, '-'%s, and must start and end with an "
                                     "alphanumeric character" % (name, "label" if label else "subdomain", "" if label else " or '.'")))
        if rt.crd:
            obj, errs, unknown = check_custom_resource(rt, version, obj)
            errors += errs
            if unknown:
                fields = ", ".join('unknown field "%s"' % path_str(p) for p in unknown)
                if opts.get("validation") == "Strict":
                    raise bad_request('%s in version "%s" cannot be handled as a %s: strict decoding error: %s'
                                      % (rt.kind, version, rt.kind, fields))
                if opts.get("validation") != "Ignore":
                    opts.setdefault("warnings", []).extend('unknown field "%s"' % path_str(p) for p in unknown)
        else:
            schema = builtin_schema(rt, version)
            if schema is not None:
                obj, errs = self.decode_builtin(rt, version, schema, obj, opts)
                errors += errs
            if rt.plural in BUILTIN_ADMISSION and not errors:
                errors += BUILTIN_ADMISSION[rt.plural](self, obj, old)
        if errors:
            raise invalid(rt, name or meta.get("generateName", ""), errors)
        return obj

    @staticmethod
    def decode_builtin(rt, version, schema, obj, opts):
        """A built-in object as its Go type decodes it: unknown fields dropped (a warning) or
        refused (Strict), a value of the wrong type refused (400); returns it and the missing
        required fields (422)."""
        dec = BuiltinDecode()
        out = dec.walk(schema, obj, [])
        if dec.wrong:
            raise dec.decode_error(rt, version)
        if dec.unknown:
            fields = ", ".join('unknown field "%s"' % path_str(p) for p in dec.unknown)
            if opts.get("validation") == "Strict":
                raise bad_request('%s in version "%s" cannot be handled as a %s: strict decoding error: %s'
                                  % (rt.kind, version, rt.kind, fields))
            if opts.get("validation") != "Ignore":
                opts.setdefault("warnings", []).extend('unknown field "%s"' % path_str(p) for p in dec.unknown)
        out.setdefault("metadata", {})
        return out, [FieldError(p, "FieldValueRequired", "Required value") for p in dec.missing]

    def update(self, rt, ns, name, body, opts, sub=None):
        with self.lock:
            old = self.find(rt, ns, name)
            if old is None:
                raise not_found(rt, name)
            new = self.check_body(rt, opts.get("version") or rt.versions[0], body)
            if new["metadata"].get("name") not in (None, name):
                raise bad_request("the name of the object (%s) does not match the name on the URL (%s)"
                                  % (new["metadata"]["name"], name))
            return self.write(rt, old, new, opts, sub)

    def patch(self, rt, ns, name, ptype, patch, opts, sub=None):
        with self.lock:
            if ptype == "application/apply-patch+yaml":
                return self.apply(rt, ns, name, patch, opts, sub)
            old = self.find(rt, ns, name)
            if old is None:
                raise not_found(rt, name)
            base = self.view(rt, old, opts.get("version"))
            if ptype == "application/json-patch+json":
                new = json_patch(base, patch)
            elif ptype == "application/merge-patch+json" or (ptype == "application/strategic-merge-patch+json" and rt.crd):
                new = merge_patch(base, patch)
            elif ptype == "application/strategic-merge-patch+json":
                new = strategic_merge(base, patch, builtin_schema(rt, opts.get("version") or rt.versions[0]))
            else:
                raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                               "accepted media types include: application/json-patch+json, application/merge-patch+json, "
                               "application/apply-patch+yaml, application/strategic-merge-patch+json")
            return self.write(rt, old, self.check_body(rt, opts.get("version") or rt.versions[0], new), opts, sub)

    def apply(self, rt, ns, name, applied, opts, sub):
        """Server-side apply, approximated: each manager owns the leaf paths it applied (kept in
        metadata.managedFields as FieldsV1); fields it applied before and omits now are removed;
        a field another Apply manager owns with a different value is a conflict unless force."""
        manager = opts.get("manager")
        if not manager:
            raise bad_request("PATCH requests with apply content type must have a fieldManager")
        version = opts.get("version") or rt.versions[0]
        if not isinstance(applied, dict) or applied.get("apiVersion") != rt.api_version(version) or applied.get("kind") != rt.kind:
            raise bad_request("apply configurations must set apiVersion %s and kind %s" % (rt.api_version(version), rt.kind))
        if (applied.get("metadata") or {}).get("name") not in (None, name):
            raise bad_request("the name of the object (%s) does not match the name on the URL (%s)" % (applied["metadata"]["name"], name))
        schema = builtin_schema(rt, version)
        if schema is not None:
            dec = BuiltinDecode()
            dec.walk(schema, applied, [])
            if dec.wrong or dec.unknown:
                raise dec.typed_patch_error(rt, version, ns, name, schema, applied)
        paths = owned_paths(applied, sub == "status")
        entry = {"manager": manager, "operation": "Apply", "apiVersion": rt.api_version(version), "time": now_iso(),
                 "fieldsType": "FieldsV1", "fieldsV1": paths_to_fields(paths)}
        if sub:
            entry["subresource"] = sub
        old = self.find(rt, ns, name)
        if old is None:
            if sub:
                raise not_found(rt, name)
            obj = copy.deepcopy(applied)
            obj["metadata"] = dict(obj.get("metadata") or {}, name=name, managedFields=[entry])
            opts["created"] = True      # answered with 201, as a create
            return self.create(rt, ns, obj, opts)
        managed = copy.deepcopy(old["metadata"].get("managedFields") or [])
        same = [m for m in managed if m.get("operation") == "Apply" and m.get("subresource") == entry.get("subresource")]
        mine = next((m for m in same if m["manager"] == manager), None)
        conflicts, others = [], set()
        for m in same:
            if m is mine:
                continue
            theirs = fields_to_paths(m.get("fieldsV1"))
            clash = {p for p in paths & theirs if get_path(old, p) != get_path(applied, p)}
            if clash and opts.get("force"):
                theirs -= clash
                m["fieldsV1"] = paths_to_fields(theirs)
            conflicts += [(m["manager"], p) for p in sorted(clash)] if not opts.get("force") else []
            others |= theirs
        if conflicts:
            msg = "Apply failed with %d conflict%s: " % (len(conflicts), "s" if len(conflicts) > 1 else "")
            msg += "; ".join('conflict with "%s": .%s' % (m, ".".join(p)) for m, p in conflicts)
            raise ApiError(409, "Conflict", msg, {"name": name, "group": rt.group, "kind": rt.plural, "causes": [
                {"reason": "FieldManagerConflict", "message": 'conflict with "%s"' % m, "field": "." + ".".join(p)} for m, p in conflicts]})
        new = self.view(rt, old, version)
        for p in fields_to_paths(mine["fieldsV1"]) - paths - others if mine else ():
            if not any(q[:len(p)] == p for q in paths):
                delete_path(new, p)
                # A map left empty and owned by no one goes too (a field no longer applied is
                # removed whole, not as a map without its required fields).
                for parent in (p[:i] for i in range(len(p) - 1, 0, -1)):
                    if get_path(new, parent) != {} or any(q[:len(parent)] == parent for q in paths | others):
                        break
                    delete_path(new, parent)
        new = apply_merge(new, applied, not rt.crd, schema)
        managed = [entry if m is mine else m for m in managed if m.get("fieldsV1") or m is mine]
        if mine is None:
            managed.append(entry)
        return self.write(rt, old, new, opts, sub, managed)

    def write(self, rt, old, new, opts, sub, managed=None):
        """The common end of PUT, PATCH and apply: subresource rules, conflicts, admission, generation."""
        version = opts.get("version") or rt.versions[0]
        name, old_meta = old["metadata"]["name"], old["metadata"]
        rv = new["metadata"].get("resourceVersion")
        if rv and rv != old_meta["resourceVersion"]:
            raise conflict(rt, name, "the object has been modified; please apply your changes to the latest version and try again")
        if new["metadata"].get("uid") and new["metadata"]["uid"] != old_meta["uid"]:
            raise conflict(rt, name, "Precondition failed: UID in precondition: %s, UID in object meta: %s"
                           % (new["metadata"]["uid"], old_meta["uid"]))
        if sub == "status":
            # /status changes .status only: spec, labels and annotations stay as stored.
            status = new.get("status")
            new = self.view(rt, old, version)
            new.pop("status", None)
            if status is not None:
                new["status"] = status
        elif rt.has_status:
            new.pop("status", None)
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        meta = new["metadata"]
        for k in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            meta.pop(k, None)
            if k in old_meta:
                meta[k] = old_meta[k]
        meta["resourceVersion"] = old_meta["resourceVersion"]
        meta.pop("managedFields", None)
        if managed or old_meta.get("managedFields"):
            meta["managedFields"] = managed if managed is not None else old_meta["managedFields"]
        if old_meta.get("deletionTimestamp"):
            added = [f for f in meta.get("finalizers") or [] if f not in (old_meta.get("finalizers") or [])]
            if added:
                raise invalid(rt, name, [FieldError(["metadata", "finalizers"], "FieldValueForbidden", "Forbidden: no new "
                                                    "finalizers can be added if the object is being deleted, found new "
                                                    "finalizers %s" % json.dumps(added))])
        new = self.admit(rt, version, new, old, opts)
        if "generation" in old_meta and self.spec_of(rt, new) != self.spec_of(rt, old):
            new["metadata"]["generation"] = old_meta.get("generation", 1) + 1
        if self.comparable(new) == self.comparable(old):
            return self.view(rt, old, version)      # a no-op write keeps its resourceVersion, like the real server
        if opts.get("dry_run"):
            return self.view(rt, new, version)
        self.record(rt, "MODIFIED", new, old)
        self.after_write(rt, new, old)
        if old_meta.get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self.finish_delete(rt, new)
        return self.view(rt, new, version)

    @staticmethod
    def spec_of(rt, obj):
        if rt.crd:
            return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}
        return obj.get("spec")

    @staticmethod
    def comparable(obj):
        out = dict(obj, apiVersion=None, metadata=dict(obj["metadata"]))
        out["metadata"]["managedFields"] = [dict(m, time=None) for m in obj["metadata"].get("managedFields") or []]
        return out

    def after_write(self, rt, new, old):
        if rt.key == ("", "namespaces") and old is None and self.default_service_accounts:
            self.create(self.type("", "serviceaccounts"), new["metadata"]["name"], {"metadata": {"name": "default"}}, {})
        if rt.plural == "customresourcedefinitions":
            if old is not None:
                self.types.pop((old["spec"]["group"], old["spec"]["names"]["plural"]), None)
            crt = crd_resource_type(new)
            self.add_type(crt)

    # -- deletion, finalizers and garbage collection

    def delete(self, rt, ns, name, opts):
        with self.lock:
            obj = self.find(rt, ns, name)
            if obj is None:
                raise not_found(rt, name)
            pre = opts.get("preconditions") or {}
            for field in ("uid", "resourceVersion"):
                if pre.get(field) and pre[field] != obj["metadata"].get(field):
                    raise conflict(rt, name, "Precondition failed: %s in precondition: %s, %s in object meta: %s"
                                   % (field.upper() if field == "uid" else "ResourceVersion", pre[field],
                                      field.upper() if field == "uid" else "ResourceVersion", obj["metadata"].get(field)))
            if opts.get("dry_run"):
                return self.view(rt, obj, opts.get("version"))
            last, gone = self.delete_object(rt, obj, opts.get("propagation") or "Background")
            if gone and not rt.crd and rt.plural not in ("pods", "jobs", "namespaces"):
                return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                        "details": {"name": name, "group": rt.group, "kind": rt.plural, "uid": obj["metadata"]["uid"]}}
            return self.view(rt, last, opts.get("version"))

    def delete_object(self, rt, obj, policy):
        """Deletes now, or (finalizers, namespaces) marks it with a deletionTimestamp and waits.
        Returns (last state, whether it is gone)."""
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return obj, False
        if meta.get("finalizers") or rt.plural == "namespaces":
            new = copy.deepcopy(obj)
            new["metadata"].update(deletionTimestamp=now_iso(), deletionGracePeriodSeconds=0)
            if new["metadata"].get("generation"):
                new["metadata"]["generation"] += 1
            if rt.plural == "namespaces":
                new.setdefault("status", {})["phase"] = "Terminating"
            if policy == "Orphan":
                self.orphan_dependents(meta["uid"])
            self.record(rt, "MODIFIED", new, obj)
            if rt.plural == "namespaces":
                self.empty_namespace(meta["name"])
                new = self.find(rt, None, meta["name"]) or new
            return new, self.find(rt, meta.get("namespace"), meta["name"]) is None
        return self.finish_delete(rt, obj, policy), True

    def finish_delete(self, rt, obj, policy="Background"):
        """Really removes an object, then what only it owned (or orphans those)."""
        if rt.plural == "namespaces" and any(ns == obj["metadata"]["name"] for key, objs in self.objects.items()
                                             if self.types[key].namespaced for ns, _ in objs):
            return obj      # the namespace goes once its content has gone
        last = copy.deepcopy(obj)
        self.record(rt, "DELETED", last, obj)
        uid = last["metadata"]["uid"]
        if rt.plural == "customresourcedefinitions":
            crt = self.types.get((last["spec"]["group"], last["spec"]["names"]["plural"]))
            if crt is not None:
                for o in list(self.objects[crt.key].values()):
                    self.finish_delete(crt, o)
                del self.types[crt.key], self.objects[crt.key]
                self.generation += 1
        if policy == "Orphan":
            self.orphan_dependents(uid)
        else:
            for key, objs in list(self.objects.items()):
                for dep in list(objs.values()):
                    refs = dep["metadata"].get("ownerReferences") or []
                    if any(r.get("uid") == uid for r in refs) and not any(r.get("uid") in self.uids for r in refs):
                        if self.find(self.types[key], dep["metadata"].get("namespace"), dep["metadata"]["name"]) is dep:
                            self.delete_object(self.types[key], dep, "Background")
        ns = last["metadata"].get("namespace")
        nsobj = self.find(self.type("", "namespaces"), None, ns) if ns else None
        if nsobj is not None and nsobj["metadata"].get("deletionTimestamp") and not nsobj["metadata"].get("finalizers"):
            self.finish_delete(self.type("", "namespaces"), nsobj)
        return last

    def orphan_dependents(self, uid):
        for key, objs in list(self.objects.items()):
            for dep in list(objs.values()):
                refs = dep["metadata"].get("ownerReferences") or []
                if any(r.get("uid") == uid for r in refs):
                    new = copy.deepcopy(dep)
                    new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                    if not new["metadata"]["ownerReferences"]:
                        del new["metadata"]["ownerReferences"]
                    self.record(self.types[key], "MODIFIED", new, dep)

    def empty_namespace(self, ns):
        for key, objs in list(self.objects.items()):
            rt = self.types[key]
            if rt.namespaced:
                for (ons, _), o in list(objs.items()):
                    if ons == ns and self.find(rt, ons, o["metadata"]["name"]) is o:
                        self.delete_object(rt, o, "Background")
        nsobj = self.find(self.type("", "namespaces"), None, ns)
        if nsobj is not None and not nsobj["metadata"].get("finalizers"):
            self.finish_delete(self.type("", "namespaces"), nsobj)


# ----------------------------------------------------------------------------------------------
# Authentication and RBAC (--rbac). Bearer tokens map to identities: the kubeconfig's token is
# an admin (group system:masters: allowed everything, as kind's kubeconfig), tokens issued by
# TokenRequest are their service account's. Authorization is the RBAC authorizer's: the rules of
# Roles and ClusterRoles bound to the user, its groups or its service account.

ADMIN_TOKEN = "emulator-token"
ADMIN = {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]}
ANONYMOUS = {"username": "system:anonymous", "groups": ["system:unauthenticated"]}


def rbac_object(kind, name, rules=None, role=None, groups=()):
    meta = {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}}
    if kind == "ClusterRole":
        return {"apiVersion": RBAC_GROUP + "/v1", "kind": kind, "metadata": meta, "rules": rules}
    return {"apiVersion": RBAC_GROUP + "/v1", "kind": kind, "metadata": meta,
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": g} for g in groups]}


# The bootstrap roles of a real cluster that a test can notice: cluster-admin for system:masters,
# discovery and health for everyone authenticated, health and version for everyone, and the
# self-reviews (kubectl auth can-i / whoami) for everyone authenticated.
BOOTSTRAP_RBAC = [
    ("clusterroles", rbac_object("ClusterRole", "cluster-admin", [
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}])),
    ("clusterroles", rbac_object("ClusterRole", "system:discovery", [
        {"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*",
                             "/readyz", "/version", "/version/"], "verbs": ["get"]}])),
    ("clusterroles", rbac_object("ClusterRole", "system:public-info-viewer", [
        {"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}])),
    ("clusterroles", rbac_object("ClusterRole", "system:basic-user", [
        {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
         "verbs": ["create"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}])),
    ("clusterrolebindings", rbac_object("ClusterRoleBinding", "cluster-admin", role="cluster-admin",
                                        groups=["system:masters"])),
    ("clusterrolebindings", rbac_object("ClusterRoleBinding", "system:discovery", role="system:discovery",
                                        groups=["system:authenticated"])),
    ("clusterrolebindings", rbac_object("ClusterRoleBinding", "system:public-info-viewer", role="system:public-info-viewer",
                                        groups=["system:authenticated", "system:unauthenticated"])),
    ("clusterrolebindings", rbac_object("ClusterRoleBinding", "system:basic-user", role="system:basic-user",
                                        groups=["system:authenticated"])),
]


def service_account_user(ns, name, uid=None):
    user = {"username": "system:serviceaccount:%s:%s" % (ns, name),
            "groups": ["system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"]}
    if uid:
        user["uid"] = uid
    return user


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Attributes:
    """What a request asks to do, as the authorizer sees it (the apiserver's RequestInfo)."""

    def __init__(self, verb, group="", resource="", sub="", namespace="", name="", path=None):
        self.verb, self.group, self.resource, self.sub = verb, group, resource, sub or ""
        self.namespace, self.name, self.path = namespace or "", name or "", path

    def describe(self):
        """The apiserver's forbiddenMessage, after `... is forbidden: `."""
        if self.path is not None:
            return 'cannot %s path "%s"' % (self.verb, self.path)
        resource = self.resource + ("/" + self.sub if self.sub else "")
        where = ' in the namespace "%s"' % self.namespace if self.namespace else " at the cluster scope"
        return 'cannot %s resource "%s" in API group "%s"%s' % (self.verb, resource, self.group, where)


def forbidden(user, attrs, reason=""):
    msg = 'User "%s" %s' % (user["username"], attrs.describe())
    if reason:
        msg += ": " + reason
    if attrs.path is not None:
        return ApiError(403, "Forbidden", "forbidden: " + msg, {})
    qualified = attrs.resource + ("." + attrs.group if attrs.group else "")
    head = '%s "%s" is forbidden' % (qualified, attrs.name) if attrs.name else "%s is forbidden" % qualified
    return ApiError(403, "Forbidden", "%s: %s" % (head, msg), {"name": attrs.name, "group": attrs.group, "kind": attrs.resource})


def unauthorized():
    return ApiError(401, "Unauthorized", "Unauthorized", {})


class Auth:
    """Tokens and the RBAC authorizer. With enforce=False (no --rbac) everyone is the admin."""

    def __init__(self, cluster, enforce):
        self.cluster, self.enforce = cluster, enforce
        self.tokens = {}    # token -> (namespace, service account, its uid, expiry as a unix time)
        self.lock = threading.Lock()

    # -- authentication

    def issue(self, ns, name, uid, seconds, audiences):
        """A token for the service account: JWT-shaped (claims as the real issuer writes them),
        but the server recognises it by lookup, not by signature."""
        now = int(time.time())
        claims = {"aud": audiences, "exp": now + seconds, "iat": now, "nbf": now,
                  "iss": "https://kubernetes.default.svc.cluster.local", "sub": "system:serviceaccount:%s:%s" % (ns, name),
                  "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": uid}}}
        token = ".".join([b64url(json.dumps({"alg": "RS256", "kid": "kube-emulator"}).encode()),
                          b64url(json.dumps(claims).encode()), b64url(os.urandom(32))])
        with self.lock:
            self.tokens[token] = (ns, name, uid, now + seconds)
        return token, now + seconds

    def authenticate(self, header):
        """The identity of a request's `Authorization` header; 401 for a token nobody issued,
        an expired one, or one whose service account is gone (bound tokens die with it)."""
        if not self.enforce:
            return ADMIN
        if not header:
            return ANONYMOUS
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized()
        if token == ADMIN_TOKEN:
            return ADMIN
        with self.lock:
            found = self.tokens.get(token)
        if found is None or found[3] < time.time():
            raise unauthorized()
        ns, name, uid, _ = found
        with self.cluster.lock:
            sa = self.cluster.find(self.cluster.type("", "serviceaccounts"), ns, name)
        if sa is None or sa["metadata"]["uid"] != uid:
            raise unauthorized()
        return service_account_user(ns, name, uid)

    def impersonate(self, user, headers):
        """`Impersonate-User`/`Impersonate-Group` (kubectl --as/--as-group), for a user allowed to
        `impersonate` users, groups or service accounts."""
        as_user, as_groups = headers.get("Impersonate-User"), headers.get_all("Impersonate-Group") or []
        if not as_user:
            if as_groups:
                raise bad_request("requested Impersonate-Group without Impersonate-User")
            return user
        m = re.match(r"^system:serviceaccount:([^:]+):([^:]+)$", as_user)
        checks = ([Attributes("impersonate", "", "serviceaccounts", namespace=m.group(1), name=m.group(2))] if m
                  else [Attributes("impersonate", "", "users", name=as_user)])
        checks += [Attributes("impersonate", "", "groups", name=g) for g in as_groups]
        for attrs in checks:
            allowed, reason = self.authorize(user, attrs)
            if not allowed:
                kind = {"serviceaccounts": "serviceaccounts", "users": "users", "groups": "groups"}[attrs.resource]
                raise ApiError(403, "Forbidden", '%s "%s" is forbidden: User "%s" cannot impersonate resource "%s" in API '
                               'group "" at the cluster scope' % (kind, attrs.name, user["username"], kind), {})
        out = service_account_user(m.group(1), m.group(2)) if m else {"username": as_user, "groups": []}
        out["groups"] = list(dict.fromkeys(list(as_groups) + out["groups"] + (
            ["system:authenticated"] if as_user != "system:anonymous" else [])))
        return out

    # -- authorization

    def authorize(self, user, attrs):
        """(allowed, reason) for the user and the request's attributes."""
        if not self.enforce or "system:masters" in user.get("groups", []):
            return True, ""
        errors = []
        with self.cluster.lock:
            for rules in self.rules_for(user, attrs.namespace, errors):
                if any(self.rule_allows(rule, attrs) for rule in rules):
                    return True, ""
        return False, ("RBAC: " + ", ".join(errors)) if errors else ""

    def rules_for(self, user, namespace, errors):
        """The rule lists that apply: ClusterRoleBindings everywhere, RoleBindings of the namespace."""
        cl = self.cluster
        for (_, _), b in sorted(cl.objects[(RBAC_GROUP, "clusterrolebindings")].items()):
            if self.binds(b, user, None):
                yield self.role_rules(b["roleRef"], None, errors)
        if namespace:
            for (ns, _), b in sorted(cl.objects[(RBAC_GROUP, "rolebindings")].items()):
                if ns == namespace and self.binds(b, user, ns):
                    yield self.role_rules(b["roleRef"], ns, errors)

    @staticmethod
    def binds(binding, user, ns):
        for s in binding.get("subjects") or []:
            kind, name = s.get("kind"), s.get("name")
            if ((kind == "User" and name == user["username"]) or (kind == "Group" and name in user.get("groups", []))
                    or (kind == "ServiceAccount" and user["username"] == "system:serviceaccount:%s:%s"
                        % (s.get("namespace") or ns, name))):
                return True
        return False

    def role_rules(self, ref, ns, errors):
        cl = self.cluster
        if ref.get("kind") == "Role":
            role = cl.find(cl.type(RBAC_GROUP, "roles"), ns, ref.get("name"))
            if role is None:
                errors.append('role.rbac.authorization.k8s.io "%s" not found' % ref.get("name"))
            return (role or {}).get("rules") or []
        role = cl.find(cl.type(RBAC_GROUP, "clusterroles"), None, ref.get("name"))
        if role is None:
            errors.append('clusterrole.rbac.authorization.k8s.io "%s" not found' % ref.get("name"))
            return []
        rules = list(role.get("rules") or [])
        # An aggregated ClusterRole holds the rules of the ClusterRoles its selectors select (the
        # real controller copies them into it; here they are looked up when needed).
        for sel in dig(role, "aggregationRule", "clusterRoleSelectors") or []:
            for other in cl.objects[(RBAC_GROUP, "clusterroles")].values():
                if other is not role and selector_matches(sel, other["metadata"].get("labels")):
                    rules += other.get("rules") or []
        return rules

    @staticmethod
    def rule_allows(rule, attrs):
        verbs = rule.get("verbs") or []
        if "*" not in verbs and attrs.verb not in verbs:
            return False
        if attrs.path is not None:
            return any(u == "*" or u == attrs.path or (u.endswith("*") and attrs.path.startswith(u[:-1]))
                       for u in rule.get("nonResourceURLs") or [])
        groups = rule.get("apiGroups") or []
        if "*" not in groups and attrs.group not in groups:
            return False
        full = attrs.resource + ("/" + attrs.sub if attrs.sub else "")
        if not any(r == "*" or r == full or (attrs.sub and r == "*/" + attrs.sub) for r in rule.get("resources") or []):
            return False
        names = rule.get("resourceNames") or []
        return not names or attrs.name in names


def subject_access_review(auth, rt, body, requester):
    """SelfSubjectAccessReview (as the requester), SubjectAccessReview (as spec.user/groups),
    SelfSubjectReview (who am I)."""
    out = copy.deepcopy(body)
    out.setdefault("metadata", {})["creationTimestamp"] = now_iso()
    if rt.kind == "SelfSubjectRulesReview":
        # kubectl auth can-i --list: every rule that applies in the namespace.
        errors, resource, nonresource = [], [], []
        with auth.cluster.lock:
            for rules in auth.rules_for(requester, (out.get("spec") or {}).get("namespace"), errors):
                for r in rules:
                    if r.get("nonResourceURLs"):
                        nonresource.append({"verbs": r["verbs"], "nonResourceURLs": r["nonResourceURLs"]})
                    else:
                        resource.append({k: r[k] for k in ("verbs", "apiGroups", "resources", "resourceNames") if k in r})
        out["status"] = {"resourceRules": resource, "nonResourceRules": nonresource, "incomplete": False}
        if errors:
            out["status"]["evaluationError"] = ", ".join(errors)
        return out
    if rt.kind == "SelfSubjectReview":
        info = {"username": requester["username"], "groups": requester["groups"]}
        if requester.get("uid"):
            info["uid"] = requester["uid"]
        out["status"] = {"userInfo": info}
        return out
    spec = out.get("spec") or {}
    user = requester if rt.kind == "SelfSubjectAccessReview" else {
        "username": spec.get("user", ""), "groups": spec.get("groups") or []}
    res, nonres = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if res:
        attrs = Attributes(res.get("verb", ""), res.get("group", ""), res.get("resource", ""), res.get("subresource"),
                           res.get("namespace"), res.get("name"))
    elif nonres:
        attrs = Attributes(nonres.get("verb", ""), path=nonres.get("path", ""))
    else:
        raise invalid(rt, "", [FieldError(["spec", "resourceAttributes"], "FieldValueRequired",
                                          "Required value: exactly one of nonResourceAttributes or resourceAttributes "
                                          "must be specified")])
    allowed, reason = auth.authorize(user, attrs)
    out["status"] = {"allowed": allowed}
    if reason:
        out["status"]["reason"] = reason
    return out


# ----------------------------------------------------------------------------------------------
# Table output (kubectl get): Name, the CRD version's printer columns (or a few per built-in), rows.

NAME_COLUMN = {"name": "Name", "type": "string", "format": "name", "priority": 0,
               "description": "Name must be unique within a namespace. Is required when creating resources, "
                              "although some resources may allow a client to request the generation of an "
                              "appropriate name automatically."}
AGE_COLUMN = {"name": "Age", "type": "string", "jsonPath": ".metadata.creationTimestamp", "format": "", "priority": 0,
              "description": "CreationTimestamp is a timestamp representing the server time when this object was created."}


def jsonpath(obj, expr):
    """The simple JSONPath of printer columns: .a.b, .a[0], .a['x.y'], .a[?(@.type=="Ready")].b"""
    expr = expr.strip()
    if expr.startswith("{") and expr.endswith("}"):
        expr = expr[1:-1]
    token = re.compile(r"\.([^.\[\]]+)|\[(-?\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]"
                       r"|\[\?\(@\.([\w.-]+)\s*==\s*['\"]([^'\"]*)['\"]\)\]")
    pos, cur = 0, obj
    while pos < len(expr):
        m = token.match(expr, pos)
        if not m or cur is None:
            return None
        pos = m.end()
        if m.group(2) is not None:
            cur = dig(cur, int(m.group(2)))
        elif m.group(5) is not None:
            cur = next((x for x in cur if isinstance(x, dict) and str(dig(x, *m.group(5).split("."))) == m.group(6)), None) \
                if isinstance(cur, list) else None
        else:
            cur = dig(cur, m.group(1) or m.group(3) or m.group(4))
    return cur


def column_cell(col, value):
    """A cell as the real table convertor types it; dates become ages."""
    t = col.get("type")
    if value is None:
        return None
    if t == "date":
        return human_age(value) if isinstance(value, str) else None
    if t == "integer":
        return int(value) if type_matches("number", value) else None
    if t == "number":
        return float(value) if type_matches("number", value) else None
    if t == "boolean":
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return str(value).lower()
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def job_state(o):
    conds = {c.get("type"): c.get("status") for c in dig(o, "status", "conditions") or []}
    for state in ("Complete", "Failed", "Suspended"):
        if conds.get(state) == "True":
            return state
    return "Running"


def job_duration(o):
    start, end = parse_time(dig(o, "status", "startTime")), parse_time(dig(o, "status", "completionTime"))
    if start is None:
        return ""
    return human_age(start.strftime("%Y-%m-%dT%H:%M:%SZ")) if end is None else "%ds" % int((end - start).total_seconds())


BUILTIN_COLUMNS = {   # plural -> [(column, type, function of the object)]
    "namespaces": [("Status", "string", lambda o: dig(o, "status", "phase"))],
    "pods": [("Ready", "string", lambda o: "%d/%d" % (sum(1 for c in dig(o, "status", "containerStatuses") or [] if c.get("ready")),
                                                      len(dig(o, "spec", "containers") or []))),
             ("Status", "string", lambda o: dig(o, "status", "containerStatuses", 0, "state", "terminated", "reason")
              or dig(o, "status", "phase")), ("Restarts", "integer", lambda o: 0)],
    "jobs": [("Status", "string", job_state),
             ("Completions", "string", lambda o: "%d/%s" % (dig(o, "status", "succeeded") or 0, dig(o, "spec", "completions") or "1")),
             ("Duration", "string", job_duration)],
    "configmaps": [("Data", "integer", lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {}))],
    "secrets": [("Type", "string", lambda o: o.get("type")), ("Data", "integer", lambda o: len(o.get("data") or {}))],
    "leases": [("Holder", "string", lambda o: dig(o, "spec", "holderIdentity"))],
    "deployments": [("Ready", "string", lambda o: "%d/%d" % (dig(o, "status", "readyReplicas") or 0, dig(o, "spec", "replicas") or 0)),
                    ("Up-to-date", "integer", lambda o: dig(o, "status", "updatedReplicas") or 0),
                    ("Available", "integer", lambda o: dig(o, "status", "availableReplicas") or 0)],
    "replicasets": [("Desired", "integer", lambda o: dig(o, "spec", "replicas") or 0),
                    ("Current", "integer", lambda o: dig(o, "status", "replicas") or 0),
                    ("Ready", "integer", lambda o: dig(o, "status", "readyReplicas") or 0)],
    "services": [("Type", "string", lambda o: dig(o, "spec", "type")), ("Cluster-IP", "string", lambda o: dig(o, "spec", "clusterIP")),
                 ("Ports", "string", lambda o: ",".join("%s/%s" % (p.get("port"), p.get("protocol", "TCP"))
                                                        for p in dig(o, "spec", "ports") or []))],
    "poddisruptionbudgets": [("Min Available", "string", lambda o: str(dig(o, "spec", "minAvailable") or "N/A")),
                             ("Max Unavailable", "string", lambda o: str(dig(o, "spec", "maxUnavailable") or "N/A")),
                             ("Allowed Disruptions", "integer", lambda o: dig(o, "status", "disruptionsAllowed") or 0)],
    "rolebindings": [("Role", "string", lambda o: "%s/%s" % (dig(o, "roleRef", "kind"), dig(o, "roleRef", "name")))],
    "clusterrolebindings": [("Role", "string", lambda o: "%s/%s" % (dig(o, "roleRef", "kind"), dig(o, "roleRef", "name")))],
    "events": [("Reason", "string", lambda o: o.get("reason")), ("Note", "string", lambda o: o.get("note") or o.get("message"))],
}


def to_table(rt, version, objs, include="Metadata", headers=True, rv=None, table_version="v1"):
    if rt.crd:
        cols = rt.columns.get(version) or [AGE_COLUMN]
        defs = [dict(NAME_COLUMN)] + [{"name": c["name"], "type": c["type"], "format": c.get("format", ""),
                                       "description": c.get("description", ""), "priority": c.get("priority", 0)} for c in cols]
        cells = lambda o: [column_cell(c, jsonpath(o, c["jsonPath"])) for c in cols]
    else:
        cols = BUILTIN_COLUMNS.get(rt.plural, []) + [("Age", "date", lambda o: dig(o, "metadata", "creationTimestamp"))]
        defs = [dict(NAME_COLUMN)] + [{"name": n, "type": "string" if t == "date" else t, "format": "", "description": n, "priority": 0}
                                      for n, t, _ in cols]
        cells = lambda o: [column_cell({"type": t}, f(o)) for _, t, f in cols]
    rows = []
    for o in objs:
        row = {"cells": [o["metadata"]["name"]] + cells(o)}
        if include == "Object":
            row["object"] = o
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/" + table_version, "metadata": {"resourceVersion": str(rv or "")},
            "columnDefinitions": defs if headers else [], "rows": rows}


# ----------------------------------------------------------------------------------------------
# Discovery and OpenAPI. The OpenAPI v3 documents only declare each kind's PATCH parameters, which
# is what kubectl reads to learn that the server validates fields itself (fieldValidation); then
# `kubectl apply` (--validate=strict) sends fieldValidation=Strict instead of validating locally.

def group_versions(cluster):
    gv = {}
    for rt in cluster.types.values():
        gv.setdefault(rt.group, set()).update(rt.versions)
    return {g: sorted(vs, key=version_priority) for g, vs in gv.items()}


def group_doc(group, versions):
    vs = [{"groupVersion": "%s/%s" % (group, v), "version": v} for v in versions]
    return {"name": group, "versions": vs, "preferredVersion": vs[0]}


def resource_list(cluster, group, version):
    resources = []
    for rt in sorted(cluster.types.values(), key=lambda r: r.plural):
        if rt.group != group or version not in rt.versions:
            continue
        r = {"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced, "kind": rt.kind, "verbs": rt.verbs}
        if rt.short_names:
            r["shortNames"] = rt.short_names
        if rt.categories:
            r["categories"] = rt.categories
        resources.append(r)
        if rt.has_status:
            resources.append({"name": rt.plural + "/status", "singularName": "", "namespaced": rt.namespaced,
                              "kind": rt.kind, "verbs": ["get", "patch", "update"]})
        if rt.key == ("", "pods"):
            resources.append({"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]})
        if rt.key == ("", "serviceaccounts"):
            resources.append({"name": "serviceaccounts/token", "singularName": "", "namespaced": True, "kind": "TokenRequest",
                              "group": "authentication.k8s.io", "version": "v1", "verbs": ["create"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "%s/%s" % (group, version) if group else version,
            "resources": resources}


def aggregated_discovery(cluster, core, version):
    """apidiscovery.k8s.io v2 (or v2beta1): every group, version and resource in one document."""
    items = []
    for group, versions in sorted(group_versions(cluster).items()):
        if (group == "") != core:
            continue
        vdocs = []
        for v in versions:
            resources = []
            for r in resource_list(cluster, group, v)["resources"]:
                if "/" in r["name"]:
                    continue
                kind = {"group": group, "version": v, "kind": r["kind"]}
                subs = [{"subresource": x["name"].split("/")[1], "verbs": x["verbs"],
                         "responseKind": {"group": x.get("group", group), "version": x.get("version", v), "kind": x["kind"]}}
                        for x in resource_list(cluster, group, v)["resources"] if x["name"].startswith(r["name"] + "/")]
                doc = {"resource": r["name"], "responseKind": kind, "scope": "Namespaced" if r["namespaced"] else "Cluster",
                       "singularResource": r["singularName"], "verbs": r["verbs"], "subresources": subs}
                doc.update({k: r[k] for k in ("shortNames", "categories") if k in r})
                resources.append(doc)
            vdocs.append({"version": v, "resources": resources, "freshness": "Current"})
        items.append({"metadata": {"name": group}, "versions": vdocs})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/" + version, "metadata": {}, "items": items}


def gv_path(group, version):
    return "apis/%s/%s" % (group, version) if group else "api/" + version


def openapi_index(cluster):
    return {"paths": {gv_path(g, v): {"serverRelativeURL": "/openapi/v3/%s?hash=%08X" % (gv_path(g, v), cluster.generation)}
                      for g, vs in group_versions(cluster).items() for v in vs}}


def openapi_group_version(cluster, group, version):
    params = [{"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
              for n in ("dryRun", "fieldManager", "fieldValidation", "force")]
    doc = {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
           "paths": {}, "components": {"schemas": {}}}
    builtins = []
    for rt in cluster.types.values():
        if rt.group != group or version not in rt.versions:
            continue
        gvk = {"group": group, "version": version, "kind": rt.kind}
        base = "/%s%s/%s" % (gv_path(group, version), "/namespaces/{namespace}" if rt.namespaced else "", rt.plural)
        if rt.verbs == ["create"]:
            doc["paths"][base] = {"post": {"x-kubernetes-group-version-kind": gvk, "parameters": params,
                                           "responses": {"201": {"description": "Created"}}}}
        else:
            doc["paths"][base + "/{name}"] = {"patch": {"x-kubernetes-group-version-kind": gvk, "parameters": params,
                                                        "responses": {"200": {"description": "OK"}}}}
        if not rt.crd:
            builtins.append((group, version, rt.kind))
            if rt.key == ("", "serviceaccounts"):
                builtins.append(("authentication.k8s.io", "v1", "TokenRequest"))
        if rt.crd:
            name = ".".join(reversed(group.split("."))) + ".%s.%s" % (version, rt.kind)
            doc["components"]["schemas"][name] = dict(rt.schemas.get(version) or {}, **{"x-kubernetes-group-version-kind": [gvk]})
    doc["components"]["schemas"].update(builtin_schemas.openapi_components(builtins))
    return doc


# ----------------------------------------------------------------------------------------------
# --run-jobs: a tiny job controller and kubelet. Each attempt of a batch/v1 Job is a Pod object
# and a local process running the first container's command + args (the image is ignored).

class Attempt:
    def __init__(self, pod, index, grace):
        self.pod, self.index, self.grace = pod, index, grace
        self.proc = None                          # None while the container cannot be created
        self.waiting = None                       # why not (CreateContainerConfigError's message)
        self.kill_at, self.cause = None, None     # set once SIGTERM was sent, and why


class ConfigError(Exception):
    """The container's environment names a Secret or ConfigMap (or a key of one) that does not
    exist and is not optional: the kubelet keeps such a pod Pending with the container waiting
    in CreateContainerConfigError, and tries again until the object appears."""


class JobState:
    def __init__(self):
        self.running, self.succeeded, self.failed_indexes, self.failures = {}, set(), set(), {}
        self.failed_total, self.start_time, self.finished, self.conditions = 0, None, None, []


def index_ranges(indexes):
    """{0,1,2,5} -> "0-2,5", the format of completedIndexes and failedIndexes."""
    out, items = [], sorted(indexes)
    for i in items:
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ",".join(str(a) if a == b else "%d-%d" % (a, b) for a, b in out)


class Kubelet:
    """What the job and deployment runners share: status writes, a container's environment from
    its pod (envFrom, env), its command line, and the logs."""
    images = ()     # [(image prefix, program)], longest prefix first (--image)

    def argv(self, container):
        """command + args; without a command, the program the image is mapped to (its
        entrypoint) + args; None when neither is known."""
        args = [str(x) for x in container.get("args") or []]
        if container.get("command"):
            return [str(x) for x in container["command"]] + args
        image = container.get("image") or ""
        program = next((prog for prefix, prog in self.images if image.startswith(prefix)), None)
        return None if program is None else [program] + args

    def write_status(self, rt, obj, status):
        meta = obj["metadata"]
        try:
            body = {"apiVersion": rt.api_version(rt.versions[0]), "kind": rt.kind, "metadata": {"name": meta["name"]}, "status": status}
            self.cluster.update(rt, meta["namespace"], meta["name"], body, {}, sub="status")
        except ApiError:
            pass    # deleted meanwhile

    def source(self, pod, plural, ref, kind):
        """The ConfigMap or Secret a reference names, None when it is missing but optional;
        a required missing one is a ConfigError with the kubelet's message."""
        with self.cluster.lock:
            obj = copy.deepcopy(self.cluster.find(self.cluster.type("", plural), pod["metadata"]["namespace"], ref.get("name")))
        if obj is None and not ref.get("optional"):
            raise ConfigError('%s "%s" not found' % (plural[:-1], ref.get("name")))
        return obj

    @staticmethod
    def source_data(obj, plural):
        """A ConfigMap's data, or a Secret's data decoded from base64 (stringData was folded
        into data when the Secret was written)."""
        data = dict((obj or {}).get("data") or {})
        return {k: base64.b64decode(v).decode() for k, v in data.items()} if plural == "secrets" else data

    def env_value(self, pod, var):
        """The value of one `env` entry; None when it comes from an optional missing source."""
        if "value" in var:
            return str(var["value"])
        src = var.get("valueFrom") or {}
        if "fieldRef" in src:
            path = src["fieldRef"].get("fieldPath", "")
            m = re.match(r"^metadata\.(annotations|labels)\['([^']+)'\]$", path)
            return str((pod["metadata"].get(m.group(1)) or {}).get(m.group(2), "") if m else dig(pod, *path.split(".")) or "")
        for ref, plural, kind in (("configMapKeyRef", "configmaps", "ConfigMap"), ("secretKeyRef", "secrets", "Secret")):
            if ref in src:
                obj = self.source(pod, plural, src[ref], kind)
                data = self.source_data(obj, plural)
                key = src[ref].get("key")
                if key in data:
                    return data[key]
                if obj is None or src[ref].get("optional"):
                    return None
                raise ConfigError("couldn't find key %s in %s %s/%s" % (key, kind, pod["metadata"]["namespace"], src[ref].get("name")))
        return ""

    def container_env(self, pod, container):
        """The container's environment as the kubelet builds it: every `envFrom` source in order
        (a later one wins, keys get the source's `prefix`), then `env`, which wins over them."""
        env = {}
        for src in container.get("envFrom") or []:
            for ref, plural, kind in (("configMapRef", "configmaps", "ConfigMap"), ("secretRef", "secrets", "Secret")):
                if ref in src:
                    obj = self.source(pod, plural, src[ref] or {}, kind)
                    for k, v in self.source_data(obj, plural).items():
                        env[src.get("prefix", "") + k] = v
        for var in container.get("env") or []:
            value = self.env_value(pod, var)
            if value is not None:
                env[var["name"]] = value
        return env

    def logs(self, ns, name):
        out = b""
        for ext in ("stdout", "stderr"):
            try:
                with open(os.path.join(self.log_dir, "%s_%s.%s" % (ns, name, ext)), "rb") as f:
                    out += f.read()
            except OSError:
                pass
        return out


class JobRunner(Kubelet, threading.Thread):
    def __init__(self, cluster, log_dir, images=()):
        threading.Thread.__init__(self, daemon=True, name="job-runner")
        self.cluster, self.log_dir, self.images = cluster, log_dir, images
        self.jobs = {}          # job uid -> JobState
        self.stopped = threading.Event()
        self.jobs_rt, self.pods_rt = cluster.type("batch", "jobs"), cluster.type("", "pods")

    def run(self):
        while not self.stopped.wait(0.1):
            try:
                self.tick()
            except Exception:   # a bug here must not take the API server down with it
                traceback.print_exc()

    def shutdown(self):
        self.stopped.set()
        attempts = [a for st in self.jobs.values() for a in st.running.values()]
        for a in attempts:
            self.signal(a, signal.SIGTERM)
        deadline = time.monotonic() + 2
        for a in attempts:
            if a.proc is None:
                continue
            try:
                a.proc.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.signal(a, signal.SIGKILL)

    @staticmethod
    def signal(a, sig):
        if a.proc is None:
            return      # no container was created: nothing to signal
        try:
            os.killpg(a.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def terminate(self, a, cause):
        if a.kill_at is None:
            a.kill_at, a.cause = time.monotonic() + a.grace, cause
            self.signal(a, signal.SIGTERM)

    def tick(self):
        with self.cluster.lock:
            jobs = {o["metadata"]["uid"]: copy.deepcopy(o) for o in self.cluster.objects[self.jobs_rt.key].values()}
        for uid, st in list(self.jobs.items()):
            job = jobs.get(uid)
            if job is None or job["metadata"].get("deletionTimestamp"):
                for a in st.running.values():       # a deleted Job's processes get SIGTERM, then SIGKILL
                    self.terminate(a, "deleted")
                self.reap(job, st)
                if not st.running and job is None:
                    del self.jobs[uid]
        for uid, job in jobs.items():
            if not job["metadata"].get("deletionTimestamp"):
                self.sync(job, self.jobs.setdefault(uid, JobState()))

    def reap(self, job, st):
        per_index = dig(job, "spec", "backoffLimitPerIndex")
        for idx, a in list(st.running.items()):
            pod = self.cluster.find(self.pods_rt, a.pod["metadata"]["namespace"], a.pod["metadata"]["name"])
            gone = pod is None or pod["metadata"].get("deletionTimestamp")
            if gone:
                self.terminate(a, "deleted")
            if a.proc is None:
                if a.kill_at is None:
                    self.launch(a)      # the kubelet tries again: the Secret may exist by now
                    continue
                # Stopped before its container was created. Deleted (the operator deletes such
                # pods so that their index ends), it is a failed pod for the Job, as on a real
                # cluster; stopped by a suspend or the Job's end, it is nothing.
                del st.running[idx]
                if a.cause == "deleted" and job is not None:
                    self.count_failure(st, idx, per_index)
                continue
            code = a.proc.poll()
            if code is None:
                if a.kill_at is not None and time.monotonic() > a.kill_at:
                    self.signal(a, signal.SIGKILL)
                continue
            del st.running[idx]
            code = 128 - code if code < 0 else code
            self.pod_status(a, "Succeeded" if code == 0 else "Failed", terminated={
                "exitCode": code, "reason": "Completed" if code == 0 else "Error", "finishedAt": now_iso()})
            if a.cause == "suspend" or job is None:
                continue    # stopped by the controller, not a failure of the pod
            if code == 0:
                st.succeeded.add(idx)
            else:
                self.count_failure(st, idx, per_index)

    @staticmethod
    def count_failure(st, idx, per_index):
        st.failed_total += 1
        st.failures[idx] = st.failures.get(idx, 0) + 1
        if per_index is not None and st.failures[idx] > per_index:
            st.failed_indexes.add(idx)

    def sync(self, job, st):
        spec = job["spec"]
        completions = spec.get("completions") or 1
        self.reap(job, st)
        if st.finished is None:
            why = None
            max_failed = spec.get("maxFailedIndexes")
            deadline = spec.get("activeDeadlineSeconds")
            if spec.get("backoffLimitPerIndex") is None and st.failed_total > spec.get("backoffLimit", 6):
                why = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            elif max_failed is not None and len(st.failed_indexes) > max_failed:
                why = ("Failed", "MaxFailedIndexesExceeded", "Job has exceeded the specified maximal number of failed indexes")
            elif deadline and st.start_time and time.time() - parse_time(st.start_time).timestamp() > deadline:
                why = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
            elif len(st.succeeded) + len(st.failed_indexes) >= completions and not st.running:
                why = (("Failed", "FailedIndexes", "Job has failed indexes") if st.failed_indexes else
                       ("Complete", "CompletionsReached", "Reached expected number of succeeded pods"))
            if why:
                st.finished = why
                first = ("SuccessCriteriaMet" if why[0] == "Complete" else "FailureTarget", why[1], why[2])
                for cond in (first, why):
                    st.conditions.append({"type": cond[0], "status": "True", "reason": cond[1], "message": cond[2],
                                          "lastProbeTime": now_iso(), "lastTransitionTime": now_iso()})
                for a in st.running.values():
                    self.terminate(a, "finished")
        suspended = bool(spec.get("suspend"))
        self.set_suspended(st, suspended)
        if suspended:
            for a in st.running.values():
                self.terminate(a, "suspend")
        elif st.finished is None:
            st.start_time = st.start_time or now_iso()
            todo = [i for i in range(completions) if i not in st.succeeded and i not in st.failed_indexes and i not in st.running]
            for i in todo[:max(0, spec.get("parallelism", 1) - len(st.running))]:
                self.start_attempt(job, st, i)
        self.job_status(job, st)

    def set_suspended(self, st, suspended):
        cond = next((c for c in st.conditions if c["type"] == "Suspended"), None)
        if suspended and (cond is None or cond["status"] != "True") or (not suspended and cond and cond["status"] == "True"):
            st.conditions = [c for c in st.conditions if c["type"] != "Suspended"] + [{
                "type": "Suspended", "status": "True" if suspended else "False",
                "reason": "JobSuspended" if suspended else "JobResumed",
                "message": "Job suspended" if suspended else "Job resumed",
                "lastProbeTime": now_iso(), "lastTransitionTime": now_iso()}]

    def job_status(self, job, st):
        active = sum(1 for a in st.running.values() if a.kill_at is None)
        ready = sum(1 for a in st.running.values() if a.kill_at is None and a.proc is not None)
        status = {"startTime": st.start_time, "active": active, "ready": ready, "terminating": len(st.running) - active,
                  "succeeded": len(st.succeeded), "failed": st.failed_total, "conditions": st.conditions}
        if job["spec"].get("completionMode") == "Indexed":
            status["completedIndexes"] = index_ranges(st.succeeded)
            if job["spec"].get("backoffLimitPerIndex") is not None:
                status["failedIndexes"] = index_ranges(st.failed_indexes)
        if st.finished and st.finished[0] == "Complete":
            status["completionTime"] = next(c["lastTransitionTime"] for c in st.conditions if c["type"] == "Complete")
        status = {k: v for k, v in status.items() if v not in (None, 0, "", []) or k in ("ready", "terminating")}
        self.write_status(self.jobs_rt, job, status)

    def pod_status(self, a, phase, running=None, terminated=None, waiting=None):
        container, started = a.pod["spec"]["containers"][0], a.pod["metadata"]["creationTimestamp"]
        state = ({"running": running} if running else {"waiting": waiting} if waiting else
                 {"terminated": dict(terminated, startedAt=started)})
        cstatus = {"name": container.get("name", "main"), "image": container.get("image", ""), "imageID": "",
                   "restartCount": 0, "ready": running is not None, "started": running is not None, "state": state}
        self.write_status(self.pods_rt, a.pod, {
            "phase": phase, "startTime": a.pod["metadata"]["creationTimestamp"], "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True" if running else "False", "lastTransitionTime": now_iso()}],
            "containerStatuses": [cstatus]})

    def start_attempt(self, job, st, idx):
        meta, tmpl = job["metadata"], job["spec"]["template"]
        indexed = job["spec"].get("completionMode") == "Indexed"
        labels = dict(dig(tmpl, "metadata", "labels") or {})
        annotations = dict(dig(tmpl, "metadata", "annotations") or {})
        if indexed:
            labels["batch.kubernetes.io/job-completion-index"] = annotations["batch.kubernetes.io/job-completion-index"] = str(idx)
        pod = self.cluster.create(self.pods_rt, meta["namespace"], {"metadata": {
            "generateName": "%s-%s" % (meta["name"], "%d-" % idx if indexed else ""), "labels": labels,
            "annotations": annotations, "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                                             "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
            "spec": copy.deepcopy(tmpl.get("spec") or {})}, {})
        a = Attempt(pod, idx if indexed else None, pod["spec"].get("terminationGracePeriodSeconds", 30))
        st.running[idx] = a
        self.launch(a)

    def launch(self, a):
        """Creates the attempt's container: a local process with the container's environment. A
        missing Secret or ConfigMap leaves the pod Pending in CreateContainerConfigError."""
        pod = a.pod
        container = pod["spec"]["containers"][0]
        argv = self.argv(container)
        try:
            env = dict(os.environ, **self.container_env(pod, container))
        except ConfigError as e:
            if a.waiting != str(e):     # written once per reason, as the kubelet does
                a.waiting = str(e)
                self.pod_status(a, "Pending", waiting={"reason": "CreateContainerConfigError", "message": str(e)})
            return
        a.waiting = None
        if a.index is not None:
            env["JOB_COMPLETION_INDEX"] = str(a.index)
        base = os.path.join(self.log_dir, "%s_%s" % (pod["metadata"]["namespace"], pod["metadata"]["name"]))
        with open(base + ".stdout", "wb") as out, open(base + ".stderr", "wb") as err:
            try:
                if not argv:
                    raise FileNotFoundError("the container has no command, and no --image maps %s to a program: the "
                                            "emulator does not run images" % container.get("image"))
                proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as e:
                err.write(("%s\n" % e).encode())
                proc = subprocess.Popen(["sh", "-c", "exit 127"])
        a.proc = proc
        self.pod_status(a, "Running", running={"startedAt": now_iso()})



# ----------------------------------------------------------------------------------------------
# --run-deployments: a tiny deployment controller, replica-set controller and kubelet. Each
# Deployment gets a ReplicaSet per pod template (rolled over with its strategy), each replica a
# Pod object and a local process: the container's command, or the program --image maps its
# image to (the image's entrypoint) followed by its args, in a directory of its own, with the
# pod's environment and a kubeconfig holding a token of the pod's service account.

HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(tmpl):
    """A stable pod-template-hash for a template (the real one is an FNV hash, same alphabet)."""
    n = int.from_bytes(hashlib.sha256(json.dumps(tmpl, sort_keys=True).encode()).digest()[:8], "big")
    out = ""
    for _ in range(10):
        n, r = divmod(n, len(HASH_ALPHABET))
        out += HASH_ALPHABET[r]
    return out


def scaled(value, total, round_up):
    """An intstr (3 or "25%") of a total, as maxSurge (rounded up) and maxUnavailable (down) are."""
    if isinstance(value, str) and value.endswith("%"):
        share = total * int(value[:-1] or 0)
        return -(-share // 100) if round_up else share // 100
    return int(value or 0)


def keep_times(old, new, stamp_keys=("lastTransitionTime", "lastUpdateTime", "lastProbeTime")):
    """New conditions, with the times of the old ones whose status, reason and message are the
    same: a status that did not change is not rewritten (no watch event, no new resourceVersion)."""
    out = []
    for c in new:
        prev = next((o for o in old or [] if o.get("type") == c["type"]), None)
        if prev and all(prev.get(k) == c.get(k) for k in ("status", "reason", "message")):
            c = dict(c, **{k: prev[k] for k in stamp_keys if k in prev})
        out.append(c)
    return out


def die_with_parent():
    """preexec_fn of long-running pods: they get SIGKILL if the emulator dies without stopping
    them (prctl PR_SET_PDEATHSIG), instead of running on, orphaned."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def kubeconfig_text(server, token, ca=None, namespace="default"):
    cluster = "    certificate-authority-data: %s\n" % ca if ca else ""
    return KUBECONFIG.format(server=server, token=token, cluster=cluster, namespace=namespace)


class PodProcess:
    """A pod of a ReplicaSet as the kubelet runs it: its (first) container as a local process,
    restarted when it exits, its probes, volumes and the status the pod shows."""

    def __init__(self, pod, directory):
        self.pod, self.dir = pod, directory
        self.proc, self.env, self.started_at, self.kill_at = None, None, None, None
        self.started_mono = 0.0
        self.restarts, self.next_start, self.backoff = 0, 0.0, 1.0
        self.waiting = None             # (reason, message) while no container runs
        self.last_state = None          # the last terminated container, for lastState
        self.started_ok = self.ready = False
        self.probes = {}                # probe kind -> {"next", "ok", "fail"}
        self.written = None             # the last status written (without its times)
        self.refresh_at = 0.0           # next refresh of Secret and ConfigMap volume files


class DeploymentRunner(Kubelet, threading.Thread):
    def __init__(self, cluster, auth, log_dir, images, server, ca):
        threading.Thread.__init__(self, daemon=True, name="deployment-runner")
        self.cluster, self.auth, self.log_dir, self.images, self.server, self.ca = cluster, auth, log_dir, images, server, ca
        self.procs = {}         # pod uid -> PodProcess
        self.stopped = threading.Event()
        self.ticking = threading.Lock()     # held by a tick; shutdown takes it to stop ticks
        self.stopping = False
        self.deploy_rt, self.rs_rt = cluster.type("apps", "deployments"), cluster.type("apps", "replicasets")
        self.pods_rt, self.pdb_rt = cluster.type("", "pods"), cluster.type("policy", "poddisruptionbudgets")

    def run(self):
        while not self.stopped.wait(0.2):
            with self.ticking:
                if self.stopping:
                    continue
                try:
                    self.tick()
                except Exception:   # a bug here must not take the API server down with it
                    traceback.print_exc()

    def shutdown(self, wait=5.0):
        """SIGTERM to every container, SIGKILL to those still running `wait` s later. This
        thread (which started them) lives until then: its end would SIGKILL them at once
        (PR_SET_PDEATHSIG is about the thread that forked)."""
        with self.ticking:
            self.stopping = True
        procs = [pp for pp in self.procs.values() if pp.proc is not None and pp.proc.poll() is None]
        for pp in procs:
            self.signal(pp, signal.SIGTERM)
        deadline = time.monotonic() + wait
        for pp in procs:
            try:
                pp.proc.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.signal(pp, signal.SIGKILL)
        self.stopped.set()

    @staticmethod
    def signal(pp, sig):
        try:
            os.killpg(pp.proc.pid, sig)
        except (ProcessLookupError, PermissionError, AttributeError):
            pass

    def snapshot(self, rt):
        with self.cluster.lock:
            return [copy.deepcopy(o) for o in self.cluster.objects[rt.key].values()]

    @staticmethod
    def owned_by(objs, owner):
        uid = owner["metadata"]["uid"]
        return [o for o in objs if o["metadata"].get("namespace") == owner["metadata"].get("namespace")
                and any(r.get("uid") == uid and r.get("controller") for r in o["metadata"].get("ownerReferences") or [])]

    @staticmethod
    def pod_ready(pod):
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in dig(pod, "status", "conditions") or [])

    def tick(self):
        for d in self.snapshot(self.deploy_rt):
            if not d["metadata"].get("deletionTimestamp"):
                self.sync_deployment(d)
        pods = [p for p in self.snapshot(self.pods_rt) if not p["metadata"].get("deletionTimestamp")]
        for rs in self.snapshot(self.rs_rt):
            if not rs["metadata"].get("deletionTimestamp"):
                self.sync_replicaset(rs, self.owned_by(pods, rs))
        self.kubelet()
        self.statuses()

    # -- deployment controller

    def sync_deployment(self, d):
        meta, spec = d["metadata"], d["spec"]
        tmpl, desired = spec["template"], spec.get("replicas", 1)
        h = template_hash(tmpl)
        owned = self.owned_by(self.snapshot(self.rs_rt), d)
        new = next((rs for rs in owned if dig(rs, "metadata", "labels", "pod-template-hash") == h), None)
        old = [rs for rs in owned if rs is not new]
        if spec.get("paused"):
            return
        if new is None:
            revision = 1 + max([int(dig(rs, "metadata", "annotations", "deployment.kubernetes.io/revision") or 0)
                                for rs in owned] or [0])
            labels = dict(dig(tmpl, "metadata", "labels") or {}, **{"pod-template-hash": h})
            selector = copy.deepcopy(spec["selector"])
            selector.setdefault("matchLabels", {})["pod-template-hash"] = h
            template = copy.deepcopy(tmpl)
            template.setdefault("metadata", {})["labels"] = labels
            new = self.cluster.create(self.rs_rt, meta["namespace"], {
                "metadata": {"name": "%s-%s" % (meta["name"], h), "labels": labels, "annotations": {
                    "deployment.kubernetes.io/revision": str(revision), "deployment.kubernetes.io/desired-replicas": str(desired)},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"], "uid": meta["uid"],
                                         "controller": True, "blockOwnerDeletion": True}]},
                "spec": {"replicas": 0, "selector": selector, "template": template}}, {})
        old_total = sum(rs["spec"].get("replicas", 0) for rs in old)
        have = new["spec"].get("replicas", 0)
        strategy = spec.get("strategy") or {}
        if strategy.get("type") == "Recreate":
            for rs in old:
                self.scale(rs, 0)
            pods = self.snapshot(self.pods_rt)
            if not any(self.owned_by(pods, rs) for rs in old):
                self.scale(new, desired)
        else:
            ru = strategy.get("rollingUpdate") or {}
            surge = scaled(ru.get("maxSurge", "25%"), desired, True)
            unavailable = scaled(ru.get("maxUnavailable", "25%"), desired, False)
            if surge == 0 and unavailable == 0:
                unavailable = 1
            target = desired if have >= desired else min(desired, have + max(0, desired + surge - old_total - have))
            self.scale(new, target)
            pods = self.snapshot(self.pods_rt)
            ready = sum(1 for rs in owned for p in self.owned_by(pods, rs) if self.pod_ready(p))
            removable = max(0, ready - (desired - unavailable))
            for rs in sorted(old, key=lambda r: r["metadata"]["creationTimestamp"]):
                n = rs["spec"].get("replicas", 0)
                unready = n - sum(1 for p in self.owned_by(pods, rs) if self.pod_ready(p))
                cut = min(n, max(0, unready) + removable)
                removable -= max(0, cut - max(0, unready))
                if cut:
                    self.scale(rs, n - cut)
        # Old ReplicaSets without replicas beyond revisionHistoryLimit go.
        idle = [rs for rs in old if rs["spec"].get("replicas", 0) == 0]
        limit = spec.get("revisionHistoryLimit", 10)
        for rs in sorted(idle, key=lambda r: int(dig(r, "metadata", "annotations", "deployment.kubernetes.io/revision") or 0))[
                :max(0, len(idle) - limit)]:
            try:
                self.cluster.delete(self.rs_rt, rs["metadata"]["namespace"], rs["metadata"]["name"], {})
            except ApiError:
                pass

    def scale(self, rs, replicas):
        if rs["spec"].get("replicas") != replicas:
            try:
                self.cluster.patch(self.rs_rt, rs["metadata"]["namespace"], rs["metadata"]["name"],
                                   "application/merge-patch+json", {"spec": {"replicas": replicas}}, {})
            except ApiError:
                pass    # deleted meanwhile
            rs["spec"]["replicas"] = replicas

    # -- replica-set controller

    def sync_replicaset(self, rs, pods):
        meta, want = rs["metadata"], rs["spec"].get("replicas", 1)
        tmpl = rs["spec"].get("template") or {}
        for _ in range(want - len(pods)):
            spec = copy.deepcopy(tmpl.get("spec") or {})
            spec.setdefault("serviceAccountName", "default")
            spec["serviceAccount"] = spec["serviceAccountName"]
            spec.setdefault("nodeName", "kube-emulator")
            self.cluster.create(self.pods_rt, meta["namespace"], {"metadata": {
                "generateName": meta["name"] + "-", "labels": dict(dig(tmpl, "metadata", "labels") or {}),
                "annotations": dict(dig(tmpl, "metadata", "annotations") or {}),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": meta["name"], "uid": meta["uid"],
                                     "controller": True, "blockOwnerDeletion": True}]}, "spec": spec}, {})
        # Too many: the not-ready ones go first, then the youngest.
        youngest = sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"], reverse=True)
        extra = sorted(youngest, key=self.pod_ready)[:max(0, len(pods) - want)]
        for p in extra:
            try:
                self.cluster.delete(self.pods_rt, p["metadata"]["namespace"], p["metadata"]["name"], {})
            except ApiError:
                pass

    # -- statuses: ReplicaSets, Deployments, PodDisruptionBudgets

    def statuses(self):
        pods = [p for p in self.snapshot(self.pods_rt) if not p["metadata"].get("deletionTimestamp")]
        replicasets = self.snapshot(self.rs_rt)
        for rs in replicasets:
            mine = self.owned_by(pods, rs)
            ready = sum(1 for p in mine if self.pod_ready(p))
            self.set_status(self.rs_rt, rs, {"replicas": len(mine), "fullyLabeledReplicas": len(mine), "readyReplicas": ready,
                                             "availableReplicas": ready, "observedGeneration": rs["metadata"]["generation"]})
        for d in self.snapshot(self.deploy_rt):
            spec, h = d["spec"], template_hash(d["spec"]["template"])
            owned = self.owned_by(replicasets, d)
            new = next((rs for rs in owned if dig(rs, "metadata", "labels", "pod-template-hash") == h), None)
            all_pods = [p for rs in owned for p in self.owned_by(pods, rs)]
            updated = self.owned_by(pods, new) if new else []
            ready = sum(1 for p in all_pods if self.pod_ready(p))
            desired = spec.get("replicas", 1)
            ru = dig(spec, "strategy", "rollingUpdate") or {}
            unavailable = scaled(ru.get("maxUnavailable", 0), desired, False) if ru else 0
            now, name = now_iso(), new["metadata"]["name"] if new else ""
            available = ready >= desired - unavailable
            done = len(updated) == desired == len(all_pods) and ready >= desired
            conds = [{"type": "Available", "status": "True" if available else "False",
                      "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                      "message": "Deployment %s minimum availability." % ("has" if available else "does not have"),
                      "lastUpdateTime": now, "lastTransitionTime": now},
                     {"type": "Progressing", "status": "True",
                      "reason": "NewReplicaSetAvailable" if done else "ReplicaSetUpdated",
                      "message": 'ReplicaSet "%s" %s.' % (name, "has successfully progressed" if done else "is progressing"),
                      "lastUpdateTime": now, "lastTransitionTime": now}]
            status = {"observedGeneration": d["metadata"]["generation"], "replicas": len(all_pods),
                      "updatedReplicas": len(updated), "readyReplicas": ready, "availableReplicas": ready,
                      "unavailableReplicas": max(0, desired - ready),
                      "conditions": keep_times(dig(d, "status", "conditions"), conds)}
            self.set_status(self.deploy_rt, d, {k: v for k, v in status.items() if v or k == "observedGeneration"})
        for pdb in self.snapshot(self.pdb_rt):
            spec = pdb["spec"]
            sel = spec.get("selector")
            mine = [p for p in pods if sel is not None and p["metadata"]["namespace"] == pdb["metadata"]["namespace"]
                    and selector_matches(sel, p["metadata"].get("labels"))]
            healthy = sum(1 for p in mine if self.pod_ready(p))
            if spec.get("maxUnavailable") is not None:
                want = len(mine) - scaled(spec["maxUnavailable"], len(mine), True)
            else:
                want = scaled(spec.get("minAvailable", 0), len(mine), True)
            allowed = max(0, healthy - max(0, want))
            conds = [{"type": "DisruptionAllowed", "status": "True" if allowed else "False",
                      "reason": "SufficientPods" if allowed else "InsufficientPods", "message": "",
                      "observedGeneration": pdb["metadata"]["generation"], "lastTransitionTime": now_iso()}]
            self.set_status(self.pdb_rt, pdb, {
                "observedGeneration": pdb["metadata"]["generation"], "disruptionsAllowed": allowed, "currentHealthy": healthy,
                "desiredHealthy": max(0, want), "expectedPods": len(mine),
                "conditions": keep_times(dig(pdb, "status", "conditions"), conds)})

    def set_status(self, rt, obj, status):
        if obj.get("status") != status:
            self.write_status(rt, obj, status)

    # -- kubelet

    def kubelet(self):
        with self.cluster.lock:
            pods = {o["metadata"]["uid"]: copy.deepcopy(o) for o in self.cluster.objects[self.pods_rt.key].values()
                    if any(r.get("kind") == "ReplicaSet" and r.get("controller") for r in o["metadata"].get("ownerReferences") or [])}
        for uid, pp in list(self.procs.items()):
            pod = pods.get(uid)
            if pod is None or pod["metadata"].get("deletionTimestamp"):
                if pp.proc is not None and pp.proc.poll() is None:
                    self.stop_container(pp, pod)
                else:
                    del self.procs[uid]
        for uid, pod in pods.items():
            if pod["metadata"].get("deletionTimestamp"):
                continue
            pp = self.procs.get(uid)
            if pp is None:
                directory = os.path.join(self.log_dir, "pods", "%s_%s" % (pod["metadata"]["namespace"], pod["metadata"]["name"]))
                os.makedirs(directory, exist_ok=True)
                pp = self.procs[uid] = PodProcess(pod, directory)
            pp.pod = pod
            self.step(pp)

    def stop_container(self, pp, pod):
        """SIGTERM, then SIGKILL after the grace period (the pod is gone or being deleted)."""
        if pp.kill_at is None:
            grace = (pod or pp.pod)["spec"].get("terminationGracePeriodSeconds", 30)
            pp.kill_at = time.monotonic() + grace
            self.signal(pp, signal.SIGTERM)
        elif time.monotonic() > pp.kill_at:
            self.signal(pp, signal.SIGKILL)

    def step(self, pp):
        now = time.monotonic()
        if pp.proc is not None and pp.kill_at is None:
            code = pp.proc.poll()
            if code is None:
                self.run_probes(pp, now)
                if now >= pp.refresh_at:
                    pp.refresh_at = now + 2
                    try:
                        self.volumes(pp)
                    except ConfigError:
                        pass
            else:
                code = 128 - code if code < 0 else code
                pp.last_state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                                "startedAt": pp.started_at, "finishedAt": now_iso()}}
                ran = now - pp.started_mono
                pp.proc, pp.ready, pp.started_ok = None, False, False
                pp.restarts += 1
                pp.backoff = 1.0 if ran > 10 else min(pp.backoff * 2, 10.0)
                pp.next_start = now + pp.backoff
                pp.waiting = ("CrashLoopBackOff", "back-off %ds restarting failed container=%s pod=%s"
                              % (pp.backoff, pp.pod["spec"]["containers"][0].get("name"), pp.pod["metadata"]["name"]))
        elif pp.proc is not None:       # killed by a failed probe: restarted once it has exited
            if pp.proc.poll() is None:
                self.stop_container(pp, None)
            else:
                pp.last_state = {"terminated": {"exitCode": 137, "reason": "Error", "startedAt": pp.started_at,
                                                "finishedAt": now_iso()}}
                pp.proc, pp.kill_at, pp.ready, pp.started_ok = None, None, False, False
                pp.restarts += 1
                pp.next_start = now
        if pp.proc is None and now >= pp.next_start:
            self.start_container(pp)
        self.pod_status(pp)

    def start_container(self, pp):
        pod, container = pp.pod, pp.pod["spec"]["containers"][0]
        ns = pod["metadata"]["namespace"]
        argv = self.argv(container)
        try:
            if argv is None:
                raise ConfigError(("ErrImagePull", 'the emulator runs no images: no --image maps "%s" to a program'
                                   % container.get("image")))
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOSTNAME": pod["metadata"]["name"],
                   "HOME": os.path.join(pp.dir, "home")}
            for k in ("LANG", "LC_ALL", "TZ"):
                if k in os.environ:
                    env[k] = os.environ[k]
            os.makedirs(env["HOME"], exist_ok=True)
            kubeconfig = self.service_account_kubeconfig(pp)
            if kubeconfig:
                env["KUBECONFIG"] = kubeconfig
            mounts = self.volumes(pp)
            try:
                pod_env = self.container_env(pod, container)
            except ConfigError as e:
                raise ConfigError(("CreateContainerConfigError", str(e)))
        except ConfigError as e:
            reason, message = e.args[0] if isinstance(e.args[0], tuple) else ("CreateContainerConfigError", str(e))
            pp.waiting = (reason, message)
            pp.next_start = time.monotonic() + 1
            return

        def rewrite(value):
            """A path under a volume's mountPath becomes the same path in the pod's directory."""
            for mount_path, host in mounts:
                for prefix in ("", value.split("=", 1)[0] + "=" if "=" in value else None):
                    if prefix is None:
                        continue
                    rest = value[len(prefix):]
                    if rest == mount_path or rest.startswith(mount_path.rstrip("/") + "/"):
                        return prefix + host + rest[len(mount_path.rstrip("/")):]
            return value
        # What the pod spec says is a path in the container; the program an image maps to and the
        # emulator's own variables (PATH, HOME, KUBECONFIG) are paths of this host.
        env.update({k: rewrite(v) for k, v in pod_env.items()})
        own = len(argv) - len(container.get("args") or []) if not container.get("command") else 0
        argv = argv[:own] + [rewrite(a) for a in argv[own:]]
        base = os.path.join(self.log_dir, "%s_%s" % (ns, pod["metadata"]["name"]))
        with open(base + ".stdout", "ab") as out, open(base + ".stderr", "ab") as err:
            try:
                pp.proc = subprocess.Popen(argv, env=env, cwd=pp.dir, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                           start_new_session=True, preexec_fn=die_with_parent)
            except OSError as e:
                err.write(("%s\n" % e).encode())
                pp.waiting = ("RunContainerError", str(e))
                pp.next_start = time.monotonic() + pp.backoff
                pp.backoff = min(pp.backoff * 2, 10.0)
                return
        pp.env, pp.waiting, pp.started_at, pp.started_mono = env, None, now_iso(), time.monotonic()
        pp.probes, pp.ready = {}, False
        pp.started_ok = not container.get("startupProbe")

    def service_account_kubeconfig(self, pp):
        """The pod's credentials: a kubeconfig with a token of its service account (what the
        kubelet mounts as the projected token, CA and namespace), unless automount is off."""
        spec, ns = pp.pod["spec"], pp.pod["metadata"]["namespace"]
        name = spec.get("serviceAccountName") or "default"
        with self.cluster.lock:
            sa = copy.deepcopy(self.cluster.find(self.cluster.type("", "serviceaccounts"), ns, name))
        automount = spec.get("automountServiceAccountToken")
        if automount is None:
            automount = (sa or {}).get("automountServiceAccountToken", True)
        if not automount:
            return None
        if sa is None and self.auth.enforce:
            raise ConfigError(("CreateContainerConfigError", 'serviceaccount "%s" not found' % name))
        path = os.path.join(pp.dir, "kubeconfig")
        if not os.path.exists(path):
            token, _ = self.auth.issue(ns, name, (sa or {}).get("metadata", {}).get("uid", ""), 86400 * 365,
                                       ["https://kubernetes.default.svc.cluster.local"])
            with open(path, "w") as f:
                f.write(kubeconfig_text(self.server, token, self.ca, ns))
        return path

    def volumes(self, pp):
        """Materialises the pod's volumes in its directory: emptyDir (a directory), secret and
        configMap (a file per key, or per listed item, with its mode); [(mountPath, host path)]
        for the container's volumeMounts, longest first. Other volume types are refused."""
        pod, container = pp.pod, pp.pod["spec"]["containers"][0]
        ns, out = pod["metadata"]["namespace"], {}
        for vol in pod["spec"].get("volumes") or []:
            host = os.path.join(pp.dir, "volumes", vol["name"])
            os.makedirs(host, exist_ok=True)
            out[vol["name"]] = host
            for kind, plural, ref in (("secret", "secrets", "secretName"), ("configMap", "configmaps", "name")):
                src = vol.get(kind)
                if src is None:
                    continue
                try:
                    obj = self.source(pod, plural, {"name": src.get(ref), "optional": src.get("optional")}, kind)
                except ConfigError:
                    raise ConfigError(("ContainerCreating", 'MountVolume.SetUp failed for volume "%s" : %s "%s" not found'
                                       % (vol["name"], plural[:-1], src.get(ref))))
                data = self.source_data(obj, plural)
                items = src.get("items") or [{"key": k, "path": k} for k in sorted(data)]
                for item in items:
                    if item["key"] not in data:
                        if src.get("optional"):
                            continue
                        raise ConfigError(("ContainerCreating", 'MountVolume.SetUp failed for volume "%s" : configmap references '
                                           'non-existent config key: %s' % (vol["name"], item["key"])))
                    path = os.path.join(host, item["path"])
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    tmp = path + ".tmp"
                    with open(tmp, "w") as f:
                        f.write(data[item["key"]])
                    os.chmod(tmp, item.get("mode", src.get("defaultMode", 0o644)) | 0o400)
                    os.replace(tmp, path)
            if not any(k in vol for k in ("emptyDir", "secret", "configMap")):
                other = next((k for k in vol if k != "name"), "?")
                raise ConfigError(("ContainerCreating", 'the emulator cannot mount volume "%s" (%s): only emptyDir, secret '
                                   "and configMap volumes" % (vol["name"], other)))
        mounts = []
        for m in container.get("volumeMounts") or []:
            if m.get("name") in out:
                mounts.append((m["mountPath"], os.path.join(out[m["name"]], m.get("subPath") or "").rstrip("/")))
        return sorted(mounts, key=lambda x: -len(x[0]))

    # -- probes

    def run_probes(self, pp, now):
        container = pp.pod["spec"]["containers"][0]
        if not pp.started_ok:
            result = self.due_probe(pp, "startup", container.get("startupProbe"), now)
            if result == "ok":
                pp.started_ok = True
            elif result == "failed":
                self.stop_container(pp, None)   # restarted, as the kubelet does
            return
        if self.due_probe(pp, "liveness", container.get("livenessProbe"), now) == "failed":
            self.stop_container(pp, None)
            return
        readiness = container.get("readinessProbe")
        if readiness is None:
            pp.ready = True
        else:
            result = self.due_probe(pp, "readiness", readiness, now)
            if result in ("ok", "failed"):
                pp.ready = result == "ok"

    def due_probe(self, pp, kind, spec, now):
        """Runs the probe if it is due: "ok" or "failed" once its thresholds are reached, else None."""
        if not spec:
            return "ok"
        st = pp.probes.setdefault(kind, {"next": pp.started_mono + spec.get("initialDelaySeconds", 0), "ok": 0, "fail": 0})
        if now < st["next"]:
            return None
        st["next"] = now + spec.get("periodSeconds", 10)
        if self.probe(pp, spec):
            st["ok"], st["fail"] = st["ok"] + 1, 0
            return "ok" if st["ok"] >= spec.get("successThreshold", 1) else None
        st["ok"], st["fail"] = 0, st["fail"] + 1
        return "failed" if st["fail"] >= spec.get("failureThreshold", 3) else None

    def probe(self, pp, spec):
        container = pp.pod["spec"]["containers"][0]
        timeout = max(0.2, min(float(spec.get("timeoutSeconds", 1)), 5.0))

        def port_of(port):
            if isinstance(port, str) and not port.isdigit():
                return next((p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port), None)
            return int(port)
        try:
            if "httpGet" in spec:
                get = spec["httpGet"]
                cls = http.client.HTTPSConnection if get.get("scheme") == "HTTPS" else http.client.HTTPConnection
                conn = cls(get.get("host") or "127.0.0.1", port_of(get.get("port")), timeout=timeout)
                try:
                    conn.request("GET", get.get("path") or "/", headers={h["name"]: h["value"] for h in get.get("httpHeaders") or []})
                    return 200 <= conn.getresponse().status < 400
                finally:
                    conn.close()
            if "tcpSocket" in spec:
                sock = socket.create_connection((spec["tcpSocket"].get("host") or "127.0.0.1", port_of(spec["tcpSocket"]["port"])),
                                                timeout=timeout)
                sock.close()
                return True
            if "exec" in spec:
                return subprocess.run(spec["exec"].get("command") or ["false"], env=pp.env, cwd=pp.dir, timeout=timeout,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        except (OSError, TypeError, subprocess.TimeoutExpired, http.client.HTTPException):
            return False
        return True     # grpc probes are not run: counted as passing

    def pod_status(self, pp):
        pod, container = pp.pod, pp.pod["spec"]["containers"][0]
        running = pp.proc is not None and pp.kill_at is None
        if running:
            state = {"running": {"startedAt": pp.started_at}}
        else:
            reason, message = pp.waiting or ("ContainerCreating", "")
            state = {"waiting": dict({"reason": reason}, **({"message": message} if message else {}))}
        ready = running and pp.started_ok and pp.ready
        cstatus = {"name": container.get("name"), "image": container.get("image", ""), "imageID": "",
                   "containerID": "emulator://%d" % pp.proc.pid if pp.proc else "", "ready": ready,
                   "started": running and pp.started_ok, "restartCount": pp.restarts, "state": state}
        if pp.last_state:
            cstatus["lastState"] = pp.last_state
        started = pp.restarts > 0 or running
        now = now_iso()
        conds = [{"type": t, "status": "True" if ok else "False", "lastProbeTime": None, "lastTransitionTime": now}
                 for t, ok in (("PodScheduled", True), ("Initialized", True), ("ContainersReady", ready), ("Ready", ready))]
        conds = [{k: v for k, v in c.items() if v is not None} for c in conds]
        status = {"phase": "Running" if started else "Pending", "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
                  "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}], "startTime": pod["metadata"]["creationTimestamp"],
                  "qosClass": "Burstable", "containerStatuses": [cstatus],
                  "conditions": keep_times(dig(pod, "status", "conditions"), conds)}
        if status != pod.get("status"):
            self.write_status(self.pods_rt, pod, status)


# ----------------------------------------------------------------------------------------------
# Protobuf bodies: kubectl's typed clients (`kubectl create configmap|secret|namespace|...`) send
# built-in kinds as Kubernetes protobuf whatever the server says. A reader for those few kinds
# (field numbers from the Kubernetes .proto files); anything else gets 415 and a hint to use JSON.

def pb_fields(buf):
    def varint(i):
        n = shift = 0
        while True:
            b = buf[i]
            n |= (b & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if b < 0x80:
                return n, i
    i = 0
    while i < len(buf):
        key, i = varint(i)
        wire = key & 7
        if wire == 0:
            value, i = varint(i)
        elif wire == 2:
            size, i = varint(i)
            value, i = buf[i:i + size], i + size
        else:
            size = 8 if wire == 1 else 4
            value, i = buf[i:i + size], i + size
        yield key >> 3, value


PB_OWNER = {1: ("kind", "str"), 3: ("name", "str"), 4: ("uid", "str"), 5: ("apiVersion", "str"),
            6: ("controller", "bool"), 7: ("blockOwnerDeletion", "bool")}
PB_META = {1: ("name", "str"), 2: ("generateName", "str"), 3: ("namespace", "str"), 5: ("uid", "str"),
           6: ("resourceVersion", "str"), 11: ("labels", "map"), 12: ("annotations", "map"),
           13: ("ownerReferences", [PB_OWNER]), 14: ("finalizers", "strs")}
PB_RULE = {1: ("verbs", "strs"), 2: ("apiGroups", "strs"), 3: ("resources", "strs"), 4: ("resourceNames", "strs"),
           5: ("nonResourceURLs", "strs")}
PB_SELECTOR = {1: ("matchLabels", "map"), 2: ("matchExpressions", [{1: ("key", "str"), 2: ("operator", "str"), 3: ("values", "strs")}])}
PB_BINDING = {1: ("metadata", PB_META), 2: ("subjects", [{1: ("kind", "str"), 2: ("apiGroup", "str"), 3: ("name", "str"),
                                                         4: ("namespace", "str")}]),
              3: ("roleRef", {1: ("apiGroup", "str"), 2: ("kind", "str"), 3: ("name", "str")})}
PB_KINDS = {"ConfigMap": {1: ("metadata", PB_META), 2: ("data", "map"), 3: ("binaryData", "bytesmap"), 4: ("immutable", "bool")},
            "Secret": {1: ("metadata", PB_META), 2: ("data", "bytesmap"), 3: ("type", "str"), 4: ("stringData", "map"),
                       5: ("immutable", "bool")},
            "Namespace": {1: ("metadata", PB_META)},
            "ServiceAccount": {1: ("metadata", PB_META), 4: ("automountServiceAccountToken", "bool")},
            "DeleteOptions": {4: ("propagationPolicy", "str"), 5: ("dryRun", "strs")},
            # kubectl create token / auth can-i / auth whoami
            "TokenRequest": {1: ("metadata", PB_META), 2: ("spec", {1: ("audiences", "strs"), 4: ("expirationSeconds", "int"),
                                                                   3: ("boundObjectRef", {1: ("kind", "str"), 2: ("apiVersion", "str"),
                                                                                          3: ("name", "str"), 4: ("uid", "str")})})},
            "SelfSubjectAccessReview": {1: ("metadata", PB_META), 2: ("spec", {
                1: ("resourceAttributes", {1: ("namespace", "str"), 2: ("verb", "str"), 3: ("group", "str"), 4: ("version", "str"),
                                           5: ("resource", "str"), 6: ("subresource", "str"), 7: ("name", "str")}),
                2: ("nonResourceAttributes", {1: ("path", "str"), 2: ("verb", "str")})})},
            "SelfSubjectReview": {1: ("metadata", PB_META)},
            "SelfSubjectRulesReview": {1: ("metadata", PB_META), 2: ("spec", {1: ("namespace", "str")})},
            # kubectl create role|clusterrole|rolebinding|clusterrolebinding
            "Role": {1: ("metadata", PB_META), 2: ("rules", [PB_RULE])},
            "ClusterRole": {1: ("metadata", PB_META), 2: ("rules", [PB_RULE]),
                            3: ("aggregationRule", {1: ("clusterRoleSelectors", [PB_SELECTOR])})},
            "RoleBinding": PB_BINDING, "ClusterRoleBinding": PB_BINDING}


def pb_decode(buf, spec):
    out = {}
    for num, v in pb_fields(buf):
        name, kind = spec.get(num, (None, None))
        if kind == "str" and v:      # proto3 writes empty strings; JSON would omit them
            out[name] = v.decode()
        elif kind == "bool":
            out[name] = bool(v)
        elif kind == "int":
            out[name] = v
        elif kind == "strs":
            out.setdefault(name, []).append(v.decode())
        elif kind in ("map", "bytesmap"):
            entry = dict(pb_fields(v))
            value = entry.get(2, b"")
            out.setdefault(name, {})[entry.get(1, b"").decode()] = \
                base64.b64encode(value).decode() if kind == "bytesmap" else value.decode()
        elif isinstance(kind, list):
            out.setdefault(name, []).append(pb_decode(v, kind[0]))
        elif isinstance(kind, dict):
            out[name] = pb_decode(v, kind)
    return out


def decode_protobuf(raw):
    envelope = dict(pb_fields(raw[4:])) if raw.startswith(b"k8s\x00") else {}
    type_meta = {n: v.decode() for n, v in pb_fields(envelope.get(1, b""))}
    kind = type_meta.get(2)
    if kind not in PB_KINDS:
        raise ApiError(415, "UnsupportedMediaType", "the emulator reads protobuf bodies only for %s; send JSON "
                       "(kubectl apply/create -f does)" % ", ".join(sorted(PB_KINDS)))
    obj = pb_decode(envelope.get(2, b""), PB_KINDS[kind])
    if kind != "DeleteOptions":
        obj.update(apiVersion=type_meta.get(1), kind=kind)
    return obj


# ----------------------------------------------------------------------------------------------
# HTTP: routing, content negotiation (JSON, Table, PartialObjectMetadata) and chunked watches.

NOT_FOUND = ApiError(404, "NotFound", "the server could not find the requested resource", {})


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # keep-alive: every response has a Content-Length or is chunked
    server_version = "kube-emulator"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            user = getattr(self, "user", None)
            sys.stderr.write("kube-emulator: %s%s\n" % (fmt % args, " user=%s" % user["username"] if user else ""))

    def do_GET(self):
        self.handle_request("GET")

    def do_POST(self):
        self.handle_request("POST")

    def do_PUT(self):
        self.handle_request("PUT")

    def do_PATCH(self):
        self.handle_request("PATCH")

    def do_DELETE(self):
        self.handle_request("DELETE")

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_body(self, code, data, ctype="application/json", warnings=()):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for w in warnings:
            self.send_header("Warning", '299 - %s' % json.dumps(w))
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, code, obj, warnings=()):
        self.send_body(code, json.dumps(obj).encode(), warnings=warnings)

    def handle_request(self, method):
        self.user = None
        try:
            raw = self.read_body()
            url = urlsplit(self.path)
            q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            parts = [p for p in url.path.split("/") if p]
            auth = self.server.auth
            self.user = auth.impersonate(auth.authenticate(self.headers.get("Authorization")), self.headers)
            if not ((parts[:1] == ["api"] and len(parts) >= 3) or (parts[:1] == ["apis"] and len(parts) >= 4)):
                attrs = Attributes(method.lower(), path=url.path or "/")
                allowed, reason = auth.authorize(self.user, attrs)
                if not allowed:
                    raise forbidden(self.user, attrs, reason)
            if method == "GET" and self.discovery(parts):
                return
            body = None
            if raw and self.headers.get("Content-Type", "").startswith("application/vnd.kubernetes.protobuf"):
                body = decode_protobuf(raw)
            elif raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise bad_request("the request body is not JSON (the emulator reads JSON only, also for apply patches): %s"
                                      % raw[:80].decode(errors="replace"))
            self.resource_request(method, parts, q, body)
        except ApiError as e:
            self.send_json(e.code, e.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:
            traceback.print_exc()
            self.send_json(500, ApiError(500, "InternalError", "Internal error occurred: %r" % e).status())

    def discovery(self, parts):
        cl = self.server.cluster
        with cl.lock:
            gvs = group_versions(cl)
            doc = None
            if parts == ["version"]:
                doc = SERVER_VERSION
            elif parts in (["healthz"], ["readyz"], ["livez"]):
                self.send_body(200, b"ok", "text/plain")
                return True
            elif parts in (["api"], ["apis"]) and self.aggregated_version():
                v = self.aggregated_version()
                doc = aggregated_discovery(cl, parts == ["api"], v)
                self.send_body(200, json.dumps(doc).encode(), "application/json;g=apidiscovery.k8s.io;v=%s;as=APIGroupDiscoveryList" % v)
                return True
            elif parts == ["api"]:
                doc = {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:%d" % self.server.server_address[1]}]}
            elif parts == ["apis"]:
                doc = {"kind": "APIGroupList", "apiVersion": "v1",
                       "groups": [group_doc(g, vs) for g, vs in sorted(gvs.items()) if g]}
            elif len(parts) == 2 and parts[0] == "apis" and parts[1] in gvs:
                doc = dict(group_doc(parts[1], gvs[parts[1]]), kind="APIGroup", apiVersion="v1")
            elif parts == ["api", "v1"] or (len(parts) == 3 and parts[0] == "apis" and parts[2] in gvs.get(parts[1], ())):
                doc = resource_list(cl, "" if parts[0] == "api" else parts[1], parts[-1])
            elif parts == ["openapi", "v3"]:
                doc = openapi_index(cl)
            elif parts[:2] == ["openapi", "v3"]:
                group, version = ("", parts[3]) if parts[2:3] == ["api"] and len(parts) == 4 else (
                    (parts[3], parts[4]) if len(parts) == 5 else (None, None))
                if version not in gvs.get(group, ()):
                    raise NOT_FOUND
                doc = openapi_group_version(cl, group, version)
            else:
                return False
        self.send_json(200, doc)
        return True

    def aggregated_version(self):
        """"v2" or "v2beta1" when the client accepts aggregated discovery (kubectl and kube-rs do)."""
        for part in self.headers.get("Accept", "").split(","):
            params = dict(p.strip().split("=", 1) for p in part.split(";")[1:] if "=" in p)
            if params.get("as") == "APIGroupDiscoveryList" and params.get("v") in ("v2", "v2beta1"):
                return params["v"]
            if part.split(";")[0].strip() in ("application/json", "*/*") and "as" not in params:
                return None
        return None

    def route(self, parts):
        """/api/v1/... or /apis/<group>/<version>/... -> (type, version, namespace, name, subresource)"""
        if len(parts) >= 3 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise NOT_FOUND
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces" and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
            ns, rest = rest[1], rest[2:]
        rt = self.server.cluster.type(group, rest[0], version)
        if rt is None or len(rest) > 3 or (ns is not None and not rt.namespaced):
            raise NOT_FOUND
        name, sub = (rest + [None, None])[1:3]
        if sub and not ((sub == "status" and rt.has_status) or (sub == "log" and rt.key == ("", "pods"))
                        or (sub == "token" and rt.key == ("", "serviceaccounts"))):
            raise NOT_FOUND
        if name and rt.namespaced and ns is None:
            raise NOT_FOUND
        return rt, version, ns, name, sub

    def wanted_form(self):
        """(form, version) from Accept: Table, PartialObjectMetadata(List) or (None, None) for plain JSON."""
        for part in self.headers.get("Accept", "").split(","):
            params = dict(p.strip().split("=", 1) for p in part.split(";")[1:] if "=" in p)
            if params.get("as") in ("Table", "PartialObjectMetadata", "PartialObjectMetadataList"):
                return params["as"], params.get("v", "v1")
            if part.split(";")[0].strip() in ("application/json", "*/*"):
                break
        return None, None

    def render(self, rt, version, objs, q, rv, single):
        form, fver = self.wanted_form()
        if form == "Table":
            return to_table(rt, version, objs, q.get("includeObject", "Metadata"), rv=rv, table_version=fver)
        if form:
            metas = [{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/" + fver, "metadata": o["metadata"]} for o in objs]
            return metas[0] if single else {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/" + fver,
                                            "metadata": {"resourceVersion": str(rv)}, "items": metas}
        if single:
            return objs[0]
        return {"apiVersion": rt.api_version(version), "kind": rt.kind + "List",
                "metadata": {"resourceVersion": str(rv)}, "items": objs}

    def authorize(self, method, rt, ns, name, sub, q):
        """RBAC on the request's verb, resource, subresource, namespace and name (a list or watch
        of one name by fieldSelector counts as that name, as in the apiserver's RequestInfo)."""
        watch = q.get("watch") in ("1", "true")
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method)
        if method == "GET":
            verb = "watch" if watch else "list" if name is None else "get"
        elif method == "DELETE":
            verb = "delete" if name else "deletecollection"
        if name is None and verb in ("list", "watch"):
            m = re.search(r"(?:^|,)metadata\.name==?([^,]+)", q.get("fieldSelector") or "")
            name = m.group(1) if m else None
        namespace = ns or (name if rt.key == ("", "namespaces") else None)
        attrs = Attributes(verb, rt.group, rt.plural, sub, namespace, name)
        allowed, reason = self.server.auth.authorize(self.user, attrs)
        if not allowed:
            raise forbidden(self.user, attrs, reason)

    def token_request(self, ns, name, body):
        """POST serviceaccounts/<name>/token: a token for that service account (TokenRequest)."""
        cl, rt = self.server.cluster, self.server.cluster.type("", "serviceaccounts")
        sa = cl.get(rt, ns, name)
        treq = copy.deepcopy(body) if isinstance(body, dict) else {}
        treq.update(apiVersion="authentication.k8s.io/v1", kind="TokenRequest")
        spec = treq.setdefault("spec", {})
        seconds = int(spec.get("expirationSeconds") or 3600)
        if seconds < 600:
            raise ApiError(422, "Invalid", 'TokenRequest.authentication.k8s.io "%s" is invalid: spec.expirationSeconds: '
                           "Invalid value: %d: may not specify a duration less than 10 minutes" % (name, seconds),
                           {"name": name, "group": "authentication.k8s.io", "kind": "TokenRequest"})
        spec["expirationSeconds"] = seconds
        spec["audiences"] = spec.get("audiences") or ["https://kubernetes.default.svc.cluster.local"]
        token, expiry = self.server.auth.issue(ns, name, sa["metadata"]["uid"], seconds, spec["audiences"])
        treq["metadata"] = {"name": name, "namespace": ns, "creationTimestamp": now_iso()}
        treq["status"] = {"token": token, "expirationTimestamp":
                          datetime.fromtimestamp(expiry, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        return treq

    def resource_request(self, method, parts, q, body):
        cl = self.server.cluster
        rt, version, ns, name, sub = self.route(parts)
        self.authorize(method, rt, ns, name, sub, q)
        opts = {"version": version, "dry_run": q.get("dryRun") == "All", "validation": q.get("fieldValidation", "Warn"),
                "manager": q.get("fieldManager"), "force": q.get("force") in ("true", "1")}
        if rt.verbs == ["create"]:
            if method != "POST" or name is not None:
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            if not isinstance(body, dict):
                raise bad_request("the body of the request must be a JSON object")
            self.send_json(201, subject_access_review(self.server.auth, rt, cl.check_body(rt, version, body), self.user))
            return
        if sub == "token":
            if method != "POST":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            self.send_json(201, self.token_request(ns, name, body))
            return
        if method == "GET" and sub == "log":
            cl.get(rt, ns, name)
            runners = self.server.runners
            self.send_body(200, runners[0].logs(ns, name) if runners else b"", "text/plain")
        elif method == "GET" and (name is None or q.get("watch") in ("1", "true")):
            fields = ",".join(x for x in (q.get("fieldSelector"), "metadata.name=%s" % name if name else None) if x)
            if q.get("watch") in ("1", "true"):
                return self.watch(rt, version, ns, q, fields)
            items, rv = cl.list(rt, ns, q.get("labelSelector"), fields, version)
            self.send_json(200, self.render(rt, version, items, q, rv, False))
        elif method == "GET":
            obj = cl.get(rt, ns, name, version)
            self.send_json(200, self.render(rt, version, [obj], q, obj["metadata"]["resourceVersion"], name is not None))
        elif method == "POST" and name is None:
            obj = cl.create(rt, ns, body, opts)
            self.send_json(201, obj, opts.get("warnings", ()))
        elif method == "PUT" and name:
            self.send_json(200, cl.update(rt, ns, name, body, opts, sub), opts.get("warnings", ()))
        elif method == "PATCH" and name:
            ptype = self.headers.get("Content-Type", "").split(";")[0].strip()
            obj = cl.patch(rt, ns, name, ptype, body, opts, sub)
            self.send_json(201 if opts.get("created") else 200, obj, opts.get("warnings", ()))
        elif method == "DELETE" and not sub:
            options = body if isinstance(body, dict) else {}
            policy = q.get("propagationPolicy") or options.get("propagationPolicy")
            if policy is None and (options.get("orphanDependents") or q.get("orphanDependents") == "true"):
                policy = "Orphan"
            opts.update(propagation=policy, preconditions=options.get("preconditions"),
                        dry_run=opts["dry_run"] or "All" in (options.get("dryRun") or []))
            if name:
                self.send_json(200, cl.delete(rt, ns, name, opts))
            else:
                items, rv = cl.list(rt, ns, q.get("labelSelector"), q.get("fieldSelector"), version)
                gone = [cl.delete(rt, o["metadata"].get("namespace"), o["metadata"]["name"], opts) for o in items]
                self.send_json(200, {"apiVersion": rt.api_version(version), "kind": rt.kind + "List",
                                     "metadata": {"resourceVersion": str(cl.rv)}, "items": gone})
        else:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    # -- watch

    def send_chunk(self, event):
        data = (json.dumps(event) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def watch(self, rt, version, ns, q, fields):
        """Newline-delimited JSON events, one chunk each, until timeoutSeconds or the client goes."""
        cl = self.server.cluster
        labels, field_match = parse_label_selector(q.get("labelSelector")), parse_field_selector(fields)
        match = lambda o: ((not ns or o["metadata"].get("namespace") == ns)
                           and labels(o["metadata"].get("labels")) and field_match(o))
        deadline = time.monotonic() + float(q.get("timeoutSeconds") or 1800)
        bookmarks = q.get("allowWatchBookmarks") in ("1", "true")
        initial_events = q.get("sendInitialEvents") == "true"
        interval = self.server.bookmark_interval
        form, fver = self.wanted_form()
        rv_param = q.get("resourceVersion", "")
        with cl.lock:
            if initial_events or rv_param in ("", "0"):
                last, gone = cl.rv, False
                initial = [cl.view(rt, o, version) for o in cl.objects[rt.key].values() if match(o)]
            else:
                if not rv_param.isdigit():
                    raise bad_request('invalid resource version "%s"' % rv_param)
                last, initial = int(rv_param), []
                gone = last < cl.forgotten
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        first = [True]

        def send(etype, obj):
            if form == "Table" and etype not in ("BOOKMARK", "ERROR"):
                obj = to_table(rt, version, [obj], q.get("includeObject", "Metadata"), first[0], obj["metadata"]["resourceVersion"], fver)
                first[0] = False
            elif form and etype not in ("BOOKMARK", "ERROR"):
                obj = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/" + fver, "metadata": obj["metadata"]}
            self.send_chunk({"type": etype, "object": obj})

        def bookmark(annotations=None):
            meta = {"resourceVersion": str(last)}
            if annotations:
                meta["annotations"] = annotations
            send("BOOKMARK", {"apiVersion": rt.api_version(version), "kind": rt.kind, "metadata": meta})

        try:
            for obj in initial:
                send("ADDED", obj)
            if initial_events:
                bookmark({"k8s.io/initial-events-end": "true"})
            next_bookmark = time.monotonic() + interval
            while not gone:
                with cl.lock:
                    events = cl.events_after(last)
                    wait = min(deadline, next_bookmark if bookmarks else deadline) - time.monotonic()
                    if not events and wait > 0 and not cl.stopping:
                        cl.changed.wait(min(wait, 1.0))
                        events = cl.events_after(last)
                    gone = last < cl.forgotten
                if gone:
                    break
                for erv, key, _, etype, obj, old in events:
                    last = erv
                    if key != rt.key:
                        continue
                    now_in, was_in = match(obj), old is not None and match(old)
                    if etype == "MODIFIED" and now_in != was_in:   # moved in or out of the selection
                        etype = "ADDED" if now_in else "DELETED"
                    if now_in or (etype == "DELETED" and was_in):
                        send(etype, cl.view(rt, obj, version))
                if cl.stopping or time.monotonic() >= deadline:
                    break
                if bookmarks and time.monotonic() >= next_bookmark:
                    bookmark()
                    next_bookmark = time.monotonic() + interval
            if gone:
                send("ERROR", ApiError(410, "Expired", "too old resource version: %s (%d)" % (rv_param or last, cl.forgotten + 1)).status())
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError)):
            return      # a client that gave up, or spoke plain http to https: nothing to report
        super().handle_error(request, client_address)


KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: emulator
  cluster:
    server: {server}
{cluster}users:
- name: emulator
  user:
    token: {token}
contexts:
- name: emulator
  context:
    cluster: emulator
    user: emulator
    namespace: {namespace}
current-context: emulator
"""
TLS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata", "tls")


def parse_image(text):
    prefix, sep, program = text.partition("=")
    if not sep or not prefix or not program:
        raise argparse.ArgumentTypeError("expected IMAGE_PREFIX=PROGRAM, got %r" % text)
    return prefix, os.path.abspath(program) if os.sep in program else program


def main(argv=None):
    ap = argparse.ArgumentParser(description="Test-only Kubernetes API emulator (see README.md).")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1; 0 picks a free one")
    ap.add_argument("--kubeconfig", help="write a kubeconfig for this server here")
    ap.add_argument("--run-jobs", action="store_true", help="run batch/v1 Jobs as local processes")
    ap.add_argument("--run-deployments", action="store_true",
                    help="run apps/v1 Deployments (ReplicaSets, pods) as local processes")
    ap.add_argument("--image", action="append", default=[], type=parse_image, metavar="IMAGE_PREFIX=PROGRAM",
                    help="containers of an image starting with IMAGE_PREFIX and no command run PROGRAM (the image's "
                         "entrypoint) with their args; repeatable")
    ap.add_argument("--job-logs", help="directory for the processes' stdout/stderr (default: a temp dir)")
    ap.add_argument("--bookmark-interval", type=float, default=1.0, help="seconds between watch BOOKMARK events")
    ap.add_argument("--history", type=int, default=10000, help="watch events kept; older resourceVersions get 410 Gone")
    ap.add_argument("--rbac", action="store_true",
                    help="serve https, authenticate bearer tokens and enforce RBAC (the kubeconfig stays an admin)")
    ap.add_argument("--verbose", action="store_true", help="log every request on stderr")
    args = ap.parse_args(argv)

    cluster = Cluster(args.history)
    server = EmulatorServer(("127.0.0.1", args.port), Handler)
    server.cluster, server.verbose, server.bookmark_interval = cluster, args.verbose, args.bookmark_interval
    server.auth = Auth(cluster, args.rbac)
    port = server.server_address[1]
    url, ca = "http://127.0.0.1:%d" % port, None
    if args.rbac:
        # client-go sends a bearer token only over TLS: --rbac serves https, with the test-only
        # certificate of testdata/tls (for 127.0.0.1 and localhost).
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(TLS_DIR, "server.crt"), os.path.join(TLS_DIR, "server.key"))
        server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        with open(os.path.join(TLS_DIR, "ca.crt"), "rb") as f:
            ca = base64.b64encode(f.read()).decode()
        url = "https://127.0.0.1:%d" % port
        with cluster.lock:
            cluster.default_service_accounts = True
            for nsobj in list(cluster.objects[("", "namespaces")].values()):
                cluster.create(cluster.type("", "serviceaccounts"), nsobj["metadata"]["name"], {"metadata": {"name": "default"}}, {})
    images = sorted(args.image, key=lambda x: -len(x[0]))
    server.runners = []
    log_dir = None
    if args.run_jobs or args.run_deployments:
        log_dir = os.path.abspath(args.job_logs or tempfile.mkdtemp(prefix="kube-emulator-logs-"))
        os.makedirs(log_dir, exist_ok=True)
    if args.run_jobs:
        server.runners.append(JobRunner(cluster, log_dir, images))
    if args.run_deployments:
        server.runners.append(DeploymentRunner(cluster, server.auth, log_dir, images, url, ca))
    for runner in server.runners:
        runner.start()
    if args.kubeconfig:
        with open(args.kubeconfig, "w") as f:
            f.write(kubeconfig_text(url, ADMIN_TOKEN, ca))

    def stop(*_):
        def shutdown():
            # Pods first, while the API still answers: an operator that gets SIGTERM can still
            # release its Lease. Then the watches end, then the server.
            for runner in server.runners:
                runner.shutdown()
            with cluster.lock:
                cluster.stopping = True
                cluster.changed.notify_all()
            server.shutdown()
        threading.Thread(target=shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("READY %d" % port, flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
