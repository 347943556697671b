"""Print the default chart's RBAC objects, released into namespace `ops` (the whole-system tests' operator
namespace), as a JSON list: `tests/chart/run.sh` reruns the whole-system tests with the emulator enforcing them."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_chart import hook, render  # noqa: E402

KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
print(json.dumps([d for d in render({}, namespace="ops") if d["kind"] in KINDS and not hook(d)], indent=1))
