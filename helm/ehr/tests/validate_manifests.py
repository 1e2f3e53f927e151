"""Validates rendered manifests against the Kubernetes JSON schemas kubernetes-validate ships.

    python validate_manifests.py KUBE_VERSION FILE...

Strict: a field the schema does not define fails, and so does a kind without a schema — except
the custom resources listed in CUSTOM_KINDS, whose CRDs are not in the Kubernetes schemas (their
content is checked by test_render.py). Exit 0 when every manifest passes, 1 otherwise.
Run by .ci/chart with the venv's python.
"""

import sys

import yaml
from kubernetes_validate import utils

# (apiVersion, kind) of the custom resources the chart may render.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    version, files = argv[1], argv[2:]
    checked = failed = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        if not docs:
            print(f"ERROR {path}: no manifest rendered")
            failed += 1
        for doc in docs:
            name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if (doc.get("apiVersion"), doc.get("kind")) in CUSTOM_KINDS:
                continue
            checked += 1
            try:
                utils.validate(doc, version, strict=True)
            except utils.ValidationError as e:
                where = ".".join(str(p) for p in e.path) or "(top)"
                print(f"ERROR {path}: {name}: {where}: {e.message}")
                failed += 1
            except utils.SchemaNotFoundError as e:
                print(f"ERROR {path}: {name}: {e.message}")
                failed += 1
            except utils.VersionNotSupportedError:
                print(f"ERROR kubernetes-validate does not know Kubernetes {version}")
                return 1
    print(f"{checked} manifests checked against Kubernetes {version} (strict): {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
