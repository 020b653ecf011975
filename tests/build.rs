//! Builds the guest programs the tests run (`tests/guests/`) and the example jobs
//! (`examples/`) for `wasm32-wasip2`, and writes their paths as constants into
//! `$OUT_DIR/guests.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf();
    let out_dir = PathBuf::from(env("OUT_DIR"));
    // target/<profile>/build/<pkg>/out -> target/: one guest target dir for every profile.
    let target = out_dir
        .ancestors()
        .nth(4)
        .expect("OUT_DIR is inside target/")
        .join("wasm-guests");

    for dir in ["tests/guests", "examples", "guest-sdk/src", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for ws in ["tests/guests", "examples"] {
        for entry in std::fs::read_dir(root.join(ws))
            .expect("workspace dir exists")
            .flatten()
        {
            if entry.path().join("src").is_dir() {
                println!(
                    "cargo:rerun-if-changed={}",
                    entry.path().join("src").display()
                );
                println!(
                    "cargo:rerun-if-changed={}",
                    entry.path().join("Cargo.toml").display()
                );
            }
        }
    }

    let mut consts = String::new();
    for (ws, names) in [
        (
            "tests/guests",
            &["testjob", "testcmd", "noop", "sleeper", "flow", "legacy"][..],
        ),
        (
            "examples",
            &[
                "wordfreq",
                "csvstats",
                "thumbnail",
                "markdown",
                "linecount",
                "splitter",
                "wordmerge",
            ][..],
        ),
    ] {
        build_workspace(&root.join(ws).join("Cargo.toml"), &target);
        for name in names {
            let path = target
                .join("wasm32-wasip2/release")
                .join(format!("{name}.wasm"));
            assert!(
                path.is_file(),
                "guest {name} was not built at {}",
                path.display()
            );
            consts.push_str(&format!(
                "/// `{name}.wasm`, built from `{ws}/{name}`.\npub const {}: &str = {:?};\n",
                name.to_uppercase(),
                path.display().to_string()
            ));
        }
    }
    consts.push_str(&format!(
        "/// The repository root.\npub const ROOT: &str = {:?};\n",
        root.display().to_string()
    ));
    std::fs::write(out_dir.join("guests.rs"), consts).expect("write guests.rs");
}

fn build_workspace(manifest: &Path, target: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(manifest)
        // Our own target dir: sharing the outer build's would deadlock on cargo's lock.
        .env("CARGO_TARGET_DIR", target)
        // The outer build's flags (e.g. coverage, -D warnings for the host) are not the guest's.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .status()
        .expect("run cargo to build the wasm guests");
    if !status.success() {
        let installed = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-wasip2"))
            .unwrap_or(false);
        if !installed {
            panic!(
                "building the wasm guests needs the wasm32-wasip2 target: run `rustup target add wasm32-wasip2`"
            );
        }
        panic!(
            "building the wasm guests in {} failed (see the cargo output above)",
            manifest.display()
        );
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by cargo"))
}
