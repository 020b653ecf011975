//! An on-disk cache of compiled artifacts, keyed by the module's content digest and the
//! engine's compatibility key, so that a node compiles each module once, not once per job or
//! per process start.

use std::path::{Path, PathBuf};

use crate::module::{JobModule, LoadError, sha256_digest};
use crate::sandbox::Sandbox;

/// Whether [`ArtifactCache::load`] found the artifact or had to compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Compiled,
}

/// Compiled artifacts in a directory: `<sha256 hex>-<compatibility key>.cwasm`.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

impl ArtifactCache {
    /// Uses (and creates) `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<ArtifactCache> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(ArtifactCache { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the artifact of the module with this digest lives for this engine.
    pub fn path_for(&self, sandbox: &Sandbox, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir
            .join(format!("{hex}-{}.cwasm", sandbox.compatibility_key()))
    }

    /// Loads `wasm` from its cached artifact, or compiles it and stores the artifact. A cached
    /// file that cannot be loaded (truncated, from another build) is replaced, never trusted.
    pub fn load(
        &self,
        sandbox: &Sandbox,
        wasm: &[u8],
    ) -> Result<(JobModule, CacheStatus), LoadError> {
        let digest = sha256_digest(wasm);
        let path = self.path_for(sandbox, &digest);
        if let Ok(artifact) = std::fs::read(&path) {
            // SAFETY: the cache's directory holds only artifacts this cache wrote (atomically,
            // under the digest of the wasm they were compiled from); the operator gives it a
            // directory no one else writes to. A file that is not a valid artifact of this
            // engine is refused by wasmtime's checks and replaced below.
            #[allow(unsafe_code)]
            let loaded =
                unsafe { sandbox.load_artifact_as(&artifact, digest.clone(), wasm.len() as u64) };
            match loaded {
                Ok(module) => return Ok((module, CacheStatus::Hit)),
                Err(e) => {
                    tracing::warn!("discarding cached artifact {}: {e}", path.display());
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let module = sandbox.load(wasm)?;
        match module.serialize() {
            Ok(artifact) => {
                if let Err(e) = write_atomically(&path, &artifact) {
                    // The cache is an optimisation: a full disk must not fail the job.
                    tracing::warn!("cannot cache artifact at {}: {e}", path.display());
                }
            }
            Err(e) => tracing::warn!("cannot serialize artifact for {digest}: {e}"),
        }
        Ok((module, CacheStatus::Compiled))
    }
}

/// Writes to a temporary file beside `path` and renames it into place, so readers never see
/// a half-written artifact. The temporary file's name is unique to this write (process id and
/// a count of this process's writes), so concurrent writers of one artifact — two compiles of one module, in
/// one process or in several — never write into each other's file; the last rename wins, and
/// every one renames a whole artifact.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
