//! The `wasmjobs` command line: argument parsing and dispatch to one module per verb.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::exit;

mod build;
mod client;
mod compile;
mod inspect;
mod module;
mod output;
mod queue;
mod remote;
mod run;
mod schedule;
mod serve;
mod token;
mod values;
mod webhook;
mod workflow;

/// wasmjobs — run WebAssembly jobs in a sandbox under fuel, memory and time limits.
#[derive(Debug, Parser)]
#[command(name = "wasmjobs", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The client verbs' server, token and CA: accepted anywhere on the line.
    #[command(flatten)]
    client: client::ClientArgs,
    /// How log lines are written: `text` for people, `json` (one object a line) for log
    /// collectors.
    #[arg(long, env = "WASMJOBS_LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Output of the client verbs, `inspect` and `token`: `table` or `json`. Also accepted
    /// anywhere after the verb, where `-o` wins over this one.
    #[arg(long, short = 'o', value_enum, value_name = "FORMAT")]
    output: Option<client::Output>,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one job locally in the sandbox: no server, no database. Prints the output; the exit
    /// code tells the outcome.
    Run(run::RunArgs),
    /// Build a job crate to a wasm32-wasip2 component and print the artifact's path.
    Build(build::BuildArgs),
    /// Show what a component is: world, imports (capabilities), exports, size, digest.
    Inspect(inspect::InspectArgs),
    /// Compile a component ahead of time to a native artifact (.cwasm) for this machine.
    Compile(compile::CompileArgs),
    /// Run the HTTP API and a worker pool on a SQLite file (default) or Postgres.
    Serve(serve::ServeArgs),
    /// Run workers only, sharing a store (Postgres) with other nodes.
    Worker(serve::WorkerArgs),
    /// Upload and list modules on a server.
    Module(module::ModuleCmd),
    /// Submit, follow, cancel, retry, list and replay jobs on a server.
    Job(remote::JobCmd),
    /// Queues on a server: list, pause, resume.
    Queue(queue::QueueCmd),
    /// Cron schedules on a server.
    Schedule(schedule::ScheduleCmd),
    /// Webhooks on a server: add (prints the signing secret once), list, enable, disable,
    /// rm, deliveries, redeliver.
    Webhook(webhook::WebhookCmd),
    /// Workflow definitions on a server: create, list, show, graph, run, status, cancel.
    Workflow(workflow::WorkflowCmd),
    /// API tokens in wasmjobs.toml: create (prints the secret once), list, revoke.
    Token(token::TokenCmd),
    /// Print a shell completion script: `wasmjobs completions bash > ~/.local/share/bash-completion/completions/wasmjobs`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// Whether the verb prints `--output table|json`.
    fn prints_tables(&self) -> bool {
        matches!(
            self,
            Command::Module(_)
                | Command::Job(_)
                | Command::Queue(_)
                | Command::Schedule(_)
                | Command::Webhook(_)
                | Command::Workflow(_)
                | Command::Token(_)
                | Command::Inspect(_)
        )
    }
}

