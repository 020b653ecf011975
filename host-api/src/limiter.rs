//! The per-attempt resource limiter: caps all linear memories and tables of an instance
//! together, records the peak, and remembers *why* a growth was refused so that
//! `out_of_memory` is told apart from other traps without parsing messages.

use wasmtime::ResourceLimiter;

/// Bytes one table element is counted as (a function reference is one pointer).
const TABLE_ELEMENT_BYTES: u64 = 8;

#[derive(Debug)]
pub(crate) struct Limiter {
    /// Cap on memories + tables, in bytes.
    limit: u64,
    /// Engine-wide cap on one memory (the pooling slot size).
    max_one_memory: u64,
    max_table_elements: u64,
    used: u64,
    pub(crate) peak: u64,
    /// Set when a growth was refused: the guest asked for more than it may have.
    pub(crate) refused: Option<String>,
}

impl Limiter {
    pub(crate) fn new(limit: u64, max_one_memory: u64, max_table_elements: u64) -> Limiter {
        Limiter {
            limit,
            max_one_memory,
            max_table_elements,
            used: 0,
            peak: 0,
            refused: None,
        }
    }

    fn grow(&mut self, current: u64, desired: u64, what: &str) -> bool {
        let delta = desired.saturating_sub(current);
        let wanted = self.used.saturating_add(delta);
        if wanted > self.limit {
            self.refused = Some(format!(
                "{what} growth to {desired} bytes refused: the instance would hold {wanted} bytes, over its memory limit of {} bytes",
                self.limit
            ));
            return false;
        }
        self.used = wanted;
        self.peak = self.peak.max(self.used);
        true
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let (current, desired) = (current as u64, desired as u64);
        if desired > self.max_one_memory || maximum.is_some_and(|m| desired > m as u64) {
            self.refused = Some(format!(
                "memory growth to {desired} bytes refused: over the largest memory this sandbox allows ({} bytes)",
                self.max_one_memory
                    .min(maximum.map_or(u64::MAX, |m| m as u64))
            ));
            return Ok(false);
        }
        Ok(self.grow(current, desired, "memory"))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let (current, desired) = (current as u64, desired as u64);
        if desired > self.max_table_elements || maximum.is_some_and(|m| desired > m as u64) {
            self.refused = Some(format!(
                "table growth to {desired} elements refused: over the largest table this sandbox allows ({} elements)",
                self.max_table_elements
            ));
            return Ok(false);
        }
        Ok(self.grow(
            current * TABLE_ELEMENT_BYTES,
            desired * TABLE_ELEMENT_BYTES,
            "table",
        ))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // The allocator could not provide memory we had allowed: treat it like a refusal so the
        // attempt ends `out_of_memory` rather than with an unexplained trap.
        if self.refused.is_none() {
            self.refused = Some("memory growth failed in the host allocator".to_string());
        }
        Ok(())
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        if self.refused.is_none() {
            self.refused = Some("table growth failed in the host allocator".to_string());
        }
        Ok(())
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_memories_and_tables_together() {
        let mut l = Limiter::new(100_000, 1 << 30, 1000);
        assert!(l.memory_growing(0, 65_536, None).expect("no error"));
        assert!(l.table_growing(0, 1000, None).expect("no error"));
        assert_eq!(l.peak, 65_536 + 8000);
        // A second memory that would push the total over the limit is refused and recorded.
        assert!(!l.memory_growing(0, 65_536, None).expect("no error"));
        assert!(l.refused.as_deref().is_some_and(|r| r.contains("100000")));
    }
}
