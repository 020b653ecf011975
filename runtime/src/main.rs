//! The `wasmjobs` binary: parses the command line and hands over to [`wasmjobs::cli`].

fn main() -> std::process::ExitCode {
    wasmjobs::cli::main()
}
