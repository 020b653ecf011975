//! The sandbox (`wasmjobs-host`) end to end: real guests built from source produce every
//! outcome, every escape attempt is refused, and the host stays healthy.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasmjobs_host::{
    AttemptReport, CancelHandle, DirGrant, Event, Grants, JobModule, Limits, LoadError, Outcome,
    RunRequest, Sandbox, SandboxConfig, TrapKind, World,
};

use wasmjobs_tests::{guest_bytes, guests, rss_bytes};

mod loading;
mod outcomes;

/// Loading artifacts for the tests: each one either made by these tests in this process or
/// deliberately broken to check that wasmtime refuses it before mapping any of its code.
trait TestArtifacts {
    fn load_artifact_unchecked(&self, bytes: &[u8]) -> Result<wasmjobs_host::JobModule, LoadError>;
}

impl TestArtifacts for Sandbox {
    fn load_artifact_unchecked(&self, bytes: &[u8]) -> Result<wasmjobs_host::JobModule, LoadError> {
        // SAFETY: see the trait: our own artifacts, or broken ones wasmtime's checks refuse.
        #[allow(unsafe_code)]
        unsafe {
            self.load_artifact(bytes)
        }
    }
}

pub(super) const TICK: Duration = Duration::from_millis(10);

pub(super) struct Fixture {
    sandbox: Sandbox,
    testjob: JobModule,
    testcmd: JobModule,
}

pub(super) fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let sandbox = Sandbox::new(&SandboxConfig {
            epoch_tick: TICK,
            ..SandboxConfig::default()
        })
        .expect("sandbox builds");
        let testjob = sandbox
            .load(&guest_bytes(guests::TESTJOB))
            .expect("testjob loads");
        let testcmd = sandbox
            .load(&guest_bytes(guests::TESTCMD))
            .expect("testcmd loads");
        Fixture {
            sandbox,
            testjob,
            testcmd,
        }
    })
}

pub(super) async fn run_job(input: Value, limits: Limits) -> AttemptReport {
    let f = fixture();
    f.sandbox
        .run(
            &f.testjob,
            RunRequest::new(input.to_string().into_bytes()).limits(limits),
        )
        .await
}

pub(super) fn output_json(r: &AttemptReport) -> Value {
    serde_json::from_slice(&r.output).unwrap_or_else(|e| panic!("output is JSON ({e}): {:?}", r))
}
