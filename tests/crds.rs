//! `crds/` must match the CRDs the code generates, and the `crd` subcommand must print the same.

use std::collections::BTreeSet;
use std::process::Command;

use pipedream_secrets_operator::crd::{all_crds, crd_file_name};

const FIX: &str = "run `cargo run -- crd --dir crds && cp crds/*.yaml charts/pipedream-secrets-operator/files/crds/` and commit the result";

#[test]
fn crds_directory_matches_the_code() {
    let mut expected = BTreeSet::new();
    for crd in all_crds() {
        let file = crd_file_name(&crd);
        expected.insert(file.clone());
        let text = std::fs::read_to_string(format!("crds/{file}"))
            .unwrap_or_else(|e| panic!("crds/{file}: {e}; {FIX}"));
        let on_disk: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        assert!(
            on_disk == serde_json::to_value(&crd).unwrap(),
            "crds/{file} differs from the code; {FIX}"
        );
    }
    let present: BTreeSet<String> = std::fs::read_dir("crds")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(present, expected, "unexpected files in crds/; {FIX}");
}

#[test]
fn the_helm_chart_ships_the_same_crds() {
    for crd in all_crds() {
        let file = crd_file_name(&crd);
        let ours = std::fs::read_to_string(format!("crds/{file}")).unwrap();
        let chart = std::fs::read_to_string(format!(
            "charts/pipedream-secrets-operator/files/crds/{file}"
        ))
        .unwrap_or_else(|e| panic!("chart copy of {file}: {e}; {FIX}"));
        assert!(
            ours == chart,
            "charts/pipedream-secrets-operator/files/crds/{file} differs from crds/; {FIX}"
        );
    }
}

#[test]
fn crd_subcommand_prints_every_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_pipedream-secrets-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<serde_json::Value> = text
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect();
    let names: Vec<&str> = docs
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "connectedaccounts.pipedream-secrets.io",
            "pipedreamconnections.pipedream-secrets.io",
            "clusterpipedreamconnections.pipedream-secrets.io"
        ]
    );
}

#[test]
fn connected_account_crd_has_the_documented_shape() {
    let crd = serde_json::to_value(&all_crds()[0]).unwrap();
    let names = &crd["spec"]["names"];
    assert_eq!(names["shortNames"][0], "pdca");
    assert_eq!(names["categories"][0], "pipedream");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for c in ["Account", "Secret", "Ready", "Expires", "Next Sync", "Age"] {
        assert!(columns.contains(&c), "printer column {c}");
    }
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        spec["properties"]["accountId"]["pattern"],
        "^apn_[A-Za-z0-9]+$"
    );
    assert_eq!(
        spec["properties"]["target"]["properties"]["creationPolicy"]["enum"],
        serde_json::json!(["Owner", "Orphan", "Merge"])
    );
    let rules = spec["properties"]["target"]["x-kubernetes-validations"].to_string();
    assert!(rules.contains("creationPolicy != 'Merge' || self.deletionPolicy == 'Retain'"));
    // Every spec field is documented (kubectl explain).
    fn undocumented(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        if let Some(props) = v["properties"].as_object() {
            for (k, p) in props {
                let here = format!("{path}.{k}");
                if p["description"].as_str().is_none_or(str::is_empty) {
                    out.push(here.clone());
                }
                undocumented(p, &here, out);
                undocumented(&p["items"], &here, out);
            }
        }
    }
    for crd in all_crds() {
        let v = serde_json::to_value(&crd).unwrap();
        let mut missing = Vec::new();
        undocumented(
            &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"],
            "spec",
            &mut missing,
        );
        assert!(
            missing.is_empty(),
            "{}: fields without description: {missing:?}",
            crd.metadata.name.unwrap()
        );
    }
}

/// Issue 19: `docs/api.md` is generated from the CRDs by our own code and committed; it must match.
#[test]
fn the_api_reference_matches_the_crds() {
    let generated = pipedream_secrets_operator::crd::api_reference(&all_crds());
    let committed = std::fs::read_to_string("docs/api.md").unwrap_or_default();
    assert!(
        committed == generated,
        "docs/api.md differs from the CRDs; run `cargo run -- crd --api-reference > docs/api.md` and commit it"
    );
    // Every field of every CRD is in it, with its description.
    for crd in all_crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        let mut stack = vec![(String::new(), schema["openAPIV3Schema"].clone())];
        while let Some((path, s)) = stack.pop() {
            for (k, child) in s["properties"].as_object().into_iter().flatten() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if p != "apiVersion" && p != "kind" && p != "metadata" {
                    assert!(generated.contains(&format!("| `{p}` |")), "{p} missing");
                    stack.push((p.clone(), child.clone()));
                    if child["items"]["properties"].is_object() {
                        stack.push((format!("{p}[]"), child["items"].clone()));
                    }
                }
            }
        }
    }
}
