//! `wasmjobs run FILE.wasm`: one attempt in a local sandbox. Output to stdout, logs to stderr
//! as they happen, the report as JSON with `--report`, the outcome in the exit code.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use wasmjobs_host::{CancelHandle, DirGrant, Event, Grants, Limits, RunRequest};

use crate::exit;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The component: a `.wasm` file, or a `.cwasm` made by `wasmjobs compile`.
    file: PathBuf,
    /// The job's input: literal text (usually JSON), `@path` to read a file, `@-` for stdin.
    #[arg(long, short)]
    input: Option<String>,
    /// Fuel (instruction budget), e.g. 1000000000 or 1e9.
    #[arg(long, value_parser = super::values::fuel)]
    fuel: Option<u64>,
    /// Memory limit for all memories and tables together, e.g. 64MiB.
    #[arg(long, value_parser = super::values::size)]
    memory: Option<u64>,
    /// Wall-clock timeout, e.g. 5s or 250ms.
    #[arg(long, value_parser = super::values::duration)]
    timeout: Option<Duration>,
    /// Largest output the job may produce, e.g. 1MiB.
    #[arg(long, value_parser = super::values::size)]
    max_output: Option<u64>,
    /// Log bytes kept before logs are truncated, e.g. 256KiB.
    #[arg(long, value_parser = super::values::size)]
    max_log: Option<u64>,
    /// Grant a host directory: HOST:GUEST, read-only, or HOST:GUEST:rw. Repeatable.
    #[arg(long = "dir", value_parser = parse_dir)]
    dirs: Vec<DirGrant>,
    /// Grant an environment variable: K=V. Repeatable.
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Print the attempt report as JSON on stdout (it includes the output) instead of the raw
    /// output.
    #[arg(long)]
    report: bool,
    /// Don't print log lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let input = super::values::read_input(args.input.as_deref())?;
    let defaults = Limits::default();
    let limits = Limits {
        fuel: args.fuel.unwrap_or(defaults.fuel),
        memory_bytes: args.memory.unwrap_or(defaults.memory_bytes),
        timeout: args.timeout.unwrap_or(defaults.timeout),
        max_output_bytes: args.max_output.unwrap_or(defaults.max_output_bytes),
        max_log_bytes: args.max_log.unwrap_or(defaults.max_log_bytes),
    };
    let grants = Grants {
        dirs: args.dirs,
        env: args.env.into_iter().collect(),
    };

    let sandbox = super::local_sandbox()?;
    let module = super::load_file(&sandbox, &args.file)?;

    let cancel = CancelHandle::new();
    let on_ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_ctrl_c.cancel();
        }
    });
    let quiet = args.quiet;
    let events = Arc::new(move |event: Event| {
        if quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = match event {
            Event::Log(l) => writeln!(err, "[{} {}] {}", l.level.as_str(), l.source, l.message),
            Event::Progress { done, total } => writeln!(err, "[progress] {done}/{total}"),
        };
    });
    let req = RunRequest::new(input)
        .limits(limits)
        .grants(grants)
        .cancel(cancel)
        .events(events);
    let report = sandbox.run(&module, req).await;

    let mut out = std::io::stdout().lock();
    if args.report {
        serde_json::to_writer_pretty(&mut out, &report).context("cannot write the report")?;
        writeln!(out)?;
    } else {
        out.write_all(&report.output)
            .context("cannot write the output")?;
        if !report.output.is_empty() && !report.output.ends_with(b"\n") && out.is_terminal() {
            writeln!(out)?;
        }
    }
    out.flush()?;
    if !report.succeeded() && !args.report {
        let what = match report.trap {
            Some(trap) => format!("{} ({trap})", report.outcome),
            None => report.outcome.to_string(),
        };
        eprintln!(
            "{what}: {}",
            report.error.as_deref().unwrap_or("no message")
        );
    }
    if report.logs_truncated && !quiet {
        eprintln!("(logs were truncated at the log limit)");
    }
    Ok(exit::for_outcome(report.outcome))
}

fn parse_dir(text: &str) -> Result<DirGrant, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (host, guest, writable) = match parts.as_slice() {
        [host, guest] => (host, guest, false),
        [host, guest, "rw"] => (host, guest, true),
        [host, guest, "ro"] => (host, guest, false),
        _ => {
            return Err(format!(
                "invalid directory grant {text:?}: expected HOST:GUEST or HOST:GUEST:rw"
            ));
        }
    };
    if host.is_empty() || guest.is_empty() {
        return Err(format!(
            "invalid directory grant {text:?}: HOST and GUEST must not be empty"
        ));
    }
    Ok(DirGrant {
        host: PathBuf::from(host),
        guest: guest.to_string(),
        writable,
    })
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "invalid environment grant {text:?}: expected KEY=VALUE"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_bad_values_are_named() {
        let d = parse_dir("/tmp:/data:rw").expect("valid");
        assert!(d.writable && d.guest == "/data");
        assert!(!parse_dir("/tmp:/data").expect("valid").writable);
        assert!(parse_dir("/tmp").unwrap_err().contains("/tmp"));
        assert!(parse_dir("/tmp:/data:yes").is_err());
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("=x").is_err());
    }
}
