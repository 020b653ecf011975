//! Word frequencies of a text. Run with:
//! `wasmjobs run wordfreq.wasm --input '{"text": "the cat and the hat", "top": 2}'`
//!
//! Input `{"text": string, "top"?: number}`; output `{"words", "unique", "top": [{"word", "count"}]}`,
//! most frequent first, ties in alphabetical order. Words are lower-cased runs of letters,
//! digits and apostrophes.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input {
    text: String,
    #[serde(default = "default_top")]
    top: usize,
}

fn default_top() -> usize {
    10
}

#[derive(Serialize)]
struct WordCount {
    word: String,
    count: u64,
}

#[derive(Serialize)]
struct Output {
    words: u64,
    unique: usize,
    top: Vec<WordCount>,
}

fn wordfreq(input: Input) -> Result<Output, String> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut words = 0u64;
    let total = input.text.len() as u64;
    for (i, raw) in input.text.split(|c: char| !(c.is_alphanumeric() || c == '\'')).enumerate() {
        let word = raw.trim_matches('\'').to_lowercase();
        if word.is_empty() {
            continue;
        }
        words += 1;
        *counts.entry(word).or_insert(0) += 1;
        if i % 10_000 == 0 {
            wasmjobs_guest::progress((i as u64).min(total), total);
        }
    }
    let unique = counts.len();
    let mut top: Vec<WordCount> = counts.into_iter().map(|(word, count)| WordCount { word, count }).collect();
    top.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    top.truncate(input.top);
    wasmjobs_guest::info!("{words} words, {unique} distinct");
    Ok(Output { words, unique, top })
}

wasmjobs_guest::export_job!(wordfreq);
