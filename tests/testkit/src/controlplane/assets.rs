//! Where the control plane's binaries come from: controller-runtime's envtest convention (`KUBEBUILDER_ASSETS`
//! names a folder holding them), else the xz archives in `../shared/kube/`, unpacked once into `target/`.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The three binaries a control plane needs.
pub const BINARIES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

/// What a control plane with nodes needs beside [`BINARIES`]: the scheduler and kubemark's hollow node (the real
/// kubelet over a fake container runtime). setup-envtest ships neither; they come from `../shared/kube` when
/// `KUBEBUILDER_ASSETS` lacks them.
pub const NODE_BINARIES: [&str; 2] = ["kube-scheduler", "kubemark"];

/// The environment variable envtest reads.
pub const ASSETS_VAR: &str = "KUBEBUILDER_ASSETS";

/// Why no control plane can be started here.
#[derive(Debug, Clone)]
pub struct Missing(pub String);

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The repository root (this crate lives in `tests/testkit`).
pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Cargo's target directory (`CARGO_TARGET_DIR` when set).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// The folder with the archives: `PDSO_KUBE_ARCHIVES`, else `../shared/kube` beside the repository.
fn archive_dir() -> PathBuf {
    std::env::var_os("PDSO_KUBE_ARCHIVES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/kube"))
}

fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The folder holding all three binaries, unpacking the archives first when needed.
pub fn find() -> Result<PathBuf, Missing> {
    if let Some(dir) = std::env::var_os(ASSETS_VAR).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        let absent: Vec<&str> = BINARIES
            .iter()
            .copied()
            .filter(|b| !executable(&dir.join(b)))
            .collect();
        if absent.is_empty() {
            return Ok(dir);
        }
        return Err(Missing(format!(
            "{ASSETS_VAR}={} lacks {} (setup-envtest ships etcd and kube-apiserver; copy kube-controller-manager of \
             the same version from the Kubernetes server release into that folder)",
            dir.display(),
            absent.join(", ")
        )));
    }
    let archives = archive_dir();
    let absent: Vec<String> = BINARIES
        .iter()
        .map(|b| format!("{b}.xz"))
        .filter(|f| !archives.join(f).is_file())
        .collect();
    if !absent.is_empty() {
        return Err(Missing(format!(
            "no control plane binaries: set {ASSETS_VAR} to a folder with etcd, kube-apiserver and \
             kube-controller-manager (e.g. from setup-envtest), or provide {} ({} missing)",
            archives.display(),
            absent.join(", ")
        )));
    }
    unpack(&archives, &BINARIES).map_err(Missing)
}

/// The folder holding [`NODE_BINARIES`]: `KUBEBUILDER_ASSETS` when it has them, else the archives unpacked.
pub fn find_node_binaries() -> Result<PathBuf, Missing> {
    if let Some(dir) = std::env::var_os(ASSETS_VAR).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        if NODE_BINARIES.iter().all(|b| executable(&dir.join(b))) {
            return Ok(dir);
        }
    }
    let archives = archive_dir();
    let absent: Vec<String> = NODE_BINARIES
        .iter()
        .map(|b| format!("{b}.xz"))
        .filter(|f| !archives.join(f).is_file())
        .collect();
    if !absent.is_empty() {
        return Err(Missing(format!(
            "no node binaries: put kube-scheduler and kubemark (built with `--morph=kubelet` support) into \
             {ASSETS_VAR}, or provide {} ({} missing)",
            archives.display(),
            absent.join(", ")
        )));
    }
    unpack(&archives, &NODE_BINARIES).map_err(Missing)
}

/// Unpack `bins` into `target/kube-assets/<key>/`.
fn unpack(archives: &Path, bins: &[&str]) -> Result<PathBuf, String> {
    let dir = target_dir()
        .join("kube-assets")
        .join(archive_key(archives)?);
    unpack_into(archives, &dir, bins)?;
    Ok(dir)
}

/// Unpack the archives into `dir`, once: the key changes when the archives do, and each binary is written under a
/// temporary name and renamed, so concurrent test binaries never see half a file.
/// Threads of one process take turns (one unpacks, the others then find the binaries), and a temporary name is
/// unique to its process and call.
fn unpack_into(archives: &Path, dir: &Path, bins: &[&str]) -> Result<(), String> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let _turn = TURN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for &bin in bins {
        let dest = dir.join(bin);
        if executable(&dest) {
            continue;
        }
        let src = archives.join(format!("{bin}.xz"));
        let tmp = dir.join(format!(
            ".{bin}.{}.{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let result = (|| -> std::io::Result<()> {
            let mut reader = liblzma::read::XzDecoder::new(std::fs::File::open(&src)?);
            let mut out = std::fs::File::create(&tmp)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                std::io::Write::write_all(&mut out, &buf[..n])?;
            }
            out.sync_all()?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
            std::fs::rename(&tmp, &dest)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("unpacking {}: {e}", src.display()));
        }
    }
    Ok(())
}

/// A short key for the archives' contents: their checksums file when present, else their sizes.
fn archive_key(archives: &Path) -> Result<String, String> {
    let mut text = std::fs::read_to_string(archives.join("SHA256SUMS")).unwrap_or_default();
    for bin in BINARIES {
        let f = archives.join(format!("{bin}.xz"));
        let len = std::fs::metadata(&f)
            .map_err(|e| format!("{}: {e}", f.display()))?
            .len();
        text.push_str(&format!("{bin}:{len}\n"));
    }
    // FNV-1a: stable across runs and toolchains, unlike std's hasher.
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    Ok(format!("{hash:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests of one test binary call `find()` at the same time on a fresh clone (nothing unpacked yet): every call
    /// must get the binaries (CI once failed with ENOENT when two threads of one process raced on one temporary
    /// name).
    #[test]
    fn concurrent_unpacks_in_one_process_all_succeed() {
        let root = std::env::temp_dir().join(format!("pdso-unpack-{}", std::process::id()));
        let archives = root.join("archives");
        std::fs::create_dir_all(&archives).unwrap();
        let body = vec![7u8; 3 << 20];
        for bin in BINARIES {
            let f = std::fs::File::create(archives.join(format!("{bin}.xz"))).unwrap();
            let mut enc = liblzma::write::XzEncoder::new(f, 0);
            std::io::Write::write_all(&mut enc, &body).unwrap();
            enc.finish().unwrap();
        }
        for round in 0..5 {
            let dir = root.join(format!("out-{round}"));
            let results: Vec<Result<(), String>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..6)
                    .map(|_| s.spawn(|| unpack_into(&archives, &dir, &BINARIES)))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for r in &results {
                assert!(r.is_ok(), "round {round}: {r:?}");
            }
            for bin in BINARIES {
                assert!(executable(&dir.join(bin)));
                assert_eq!(std::fs::read(dir.join(bin)).unwrap(), body);
            }
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
