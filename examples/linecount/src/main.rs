//! `wc` as a plain WASI program (a `wasi:cli/command` job, no wasmjobs SDK): reads stdin,
//! prints `{"lines", "words", "bytes"}` as JSON on stdout. Run with:
//! `wasmjobs run linecount.wasm --input @README.md`

use std::io::Read;

fn main() {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("cannot read stdin: {e}");
        std::process::exit(1);
    }
    let text = String::from_utf8_lossy(&input);
    let lines = text.lines().count();
    let words = text.split_whitespace().count();
    eprintln!("counted {lines} lines");
    println!("{{\"lines\": {lines}, \"words\": {words}, \"bytes\": {}}}", input.len());
}
