//! Process exit codes: one per attempt outcome, so scripts can tell outcomes apart without
//! parsing output. Documented in `docs/cli.md`; part of the external contract.

use wasmjobs_host::Outcome;

/// Bad command-line usage (clap's own code).
pub const USAGE: u8 = 2;
/// The module could not be read or loaded (not wasm, wrong world, missing file, …), or another
/// error outside any attempt.
pub const ERROR: u8 = 3;

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
        assert!(!codes.contains(&USAGE) && !codes.contains(&ERROR));
    }
}