/// Parses arguments, runs the command, and turns errors into one readable line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(output) = cli.output {
        if !cli.command.prints_tables() {
            use clap::CommandFactory as _;
            Cli::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "`--output` applies to module, job, queue, schedule, webhook, workflow, token and inspect only",
                )
                .exit();
        }
        let _ = client::OUTPUT_BEFORE_VERB.set(output);
    }
    if !matches!(cli.command, Command::Serve(_) | Command::Worker(_)) {
        die_quietly_on_closed_pipe();
    }
    let _logs = init_logs(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    let Cli {
        client, command, ..
    } = cli;
    let result = runtime.block_on(async move {
        match command {
            Command::Run(args) => run::run(args).await,
            Command::Build(args) => build::build(args),
            Command::Inspect(args) => inspect::inspect(args),
            Command::Compile(args) => compile::compile(args),
            Command::Serve(args) => serve::serve(args).await,
            Command::Worker(args) => serve::worker(args).await,
            Command::Module(cmd) => module::module(cmd, &client).await,
            Command::Job(cmd) => remote::job(cmd, &client).await,
            Command::Queue(cmd) => queue::queue(cmd, &client).await,
            Command::Schedule(cmd) => schedule::schedule(cmd, &client).await,
            Command::Webhook(cmd) => webhook::webhook(cmd, &client).await,
            Command::Workflow(cmd) => workflow::workflow(cmd, &client).await,
            Command::Token(cmd) => token::token(cmd),
            Command::Completions { shell } => {
                use clap::CommandFactory as _;
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "wasmjobs",
                    &mut std::io::stdout(),
                );
                Ok(exit::OK)
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(
                e.downcast_ref::<client::RemoteError>()
                    .map_or(exit::ERROR, client::RemoteError::exit_code),
            )
        }
    }
}

/// Logs to stderr, filtered by `WASMJOBS_LOG` (default `warn`): text, coloured only on a
/// terminal and without `NO_COLOR`, or JSON. Spans (HTTP requests, attempts, workflow steps)
/// are written when they close, with their fields and how long they took. With the `otlp`
/// feature and `OTEL_EXPORTER_OTLP_ENDPOINT` set, the spans also go to that collector
/// ([`crate::telemetry::otlp`]); the returned guard sends what is left when dropped.
fn init_logs(format: LogFormat) -> LogGuard {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::fmt::format::FmtSpan;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // The TLS verifier logs each certificate it refuses as an error of its own; the client's
    // error says it, with what to do.
    let filter = tracing_subscriber::EnvFilter::try_from_env("WASMJOBS_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,rustls_platform_verifier=off")
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::CLOSE);
    let fmt = match format {
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => fmt
            // Colour on a terminal only, and not when NO_COLOR is set (no-color.org).
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .with_filter(filter)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(fmt);
    #[cfg(feature = "otlp")]
    if crate::telemetry::otlp::wanted() {
        match crate::telemetry::otlp::layer() {
            Ok((provider, otlp)) => {
                registry.with(otlp).init();
                return LogGuard(Some(provider));
            }
            Err(e) => {
                registry.init();
                tracing::error!("OpenTelemetry export is off: {e}");
                return LogGuard(None);
            }
        }
    }
    registry.init();
    LogGuard::default()
}

/// Sends the spans not yet exported, when dropped (outside the async runtime).
#[derive(Default)]
struct LogGuard(#[cfg(feature = "otlp")] Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Drop for LogGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.0.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: OpenTelemetry export: {e}");
        }
    }
}

/// Lets a closed stdout end the process quietly, as `cargo … | head` and `ls | head` do: Rust
/// starts with SIGPIPE ignored, so a write to a closed pipe fails and `println!` panics. Not for
/// `serve` and `worker`, which must outlive any peer that goes away.
fn die_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: sets the disposition of one signal to its default, before this process starts
    // any thread or handler of its own; no Rust code relies on SIGPIPE being ignored but the
    // writes to a closed pipe, which now end the process as in any Unix tool.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Reads a component file (`.wasm` or precompiled `.cwasm`) and loads it in `sandbox`.
pub(crate) fn load_file(
    sandbox: &wasmjobs_host::Sandbox,
    path: &std::path::Path,
) -> anyhow::Result<wasmjobs_host::JobModule> {
    use anyhow::Context as _;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let module = if wasmtime_detect_precompiled(&bytes) {
        // SAFETY: a file the user named on their own command line, run in their own process:
        // `wasmjobs run` and `inspect` load what the user vouches for (docs/cli.md says to
        // run only artifacts one made or trusts). A server never loads an artifact a client
        // sent: it compiles the wasm itself.
        #[allow(unsafe_code)]
        unsafe {
            sandbox.load_artifact(&bytes)
        }
    } else {
        sandbox.load(&bytes)
    };
    module.with_context(|| format!("cannot load {}", path.display()))
}

/// Precompiled artifacts are ELF files; wasm starts with `\0asm`.
fn wasmtime_detect_precompiled(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF")
}

/// A small sandbox for one-shot commands: few instance slots, so start-up stays cheap.
pub(crate) fn local_sandbox() -> anyhow::Result<wasmjobs_host::Sandbox> {
    let config = wasmjobs_host::SandboxConfig {
        max_instances: 4,
        ..Default::default()
    };
    Ok(wasmjobs_host::Sandbox::new(&config)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_line_definition_is_consistent() {
        // Clap checks a subcommand's definition (e.g. two arguments named alike) only when it
        // is used; this checks them all.
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_and_argument_has_a_help_line() {
        use clap::CommandFactory as _;
        fn missing(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && cmd.get_name() != "help" {
                out.push(format!("{path}: the command"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    out.push(format!("{path}: {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                missing(sub, &path, out);
            }
        }
        let mut out = Vec::new();
        missing(&super::Cli::command(), "", &mut out);
        assert!(out.is_empty(), "no help line: {out:#?}");
    }
}
