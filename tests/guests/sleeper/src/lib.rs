//! Sleeps for the number of milliseconds given as its raw input (text), then echoes it: a guest
//! that stays suspended inside a WASI host call, for measuring live-instance memory.

fn sleep(input: Vec<u8>) -> Result<Vec<u8>, String> {
    let ms: u64 = String::from_utf8_lossy(&input).trim().parse().map_err(|e| format!("input must be milliseconds: {e}"))?;
    std::thread::sleep(std::time::Duration::from_millis(ms));
    Ok(input)
}

wasmjobs_guest::export_raw_job!(sleep);
