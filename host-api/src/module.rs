//! Loading a job: telling what a blob of bytes is (not wasm, a core module, a `wasmjobs:job`
//! component, a `wasi:cli/command` component, something else), compiling it or loading a
//! precompiled artifact, and preparing it for fast instantiation.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime_wasi::p2::bindings::CommandPre;

use crate::bindings::JobPre;
use crate::host::HostState;
use crate::sandbox::Sandbox;

/// Which world a component targets, and so how it is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum World {
    /// `wasmjobs:job/job`: input and output through `io`, result from `run`.
    Job,
    /// `wasi:cli/command`: input on stdin, output on stdout, exit code 0 is success.
    Command,
}

impl World {
    pub fn as_str(self) -> &'static str {
        match self {
            World::Job => "wasmjobs:job/job",
            World::Command => "wasi:cli/command",
        }
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a loaded component is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// `sha256:<hex>` of the bytes it was loaded from.
    pub digest: String,
    /// Size in bytes of what it was loaded from.
    pub size: u64,
    pub world: World,
    /// Every import, by full name (`wasi:filesystem/types@0.2.6`): the capabilities it may use.
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

impl ModuleInfo {
    /// Imports without versions, deduplicated: `wasi:filesystem/types`, `wasmjobs:job/io`, …
    pub fn capabilities(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .imports
            .iter()
            .map(|i| i.split('@').next().unwrap_or(i).to_string())
            .collect();
        set.into_iter().collect()
    }
}

/// Why bytes could not be loaded as a job. Each names what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly binary: it does not start with the wasm magic bytes (\\0asm)")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component: build for wasm32-wasip2 (or run `wasm-tools component new`) to make a component"
    )]
    CoreModule,
    #[error("invalid WebAssembly component: {0}")]
    Invalid(String),
    #[error(
        "the component targets neither the wasmjobs:job/job world (export `run`) nor wasi:cli/command (export `wasi:cli/run`); it exports: {}",
        if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
    )]
    UnsupportedWorld { exports: Vec<String> },
    #[error(
        "the component imports interfaces this sandbox does not provide: {}",
        imports.join(", ")
    )]
    UnsupportedImports { imports: Vec<String> },
    #[error("the component does not link against this sandbox: {0}")]
    Link(String),
    #[error(
        "precompiled artifact is incompatible with this engine (built by another wasmtime version or with other settings): {0}"
    )]
    IncompatibleArtifact(String),
    #[error("not a precompiled wasmjobs artifact (.cwasm): {0}")]
    NotAnArtifact(String),
    #[error("cannot read the artifact: {0}")]
    Io(String),
    #[error(
        "this build of wasmjobs-host has no compiler: load a precompiled artifact (.cwasm) instead"
    )]
    NoCompiler,
}

/// `sha256:<hex>` of some bytes: the content address of a module.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

enum Pre {
    Job(JobPre<HostState>),
    Command(CommandPre<HostState>),
}

/// A job component, validated, compiled and prepared: instantiating it is cheap, so load once
/// and run many times.
pub struct JobModule {
    info: ModuleInfo,
    component: Component,
    pre: Pre,
}

impl fmt::Debug for JobModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobModule")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl JobModule {
    pub fn info(&self) -> &ModuleInfo {
        &self.info
    }

    pub fn world(&self) -> World {
        self.info.world
    }

    /// The native artifact for this engine: load it later with [`Sandbox::load_artifact`]
    /// without compiling again.
    pub fn serialize(&self) -> Result<Vec<u8>, LoadError> {
        self.component
            .serialize()
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))
    }

    pub(crate) fn job_pre(&self) -> Option<&JobPre<HostState>> {
        match &self.pre {
            Pre::Job(p) => Some(p),
            Pre::Command(_) => None,
        }
    }

    pub(crate) fn command_pre(&self) -> Option<&CommandPre<HostState>> {
        match &self.pre {
            Pre::Command(p) => Some(p),
            Pre::Job(_) => None,
        }
    }
}

/// Which world a component with these imports and exports targets, or why it cannot run here.
fn classify(imports: &[String], exports: &[String]) -> Result<World, LoadError> {
    let world = if exports.iter().any(|e| e == "run") {
        World::Job
    } else if exports.iter().any(|e| e.starts_with("wasi:cli/run@0.2.")) {
        World::Command
    } else {
        return Err(LoadError::UnsupportedWorld {
            exports: exports.to_vec(),
        });
    };
    let unsupported: Vec<String> = imports
        .iter()
        .filter(|i| !is_supported_import(i))
        .cloned()
        .collect();
    if !unsupported.is_empty() {
        return Err(LoadError::UnsupportedImports {
            imports: unsupported,
        });
    }
    Ok(world)
}

