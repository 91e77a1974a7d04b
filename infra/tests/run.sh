#!/usr/bin/env bash
# Checks of orch's Terraform (infra/). Runs anywhere with python3: installs python-hcl2 when it
# is missing, then runs the static tests (infra/tests/test_infra.py).
#
# When a terraform binary is on PATH and the AWS provider can be installed without the network
# (a filesystem mirror, TF_PLUGIN_MIRROR, default /opt/tf-plugins), it also runs, in a scratch
# copy: `terraform fmt -check`, `terraform validate` of the example, and `terraform test`
# (examples/complete/tests/plan.tftest.hcl: plans with fake credentials, nothing reaches AWS).
# None of these is required: machines without terraform (Debian, PyPI and npm carry no recent
# Terraform or OpenTofu) skip them and say so.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! python3 - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
sys.exit(0 if m.version("python-hcl2").split(".")[0] == "8" else 1)
PY
then
  python3 -m pip install --quiet --disable-pip-version-check 'python-hcl2>=8,<9'
fi

python3 -m unittest discover -s infra/tests -p 'test_*.py' -v

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
