//! A plain `fn main` program run as a `wasi:cli/command` job: stdin is the input, stdout the
//! output. The first word of the input picks a behaviour.

use std::io::{Read, Write};

fn main() {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("cannot read stdin: {e}");
        std::process::exit(2);
    }
    let (mode, rest) = input.split_once(' ').unwrap_or((input.as_str(), ""));
    match mode.trim() {
        "upper" => print!("{}", rest.to_uppercase()),
        "exit" => {
            eprintln!("exiting with {}", rest.trim());
            std::process::exit(rest.trim().parse().unwrap_or(1));
        }
        "flood" => {
            let mut out = std::io::stdout().lock();
            let line = [b'x'; 1024];
            loop {
                if out.write_all(&line).is_err() {
                    // The host ends the attempt before this matters.
                    std::process::exit(3);
                }
            }
        }
        "panic" => panic!("command panicked on purpose"),
        other => {
            eprintln!("unknown mode {other:?}");
            std::process::exit(64);
        }
    }
}
