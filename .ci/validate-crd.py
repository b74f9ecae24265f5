#!/usr/bin/env python3
"""Validates custom resources (kinds that kubernetes-validate has no schema for) against
the JSON schemas shipped in deploy/k8s/schemas/, named <kind>-<group>-<version>.json
(group up to its first dot). Exit 0 when every document of every file validates, 1
otherwise, 2 when a kind has no schema here. Needs PyYAML and jsonschema (both come with
kubernetes-validate)."""
import json
import pathlib
import re
import sys

import jsonschema
import yaml

SCHEMAS = pathlib.Path(__file__).resolve().parent.parent / "deploy" / "k8s" / "schemas"


def schema_for(doc):
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc["apiVersion"])
    path = SCHEMAS / f"{doc['kind'].lower()}-{api}.json"
    return path, (json.loads(path.read_text()) if path.exists() else None)


def main(files):
    rc = 0
    for name in files:
        for doc in yaml.safe_load_all(open(name)):
            if not doc:
                continue
            path, schema = schema_for(doc)
            what = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
            if schema is None:
                print(f"ERROR {name}: no schema {path.name} for {what}")
                rc = max(rc, 2)
                continue
            errors = sorted(
                jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path)
            )
            for e in errors:
                at = ".".join(str(p) for p in e.path)
                print(f"ERROR {name} did not validate for resource {what}: {at}: {e.message}")
            if errors:
                rc = max(rc, 1)
            else:
                print(f"INFO {name} passed for resource {what} against {path.name}")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
