//! `wasmjobs compile FILE.wasm -o FILE.cwasm`: ahead-of-time compilation to a native artifact
//! that `wasmjobs run` and `wasmjobs-host` without a compiler can load.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Debug, Args)]
pub struct CompileArgs {
    /// The `.wasm` component to compile.
    file: PathBuf,
    /// Where to write the artifact (default: FILE with the extension `.cwasm`).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Compile for this target instead of this machine: a target triple
    /// (`aarch64-unknown-linux-gnu`, `x86_64-unknown-linux-gnu`, `riscv64gc-unknown-linux-gnu`,
    /// `s390x-unknown-linux-gnu`) or `pulley64` / `pulley32` for wasmtime's portable
    /// interpreter (a `wasmjobs-host` built with the `pulley` feature runs those).
    #[arg(long, value_name = "TRIPLE")]
    target: Option<String>,
}

pub fn compile(args: CompileArgs) -> anyhow::Result<u8> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let sandbox = match &args.target {
        None => super::local_sandbox()?,
        Some(target) => wasmjobs_host::Sandbox::new(&wasmjobs_host::SandboxConfig {
            max_instances: 1,
            target: Some(target.clone()),
            ..Default::default()
        })
        .with_context(|| format!("cannot compile for --target {target}"))?,
    };
    let artifact = sandbox
        .precompile(&bytes)
        .with_context(|| format!("cannot compile {}", args.file.display()))?;
    let out = args
        .output
        .unwrap_or_else(|| args.file.with_extension("cwasm"));
    std::fs::write(&out, artifact).with_context(|| format!("cannot write {}", out.display()))?;
    println!("{}", out.display());
    Ok(0)
}
