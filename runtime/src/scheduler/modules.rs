//! Modules ready to run on this node: prepared `JobModule`s in memory, compiled artifacts on
//! local disk (`ArtifactCache`), wasm bytes from the store. A module is compiled once per node,
//! never per job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use wasmjobs_host::{ArtifactCache, JobModule, Sandbox};

use crate::store::Store;

#[derive(Clone)]
pub struct ModuleCache {
    loaded: Arc<Mutex<HashMap<String, Arc<JobModule>>>>,
    artifacts: Option<ArtifactCache>,
}

impl ModuleCache {
    /// With `artifacts`, compiled code survives restarts; without, it lives in memory only.
    pub fn new(artifacts: Option<ArtifactCache>) -> ModuleCache {
        ModuleCache {
            loaded: Arc::default(),
            artifacts,
        }
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
            .insert(digest.to_string(), module.clone());
        Ok(module)
    }
}
