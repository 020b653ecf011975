//! Modules ready to run on this node: prepared `JobModule`s in memory (the most recently used
//! ones, up to a bound), compiled artifacts on local disk (`ArtifactCache`), wasm bytes from
//! the store. A module is compiled once per node, never per job; one dropped from memory is
//! loaded again from its artifact.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use lru::LruCache;

use wasmjobs_host::{ArtifactCache, JobModule, Sandbox};

use crate::store::Store;

#[derive(Clone)]
pub struct ModuleCache {
    loaded: Arc<Mutex<LruCache<String, Arc<JobModule>>>>,
    artifacts: Option<ArtifactCache>,
}

impl ModuleCache {
    /// How many prepared modules a node keeps in memory unless told otherwise.
    pub const DEFAULT_MAX_LOADED: usize = 256;

    /// With `artifacts`, compiled code survives restarts; without, it lives in memory only.
    pub fn new(artifacts: Option<ArtifactCache>) -> ModuleCache {
        ModuleCache {
            loaded: Arc::new(Mutex::new(LruCache::new(Self::bound(
                Self::DEFAULT_MAX_LOADED,
            )))),
            artifacts,
        }
    }

    /// Keeps at most `n` prepared modules in memory (at least one), dropping the least
    /// recently used.
    pub fn max_loaded(self, n: usize) -> ModuleCache {
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .resize(Self::bound(n));
        self
    }

    fn bound(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
    }

    /// How many prepared modules are in memory.
    pub fn loaded_count(&self) -> usize {
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The prepared module for `digest` if it is in memory already: no store, no compile.
    pub fn loaded(&self, digest: &str) -> Option<Arc<JobModule>> {
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .cloned()
    }

    /// The prepared module for `digest`, loading and compiling it on first use.
    pub async fn get(
        &self,
        store: &dyn Store,
        sandbox: &Sandbox,
        digest: &str,
    ) -> Result<Arc<JobModule>, String> {
        if let Some(m) = self.loaded(digest) {
            return Ok(m);
        }
        let bytes = store
            .module_bytes(digest)
            .await
            .map_err(|e| format!("cannot read module {digest}: {e}"))?
            .ok_or_else(|| format!("module {digest} is not in the store"))?;
        self.insert(sandbox, digest, bytes).await
    }

    /// Compiles (or loads the cached artifact of) `bytes` and keeps it: called at upload so
    /// the first job pays no compile latency.
    pub async fn insert(
        &self,
        sandbox: &Sandbox,
        digest: &str,
        bytes: Vec<u8>,
    ) -> Result<Arc<JobModule>, String> {
        let (sandbox2, artifacts) = (sandbox.clone(), self.artifacts.clone());
        let module = tokio::task::spawn_blocking(move || match artifacts {
            Some(cache) => cache.load(&sandbox2, &bytes).map(|(m, _)| m),
            None => sandbox2.load(&bytes),
        })
        .await
        .map_err(|e| format!("compiling module {digest} panicked: {e}"))?
        .map_err(|e| format!("cannot load module {digest}: {e}"))?;
        let module = Arc::new(module);
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(digest.to_string(), module.clone());
        Ok(module)
    }
}
