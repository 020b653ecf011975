//! Merges the outputs of several `wordfreq` jobs into one top-N report: the fan-in node of
//! the word-count workflow (`examples/workflows/wordcount.yaml`).
//!
//! Input: an array of `wordfreq` outputs `[{"words", "unique", "top": [{"word", "count"}]}]`
//! (what a `for_each` node gives its successor). Output
//! `{"chunks", "words", "unique", "top": [{"word", "count"}]}` with the ten most frequent
//! words, ties in alphabetical order.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Counts {
    words: u64,
    top: Vec<WordCount>,
}

#[derive(Serialize, Deserialize)]
struct WordCount {
    word: String,
    count: u64,
}

#[derive(Serialize)]
struct Output {
    chunks: usize,
    words: u64,
    unique: usize,
    top: Vec<WordCount>,
}

fn merge(parts: Vec<Counts>) -> Result<Output, String> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut words = 0;
    for (i, part) in parts.iter().enumerate() {
        words += part.words;
        for w in &part.top {
            *counts.entry(w.word.clone()).or_insert(0) += w.count;
        }
        wasmjobs_guest::progress(i as u64 + 1, parts.len() as u64);
    }
    let unique = counts.len();
    let mut top: Vec<WordCount> = counts.into_iter().map(|(word, count)| WordCount { word, count }).collect();
    top.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    top.truncate(10);
    wasmjobs_guest::info!("merged {} chunks: {words} words, {unique} distinct", parts.len());
    Ok(Output { chunks: parts.len(), words, unique, top })
}

wasmjobs_guest::export_job!(merge);
