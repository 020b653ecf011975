//! Confined directory grants: [`AllowedDirs`] says which host directories a job may be granted
//! and opens a granted one *beneath* the allowed directory that holds it, with cap-std, so that
//! neither `..` nor a symlink — even one swapped after the grant was checked — leads out.
//!
//! ```no_run
//! # fn demo() -> Result<(), wasmjobs_host::GrantError> {
//! use std::path::{Path, PathBuf};
//! use wasmjobs_host::AllowedDirs;
//!
//! let (allowed, missing) = AllowedDirs::new(&[PathBuf::from("/srv/jobs")]);
//! assert!(missing.is_empty());
//! allowed.check(Path::new("/srv/jobs/reports"))?; // inside: admitted
//! assert!(allowed.check(Path::new("/srv/jobs/../../etc")).is_err()); // `..`: refused
//! # Ok(())
//! # }
//! ```
//!
//! A check alone cannot hold: the directory could be replaced by a symlink between the check
//! and the attempt. So an attempt given an `AllowedDirs` ([`crate::RunRequest::confine_dirs`])
//! opens each granted directory itself, once, beneath its allowed root, and hands WASI that
//! open directory (on Linux through `/proc/self/fd/N`, which names the open directory and not
//! a path that could be swapped).

use std::path::{Component, Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

/// Why a directory may not be granted.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("granted directory {path:?} must be an absolute path")]
    Relative { path: PathBuf },
    #[error("granted directory {path:?} contains `..`: name the directory itself")]
    ParentComponent { path: PathBuf },
    #[error("granted directory {path:?} cannot be resolved: {reason}")]
    Unresolvable { path: PathBuf, reason: String },
    #[error(
        "granted directory {path:?} resolves to {resolved:?}, which is outside the allowed directories {allowed:?}"
    )]
    Outside {
        path: PathBuf,
        resolved: PathBuf,
        allowed: Vec<PathBuf>,
    },
    #[error("granted directory {path:?} cannot be opened inside {root:?}: {reason}")]
    Open {
        path: PathBuf,
        root: PathBuf,
        reason: String,
    },
}

/// The host directories (and everything beneath them) that may be granted to jobs, resolved
/// once: each is kept canonical (absolute, symlinks followed).
#[derive(Debug, Clone, Default)]
pub struct AllowedDirs {
    roots: Vec<PathBuf>,
}

/// A granted directory, resolved: the allowed root that holds it and its path inside that root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedGrant {
    pub root: PathBuf,
    /// Relative to `root`; empty when the grant is the root itself.
    pub inside: PathBuf,
}

impl AllowedDirs {
    /// Resolves `dirs`. A directory that cannot be resolved (it does not exist, say) allows
    /// nothing; it is returned with the reason so the caller can say so.
    pub fn new(dirs: &[PathBuf]) -> (AllowedDirs, Vec<(PathBuf, std::io::Error)>) {
        let mut roots = Vec::with_capacity(dirs.len());
        let mut missing = Vec::new();
        for dir in dirs {
            match std::fs::canonicalize(dir) {
                Ok(root) => roots.push(root),
                Err(e) => missing.push((dir.clone(), e)),
            }
        }
        (AllowedDirs { roots }, missing)
    }

    /// The allowed directories, resolved.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Whether `path` may be granted: absolute, without `..`, and, with every symlink
    /// followed, inside an allowed directory.
    pub fn check(&self, path: &Path) -> Result<ResolvedGrant, GrantError> {
        if !path.is_absolute() {
            return Err(GrantError::Relative {
                path: path.to_path_buf(),
            });
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(GrantError::ParentComponent {
                path: path.to_path_buf(),
            });
        }
        let resolved = std::fs::canonicalize(path).map_err(|e| GrantError::Unresolvable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        self.roots
            .iter()
            .find_map(|root| {
                resolved
                    .strip_prefix(root)
                    .ok()
                    .map(|inside| ResolvedGrant {
                        root: root.clone(),
                        inside: inside.to_path_buf(),
                    })
            })
            .ok_or_else(|| GrantError::Outside {
                path: path.to_path_buf(),
                resolved,
                allowed: self.roots.clone(),
            })
    }

    /// Checks `path` and opens it beneath its allowed root: cap-std refuses every step of the
    /// way that would leave the root (`..`, an absolute symlink, a symlink pointing out), so
    /// the directory returned is inside the root even if the path changed since the check.
    pub fn open(&self, path: &Path) -> Result<Dir, GrantError> {
        let grant = self.check(path)?;
        let failed = |e: std::io::Error| GrantError::Open {
            path: path.to_path_buf(),
            root: grant.root.clone(),
            reason: e.to_string(),
        };
        let root = Dir::open_ambient_dir(&grant.root, ambient_authority()).map_err(failed)?;
        if grant.inside.as_os_str().is_empty() {
            Ok(root)
        } else {
            root.open_dir(&grant.inside).map_err(failed)
        }
    }
}

/// A path that names `dir` itself rather than where it was found: on Linux the open
/// descriptor's entry in `/proc/self/fd`, elsewhere `fallback` (the path it was opened at).
/// Valid while `dir` stays open.
pub(crate) fn path_of_open_dir(dir: &Dir, fallback: &Path) -> PathBuf {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let _ = fallback;
        PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        fallback.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempdir::Dirs, AllowedDirs) {
        let dirs = tempdir::Dirs::new();
        let (allowed, missing) = AllowedDirs::new(std::slice::from_ref(&dirs.allowed));
        assert!(missing.is_empty());
        (dirs, allowed)
    }