/// What wasmtime says a would-be artifact is; anything but a precompiled component is refused
/// with what it is instead.
fn check_artifact_kind(
    kind: Option<wasmtime::Precompiled>,
    is_wasm: bool,
) -> Result<(), LoadError> {
    match kind {
        Some(wasmtime::Precompiled::Component) => Ok(()),
        Some(wasmtime::Precompiled::Module) => Err(LoadError::NotAnArtifact(
            "it is a precompiled core module".into(),
        )),
        None if is_wasm => Err(LoadError::NotAnArtifact(
            "it is WebAssembly, not a precompiled artifact: compile it with `wasmjobs compile`"
                .into(),
        )),
        None => Err(LoadError::NotAnArtifact("unrecognised file format".into())),
    }
}

/// Checks the first bytes: wasm at all, and component rather than core module.
fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(LoadError::NotWasm);
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(LoadError::CoreModule);
    }
    if !wasmparser::Parser::is_component(bytes) {
        return Err(LoadError::Invalid(
            "unknown WebAssembly binary version or layer".into(),
        ));
    }
    Ok(())
}

/// Interfaces the sandbox links: WASI 0.2 (sockets are linked but every use is denied) and
/// `wasmjobs:job` 0.1 (`outcome` since 0.1.1).
fn is_supported_import(name: &str) -> bool {
    const WASI: [&str; 6] = [
        "wasi:cli/",
        "wasi:clocks/",
        "wasi:filesystem/",
        "wasi:io/",
        "wasi:random/",
        "wasi:sockets/",
    ];
    let (path, version) = name.split_once('@').unwrap_or((name, ""));
    if WASI.iter().any(|p| path.starts_with(p)) {
        return version.starts_with("0.2.");
    }
    match path {
        "wasmjobs:job/io" | "wasmjobs:job/report" => version.starts_with("0.1."),
        "wasmjobs:job/outcome" => version.starts_with("0.1.") && version != "0.1.0",
        _ => false,
    }
}

impl Sandbox {
    /// Validates, compiles and prepares a component from its wasm bytes.
    #[cfg(feature = "compiler")]
    pub fn load(&self, bytes: &[u8]) -> Result<JobModule, LoadError> {
        check_header(bytes)?;
        let component = Component::new(&self.inner.engine, bytes)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        self.prepare(component, sha256_digest(bytes), bytes.len() as u64)
    }

    /// Without the `compiler` feature only precompiled artifacts can be loaded.
    #[cfg(not(feature = "compiler"))]
    pub fn load(&self, bytes: &[u8]) -> Result<JobModule, LoadError> {
        check_header(bytes)?;
        Err(LoadError::NoCompiler)
    }

