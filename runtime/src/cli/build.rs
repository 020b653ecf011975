//! `wasmjobs build [PATH]`: builds a job crate for `wasm32-wasip2` with cargo and prints the
//! path of the component it produced.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The crate (a directory with Cargo.toml, or the Cargo.toml itself). Default: `.`.
    path: Option<PathBuf>,
    /// Build in debug mode instead of release.
    #[arg(long)]
    debug: bool,
}

const TARGET: &str = "wasm32-wasip2";

pub fn build(args: BuildArgs) -> anyhow::Result<u8> {
    let path = args.path.unwrap_or_else(|| PathBuf::from("."));
    let manifest = if path.is_dir() {
        path.join("Cargo.toml")
    } else {
        path.clone()
    };
    if !manifest.is_file() {
        bail!(
            "no Cargo.toml at {}: point `wasmjobs build` at a job crate",
            path.display()
        );
    }
    if !target_installed() {
        bail!("the {TARGET} target is not installed: run `rustup target add {TARGET}`");
    }
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "build",
        "--target",
        TARGET,
        "--message-format=json-render-diagnostics",
        "--manifest-path",
    ])
    .arg(&manifest)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if !args.debug {
        cmd.arg("--release");
    }
    let mut child = cmd
        .spawn()
        .context("cannot run cargo: is it installed and on PATH?")?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut artifacts = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's messages")?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" {
            let kinds = msg["target"]["kind"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let is_job = kinds.iter().any(|k| k == "cdylib" || k == "bin");
            for file in msg["filenames"].as_array().into_iter().flatten() {
                if let Some(f) = file.as_str().filter(|f| is_job && f.ends_with(".wasm")) {
                    artifacts.push(f.to_string());
                }
            }
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("cargo build failed for {}", manifest.display());
    }
    if artifacts.is_empty() {
        bail!(
            "cargo built no component: a job crate needs `crate-type = [\"cdylib\"]` (with wasmjobs-guest) or a `fn main` binary"
        );
    }
    for a in artifacts {
        println!("{a}");
    }
    Ok(0)
}

fn target_installed() -> bool {
    match Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == TARGET),
        // No rustup: let cargo try, it will say what is missing.
        Err(_) => true,
    }
}
