//! Shared helpers for the end-to-end tests: paths of the guest programs built from source by
//! `build.rs`, and small utilities.

/// Paths of the `.wasm` components built by `build.rs`.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// Reads a guest component built by `build.rs`.
pub fn guest_bytes(path: &str) -> Vec<u8> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("guest {path} should have been built by build.rs: {e}"))
}

/// Resident set size of this process in bytes (Linux), for memory-flatness checks.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Path of the `wasmjobs` binary, built (once per test run) from the current sources.
pub fn wasmjobs_bin() -> std::path::PathBuf {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let root = std::path::Path::new(guests::ROOT);
        let status =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "--quiet", "-p", "wasmjobs", "--bin", "wasmjobs"])
                .current_dir(root)
                .status()
                .expect("run cargo build for the wasmjobs binary");
        assert!(status.success(), "building the wasmjobs binary failed");
        // The test executable lives in target/<profile>/deps/; the binary in target/debug/.
        let exe = std::env::current_exe().expect("current exe");
        let target = exe.ancestors().nth(3).expect("target dir");
        let bin = target.join("debug").join("wasmjobs");
        assert!(bin.is_file(), "no wasmjobs binary at {}", bin.display());
        bin
    })
    .clone()
}
