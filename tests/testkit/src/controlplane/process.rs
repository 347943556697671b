//! Child processes that cannot outlive the test process.
//!
//! A `static` control plane is never dropped (Rust runs no destructors for statics at exit), and a test run can end
//! by panic, Ctrl-C or SIGKILL. So each binary runs under a small bash watchdog holding the read end of a pipe
//! whose write end only this process has (Rust opens it close-on-exec, so no other child inherits it). However
//! this process ends, the pipe closes, the watchdog reads end-of-file and SIGKILLs its child. The watchdog ignores
//! SIGINT (background children of a non-interactive shell ignore it anyway) so that Ctrl-C reaches this process,
//! whose exit then closes the pipe. The watchdog also exits when its child does, so `exited` tells. A child that
//! leaves files outside the data directory (a hollow node's kubelet root and runtime socket) gets clean-up steps
//! the watchdog runs before killing it and after it is gone.

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

const WATCHDOG: &str = r#"
"$@" </dev/null &
pid=$!
trap '' INT
while :; do
  read -r -t 1 _
  rc=$?
  if [ "$rc" -le 128 ]; then break; fi        # a line or end-of-file: stop the child
  if ! kill -0 "$pid" 2>/dev/null; then wait "$pid"; rc=$?; eval "${PDSO_AFTER:-}"; exit $rc; fi
done
eval "${PDSO_BEFORE_KILL:-}"
kill -KILL "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
eval "${PDSO_AFTER:-}"
exit 0
"#;

/// A binary running under its watchdog.
pub struct Supervised {
    pub name: String,
    watchdog: Child,
    stdin: Option<ChildStdin>,
}

impl Supervised {
    /// Start `program args…`, its stdout and stderr appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Self, String> {
        Self::spawn_with(name, program, args, &[], log, "", "")
    }

    /// [`Self::spawn`] with environment variables for the program, and bash steps the watchdog runs (with `$pid`
    /// set) just before it kills the program and after the program is gone.
    pub fn spawn_with(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
        before_kill: &str,
        after: &str,
    ) -> Result<Self, String> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut watchdog = Command::new("bash")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("watchdog")
            .arg(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("PDSO_BEFORE_KILL", before_kill)
            .env("PDSO_AFTER", after)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {name} under bash: {e}"))?;
        let stdin = watchdog.stdin.take();
        Ok(Self {
            name: name.to_string(),
            watchdog,
            stdin,
        })
    }

    /// A watchdog without a binary that removes `dir` once this process ends (or this handle is dropped).
    pub fn remove_on_exit(dir: &Path) -> Result<Self, String> {
        let mut watchdog = Command::new("bash")
            .arg("-c")
            .arg(r#"trap '' INT; while read -r _; do :; done; sleep 1; rm -rf -- "$1""#)
            .arg("cleanup")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the cleanup watchdog under bash: {e}"))?;
        let stdin = watchdog.stdin.take();
        Ok(Self {
            name: "cleanup".into(),
            watchdog,
            stdin,
        })
    }

    /// Whether the binary has ended by itself.
    pub fn exited(&mut self) -> bool {
        self.watchdog.try_wait().ok().flatten().is_some()
    }

    /// SIGKILL the binary and wait until it is gone (its ports are free afterwards).
    pub fn kill(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        if self.name == "cleanup" {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The watchdog does not answer: kill it, and say so (its child may be left running).
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        eprintln!("control plane: {} did not stop within 10 s", self.name);
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.kill();
    }
}
