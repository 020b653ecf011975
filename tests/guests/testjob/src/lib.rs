//! A job that misbehaves on request: the test suite drives every outcome and every escape
//! attempt through it. The input's `mode` picks the behaviour.

use std::hint::black_box;

use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Input {
    mode: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    size: usize,
    #[serde(default)]
    lines: usize,
    #[serde(default)]
    ms: u64,
}

fn run(input: Input) -> Result<Value, String> {
    match input.mode.as_str() {
        "greet" => {
            wasmjobs_guest::progress(1, 2);
            wasmjobs_guest::info!("greeting {}", input.name);
            println!("hello on stdout");
            eprintln!("hello on stderr");
            wasmjobs_guest::progress(2, 2);
            Ok(json!({ "greeting": format!("hello, {}", input.name) }))
        }
        "fail" => Err("this job fails on purpose".to_string()),
        "permanent" => Err(wasmjobs_guest::permanent("this input can never work")),
        "panic" => panic!("boom on purpose"),
        "spin" => {
            let mut n: u64 = 0;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        "membomb" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut chunk = vec![0u8; 1 << 20];
                chunk[0] = 1;
                hoard.push(black_box(chunk));
            }
        }
        "recurse" => Ok(json!(recurse(black_box(u64::MAX)))),
        "bigout" => {
            wasmjobs_guest::set_output(&vec![b'x'; input.size]);
            Ok(json!("unreachable if the output was too large"))
        }
        "logflood" => {
            let line = "y".repeat(1024);
            for i in 0..input.lines {
                wasmjobs_guest::info!("{i} {line}");
                eprintln!("{i} {line}");
            }
            Ok(json!({ "logged": input.lines }))
        }
        "logsleep" => {
            for i in 0..input.lines {
                wasmjobs_guest::info!("line {i} before the sleep");
            }
            std::thread::sleep(std::time::Duration::from_millis(input.ms));
            Ok(json!("slept"))
        }
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_millis(input.ms));
            Ok(json!("slept"))
        }
        "sleepbig" => {
            std::thread::sleep(std::time::Duration::from_millis(input.ms));
            Ok(json!("x".repeat(input.size)))
        }
        "progressflood" => {
            let total = input.lines as u64;
            for done in 0..=total {
                wasmjobs_guest::progress(done, total);
            }
            Ok(json!({ "reported": total + 1 }))
        }
        "nul" => {
            wasmjobs_guest::info!("a NUL \0 in a log line");
            Err("an error with a NUL \0 in it".to_string())
        }
        "escape" => Ok(escape()),
        "files" => Ok(files()),
        "env" => Ok(json!(std::env::vars().collect::<Vec<_>>())),
        other => Err(format!("unknown mode {other:?}")),
    }
}

/// Recursion whose frames live on the native wasm stack (no locals in linear memory), so it
/// ends in wasmtime's stack-overflow trap rather than overrunning the shadow stack.
fn recurse(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    black_box(recurse(black_box(n - 1))).wrapping_add(1)
}

fn outcome<T, E: std::fmt::Debug>(r: Result<T, E>) -> String {
    match r {
        Ok(_) => "allowed".to_string(),
        Err(e) => format!("refused: {e:?}"),
    }
}

/// Tries every way out of the sandbox a job might attempt; each entry says allowed or refused.
fn escape() -> Value {
    use wasip2::sockets::{instance_network, network, tcp_create_socket, udp_create_socket};
    let tcp = tcp_create_socket::create_tcp_socket(network::IpAddressFamily::Ipv4).and_then(|sock| {
        let net = instance_network::instance_network();
        let addr = network::IpSocketAddress::Ipv4(network::Ipv4SocketAddress { port: 5432, address: (127, 0, 0, 1) });
        sock.start_connect(&net, addr)?;
        sock.subscribe().block();
        sock.finish_connect().map(|_| ())
    });
    let udp = udp_create_socket::create_udp_socket(network::IpAddressFamily::Ipv4).and_then(|sock| {
        let net = instance_network::instance_network();
        let addr = network::IpSocketAddress::Ipv4(network::Ipv4SocketAddress { port: 0, address: (0, 0, 0, 0) });
        sock.start_bind(&net, addr)?;
        sock.subscribe().block();
        sock.finish_bind()
    });
    json!({
        "read_etc_passwd": outcome(std::fs::read_to_string("/etc/passwd")),
        "list_root": outcome(std::fs::read_dir("/")),
        "list_cwd": outcome(std::fs::read_dir(".")),
        "write_tmp": outcome(std::fs::write("/tmp/wasmjobs-escape", b"x")),
        "env_vars": std::env::vars().count(),
        "tcp_connect": outcome(tcp),
        "udp_bind": outcome(udp),
    })
}

/// Uses a directory granted at `/data`: reads `in.txt`, tries to write `out.txt`.
fn files() -> Value {
    json!({
        "read": std::fs::read_to_string("/data/in.txt").map_err(|e| e.to_string()),
        "write": outcome(std::fs::write("/data/out.txt", b"written by the guest")),
        "list": std::fs::read_dir("/data").map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>()).map_err(|e| e.to_string()),
        "escape_parent": outcome(std::fs::read_dir("/data/..")),
    })
}

wasmjobs_guest::export_job!(run);
