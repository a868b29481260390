//! A CPU cgroup at a 128 MB function's share of a core, and wrapper scripts that move a program
//! into it before `exec`ing it (so the program keeps the script's pid: `/proc` sampling works).

use std::path::{Path, PathBuf};

/// A 128 MB function's share of a core (Lambda scales CPU with memory: 1,769 MB = one vCPU).
pub const CPU_QUOTA_US: u64 = 7_236;
pub const CPU_PERIOD_US: u64 = 100_000;

/// A cgroup with the quota above; removed (with its wrapper scripts) when dropped, which
/// succeeds once every process in it has exited.
pub struct CpuGroup {
    dir: PathBuf,
    procs: PathBuf,
    scripts: Vec<PathBuf>,
}

impl CpuGroup {
    /// Creates the cgroup `bridge-bench-128mb-<pid>-<tag>` (cgroup v1's `cpu` controller when
    /// mounted, else v2). Fails when that is not possible here (not root, no cpu controller).
    pub fn create(tag: &str) -> Result<CpuGroup, String> {
        let name = format!("bridge-bench-128mb-{}-{tag}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let write = |path: PathBuf, value: String| {
            std::fs::write(&path, value).map_err(|e| format!("{}: {e}", path.display()))
        };
        let dir = if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(&name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let group = CpuGroup::at(dir.clone());
            write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
            write(dir.join("cpu.cfs_quota_us"), CPU_QUOTA_US.to_string())?;
            return Ok(group);
        } else {
            Path::new("/sys/fs/cgroup").join(&name)
        };
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let group = CpuGroup::at(dir.clone());
        write(
            dir.join("cpu.max"),
            format!("{CPU_QUOTA_US} {CPU_PERIOD_US}"),
        )?;
        Ok(group)
    }

    fn at(dir: PathBuf) -> CpuGroup {
        CpuGroup {
            procs: dir.join("cgroup.procs"),
            dir,
            scripts: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A script (in the temporary directory) that moves itself into the group, then `exec`s
    /// `binary` with its arguments.
    pub fn wrapper(&mut self, binary: &Path, label: &str) -> Result<PathBuf, String> {
        let group = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let script = std::env::temp_dir().join(format!("{group}-{label}"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho $$ > '{}' || exit 97\nexec '{}' \"$@\"\n",
                self.procs.display(),
                binary.display()
            ),
        )
        .map_err(|e| format!("{}: {e}", script.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", script.display()))?;
        self.scripts.push(script.clone());
        Ok(script)
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        for script in &self.scripts {
            let _ = std::fs::remove_file(script);
        }
        // Empty once every process in it has exited; a few tries in case one is being reaped.
        for _ in 0..20 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
