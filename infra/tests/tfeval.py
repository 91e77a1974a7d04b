"""Renders the `data "aws_iam_policy_document"` blocks of a Terraform module to IAM policy JSON
from the python-hcl2 parse, for given variable values, without a terraform binary.

It evaluates the subset of the Terraform language that infra/ uses in what feeds a policy
document: literals, string templates, references (var, local, each, dynamic-block iterators,
for-expression variables, and values bound by the caller such as data.aws_partition.current),
attribute and index access, for-expressions, conditionals, arithmetic/comparison/logical
operators, the functions in FUNCTIONS, and `optional(type, default)` attribute defaults of a
variable's type. Anything else (a resource attribute nobody bound, an unknown function) raises
Unresolved instead of guessing.

Used by test_infra.py (static checks of the rendered tenant policies) and test_iam_moto.py
(the same JSON enforced by moto's IAM).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import hcl2


class Unresolved(Exception):
    """Something the evaluator does not know (or Terraform would reject)."""


# ---- loading ------------------------------------------------------------------------------------


def _unquote(s: str) -> str:
    return s[1:-1] if len(s) >= 2 and s[0] == '"' and s[-1] == '"' else s


def raw_norm(value):
    """The hcl2 parse with block markers removed and keys unquoted; values stay raw (quoted
    templates "\"...\"" and expressions "${...}"), so that they can be evaluated."""
    if isinstance(value, dict):
        return {_unquote(k): raw_norm(v) for k, v in value.items() if not k.startswith("__")}
    if isinstance(value, list):
        return [raw_norm(v) for v in value]
    return value


class RawModule:
    def __init__(self, directory: Path):
        self.dir = directory
        self.variables: dict[str, dict] = {}
        self.locals: dict[str, object] = {}
        self.data: dict[tuple[str, str], dict] = {}
        for path in sorted(directory.glob("*.tf")):
            with path.open(encoding="utf-8") as f:
                doc = raw_norm(hcl2.load(f))
            for block in doc.get("variable", []):
                self.variables.update(block)
            for block in doc.get("locals", []):
                self.locals.update(block)
            for block in doc.get("data", []):
                for dtype, named in block.items():
                    for name, body in named.items():
                        self.data[(dtype, name)] = body


# ---- expressions: parsing -----------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_NUMBER = re.compile(r"\d+(\.\d+)?([eE][+-]?\d+)?")


class _Parser:
    def __init__(self, text: str):
        self.s = text
        self.i = 0

    def fail(self, why: str):
        raise Unresolved(f"{why} at {self.i} in {self.s!r}")

    def ws(self):
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r\n":
                self.i += 1
            elif self.s.startswith("#", self.i) or self.s.startswith("//", self.i):
                while self.i < len(self.s) and self.s[self.i] != "\n":
                    self.i += 1
            else:
                break

    def peek(self, tok: str) -> bool:
        self.ws()
        return self.s.startswith(tok, self.i)

    def eat(self, tok: str) -> bool:
        if self.peek(tok):
            self.i += len(tok)
            return True
        return False

    def expect(self, tok: str):
        if not self.eat(tok):
            self.fail(f"expected {tok!r}")

    def keyword(self, word: str) -> bool:
        self.ws()
        m = _IDENT.match(self.s, self.i)
        if m and m.group(0) == word:
            self.i = m.end()
            return True
        return False

    def ident(self) -> str:
        self.ws()
        m = _IDENT.match(self.s, self.i)
        if not m:
            self.fail("expected a name")
        self.i = m.end()
        return m.group(0)

    def parse(self):
        node = self.expr()
        self.ws()
        if self.i != len(self.s):
            self.fail("trailing text")
        return node

    def expr(self):
        cond = self.binary(0)
        if self.peek("?"):
            self.i += 1
            yes = self.expr()
            self.expect(":")
            no = self.expr()
            return ("cond", cond, yes, no)
        return cond

    LEVELS = [["||"], ["&&"], ["==", "!="], ["<=", ">=", "<", ">"], ["+", "-"], ["*", "/", "%"]]

    def binary(self, level: int):
        if level == len(self.LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while True:
            self.ws()
            op = next((o for o in self.LEVELS[level] if self.s.startswith(o, self.i)), None)
            if op is None:
                return left
            self.i += len(op)
            right = self.binary(level + 1)
            left = ("op", op, left, right)

    def unary(self):
        if self.peek("!"):
            self.i += 1
            return ("not", self.unary())
        if self.peek("-"):
            self.i += 1
            return ("neg", self.unary())
        return self.postfix(self.primary())

    def postfix(self, node):
        while True:
            if self.peek(".") and not self.peek(".."):
                self.i += 1
                if self.eat("*"):
                    self.fail("splat expressions are not supported")
                self.ws()
                m = _NUMBER.match(self.s, self.i)
                if m:
                    self.i = m.end()
                    node = ("index", node, ("lit", int(m.group(0))))
                else:
                    node = ("attr", node, self.ident())
            elif self.peek("["):
                self.i += 1
                if self.eat("*"):
                    self.fail("splat expressions are not supported")
                index = self.expr()
                self.expect("]")
                node = ("index", node, index)
            else:
                return node

    def primary(self):
        self.ws()
        if self.i >= len(self.s):
            self.fail("unexpected end")
        c = self.s[self.i]
        if c == '"':
            return self.template()
        if c == "(":
            self.i += 1
            node = self.expr()
            self.expect(")")
            return node
        if c == "[":
            self.i += 1
            if self.keyword("for"):
                return self.for_expr("]")
            items = []
            while not self.eat("]"):
                items.append(self.expr())
                if not self.eat(","):
                    self.expect("]")
                    break
            return ("list", items)
        if c == "{":
            self.i += 1
            if self.keyword("for"):
                return self.for_expr("}")
            items = []
            while not self.eat("}"):
                self.ws()
                m = _IDENT.match(self.s, self.i)
                if self.s[self.i] == '"':
                    key = self.template()
                elif self.s[self.i] == "(":
                    key = self.primary()
                elif m:
                    self.i = m.end()
                    key = ("lit", m.group(0))
                else:
                    self.fail("expected an object key")
                if not (self.eat("=") or self.eat(":")):
                    self.fail("expected = or :")
                items.append((key, self.expr()))
                self.eat(",")
            return ("object", items)
        m = _NUMBER.match(self.s, self.i)
        if m:
            self.i = m.end()
            text = m.group(0)
            return ("lit", float(text) if "." in text or "e" in text.lower() else int(text))
        name = self.ident()
        if name in ("true", "false"):
            return ("lit", name == "true")
        if name == "null":
            return ("lit", None)
        if self.peek("("):
            self.i += 1
            args = []
            while not self.eat(")"):
                args.append(self.expr())
                if self.eat("..."):
                    self.fail("argument expansion is not supported")
                if not self.eat(","):
                    self.expect(")")
                    break
            return ("call", name, args)
        return ("ref", name)

    def for_expr(self, close: str):
        first = self.ident()
        second = self.ident() if self.eat(",") else None
        if not self.keyword("in"):
            self.fail("expected in")
        collection = self.expr()
        self.expect(":")
        key = None
        if close == "}":
            key = self.expr()
            self.expect("=>")
        value = self.expr()
        grouping = close == "}" and self.eat("...")
        cond = None
        if self.keyword("if"):
            cond = self.expr()
        self.expect(close)
        if grouping:
            self.fail("grouping for-expressions are not supported")
        k, v = (first, second) if second else (None, first)
        return ("for", close, k, v, collection, key, value, cond)

    def template(self):
        """A quoted string template starting at the opening quote."""
        self.expect('"')
        parts: list = []
        buf = []
        while True:
            if self.i >= len(self.s):
                self.fail("unterminated string")
            c = self.s[self.i]
            if c == '"':
                self.i += 1
                break
            if c == "\\":
                nxt = self.s[self.i + 1]
                buf.append({"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}.get(nxt, "\\" + nxt))
                self.i += 2
            elif self.s.startswith("$${", self.i) or self.s.startswith("%%{", self.i):
                buf.append(self.s[self.i + 1 : self.i + 3])
                self.i += 3
            elif self.s.startswith("${", self.i):
                self.i += 2
                if buf:
                    parts.append(("lit", "".join(buf)))
                    buf = []
                self.eat("~")
                parts.append(self.expr())
                self.eat("~")
                self.expect("}")
            elif self.s.startswith("%{", self.i):
                self.fail("template directives are not supported")
            else:
                buf.append(c)
                self.i += 1
        if buf or not parts:
            parts.append(("lit", "".join(buf)))
        return ("template", parts)


def parse_expression(text: str):
    return _Parser(text).parse()


def parse_value(raw):
    """A raw hcl2 attribute value as an expression tree."""
    if isinstance(raw, str):
        if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
            return _Parser(raw).parse()
        if raw.startswith("${") and raw.endswith("}"):
            return _Parser(raw[2:-1]).parse()
        return _Parser(raw).parse()
    if isinstance(raw, list):
        return ("list", [parse_value(v) for v in raw])
    if isinstance(raw, dict):
        return ("object", [(("lit", k), parse_value(v)) for k, v in raw.items()])
    return ("lit", raw)


# ---- expressions: evaluation --------------------------------------------------------------------


def _tf_str(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (str, int, float)):
        return str(v)
    raise Unresolved(f"cannot interpolate {v!r}")


def _regex(pattern, string):
    m = re.search(pattern, string)
    if not m:
        raise Unresolved(f"regex {pattern!r} does not match {string!r}")
    if m.re.groupindex:
        return m.groupdict()
    if m.re.groups:
        return list(m.groups())
    return m.group(0)


def _coalescelist(*lists):
    for v in lists:
        if v:
            return v
    raise Unresolved("coalescelist: all lists are empty")


def _coalesce(*values):
    for v in values:
        if v is not None and v != "":
            return v
    raise Unresolved("coalesce: no non-null argument")


def _flatten(v):
    out = []
    for x in v:
        out.extend(_flatten(x) if isinstance(x, list) else [x])
    return out


def _one(v):
    if len(v) > 1:
        raise Unresolved("one: more than one element")
    return v[0] if v else None


def _distinct(v):
    out = []
    for x in v:
        if x not in out:
            out.append(x)
    return out


def _merge(*maps):
    out = {}
    for m in maps:
        out.update(m or {})
    return out


FUNCTIONS = {
    "length": len,
    "concat": lambda *ls: [x for l in ls for x in l],
    "coalesce": _coalesce,
    "coalescelist": _coalescelist,
    "regex": _regex,
    "split": lambda sep, s: s.split(sep),
    "join": lambda sep, l: sep.join(_tf_str(x) for x in l),
    "startswith": lambda s, p: s.startswith(p),
    "endswith": lambda s, p: s.endswith(p),
    "flatten": _flatten,
    "distinct": _distinct,
    "contains": lambda l, v: v in l,
    "keys": lambda m: sorted(m),
    "values": lambda m: [m[k] for k in sorted(m)],
    "lookup": lambda m, k, *d: m[k] if k in m else (d[0] if d else (_ for _ in ()).throw(Unresolved(k))),
    "merge": _merge,
    "tolist": list,
    "toset": lambda l: sorted(_distinct(l), key=str),
    "one": _one,
    "format": lambda f, *a: re.sub(r"%[sdv]", "{}", f).format(*a),
    "replace": lambda s, a, b: s.replace(a, b),
    "lower": str.lower,
    "upper": str.upper,
}


class Scope:
    """Names visible to an expression; `local` values are evaluated on first use."""

    def __init__(self, module: RawModule | None, values: dict, parent: "Scope | None" = None):
        self.module = module
        self.values = values
        self.parent = parent
        self._locals: dict = {} if parent is None else parent._locals
        self._evaluating: set = set() if parent is None else parent._evaluating

    def child(self, values: dict) -> "Scope":
        return Scope(self.module, values, self)

    def lookup(self, name: str):
        scope = self
        while scope is not None:
            if name in scope.values:
                return scope.values[name]
            scope = scope.parent
        if name == "local" and self.module is not None:
            return _Locals(self.root())
        raise Unresolved(f"unknown name {name}")

    def root(self) -> "Scope":
        scope = self
        while scope.parent is not None:
            scope = scope.parent
        return scope


class _Locals:
    def __init__(self, root: Scope):
        self.root = root

    def get(self, name: str):
        cache = self.root._locals
        if name not in cache:
            if name not in self.root.module.locals:
                raise Unresolved(f"local.{name} is not declared")
            if name in self.root._evaluating:
                raise Unresolved(f"local.{name} refers to itself")
            self.root._evaluating.add(name)
            try:
                cache[name] = evaluate(parse_value(self.root.module.locals[name]), self.root)
            finally:
                self.root._evaluating.discard(name)
        return cache[name]


def _get(container, key):
    if isinstance(container, _Locals):
        return container.get(key)
    if isinstance(container, dict):
        if key not in container:
            raise Unresolved(f"no attribute or key {key!r} in {sorted(container)}")
        return container[key]
    if isinstance(container, list) and isinstance(key, (int, float)):
        return container[int(key)]
    raise Unresolved(f"cannot index {container!r} with {key!r}")


def _iterate(collection):
    """(key, value) pairs as Terraform iterates them: maps by sorted key, lists by index."""
    if isinstance(collection, dict):
        return [(k, collection[k]) for k in sorted(collection)]
    if isinstance(collection, list):
        return list(enumerate(collection))
    raise Unresolved(f"cannot iterate over {collection!r}")


def evaluate(node, scope: Scope):
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "template":
        parts = node[1]
        if len(parts) == 1 and parts[0][0] != "lit":
            return evaluate(parts[0], scope)  # "${x}" keeps x's type
        return "".join(_tf_str(evaluate(p, scope)) for p in parts)
    if kind == "ref":
        return scope.lookup(node[1])
    if kind == "attr":
        return _get(evaluate(node[1], scope), node[2])
    if kind == "index":
        return _get(evaluate(node[1], scope), evaluate(node[2], scope))
    if kind == "list":
        return [evaluate(n, scope) for n in node[1]]
    if kind == "object":
        return {_tf_str(evaluate(k, scope)): evaluate(v, scope) for k, v in node[1]}
    if kind == "cond":
        return evaluate(node[2] if _bool(evaluate(node[1], scope)) else node[3], scope)
    if kind == "not":
        return not _bool(evaluate(node[1], scope))
    if kind == "neg":
        return -evaluate(node[1], scope)
    if kind == "op":
        return _binary(node[1], node[2], node[3], scope)
    if kind == "call":
        name, args = node[1], node[2]
        if name == "try":
            for arg in args:
                try:
                    return evaluate(arg, scope)
                except (Unresolved, IndexError, KeyError, TypeError):
                    continue
            raise Unresolved("try: no argument could be evaluated")
        if name == "can":
            try:
                evaluate(args[0], scope)
                return True
            except (Unresolved, IndexError, KeyError, TypeError):
                return False
        if name not in FUNCTIONS:
            raise Unresolved(f"function {name}() is not supported")
        return FUNCTIONS[name](*[evaluate(a, scope) for a in args])
    if kind == "for":
        _, close, kname, vname, coll, key, value, cond = node
        out_list, out_map = [], {}
        for k, v in _iterate(evaluate(coll, scope)):
            names = {vname: v}
            if kname:
                names[kname] = k
            inner = scope.child(names)
            if cond is not None and not _bool(evaluate(cond, inner)):
                continue
            if close == "]":
                out_list.append(evaluate(value, inner))
            else:
                out_map[_tf_str(evaluate(key, inner))] = evaluate(value, inner)
        return out_list if close == "]" else out_map
    raise Unresolved(f"cannot evaluate {kind}")


def _bool(v) -> bool:
    if not isinstance(v, bool):
        raise Unresolved(f"not a bool: {v!r}")
    return v


def _binary(op, left, right, scope):
    if op == "&&":
        return _bool(evaluate(left, scope)) and _bool(evaluate(right, scope))
    if op == "||":
        return _bool(evaluate(left, scope)) or _bool(evaluate(right, scope))
    a, b = evaluate(left, scope), evaluate(right, scope)
    ops = {
        "==": lambda: a == b,
        "!=": lambda: a != b,
        "<": lambda: a < b,
        ">": lambda: a > b,
        "<=": lambda: a <= b,
        ">=": lambda: a >= b,
        "+": lambda: a + b,
        "-": lambda: a - b,
        "*": lambda: a * b,
        "/": lambda: a / b,
        "%": lambda: a % b,
    }
    return ops[op]()


# ---- variable types: optional() defaults --------------------------------------------------------


def apply_type(type_node, value, scope: Scope):
    """The value with the defaults of `optional(type, default)` object attributes filled in."""
    if value is None:
        return None
    if type_node[0] != "call":
        return value
    name, args = type_node[1], type_node[2]
    if name in ("map",):
        return {k: apply_type(args[0], v, scope) for k, v in value.items()}
    if name in ("list", "set"):
        return [apply_type(args[0], v, scope) for v in value]
    if name == "object":
        attrs = args[0]
        out = dict(value)
        for key_node, attr_type in attrs[1]:
            key = evaluate(key_node, scope)
            if attr_type[0] == "call" and attr_type[1] == "optional":
                inner = attr_type[2][0]
                if out.get(key) is None:
                    out[key] = evaluate(attr_type[2][1], scope) if len(attr_type[2]) > 1 else None
                out[key] = apply_type(inner, out[key], scope)
            else:
                if key not in out:
                    raise Unresolved(f"object attribute {key} is required")
                out[key] = apply_type(attr_type, out[key], scope)
        return out
    return value


def variable_values(module: RawModule, given: dict) -> dict:
    """Every variable of the module: the given value, else its default, with optional() defaults
    applied as Terraform does."""
    scope = Scope(None, {})
    out = {}
    for name, body in module.variables.items():
        if name in given:
            value = given[name]
        elif "default" in body:
            value = evaluate(parse_value(body["default"]), scope)
        else:
            raise Unresolved(f"variable {name} is required")
        if "type" in body:
            value = apply_type(parse_value(body["type"]), value, scope)
        out[name] = value
    return out


# ---- policy documents ---------------------------------------------------------------------------


def _blocks(body: dict, name: str) -> list[dict]:
    value = body.get(name)
    if value is None:
        return []
    return [b for b in (value if isinstance(value, list) else [value]) if isinstance(b, dict)]


def _expand(body: dict, name: str, scope: Scope) -> list[tuple[dict, Scope]]:
    """The static and dynamic blocks `name` of a body, each with the scope to evaluate it in."""
    out = [(b, scope) for b in _blocks(body, name)]
    for dyn in _blocks(body, "dynamic"):
        for label, inner in dyn.items():
            if label != name:
                continue
            iterator = evaluate(parse_value(inner["iterator"]), scope) if "iterator" in inner else name
            if isinstance(iterator, str) is False:
                raise Unresolved("iterator must be a name")
            for content in _blocks(inner, "content"):
                for k, v in _iterate(evaluate(parse_value(inner["for_each"]), scope)):
                    out.append((content, scope.child({iterator: {"key": k, "value": v}})))
    return out


def _strings(value, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise Unresolved(f"{what}: not a list of strings: {value!r}")


def render_document(body: dict, scope: Scope) -> dict:
    """One aws_iam_policy_document body as the IAM JSON it produces (lists kept as lists)."""
    statements = []
    for stmt, s in _expand(body, "statement", scope):

        def field(name, default=None):
            return evaluate(parse_value(stmt[name]), s) if name in stmt else default

        out = {}
        sid = field("sid", "")
        if sid:
            out["Sid"] = sid
        out["Effect"] = field("effect", "Allow")
        for key, name in (("Action", "actions"), ("NotAction", "not_actions"),
                          ("Resource", "resources"), ("NotResource", "not_resources")):
            if name in stmt:
                out[key] = _strings(field(name), name)
        for key, name in (("Principal", "principals"), ("NotPrincipal", "not_principals")):
            for p, ps in _expand(stmt, name, s):
                ptype = evaluate(parse_value(p["type"]), ps)
                ids = _strings(evaluate(parse_value(p["identifiers"]), ps), "identifiers")
                out.setdefault(key, {}).setdefault(ptype, []).extend(ids)
        for c, cs in _expand(stmt, "condition", s):
            test = evaluate(parse_value(c["test"]), cs)
            variable = evaluate(parse_value(c["variable"]), cs)
            values = _strings(evaluate(parse_value(c["values"]), cs), "values")
            out.setdefault("Condition", {}).setdefault(test, {})[variable] = values
        statements.append(out)
    return {"Version": "2012-10-17", "Statement": statements}


def render_policies(directory: Path, variables: dict, bindings: dict | None = None) -> dict:
    """Every aws_iam_policy_document of the module, rendered: {name: json} for a block without
    for_each, {name: {key: json}} for one with for_each. `bindings` gives values for other
    references (e.g. {"data": {"aws_partition": {"current": {"partition": "aws"}}}})."""
    module = RawModule(directory)
    values = {"var": variable_values(module, variables)}
    values.update(bindings or {})
    root = Scope(module, values)
    out = {}
    for (dtype, name), body in module.data.items():
        if dtype != "aws_iam_policy_document":
            continue
        if "for_each" in body:
            coll = evaluate(parse_value(body["for_each"]), root)
            out[name] = {
                str(k): render_document(body, root.child({"each": {"key": k, "value": v}}))
                for k, v in _iterate(coll)
            }
        else:
            out[name] = render_document(body, root)
    return out


def evaluate_local(directory: Path, name: str, variables: dict, bindings: dict | None = None):
    module = RawModule(directory)
    values = {"var": variable_values(module, variables)}
    values.update(bindings or {})
    return _Locals(Scope(module, values)).get(name)


def dumps(policy: dict) -> str:
    return json.dumps(policy, indent=2, sort_keys=True)


# ---- orch's IAM module --------------------------------------------------------------------------

IAM_MODULE = Path(__file__).resolve().parent.parent / "modules" / "iam"


def iam_policies(
    *,
    bucket: str,
    table_arn: str,
    kms_key_arn: str,
    tenants: dict,
    storage_prefix: str = "orch/",
    region_partition: str = "aws",
    **variables,
) -> dict:
    """The policy documents of modules/iam rendered for one bucket and table (the indexes are
    the table's by-state and jobs), as test_infra.py and test_iam_moto.py use them."""
    given = {
        "bucket_arn": f"arn:{region_partition}:s3:::{bucket}",
        "storage_prefix": storage_prefix,
        "table_arn": table_arn,
        "table_index_arns": [f"{table_arn}/index/by-state", f"{table_arn}/index/jobs"],
        "queue_arn": f"arn:{region_partition}:sqs:us-east-1:123456789012:orch-retries",
        "dlq_arn": f"arn:{region_partition}:sqs:us-east-1:123456789012:orch-retries-dlq",
        "kms_key_arn": kms_key_arn,
        "tenants": tenants,
    }
    given.update(variables)
    bindings = {"data": {"aws_partition": {"current": {"partition": region_partition}}}}
    return render_policies(IAM_MODULE, given, bindings)


def iam_local(name: str, **kwargs):
    """A local value of modules/iam for the same inputs as iam_policies()."""
    bucket, table_arn = kwargs.pop("bucket"), kwargs.pop("table_arn")
    given = {
        "bucket_arn": f"arn:aws:s3:::{bucket}",
        "storage_prefix": kwargs.pop("storage_prefix", "orch/"),
        "table_arn": table_arn,
        "table_index_arns": [f"{table_arn}/index/by-state", f"{table_arn}/index/jobs"],
        "queue_arn": "arn:aws:sqs:us-east-1:123456789012:orch-retries",
        "dlq_arn": "arn:aws:sqs:us-east-1:123456789012:orch-retries-dlq",
        "kms_key_arn": kwargs.pop("kms_key_arn", "arn:aws:kms:us-east-1:123456789012:key/k"),
    }
    given.update(kwargs)
    bindings = {"data": {"aws_partition": {"current": {"partition": "aws"}}}}
    return evaluate_local(IAM_MODULE, name, given, bindings)


def iam_match(pattern: str, value: str) -> bool:
    """IAM's wildcard match (`*` any run of characters, `/` included; `?` one character),
    case-sensitive as for resources and condition values."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.S) is not None
