//! The image builds from exactly the files the Dockerfile's build stage copies. No container engine runs here, so
//! the test does what the engine would with the build context: it stages the files each `COPY` of the build stage
//! names (skipping what `.dockerignore` leaves out), and runs cargo in them, `--locked` and `--offline` as in the
//! image. It checks rather than builds in release mode for musl: what it proves is that no file the build needs is
//! left out (issue 27: `build.rs`, which defines `PDSO_GIT_COMMIT`, was not copied, and `docker build` failed).
//! It shares the target directory, so dependencies are checked once.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The build stage: the Dockerfile up to its second `FROM`.
fn build_stage(dockerfile: &str) -> &str {
    let mut froms = dockerfile.match_indices("\nFROM ");
    froms.next();
    match froms.next() {
        Some((i, _)) => &dockerfile[..i],
        None => dockerfile,
    }
}

/// `.dockerignore` patterns (the forms this repository uses: paths from the context root, and `**/name`).
fn ignored(patterns: &[String], rel: &Path) -> bool {
    let rel = rel.to_string_lossy();
    patterns.iter().any(|p| match p.strip_prefix("**/") {
        Some(name) => rel.split('/').any(|c| c == name),
        None => rel == p.as_str() || rel.starts_with(&format!("{p}/")),
    })
}

fn copy_tree(root: &Path, rel: &Path, to: &Path, patterns: &[String]) {
    if ignored(patterns, rel) {
        return;
    }
    let from = root.join(rel);
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let name = entry.unwrap().file_name();
            copy_tree(root, &rel.join(&name), &to.join(&name), patterns);
        }
    } else {
        std::fs::copy(&from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
}

/// Stage what the build stage's `COPY` lines copy into `stage` (its `WORKDIR`); the staged paths.
fn stage_copies(root: &Path, stage: &Path) -> Vec<String> {
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let patterns: Vec<String> = std::fs::read_to_string(root.join(".dockerignore"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .collect();
    let mut staged = Vec::new();
    for line in build_stage(&dockerfile).lines() {
        let Some(args) = line.trim().strip_prefix("COPY ") else {
            continue;
        };
        let words: Vec<&str> = args
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let (dest, sources) = words.split_last().expect("COPY names a destination");
        let into_dir = dest.ends_with('/') || sources.len() > 1;
        for src in sources {
            let rel = Path::new(src);
            assert!(
                root.join(rel).exists(),
                "the Dockerfile copies {src}, which does not exist"
            );
            let to = if into_dir {
                stage.join(dest).join(rel.file_name().unwrap())
            } else {
                stage.join(dest)
            };
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            copy_tree(root, rel, &to, &patterns);
            staged.push(src.to_string());
        }
    }
    staged
}

#[test]
fn the_image_builds_from_exactly_the_files_the_dockerfile_copies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let stage: PathBuf = root
        .join("target/tmp/docker-context")
        .join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).unwrap();
    let staged = stage_copies(root, &stage);
    assert!(
        staged.iter().any(|s| s == "Cargo.lock"),
        "the build is --locked: {staged:?}"
    );
    // The build stage's command, as a check of the same package and binary.
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "check",
            "--locked",
            "--offline",
            "--quiet",
            "--bin",
            "pipedream-secrets-operator",
        ])
        .current_dir(&stage)
        .env("CARGO_TARGET_DIR", root.join("target"))
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        // Cargo hands this test the build script's `rustc-env` variables; the image's build has only its own.
        .env_remove("PDSO_GIT_COMMIT")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&stage);
    assert!(
        out.status.success(),
        "cargo check of the files the Dockerfile copies ({staged:?}) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
