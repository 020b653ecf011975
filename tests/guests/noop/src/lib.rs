//! The trivial job: raw input back as output. Used by benchmarks to measure the sandbox itself.

fn echo(input: Vec<u8>) -> Result<Vec<u8>, String> {
    Ok(input)
}

wasmjobs_guest::export_raw_job!(echo);
