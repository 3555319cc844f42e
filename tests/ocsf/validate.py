#!/usr/bin/env python3
"""Validates JSON-lines event files against the OCSF 1.1.0 schema, offline: flow events
(class_uid 4001) as network_activity with the security_control and host profiles, policy-rejected
events (class_uid 5019) as device_config_state_change with the host profile. Any other class_uid
is a violation.

    validate.py FILE...

Prints "N events valid" and exits 0, or every violation as FILE:LINE: message and exits 1. A file
that is missing or holds no events exits 2: a validation of nothing must not pass.
"""

import json
import sys

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

VERSION = "1.1.0"
# class_uid -> (class name, the exact profiles its events must claim)
CLASSES = {
    4001: ("network_activity", ["security_control", "host"]),
    5019: ("device_config_state_change", ["host"]),
}
# OCSF's free-form `object` type (what `unmapped` is): the only object the class leaves open.
OPEN_OBJECTS = {"object"}


def validator(schema, name, profiles):
    class_schema = schema.get_class_schema(name, profiles=profiles)
    # The generated schema forbids attributes outside the class (additionalProperties is false on
    # the class and on every object that defines attributes); check it, so that a package upgrade
    # cannot loosen the validation quietly.
    lax = [
        name
        for part, definition in [(name, class_schema), *class_schema.get("$defs", {}).items()]
        if part not in OPEN_OBJECTS and definition.get("additionalProperties") is not False
    ]
    if lax:
        fail(f"the generated {name} schema allows unknown attributes in {', '.join(lax)}")
    Draft202012Validator.check_schema(class_schema)
    return Draft202012Validator(class_schema)


def ocsf_rules(event, profiles):
    """OCSF rules that JSON Schema cannot express: the event must claim what it is checked as."""
    if not isinstance(event, dict):
        return []  # the schema reports the wrong type
    problems = []
    class_uid, activity_id = event.get("class_uid"), event.get("activity_id")
    if isinstance(class_uid, int) and isinstance(activity_id, int):
        if event.get("type_uid") != class_uid * 100 + activity_id:
            problems.append(("type_uid", f"must be class_uid * 100 + activity_id = "
                                         f"{class_uid * 100 + activity_id}"))
    metadata = event.get("metadata")
    if isinstance(metadata, dict):
        if metadata.get("version") != VERSION:
            problems.append(("metadata/version", f"must be {VERSION!r}, the schema checked against"))
        if sorted(metadata.get("profiles") or []) != sorted(profiles):
            problems.append(("metadata/profiles", f"must be exactly {profiles}"))
    return problems


def fail(message):
    print(f"validate.py: {message}", file=sys.stderr)
    sys.exit(2)


def main(paths):
    if not paths:
        fail("usage: validate.py FILE...")
    # get_ocsf_schema reads the schema the package ships for that version: no network.
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=VERSION))
    checks = {
        class_uid: (validator(schema, name, profiles), profiles)
        for class_uid, (name, profiles) in CLASSES.items()
    }
    valid = 0
    errors = []
    for path in paths:
        seen = 0
        try:
            lines = open(path, encoding="utf-8")
        except OSError as error:
            fail(f"{path}: {error.strerror}")
        with lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                seen += 1
                try:
                    event = json.loads(line)
                except json.JSONDecodeError as error:
                    errors.append(f"{path}:{number}: not JSON: {error}")
                    continue
                class_uid = event.get("class_uid") if isinstance(event, dict) else None
                if class_uid not in checks:
                    errors.append(f"{path}:{number}: class_uid: {class_uid!r} is none of {sorted(checks)}")
                    continue
                check, profiles = checks[class_uid]
                problems = [
                    ("/".join(str(p) for p in problem.absolute_path), problem.message)
                    for problem in check.iter_errors(event)
                ] + ocsf_rules(event, profiles)
                for where, message in sorted(problems):
                    errors.append(f"{path}:{number}: {where or '(event)'}: {message}")
                if not problems:
                    valid += 1
        if seen == 0:
            fail(f"{path}: no events to validate")
    for error in errors:
        print(error)
    if errors:
        print(f"{len(errors)} violations; {valid} events valid")
        sys.exit(1)
    print(f"{valid} events valid")


if __name__ == "__main__":
    main(sys.argv[1:])
