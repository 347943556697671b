//! Records the git commit for the build-info metric (`unknown` outside a git checkout; `PDSO_GIT_COMMIT` wins).

fn main() {
    println!("cargo:rerun-if-env-changed=PDSO_GIT_COMMIT");
    if std::path::Path::new(".git/HEAD").exists() {
        println!("cargo:rerun-if-changed=.git/HEAD");
        println!("cargo:rerun-if-changed=.git/refs/heads");
    }
    let commit = std::env::var("PDSO_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        });
    println!(
        "cargo:rustc-env=PDSO_GIT_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}
