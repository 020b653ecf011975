//! Workflow definitions: parsing (JSON or YAML), validation with messages that name the
//! offenders, the order nodes can run in, conditions, and drawings (Mermaid, DOT).
//!
//! ```yaml
//! name: wordcount
//! timeout: 10m              # optional: the whole run
//! nodes:
//!   - name: split
//!     module: splitter      # a module name or sha256 digest
//!   - name: count
//!     module: wordfreq
//!     needs: [split]
//!     for_each: { items: /chunks, concurrency: 8 }
//!   - name: merge
//!     module: merge
//!     needs: [count]
//!   - name: report
//!     module: report
//!     needs: [merge]
//!     when: /total > 100    # or success (the default), failure, always
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use wasmjobs_host::Limits;

use crate::store::RetryPolicy;

/// A workflow definition as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// `[a-z0-9_-]`, 1 to 64 characters; versions are kept per name.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Overall timeout of a run, e.g. `"10m"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    pub nodes: Vec<Node>,
}

/// One node: a job to run once its upstream nodes are done and its condition holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    /// A module name or `sha256:` digest; a run pins the digest.
    pub module: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// When the node runs; `success` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::schema::LimitsDoc>)]
    pub limits: Option<Limits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::schema::RetryDoc>)]
    pub retry: Option<RetryPolicy>,
    /// The queue its jobs wait in; `default` if none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub queue: Option<String>,
    /// Its jobs' concurrency key (as a submission's): at most `concurrency_limit` jobs with
    /// the key run at once, across runs and every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    /// How many jobs of `concurrency_key` may run at once; 1 if none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub concurrency_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<ForEach>,
}

/// Fan-out: one job per element of a JSON array, outputs gathered in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForEach {
    /// A JSON pointer to the array in the node's input; the input itself when empty.
    #[serde(default)]
    pub items: String,
    /// Most element jobs at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    #[serde(default)]
    pub on_failure: OnFailure,
}

fn default_concurrency() -> u32 {
    16
}

/// What a failed element does to a `for_each` node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The node fails at the first failed element; the others are cancelled.
    #[default]
    FailFast,
    /// Every element runs; the node fails if any did, with every outcome recorded.
    CollectAll,
}

/// A node's condition, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Every upstream succeeded (the default).
    Success,
    /// At least one upstream failed.
    Failure,
    /// Every upstream ended, whatever the outcome.
    Always,
    /// Every upstream succeeded and the predicate holds on the node's input.
    Predicate(Predicate),
}

/// `POINTER OP VALUE`: a JSON pointer into the node's input (one upstream: its output;
/// several: an object keyed by upstream name), a comparison, and a JSON value.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    pub pointer: String,
    pub op: Op,
    pub value: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
        }
    }
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.pointer, self.op.as_str(), self.value)
    }
}

impl Condition {
    /// Parses `success`, `failure`, `always` or a predicate such as `/score > 0.5`.
    pub fn parse(text: &str) -> Result<Condition, String> {
        let t = text.trim();
        match t {
            "" | "success" => return Ok(Condition::Success),
            "failure" => return Ok(Condition::Failure),
            "always" => return Ok(Condition::Always),
            _ => {}
        }
        if !t.starts_with('/') {
            return Err(format!(
                "expected success, failure, always or a predicate such as \"/score > 0.5\", got {t:?}"
            ));
        }
        // The pointer ends at the first space; then the operator, then a JSON value.
        let (pointer, rest) = t
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("{t:?} has a pointer but no comparison"))?;
        let rest = rest.trim_start();
        let (op, value) = [
            ("==", Op::Eq),
            ("!=", Op::Ne),
            (">=", Op::Ge),
            ("<=", Op::Le),
            (">", Op::Gt),
            ("<", Op::Lt),
        ]
        .iter()
        .find_map(|(s, op)| rest.strip_prefix(s).map(|v| (*op, v.trim())))
        .ok_or_else(|| {
            format!("{t:?}: expected one of == != > >= < <= after the pointer {pointer}")
        })?;
        if value.is_empty() {
            return Err(format!("{t:?}: nothing to compare with"));
        }
        let value: Value = serde_json::from_str(value).map_err(|e| {
            format!("{t:?}: {value:?} is not a JSON value (strings need quotes): {e}")
        })?;
        if matches!(op, Op::Gt | Op::Ge | Op::Lt | Op::Le) && !value.is_number() {
            return Err(format!(
                "{t:?}: {} compares numbers, not {value}",
                op.as_str()
            ));
        }
        Ok(Condition::Predicate(Predicate {
            pointer: pointer.to_string(),
            op,
            value,
        }))
    }
}

