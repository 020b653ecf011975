//! TLS end to end with the real binary: `serve --tls-cert --tls-key`, the CLI client trusting a
//! CA made at test time, Postgres over TLS, and a database that cannot be reached said at once.

use std::process::{Command, Output};

use super::*;

fn run(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(wasmjobs_tests::wasmjobs_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("WASMJOBS_CA_CERT")
        .envs(env.iter().copied())
        .output()
        .expect("run wasmjobs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `serve` with a certificate from a CA made here: the CLI reaches it over https with
/// `--ca-cert` or `WASMJOBS_CA_CERT`, refuses it without (saying what to do), and a client
/// that never finishes its handshake is let go after the header-read timeout. Bad certificate
/// files are refused at start, naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serving_and_clients_that_trust_a_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    wasmjobs_tests::make_certificates(d);
    std::fs::write(
        d.join("wasmjobs.toml"),
        "[http]\nheader_read_timeout = \"1s\"\n",
    )
    .expect("config");
    let db = d.join("tls.db").display().to_string();
    let server = Process::serve(
        d,
        &db,
        &[
            "--tls-cert",
            "server.pem",
            "--tls-key",
            "server.key",
            "--workers",
            "1",
        ],
    );
    let port = server.url.rsplit(':').next().expect("port").to_string();
    let https = format!("https://localhost:{port}");

    // Trusted through --ca-cert: upload, then a job submitted and waited for.
    let o = run(
        d,
        &[
            "module",
            "upload",
            guests::TESTJOB,
            "--name",
            "testjob",
            "--server",
            &https,
            "--ca-cert",
            "ca.pem",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        d,
        &[
            "job",
            "submit",
            "testjob",
            "--input",
            r#"{"mode":"greet","name":"tls"}"#,
            "--wait",
            "--server",
            &https,
        ],
        &[("WASMJOBS_CA_CERT", "ca.pem")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // Over 127.0.0.1 too: the certificate names the address.
    let o = run(
        d,
        &[
            "module",
            "list",
            "--server",
            &format!("https://127.0.0.1:{port}"),
            "--ca-cert",
            "ca.pem",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("testjob"));

    // Not trusted: one line that says it is TLS and what to do.
    let o = run(d, &["module", "list", "--server", &https], &[]);
    assert_eq!(o.status.code(), Some(4), "a TLS failure is no answer");
    let e = stderr(&o);
    assert!(
        e.contains("TLS") && e.contains("UnknownIssuer") && e.contains("--ca-cert"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");

    // A --ca-cert that holds no certificate is named.
    let o = run(
        d,
        &[
            "module",
            "list",
            "--server",
            &https,
            "--ca-cert",
            "server.key",
        ],
        &[],
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("server.key"), "{}", stderr(&o));

    // A connection that never sends its ClientHello is closed after the header-read timeout.
    let mut silent = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .expect("connect");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut silent, &mut buf),
    )
    .await
    .expect("the server closed the silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    drop(server);

    // Bad pairs are refused at start, naming what is wrong.
    for (args, names) in [
        (
            vec!["--tls-cert", "server.pem", "--tls-key", "ca.pem"],
            "ca.pem",
        ),
        (
            vec!["--tls-cert", "server.key", "--tls-key", "server.key"],
            "server.key",
        ),
        (vec!["--tls-cert", "server.pem"], "--tls-key"),
        (
            vec!["--tls-cert", "missing.pem", "--tls-key", "server.key"],
            "missing.pem",
        ),
    ] {
        let addr = format!("127.0.0.1:{}", wasmjobs_tests::free_port());
        let mut full = vec!["serve", "--db", &db, "--addr", &addr];
        full.extend(args.iter().copied());
        let o = run(d, &full, &[]);
        assert_ne!(o.status.code(), Some(0), "{args:?} started");
        assert!(stderr(&o).contains(names), "{args:?}: {}", stderr(&o));
    }
}

/// Postgres over TLS: `sslmode=require` connects encrypted (the server's `pg_stat_ssl` says
/// so) and `verify-full` checks the server's certificate against `sslrootcert` and its name;
/// a name the certificate does not carry is refused as a TLS failure. A server that cannot be
/// reached is said at once with the reason, the URL's password masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_and_an_unreachable_database_said_plainly() {
    let Some(pg) = wasmjobs_tests::postgres_url() else {
        eprintln!(
            "SKIPPED: postgres_over_tls_and_an_unreachable_database_said_plainly (set WASMJOBS_TEST_POSTGRES to run it)"
        );
        return;
    };
    let with = |params: &str| {
        let sep = if pg.contains('?') { '&' } else { '?' };
        format!("{pg}{sep}{params}")
    };
    let admin = sqlx::PgPool::connect(&pg).await.expect("connect");
    let app = format!("wasmjobs_tls_{}", std::process::id());
    let store = wasmjobs::store::open(&with(&format!("sslmode=require&application_name={app}")))
        .await
        .expect("open with sslmode=require");
    let (connections, all_tls): (i64, Option<bool>) = sqlx::query_as(
        "SELECT count(*), bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = $1",
    )
    .bind(&app)
    .fetch_one(&admin)
    .await
    .expect("pg_stat_ssl");
    assert!(connections >= 1, "no connection of the store");
    assert_eq!(
        all_tls,
        Some(true),
        "the store's connections are not all TLS"
    );
    drop(store);
    // Without an sslmode, a loopback server is reached without TLS (it would protect nothing).
    let plain_app = format!("wasmjobs_plain_{}", std::process::id());
    let plain = wasmjobs::store::open(&with(&format!("application_name={plain_app}")))
        .await
        .expect("open without sslmode");
    let any_tls: Option<bool> = sqlx::query_scalar(
        "SELECT bool_or(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = $1",
    )
    .bind(&plain_app)
    .fetch_one(&admin)
    .await
    .expect("pg_stat_ssl");
    assert_eq!(
        any_tls,
        Some(false),
        "TLS to a loopback server without sslmode"
    );
    drop(plain);

    // verify-full against the server's own certificate, under the name it carries.
    let cert_file: String = sqlx::query_scalar("SHOW ssl_cert_file")
        .fetch_one(&admin)
        .await
        .expect("ssl_cert_file");
    if std::fs::read(&cert_file).is_err() {
        eprintln!(
            "SKIPPED: the verify-full half: the server's certificate {cert_file} cannot be read here"
        );
    } else {
        let localhost = pg.replace("@127.0.0.1", "@localhost");
        let sep = if localhost.contains('?') { '&' } else { '?' };
        let verified = format!("{localhost}{sep}sslmode=verify-full&sslrootcert={cert_file}");
        wasmjobs::store::open(&verified)
            .await
            .expect("open with sslmode=verify-full");
        let wrong_name = with(&format!("sslmode=verify-full&sslrootcert={cert_file}"))
            .replace("@localhost", "@127.0.0.1");
        let err = wasmjobs::store::open(&wrong_name)
            .await
            .err()
            .expect("refused");
        let text = err.to_string();
        assert!(
            text.contains("TLS") && text.contains("not valid for name"),
            "{text}"
        );
    }

    // Nothing listens there: the CLI says so within seconds, the password masked.
    let dir = tempfile::tempdir().expect("tempdir");
    let nowhere = format!(
        "postgres://postgres:hunter2@127.0.0.1:{}/test",
        wasmjobs_tests::free_port()
    );
    let started = Instant::now();
    let addr = format!("127.0.0.1:{}", wasmjobs_tests::free_port());
    let o = run(
        dir.path(),
        &["serve", "--db", &nowhere, "--addr", &addr],
        &[],
    );
    let e = stderr(&o);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        e.contains("cannot connect to 127.0.0.1:") && e.contains("refused"),
        "{e}"
    );
    assert!(!e.contains("hunter2") && e.contains("postgres:***@"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?} to say the database cannot be reached",
        started.elapsed()
    );
}
