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
}

pub fn compile(args: CompileArgs) -> anyhow::Result<u8> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let sandbox = super::local_sandbox()?;
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