impl Predicate {
    /// Whether the predicate holds on `input`. A missing field, or a field of another type
    /// than an ordering needs, makes it false.
    pub fn eval(&self, input: &Value) -> bool {
        let Some(found) = input.pointer(&self.pointer) else {
            return false;
        };
        match self.op {
            Op::Eq => json_eq(found, &self.value),
            Op::Ne => !json_eq(found, &self.value),
            op => match (found.as_f64(), self.value.as_f64()) {
                (Some(a), Some(b)) => match op {
                    Op::Gt => a > b,
                    Op::Ge => a >= b,
                    Op::Lt => a < b,
                    _ => a <= b,
                },
                _ => false,
            },
        }
    }
}

/// Equality where `1` and `1.0` are equal.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => x == y,
        _ => a == b,
    }
}

/// Why a definition was refused. Each names the offenders.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error("cannot parse the definition: {0}")]
    Parse(String),
    #[error("invalid workflow definition: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// A validated definition: nodes in an order where every node comes after its `needs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub definition: Definition,
    /// Node indexes in running order.
    pub order: Vec<usize>,
    /// Each node's condition, parsed, by index.
    pub conditions: Vec<Condition>,
    /// Node indexes by name.
    index: HashMap<String, usize>,
}

impl Validated {
    /// The node named `name`, found in constant time.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.index
            .get(name)
            .and_then(|&i| self.definition.nodes.get(i))
    }
}

/// Most nodes in one workflow.
pub const MAX_NODES: usize = 1_000;
/// Most `needs` entries in one workflow, all nodes together.
pub const MAX_NEEDS: usize = 10_000;
/// Most problems one refusal lists; the rest are counted.
const MAX_PROBLEMS: usize = 20;

/// What parsing a YAML definition may cost, whatever the text: nesting, YAML nodes (an alias
/// counts as many nodes as it expands to), aliases, scalar bytes. A definition past one is
/// refused as soon as the parser reaches it, so a small text that would expand to gigabytes
/// (`*alias` repeated) or nest a hundred thousand deep costs microseconds to refuse.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = 32;
    budget.flow_nesting_limit = 32;
    budget.max_nodes = 100_000;
    budget.max_events = 250_000;
    budget.max_aliases = 100;
    budget.max_anchors = 100;
    budget.max_total_scalar_bytes = 4 << 20;
    budget.max_documents = 1;
    budget.max_merge_keys = 100;
    budget.max_recorded_anchor_events = 10_000;
    budget.max_recorded_anchor_bytes = 1 << 20;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.with_snippet = false;
    options
}

