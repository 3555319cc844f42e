#!/usr/bin/env python3
"""Validates JSON-lines event files against the OCSF 1.1.0 schema of class network_activity with
the security_control and host profiles, offline.

    validate.py FILE...

Prints "N events valid" and exits 0, or every violation as FILE:LINE: message and exits 1. A file
with no events exits 2: a validation of nothing must not pass.
"""

import json
import sys

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

VERSION = "1.1.0"
CLASS = "network_activity"
PROFILES = ["security_control", "host"]


def validator():
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=VERSION))
    class_schema = schema.get_class_schema(CLASS, profiles=PROFILES)
    # The generated schema already forbids attributes outside the class (additionalProperties is
    # false on the class and every object); check it so a package upgrade cannot loosen it quietly.
    if class_schema.get("additionalProperties") is not False:
        sys.exit(f"the {CLASS} schema allows unknown attributes; refusing a lax validation")
    return Draft202012Validator(class_schema)


def main(paths):
    if not paths:
        sys.exit("usage: validate.py FILE...")
    check = validator()
    valid = 0
    errors = []
    for path in paths:
        seen = 0
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                seen += 1
                try:
                    event = json.loads(line)
                except json.JSONDecodeError as error:
                    errors.append(f"{path}:{number}: not JSON: {error}")
                    continue
                problems = sorted(check.iter_errors(event), key=lambda e: list(e.absolute_path))
                for problem in problems:
                    where = "/".join(str(p) for p in problem.absolute_path) or "(event)"
                    errors.append(f"{path}:{number}: {where}: {problem.message}")
                if not problems:
                    valid += 1
        if seen == 0:
            print(f"{path}: no events to validate", file=sys.stderr)
            sys.exit(2)
    for error in errors:
        print(error)
    if errors:
        print(f"{len(errors)} violations; {valid} events valid")
        sys.exit(1)
    print(f"{valid} events valid")


if __name__ == "__main__":
    main(sys.argv[1:])
