//! Splits a text into chunks of whole lines, each ready for the `wordfreq` job: the first node
//! of the word-count workflow (`examples/workflows/wordcount.yaml`), whose `for_each` node runs
//! one `wordfreq` job per chunk.
//!
//! Input `{"text": string, "lines_per_chunk"?: number}` (default 2); output
//! `{"chunks": [{"text", "top"}], "lines": n}`. Each chunk asks `wordfreq` for every word
//! (`top` large), so that the merge sees complete counts.

use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input {
    text: String,
    #[serde(default = "default_lines")]
    lines_per_chunk: usize,
}

fn default_lines() -> usize {
    2
}

#[derive(Serialize)]
struct Chunk {
    text: String,
    top: usize,
}

#[derive(Serialize)]
struct Output {
    chunks: Vec<Chunk>,
    lines: usize,
}

fn split(input: Input) -> Result<Output, String> {
    if input.lines_per_chunk == 0 {
        return Err("lines_per_chunk must be at least 1".into());
    }
    let lines: Vec<&str> = input.text.lines().collect();
    let chunks: Vec<Chunk> = lines
        .chunks(input.lines_per_chunk)
        .map(|c| Chunk { text: c.join("\n"), top: 1_000_000 })
        .collect();
    wasmjobs_guest::info!("{} lines in {} chunks", lines.len(), chunks.len());
    Ok(Output { chunks, lines: lines.len() })
}

wasmjobs_guest::export_job!(split);
