//! Process exit codes: one per attempt outcome, so scripts can tell outcomes apart without
//! parsing output. Documented in `docs/cli.md`; part of the external contract.

use wasmjobs_host::Outcome;

/// Success (and a job that succeeded).
pub const OK: u8 = 0;
/// Bad command-line usage (clap's own code).
pub const USAGE: u8 = 2;
/// The module could not be read or loaded (not wasm, wrong world, missing file, …), or another
/// error outside any attempt.
pub const ERROR: u8 = 3;
/// A client verb got no answer: the server cannot be reached, or TLS with it failed.
pub const UNREACHABLE: u8 = 4;
/// The server refused the credentials: no token, an unknown one, or one whose scope does not
/// allow the request (HTTP 401, 403).
pub const UNAUTHORIZED: u8 = 5;
/// What the request names does not exist (HTTP 404).
pub const NOT_FOUND: u8 = 6;
/// The server refused the request as invalid or in conflict (HTTP 400, 409, 413, 415, 422…).
pub const REFUSED: u8 = 7;
/// The server failed (HTTP 5xx) or answered something else unexpected.
pub const SERVER_ERROR: u8 = 8;

/// The exit code for a server's answer with `status`, not a success.
pub fn for_http_status(status: u16) -> u8 {
    match status {
        401 | 403 => UNAUTHORIZED,
        404 => NOT_FOUND,
        400..=499 => REFUSED,
        _ => SERVER_ERROR,
    }
}

/// The exit code for an attempt's outcome.
pub fn for_outcome(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Succeeded => 0,
        Outcome::Failed => 1,
        Outcome::Trapped => 10,
        Outcome::OutOfFuel => 11,
        Outcome::TimedOut => 12,
        Outcome::OutOfMemory => 13,
        Outcome::OutputTooLarge => 14,
        Outcome::Cancelled => 15,
        Outcome::Lost => 16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_code() {
        let mut codes: Vec<u8> = Outcome::ALL.iter().map(|o| for_outcome(*o)).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Outcome::ALL.len());
        let others = [
            USAGE,
            ERROR,
            UNREACHABLE,
            UNAUTHORIZED,
            NOT_FOUND,
            REFUSED,
            SERVER_ERROR,
        ];
        assert!(others.iter().all(|c| !codes.contains(c)));
        let mut all = others.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), others.len(), "each failure has its own code");
    }
}