    /// A throwaway tree: `allowed/` with `allowed/sub/`, and a `secret/` beside it.
    mod tempdir {
        use std::path::PathBuf;

        pub struct Dirs {
            pub base: PathBuf,
            pub allowed: PathBuf,
            pub secret: PathBuf,
        }

        impl Dirs {
            pub fn new() -> Dirs {
                let base = std::env::temp_dir().join(format!(
                    "wasmjobs-grants-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos())
                ));
                let allowed = base.join("allowed");
                let secret = base.join("secret");
                std::fs::create_dir_all(allowed.join("sub")).expect("mkdir");
                std::fs::create_dir_all(&secret).expect("mkdir");
                std::fs::write(secret.join("passwd"), "root").expect("write");
                Dirs {
                    base,
                    allowed,
                    secret,
                }
            }
        }

        impl Drop for Dirs {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.base);
            }
        }
    }

    #[test]
    fn a_directory_inside_is_granted_and_opened() {
        let (dirs, allowed) = tree();
        let sub = dirs.allowed.join("sub");
        let grant = allowed.check(&sub).expect("inside");
        assert_eq!(grant.inside, PathBuf::from("sub"));
        allowed.open(&sub).expect("opens");
        allowed.open(&dirs.allowed).expect("the root itself");
    }

    #[test]
    fn dot_dot_relative_and_outside_paths_are_refused() {
        let (dirs, allowed) = tree();
        let escape = dirs.allowed.join("../secret");
        assert!(matches!(
            allowed.check(&escape),
            Err(GrantError::ParentComponent { .. })
        ));
        assert!(matches!(
            allowed.check(Path::new("relative/dir")),
            Err(GrantError::Relative { .. })
        ));
        assert!(matches!(
            allowed.check(&dirs.secret),
            Err(GrantError::Outside { .. })
        ));
        assert!(matches!(
            allowed.check(&dirs.allowed.join("nonexistent")),
            Err(GrantError::Unresolvable { .. })
        ));
        // A prefix of the name is not a parent: `/x/allowed-not` is not inside `/x/allowed`.
        let sibling = dirs.base.join("allowed-not");
        std::fs::create_dir_all(&sibling).expect("mkdir");
        assert!(matches!(
            allowed.check(&sibling),
            Err(GrantError::Outside { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_out_of_the_allowed_directory_is_refused_even_when_swapped_in_after_the_check() {
        let (dirs, allowed) = tree();
        let link = dirs.allowed.join("link");
        std::os::unix::fs::symlink(&dirs.secret, &link).expect("symlink");
        let e = allowed.check(&link).expect_err("resolves outside");
        assert!(e.to_string().contains("outside"), "{e}");

        // Checked while it was a real directory, then swapped for a symlink out: the open
        // beneath the root refuses to follow it.
        let swapped = dirs.allowed.join("swapped");
        std::fs::create_dir(&swapped).expect("mkdir");
        let grant = allowed.check(&swapped).expect("inside at check time");
        std::fs::remove_dir(&swapped).expect("rmdir");
        std::os::unix::fs::symlink(&dirs.secret, &swapped).expect("symlink");
        let root = Dir::open_ambient_dir(&grant.root, ambient_authority()).expect("root");
        assert!(
            root.open_dir(&grant.inside).is_err(),
            "cap-std must not follow a symlink out of the root"
        );
    }
}
