#!/usr/bin/env bash
# Validates deploy/ against the engines' own schemas, beyond what
# tests/deploy.rs checks (which needs nothing but cargo):
#
# - the Kubernetes manifests against the published OpenAPI schemas of each
#   Kubernetes version from the minimum the Job needs (1.29) to the newest
#   the validator knows, strictly (an unknown field fails), with the
#   kubernetes-validate package; 1.28 is expected to fail (its schema still
#   requires onPodConditions in every podFailurePolicy rule);
# - the AWS Batch and ECS JSON files against the AWS API models the AWS CLI
#   validates --cli-input-json with (botocore): field names, types, required
#   fields and enum values of RegisterJobDefinition, SubmitJob,
#   RegisterTaskDefinition and RunTask.
#
# Installs both (pinned) into a virtualenv under target/ the first time.
#
#   scripts/check-deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/check-deploy-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet kubernetes-validate==1.37.0 botocore==1.44.8
fi

manifests=(deploy/kubernetes/namespace.yaml deploy/kubernetes/serviceaccount.yaml deploy/kubernetes/job.yaml)
for version in 1.29 1.30 1.31 1.32 1.33 1.34 1.35 1.36 1.37; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}"
  echo "kubernetes $version: ok"
done
if "$venv/bin/kubernetes-validate" --strict --quiet -k 1.28 deploy/kubernetes/job.yaml >/dev/null 2>&1; then
  echo "kubernetes 1.28 accepts the Job: the minimum version in job.yaml is wrong" >&2
  exit 1
fi
echo "kubernetes 1.28: rejected, as the stated minimum of 1.29 says"

"$venv/bin/python" - <<'EOF'
import json
import sys

import botocore.session
from botocore.validate import ParamValidator

session = botocore.session.get_session()
failed = False


def enums(shape, value, where):
    """Enum values, which botocore's own validation leaves to the service."""
    bad = []
    if shape.type_name == "structure":
        for k, v in value.items():
            bad += enums(shape.members[k], v, f"{where}.{k}")
    elif shape.type_name == "list":
        for i, v in enumerate(value):
            bad += enums(shape.member, v, f"{where}[{i}]")
    elif shape.type_name == "map":
        for k, v in value.items():
            bad += enums(shape.value, v, f"{where}.{k}")
    elif shape.type_name == "string" and shape.enum and value not in shape.enum:
        bad.append(f"{where}: {value!r} is not one of {shape.enum}")
    return bad


for service, operation, path in [
    ("batch", "RegisterJobDefinition", "deploy/aws-batch/job-definition.json"),
    ("batch", "SubmitJob", "deploy/aws-batch/submit-job.json"),
    ("ecs", "RegisterTaskDefinition", "deploy/ecs/task-definition.json"),
    ("ecs", "RunTask", "deploy/ecs/run-task.json"),
]:
    shape = session.get_service_model(service).operation_model(operation).input_shape
    with open(path) as f:
        params = json.load(f)
    report = ParamValidator().validate(params, shape)
    bad = enums(shape, params, operation)
    if report.has_errors() or bad:
        failed = True
        print(f"{path} ({service} {operation}):", file=sys.stderr)
        if report.has_errors():
            print(report.generate_report(), file=sys.stderr)
        for b in bad:
            print(f"  {b}", file=sys.stderr)
    else:
        print(f"{path}: ok ({service} {operation})")
sys.exit(1 if failed else 0)
EOF