impl Definition {
    /// Parses JSON (a body starting with `{`) or YAML. Either way the text's nesting is
    /// bounded (serde_json: 128 levels; YAML: see [`yaml_options`]), so no text makes parsing
    /// slower than linear in its length.
    pub fn parse(text: &str) -> Result<Definition, DefinitionError> {
        if text.trim_start().starts_with('{') {
            let de = &mut serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de)
                .map_err(|e| DefinitionError::Parse(format!("{}: {}", e.path(), e.inner())))
        } else {
            serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| {
                let message = e.to_string();
                // The parser's own words can be long (they quote the input): keep the head.
                let head: String = message.lines().take(3).collect::<Vec<_>>().join(" ");
                DefinitionError::Parse(head.chars().take(500).collect())
            })
        }
    }

    /// Checks everything that can be checked without the store: names, `needs`, cycles,
    /// conditions, `for_each`. Module names are checked by the service, which knows them.
    pub fn validate(self) -> Result<Validated, DefinitionError> {
        if self.nodes.len() > MAX_NODES {
            return Err(DefinitionError::Invalid(vec![format!(
                "the workflow has {} nodes: at most {MAX_NODES} are allowed",
                self.nodes.len()
            )]));
        }
        let needs: usize = self.nodes.iter().map(|n| n.needs.len()).sum();
        if needs > MAX_NEEDS {
            return Err(DefinitionError::Invalid(vec![format!(
                "the workflow's nodes list {needs} needs in all: at most {MAX_NEEDS} are allowed"
            )]));
        }
        let mut problems = Vec::new();
        if !valid_name(&self.name) {
            problems.push(format!(
                "workflow name {:?}: 1 to 64 of a-z, 0-9, _ and -",
                self.name
            ));
        }
        if let Some(t) = &self.timeout
            && let Err(e) = wasmjobs_host::units::parse_duration(t)
        {
            problems.push(format!("timeout {t:?}: {e}"));
        }
        if self.nodes.is_empty() {
            problems.push("the workflow has no nodes".into());
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut duplicates = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !valid_name(&n.name) {
                problems.push(format!(
                    "node name {:?}: 1 to 64 of a-z, 0-9, _ and -",
                    n.name
                ));
            }
            if index.insert(n.name.as_str(), i).is_some() {
                duplicates.insert(n.name.as_str());
            }
            if n.module.trim().is_empty() {
                problems.push(format!("node {:?} has no module", n.name));
            }
            if let Some(q) = &n.queue
                && let Err(e) = crate::store::queues::check_queue_name(q)
            {
                problems.push(format!("node {:?}: {e}", n.name));
            }
            if let Err(e) =
                crate::service::concurrency(n.concurrency_key.clone(), n.concurrency_limit)
            {
                problems.push(format!("node {:?}: {e}", n.name));
            }
            if let Some(fe) = &n.for_each {
                if fe.concurrency == 0 {
                    problems.push(format!(
                        "node {:?}: for_each.concurrency must be at least 1",
                        n.name
                    ));
                }
                if !fe.items.is_empty() && !fe.items.starts_with('/') {
                    problems.push(format!(
                        "node {:?}: for_each.items {:?} is not a JSON pointer (it starts with /)",
                        n.name, fe.items
                    ));
                }
            }
        }
        for d in &duplicates {
            problems.push(format!("duplicate node name {d:?}"));
        }
        let mut conditions = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let mut seen = BTreeSet::new();
            for need in &n.needs {
                if !index.contains_key(need.as_str()) {
                    problems.push(format!(
                        "node {:?} needs {need:?}, which is not a node of this workflow",
                        n.name
                    ));
                }
                if !seen.insert(need) {
                    problems.push(format!("node {:?} lists {need:?} twice in needs", n.name));
                }
            }
            match Condition::parse(n.when.as_deref().unwrap_or("")) {
                Ok(c) => conditions.push(c),
                Err(e) => {
                    problems.push(format!("node {:?}: when {e}", n.name));
                    conditions.push(Condition::Success);
                }
            }
        }
        if !problems.is_empty() {
            if problems.len() > MAX_PROBLEMS {
                let more = problems.len() - MAX_PROBLEMS;
                problems.truncate(MAX_PROBLEMS);
                problems.push(format!("and {more} more problems"));
            }
            return Err(DefinitionError::Invalid(problems));
        }
        let order = match topological_order(&self.nodes, &index) {
            Ok(order) => order,
            Err(cycle) => {
                return Err(DefinitionError::Invalid(vec![format!(
                    "cycle: {}",
                    cycle.join(" → ")
                )]));
            }
        };
        let index = index
            .into_iter()
            .map(|(name, i)| (name.to_string(), i))
            .collect();
        Ok(Validated {
            definition: self,
            order,
            conditions,
            index,
        })
    }

    /// The graph as Mermaid (`flowchart TD`).
    pub fn mermaid(&self) -> String {
        let mut out = String::from("flowchart TD\n");
        for n in &self.nodes {
            let shape = if n.for_each.is_some() {
                format!("{}[[\"{} ({}) ×N\"]]", n.name, n.name, n.module)
            } else {
                format!("{}[\"{} ({})\"]", n.name, n.name, n.module)
            };
            out.push_str(&format!("  {shape}\n"));
        }
        for n in &self.nodes {
            for need in &n.needs {
                match n.when.as_deref().map(str::trim) {
                    None | Some("") | Some("success") => {
                        out.push_str(&format!("  {need} --> {}\n", n.name));
                    }
                    Some(w) => out.push_str(&format!(
                        "  {need} -- \"{}\" --> {}\n",
                        w.replace('"', "'"),
                        n.name
                    )),
                }
            }
        }
        out
    }

    /// The graph as Graphviz DOT.
    pub fn dot(&self) -> String {
        let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut out = format!("digraph {} {{\n  rankdir=TB;\n", q(&self.name));
        for n in &self.nodes {
            let label = format!("{}\n{}", n.name, n.module);
            let shape = if n.for_each.is_some() { "box3d" } else { "box" };
            out.push_str(&format!(
                "  {} [label={}, shape={shape}];\n",
                q(&n.name),
                q(&label)
            ));
        }
        for n in &self.nodes {
            for need in &n.needs {
                match n.when.as_deref().map(str::trim) {
                    None | Some("") | Some("success") => {
                        out.push_str(&format!("  {} -> {};\n", q(need), q(&n.name)));
                    }
                    Some(w) => out.push_str(&format!(
                        "  {} -> {} [label={}];\n",
                        q(need),
                        q(&n.name),
                        q(w)
                    )),
                }
            }
        }
        out.push_str("}\n");
        out
    }

    /// Every module the definition names, once each.
    pub fn modules(&self) -> BTreeSet<&str> {
        self.nodes.iter().map(|n| n.module.as_str()).collect()
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Kahn's algorithm, taking nodes in definition order when several are ready. On a cycle,
/// returns one cycle as node names, first node repeated at the end.
fn topological_order(
    nodes: &[Node],
    index: &HashMap<&str, usize>,
) -> Result<Vec<usize>, Vec<String>> {
    let mut pending: Vec<usize> = nodes.iter().map(|n| n.needs.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        for need in &n.needs {
            dependents[index[need.as_str()]].push(i);
        }
    }
    let mut ready: BTreeMap<usize, ()> = (0..nodes.len())
        .filter(|&i| pending[i] == 0)
        .map(|i| (i, ()))
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some((&i, ())) = ready.iter().next() {
        ready.remove(&i);
        order.push(i);
        for &d in &dependents[i] {
            pending[d] -= 1;
            if pending[d] == 0 {
                ready.insert(d, ());
            }
        }
    }
    if order.len() == nodes.len() {
        return Ok(order);
    }
    // Every node left has an unfinished need; walk needs until a node repeats.
    let left: BTreeSet<usize> = (0..nodes.len()).filter(|i| pending[*i] > 0).collect();
    let start = *left.iter().next().unwrap_or(&0);
    let mut path = vec![start];
    let mut at = start;
    loop {
        let next = nodes[at]
            .needs
            .iter()
            .map(|n| index[n.as_str()])
            .find(|i| left.contains(i))
            .unwrap_or(start);
        if let Some(pos) = path.iter().position(|&p| p == next) {
            // `path` follows needs (upstream); print the cycle the way data flows, starting
            // from the node where it closed.
            let mut cycle: Vec<usize> = path[pos..].to_vec();
            cycle.reverse();
            cycle.rotate_right(1);
            let mut names: Vec<String> = cycle.iter().map(|&i| nodes[i].name.clone()).collect();
            names.push(nodes[cycle[0]].name.clone());
            return Err(names);
        }
        path.push(next);
        at = next;
    }
}

#[cfg(test)]
mod tests;
