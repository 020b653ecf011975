//! `wasmjobs inspect FILE`: what a component is — world, imports (capabilities), exports,
//! size and digest — or why it is not a job.

use std::path::PathBuf;

use clap::Args;
use wasmjobs_host::units::format_size;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A `.wasm` component or a `.cwasm` artifact.
    file: PathBuf,
    #[command(flatten)]
    out: super::client::OutputArgs,
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<u8> {
    let json = args.out.json();
    let sandbox = super::local_sandbox()?;
    let module = super::load_file(&sandbox, &args.file)?;
    let info = module.info();
    if json {
        let mut value = serde_json::to_value(info)?;
        value["world"] = serde_json::Value::String(info.world.as_str().to_string());
        value["capabilities"] = serde_json::to_value(info.capabilities())?;
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(0);
    }
    println!("file:    {}", args.file.display());
    println!("world:   {}", info.world);
    println!("size:    {} ({} bytes)", format_size(info.size), info.size);
    println!("digest:  {}", info.digest);
    println!("imports:");
    for import in &info.imports {
        println!("  {import}");
    }
    println!("exports:");
    for export in &info.exports {
        println!("  {export}");
    }
    Ok(0)
}