    /// Compiles wasm bytes to a native artifact for this engine (what `wasmjobs compile`
    /// writes to a `.cwasm` file), after checking it is a loadable job.
    ///
    /// A sandbox whose [`SandboxConfig::target`](crate::SandboxConfig::target) is another
    /// CPU cannot load what it compiles: the component is then checked by compiling it once
    /// for this machine as well.
    #[cfg(feature = "compiler")]
    pub fn precompile(&self, bytes: &[u8]) -> Result<Vec<u8>, LoadError> {
        let engine = &self.inner.engine;
        if self.inner.config.target.is_none() || engine.is_pulley() {
            return self.load(bytes)?.serialize();
        }
        check_header(bytes)?;
        let host = wasmtime::Engine::new(wasmtime::Config::new().wasm_component_model(true))
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let component =
            Component::new(&host, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(&host).map(|(n, _)| n.to_string()).collect();
        let exports: Vec<String> = ty.exports(&host).map(|(n, _)| n.to_string()).collect();
        classify(&imports, &exports)?;
        engine
            .precompile_component(bytes)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))
    }

    /// Loads a precompiled artifact made by [`JobModule::serialize`] or
    /// [`Sandbox::precompile`]. An artifact from another wasmtime version or engine
    /// configuration is refused with [`LoadError::IncompatibleArtifact`].
    ///
    /// # Safety
    ///
    /// The artifact is native code that is mapped and run as it is: wasmtime checks its version
    /// and settings, not what the code does, so crafted bytes can execute anything in this
    /// process. `bytes` must have been produced by wasmtime's serialization (`wasmjobs compile`,
    /// [`Sandbox::precompile`], [`JobModule::serialize`]) of a component you trust, and come
    /// from a place only you can write — never from a user of your service.
    #[allow(unsafe_code)]
    pub unsafe fn load_artifact(&self, bytes: &[u8]) -> Result<JobModule, LoadError> {
        // SAFETY: the caller vouches for `bytes` (this function's contract).
        unsafe { self.load_artifact_as(bytes, sha256_digest(bytes), bytes.len() as u64) }
    }

    /// [`Sandbox::load_artifact`], recording the digest and size of the wasm it was compiled
    /// from rather than of the artifact.
    ///
    /// # Safety
    ///
    /// As [`Sandbox::load_artifact`]: `bytes` are a trusted artifact of wasmtime's own.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn load_artifact_as(
        &self,
        bytes: &[u8],
        digest: String,
        size: u64,
    ) -> Result<JobModule, LoadError> {
        check_artifact_kind(
            wasmtime::Engine::detect_precompiled(bytes),
            bytes.starts_with(b"\0asm"),
        )?;
        // SAFETY: `Component::deserialize` requires bytes produced by wasmtime's own
        // serialization from a trusted component, which is this function's contract; it checks
        // the version and engine settings itself and refuses a mismatch.
        let component = unsafe { Component::deserialize(&self.inner.engine, bytes) }
            .map_err(|e| LoadError::IncompatibleArtifact(format!("{e:#}")))?;
        self.prepare(component, digest, size)
    }

    /// Loads a precompiled artifact from a file, mapping its code from the file rather than
    /// copying it into a new mapping: the fastest way to start (an edge host's cold start).
    /// The same checks as [`Sandbox::load_artifact`] apply.
    ///
    /// # Safety
    ///
    /// As [`Sandbox::load_artifact`], for the file's contents; and the file must not change
    /// while the module is loaded (its code is mapped from it): write artifacts once, to a new
    /// file, and never edit one in place.
    #[allow(unsafe_code)]
    pub unsafe fn load_artifact_file(
        &self,
        path: &std::path::Path,
    ) -> Result<JobModule, LoadError> {
        // Read once for the checks and the digest; the code itself is mapped from the file.
        let bytes =
            std::fs::read(path).map_err(|e| LoadError::Io(format!("{}: {e}", path.display())))?;
        check_artifact_kind(
            wasmtime::Engine::detect_precompiled(&bytes),
            bytes.starts_with(b"\0asm"),
        )?;
        // SAFETY: the caller vouches for the file and that it stays unchanged while mapped
        // (this function's contract).
        let component = unsafe { Component::deserialize_file(&self.inner.engine, path) }
            .map_err(|e| LoadError::IncompatibleArtifact(format!("{e:#}")))?;
        let (digest, size) = (sha256_digest(&bytes), bytes.len() as u64);
        self.prepare(component, digest, size)
    }

    fn prepare(
        &self,
        component: Component,
        digest: String,
        size: u64,
    ) -> Result<JobModule, LoadError> {
        let engine = &self.inner.engine;
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();

        let world = classify(&imports, &exports)?;

        let instance_pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let pre = match world {
            World::Job => {
                Pre::Job(JobPre::new(instance_pre).map_err(|e| LoadError::Link(format!("{e:#}")))?)
            }
            World::Command => Pre::Command(
                CommandPre::new(instance_pre).map_err(|e| LoadError::Link(format!("{e:#}")))?,
            ),
        };
        Ok(JobModule {
            info: ModuleInfo {
                digest,
                size,
                world,
                imports,
                exports,
            },
            component,
            pre,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks_name_what_was_found() {
        assert_eq!(check_header(b"hello"), Err(LoadError::NotWasm));
        assert_eq!(check_header(b"\0asm\x01\0\0\0"), Err(LoadError::CoreModule));
        assert_eq!(check_header(b"\0asm\x0d\0\x01\0"), Ok(()));
    }

    #[test]
    fn supported_imports() {
        assert!(is_supported_import("wasi:cli/environment@0.2.6"));
        assert!(is_supported_import("wasmjobs:job/io@0.1.0"));
        assert!(is_supported_import("wasmjobs:job/io@0.1.1"));
        assert!(is_supported_import("wasmjobs:job/outcome@0.1.1"));
        assert!(!is_supported_import("wasmjobs:job/outcome@0.1.0"));
        assert!(!is_supported_import("wasi:http/outgoing-handler@0.2.6"));
        assert!(!is_supported_import("wasi:cli/environment@0.3.0"));
        assert!(!is_supported_import("acme:secrets/vault"));
    }
}
