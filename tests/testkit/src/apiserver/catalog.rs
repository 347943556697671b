//! Resource kinds the emulator serves: a fixed set of built-ins plus every CRD applied to it.

use serde_json::{Value, json};

/// One served resource (group/version/plural).
#[derive(Clone, Debug)]
pub struct Kind {
    /// API group ("" for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Plural resource name.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names.
    pub short_names: Vec<String>,
    /// Categories.
    pub categories: Vec<String>,
    /// `openAPIV3Schema` for custom resources.
    pub schema: Option<Value>,
    /// `additionalPrinterColumns` for custom resources.
    pub printer_columns: Vec<Value>,
    /// Whether `/status` is a subresource.
    pub status_subresource: bool,
}

impl Kind {
    fn builtin(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        short: &[&str],
        status: bool,
    ) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            kind: kind.into(),
            namespaced,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: vec![],
            schema: None,
            printer_columns: vec![],
            status_subresource: status,
        }
    }

    /// `group/version`, or `version` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` (or `plural` for core).
    pub fn resource_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Entries of an APIResourceList for this kind.
    pub fn discovery(&self) -> Vec<Value> {
        let verbs = json!([
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch"
        ]);
        let mut out = vec![json!({
            "name": self.plural, "singularName": self.singular, "namespaced": self.namespaced, "kind": self.kind,
            "verbs": verbs, "shortNames": self.short_names, "categories": self.categories,
        })];
        if self.status_subresource {
            out.push(json!({"name": format!("{}/status", self.plural), "singularName": "", "namespaced": self.namespaced,
                "kind": self.kind, "verbs": ["get", "patch", "update"]}));
        }
        out
    }
}

/// The built-in kinds.
pub fn builtins() -> Vec<Kind> {
    let rbac = [
        ("roles", "Role", true),
        ("rolebindings", "RoleBinding", true),
        ("clusterroles", "ClusterRole", false),
        ("clusterrolebindings", "ClusterRoleBinding", false),
    ]
    .map(|(plural, kind, namespaced)| {
        Kind::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            plural,
            kind,
            namespaced,
            &[],
            false,
        )
    });
    let mut kinds = vec![
        Kind::builtin("", "v1", "namespaces", "Namespace", false, &["ns"], true),
        Kind::builtin("", "v1", "secrets", "Secret", true, &[], false),
        Kind::builtin("", "v1", "configmaps", "ConfigMap", true, &["cm"], false),
        Kind::builtin(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            true,
            &["sa"],
            false,
        ),
        Kind::builtin("", "v1", "events", "Event", true, &["ev"], false),
        Kind::builtin(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            true,
            &["ev"],
            false,
        ),
        Kind::builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            true,
            &[],
            false,
        ),
        Kind::builtin(
            "apps",
            "v1",
            "deployments",
            "Deployment",
            true,
            &["deploy"],
            true,
        ),
        Kind::builtin(
            "apps",
            "v1",
            "statefulsets",
            "StatefulSet",
            true,
            &["sts"],
            true,
        ),
        Kind::builtin("apps", "v1", "daemonsets", "DaemonSet", true, &["ds"], true),
        Kind::builtin("", "v1", "services", "Service", true, &["svc"], true),
        Kind::builtin(
            "networking.k8s.io",
            "v1",
            "networkpolicies",
            "NetworkPolicy",
            true,
            &["netpol"],
            false,
        ),
        Kind::builtin(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
            &["pdb"],
            true,
        ),
        Kind::builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            true,
        ),
    ];
    kinds.extend(rbac);
    kinds
}

/// The kinds a CRD object declares (its served versions).
pub fn from_crd(crd: &Value) -> Result<Vec<Kind>, String> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().ok_or("spec.group is required")?;
    let names = &spec["names"];
    let plural = names["plural"]
        .as_str()
        .ok_or("spec.names.plural is required")?;
    let kind = names["kind"]
        .as_str()
        .ok_or("spec.names.kind is required")?;
    let expected = format!("{plural}.{group}");
    if crd["metadata"]["name"].as_str() != Some(expected.as_str()) {
        return Err(format!(
            "metadata.name: Invalid value: must be spec.names.plural+\".\"+spec.group ({expected})"
        ));
    }
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for v in spec["versions"]
        .as_array()
        .ok_or("spec.versions is required")?
    {
        if v["served"] == json!(false) {
            continue;
        }
        out.push(Kind {
            group: group.into(),
            version: v["name"]
                .as_str()
                .ok_or("spec.versions[].name is required")?
                .into(),
            plural: plural.into(),
            singular: names["singular"]
                .as_str()
                .unwrap_or(&kind.to_ascii_lowercase())
                .into(),
            kind: kind.into(),
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            schema: v["schema"]["openAPIV3Schema"]
                .as_object()
                .map(|o| Value::Object(o.clone())),
            printer_columns: v["additionalPrinterColumns"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            status_subresource: v["subresources"]["status"].is_object(),
        });
    }
    Ok(out)
}
