//! The product's rules, without I/O: when to fetch ([`schedule`], [`calendar`]), what a pass does ([`plan`]), what a spec means
//! ([`spec`]), who may use a cluster connection ([`access`]), what a Secret holds ([`template`]), the keys that keep
//! tenants apart ([`identity`]), which shard owns what ([`shard`]) and why an object is not Ready ([`reason`]).
//!
//! Nothing here talks to the Kubernetes API or to Pipedream, and no file here imports `kube` or `k8s_openapi`
//! (a test below reads them): the controllers gather facts, these modules decide, the controllers carry it out.

pub(crate) mod access;
pub(crate) mod answer;
pub(crate) mod calendar;
pub mod identity;
pub(crate) mod plan;
pub(crate) mod reason;
pub mod schedule;
pub mod shard;
pub(crate) mod spec;
pub mod template;

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src/rules") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The rules stay readable without the API machinery: no file under src/rules (tests included) names the
    /// `kube` or `k8s_openapi` crates. The controllers turn API objects into the plain values these take.
    #[test]
    fn no_rule_imports_the_kubernetes_client() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/rules");
        let mut files = Vec::new();
        rust_files(&dir, &mut files);
        assert!(files.len() >= 10, "read only {files:?}");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read a rules file");
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                // Spelt in pieces so this file does not find itself.
                for krate in [
                    concat!("kube", "::"),
                    concat!("kube", "_runtime"),
                    concat!("kube", "_core"),
                    concat!("k8s", "_openapi"),
                ] {
                    assert!(
                        !code.contains(krate),
                        "{}:{}: {krate} in the rules: {line}",
                        file.display(),
                        n + 1
                    );
                }
            }
        }
    }
}
