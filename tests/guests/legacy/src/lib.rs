//! A job built against `wasmjobs:job@0.1.0` (the contract as first published, kept in `wit/`
//! here), with wit-bindgen directly: proves that components built before 0.1.1 still run.
//! It echoes its input, logs a line and reports progress.

wit_bindgen::generate!({ path: "wit", world: "job" });

struct Legacy;

impl Guest for Legacy {
    fn run() -> Result<(), String> {
        use wasmjobs::job::{io, report};
        let input = io::input();
        report::log(report::Level::Info, "legacy job ran");
        report::progress(1, 1);
        io::output(&input);
        Ok(())
    }
}

export!(Legacy);
