#!/usr/bin/env bash
# Checks of orch's Terraform (infra/). Runs anywhere with python3 (on Debian/Ubuntu it installs
# python3-venv with apt-get when venvs need it):
#
# - the static tests (infra/tests/test_infra.py), with python-hcl2 8.x: python3's own when it has
#   it or pip can install it there, else in a venv of ours (a stock Debian python3 has no pip, or
#   is "externally managed" and refuses pip installs): ${XDG_CACHE_HOME:-~/.cache}/orch-infra-test-venv;
# - the tenant policies enforced by moto (infra/tests/test_iam_moto.py, found by the same discover):
#   it starts a moto server of its own (MOTO_SERVER, moto_server on PATH, or `python -m moto.server`)
#   and needs boto3 in the same python; without them it prints SKIPPED, and with CI=true it fails.
#   .ci/run provides both (its venv's python3 comes first on PATH). Only the S3 part is enforced
#   for real: moto ignores IAM conditions (dynamodb:LeadingKeys, s3:prefix) and authorizes
#   DynamoDB against Resource "*", so those are checked statically (test_infra.py);
# - checkov 3.x (static security checks of the Terraform), always in a venv of its own because it
#   pins many dependencies: ${XDG_CACHE_HOME:-~/.cache}/orch-checkov-venv, or ORCH_CHECKOV_VENV.
#   It runs without Prisma Cloud: no API key, no policy download, no update check, so it needs
#   the network only to install. Checks that do not apply are skipped inline, with their reasons,
#   in the .tf files (listed in infra/README.md); any failed check fails this script.
#
# When a terraform binary is on PATH and the AWS provider can be installed without the network
# (a filesystem mirror, TF_PLUGIN_MIRROR, default /opt/tf-plugins), it also runs, in a scratch
# copy: `terraform fmt -check`, `terraform validate` of the example, and `terraform test`
# (examples/complete/tests/plan.tftest.hcl: plans with fake credentials, nothing reaches AWS).
# None of these is required: machines without terraform (Debian, PyPI and npm carry no recent
# Terraform or OpenTofu) skip them and say so.
set -euo pipefail
cd "$(dirname "$0")/../.."

cache="${XDG_CACHE_HOME:-$HOME/.cache}"

# has_dist PYTHON DIST MAJOR: PYTHON has DIST MAJOR.x installed.
has_dist() {
  "$1" - "$2" "$3" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
sys.exit(0 if m.version(sys.argv[1]).split(".")[0] == sys.argv[2] else 1)
PY
}

# make_venv DIR: a new venv at DIR. `python3 -m venv` fails on Debian/Ubuntu without the
# python3-venv package (no ensurepip); install it when apt-get is there.
make_venv() {
  local dir=$1 sudo=""
  rm -rf "$dir"
  python3 -m venv "$dir" 2>/dev/null && return 0
  rm -rf "$dir"
  if ! command -v apt-get >/dev/null; then
    echo "python3 -m venv failed and there is no apt-get to install python3-venv" >&2
    return 1
  fi
  if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null; then
      echo "python3 -m venv failed and python3-venv cannot be installed without root" >&2
      return 1
    fi
    sudo="sudo -n"
  fi
  echo "installing python3-venv (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
  python3 -m venv "$dir"
}

# ensure_venv DIR DIST MAJOR: a venv at DIR with DIST MAJOR.x, (re)created when it is missing or
# broken or has another major version; one installer at a time when several runs share the cache.
ensure_venv() {
  local dir=$1 dist=$2 major=$3
  mkdir -p "$(dirname "$dir")"
  (
    if command -v flock >/dev/null; then flock 9; fi
    if ! has_dist "$dir/bin/python" "$dist" "$major"; then
      echo "$dist: installing $dist $major.x into $dir"
      start=$SECONDS
      make_venv "$dir"
      "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$dist>=$major,<$((major + 1))"
      has_dist "$dir/bin/python" "$dist" "$major" || { echo "$dist: installation into $dir failed" >&2; exit 1; }
      echo "$dist: installed in $((SECONDS - start)) s"
    fi
  ) 9>"$dir.lock"
}

# ---- static tests -------------------------------------------------------------------------------
py=python3
if ! has_dist python3 python-hcl2 8; then
  if ! { python3 -m pip install --quiet --disable-pip-version-check 'python-hcl2>=8,<9' 2>/dev/null &&
    has_dist python3 python-hcl2 8; }; then
    echo "python-hcl2: python3 has no pip or refuses installs (externally managed); using a venv"
    hcl2_venv="$cache/orch-infra-test-venv"
    ensure_venv "$hcl2_venv" python-hcl2 8
    py="$hcl2_venv/bin/python"
  fi
fi

"$py" -m unittest discover -s infra/tests -p 'test_*.py' -v

# ---- checkov ------------------------------------------------------------------------------------
checkov_venv="${ORCH_CHECKOV_VENV:-$cache/orch-checkov-venv}"
ensure_venv "$checkov_venv" checkov 3

echo "checkov $("$checkov_venv/bin/checkov" --version) -d infra"
# No Prisma Cloud: no API key even if one is in the environment, no mapping or policy download,
# no check for a newer checkov on PyPI.
env -u BC_API_KEY -u PRISMA_API_URL BC_SKIP_MAPPING=TRUE CKV_SKIP_PACKAGE_UPDATE_CHECK=TRUE \
  "$checkov_venv/bin/checkov" -d infra --quiet --compact --skip-download

if ! command -v terraform >/dev/null; then
  echo "terraform: not installed; skipped fmt, validate and terraform test (the static tests above ran)"
  exit 0
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export CHECKPOINT_DISABLE=1
export TF_IN_AUTOMATION=1
# A CLI configuration of our own: no stray settings, providers from the local mirror only.
export TF_CLI_CONFIG_FILE="$scratch/terraformrc"
mirror="${TF_PLUGIN_MIRROR:-/opt/tf-plugins}"
: >"$TF_CLI_CONFIG_FILE"

echo "terraform fmt -check"
terraform fmt -check -recursive -diff infra

if [ ! -d "$mirror/registry.terraform.io/hashicorp/aws" ]; then
  echo "terraform: no AWS provider in $mirror; skipped validate and terraform test"
  exit 0
fi
printf 'provider_installation {\n  filesystem_mirror {\n    path = "%s"\n  }\n}\n' "$mirror" >"$TF_CLI_CONFIG_FILE"

cp -r infra "$scratch/infra"
rm -rf "$scratch"/infra/examples/complete/.terraform
echo "terraform validate (examples/complete)"
terraform -chdir="$scratch/infra/examples/complete" init -backend=false -input=false -no-color >"$scratch/init.log" ||
  { cat "$scratch/init.log"; exit 1; }
terraform -chdir="$scratch/infra/examples/complete" validate -no-color
echo "terraform test (examples/complete)"
terraform -chdir="$scratch/infra/examples/complete" test -no-color
