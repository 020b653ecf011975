//! Table-driven tests of `plan`: one case per rule.

use super::*;
use crate::store::{ItemRecord, RunRecord};
use crate::workflow::Definition;

const NOW: i64 = 1_000_000;

/// A run of `yaml` as stored, every node in the state given (default `pending`).
struct Run {
    def: Validated,
    snap: RunSnapshot,
    data: RunData,
}

impl Run {
    fn of(yaml: &str) -> Run {
        let def = Definition::parse(yaml)
            .and_then(Definition::validate)
            .expect("valid definition");
        let nodes = def
            .definition
            .nodes
            .iter()
            .map(|n| NodeRecord {
                name: n.name.clone(),
                module: format!("sha256:{}", n.name),
                state: NodeState::Pending,
                job_id: None,
                items_total: None,
                items_next: 0,
                items_done: 0,
                items_failed: 0,
                output: None,
                error: None,
                started_at: None,
                finished_at: None,
                job_state: None,
                job_error: None,
                input: None,
            })
            .collect();
        let run = RunRecord {
            id: 7,
            workflow: def.definition.name.clone(),
            version: 1,
            state: RunState::Running,
            input: br#"{"n": 0}"#.to_vec(),
            error: None,
            cancel_requested: false,
            deadline_at: None,
            rev: 1,
            created_at: 0,
            updated_at: 0,
            finished_at: None,
        };
        Run {
            def,
            snap: RunSnapshot {
                run,
                nodes,
                running_items: Vec::new(),
            },
            data: RunData::default(),
        }
    }

    fn node(&mut self, name: &str) -> &mut NodeRecord {
        self.snap
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("a node of the run")
    }

    /// `name` ran job `job`, which is now in `state`; its output is `output`.
    fn job(&mut self, name: &str, job: JobId, state: JobState, output: &str) -> &mut Self {
        let n = self.node(name);
        n.state = NodeState::Running;
        n.job_id = Some(job);
        n.job_state = Some(state);
        if state == JobState::Failed {
            n.job_error = Some("boom".into());
        }
        self.data
            .job_outputs
            .insert(job, output.as_bytes().to_vec());
        self
    }

    /// `name` ended earlier in `state`.
    fn ended(&mut self, name: &str, state: NodeState) -> &mut Self {
        let n = self.node(name);
        n.state = state;
        n.finished_at = Some(1);
        self
    }

    fn step(&self) -> Plan {
        let policy = AdmissionPolicy::default();
        let dirs = AllowedDirs::default();
        match plan(
            &self.def,
            &self.snap,
            &self.data,
            Admission {
                policy: &policy,
                dirs: &dirs,
            },
            NOW,
        ) {
            Step::Decided(plan) => plan,
            Step::Needs(w) => panic!("the step needs {w:?}"),
        }
    }

    fn needs(&self) -> Vec<Wanted> {
        let policy = AdmissionPolicy::default();
        let dirs = AllowedDirs::default();
        match plan(
            &self.def,
            &self.snap,
            &self.data,
            Admission {
                policy: &policy,
                dirs: &dirs,
            },
            NOW,
        ) {
            Step::Decided(plan) => panic!("decided without the data: {plan:?}"),
            Step::Needs(w) => w,
        }
    }
}

/// Each changed node's new state, in running order.
fn states(plan: &Plan) -> Vec<(String, NodeState)> {
    plan.changes
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.state))
        .collect()
}

/// The nodes the step submits a job for, with each job's input as text.
fn started(plan: &Plan) -> Vec<(String, String)> {
    plan.changes
        .node_jobs
        .iter()
        .map(|(name, job)| {
            let input = match job.input_from {
                Some(from) => format!("<output of job {from}>"),
                None => String::from_utf8_lossy(&job.input).into_owned(),
            };
            (name.clone(), input)
        })
        .collect()
}

fn run_state(plan: &Plan) -> Option<RunState> {
    plan.changes.state.as_ref().map(|(s, _)| *s)
}

const CHAIN: &str = "name: chain\nnodes:\n  - {name: a, module: m}\n  - {name: b, module: m, needs: [a]}\n  - {name: c, module: m, needs: [b]}\n";
const DIAMOND: &str = "name: diamond\nnodes:\n  - {name: a, module: m}\n  - {name: b, module: m, needs: [a]}\n  - {name: c, module: m, needs: [a]}\n  - {name: d, module: m, needs: [b, c]}\n";

#[test]
fn a_chain_starts_its_root_on_the_run_input_then_passes_each_output_on() {
    let mut run = Run::of(CHAIN);
    let first = run.step();
    assert_eq!(
        started(&first),
        [("a".to_string(), r#"{"n": 0}"#.to_string())]
    );
    assert_eq!(states(&first), [("a".to_string(), NodeState::Running)]);
    assert_eq!(run_state(&first), None);

    run.job("a", 1, JobState::Succeeded, r#"{"n": 1}"#);
    let second = run.step();
    assert_eq!(
        states(&second),
        [
            ("a".to_string(), NodeState::Succeeded),
            ("b".to_string(), NodeState::Running)
        ]
    );
    // One upstream: the job reads its output where it is, without a copy.
    assert_eq!(
        started(&second),
        [("b".to_string(), "<output of job 1>".to_string())]
    );

    run.ended("a", NodeState::Succeeded);
    run.ended("b", NodeState::Succeeded);
    run.job("c", 3, JobState::Succeeded, "{}");
    let last = run.step();
    assert_eq!(run_state(&last), Some(RunState::Succeeded));
    assert!(last.cancel.is_empty());
}

#[test]
fn a_diamond_joins_its_upstreams_outputs_by_name() {
    let mut run = Run::of(DIAMOND);
    run.ended("a", NodeState::Succeeded);
    run.job("b", 2, JobState::Succeeded, r#"{"x": 1}"#);
    run.job("c", 3, JobState::Running, "");
    let waiting = run.step();
    assert_eq!(states(&waiting), [("b".to_string(), NodeState::Succeeded)]);
    assert!(started(&waiting).is_empty(), "d waits for c");

    run.ended("b", NodeState::Succeeded);
    run.job("c", 3, JobState::Succeeded, "plain text");
    let joined = run.step();
    let input: Value = serde_json::from_str(&started(&joined)[0].1).expect("the join is JSON");
    assert_eq!(input, json!({"b": {"x": 1}, "c": "plain text"}));
}

#[test]
fn each_condition_kind_runs_or_skips_its_node() {
    let cases = [
        // (when, upstream outcome, upstream output, runs)
        ("success", JobState::Succeeded, r#"{"score": 1}"#, true),
        ("success", JobState::Failed, "", false),
        ("failure", JobState::Failed, "", true),
        ("failure", JobState::Succeeded, "{}", false),
        ("always", JobState::Failed, "", true),
        ("always", JobState::Cancelled, "", true),
        (
            "/score > 0.5",
            JobState::Succeeded,
            r#"{"score": 0.9}"#,
            true,
        ),
        (
            "/score > 0.5",
            JobState::Succeeded,
            r#"{"score": 0.1}"#,
            false,
        ),
        ("/score > 0.5", JobState::Failed, "", false),
    ];
    for (when, outcome, output, runs) in cases {
        let yaml = format!(
            "name: cond\nnodes:\n  - {{name: a, module: m}}\n  - {{name: b, module: m, needs: [a], when: \"{when}\"}}\n"
        );
        let mut run = Run::of(&yaml);
        run.job("a", 1, outcome, output);
        let plan = run.step();
        let b = plan.changes.nodes.iter().find(|n| n.name == "b");
        let want = if runs {
            NodeState::Running
        } else {
            NodeState::Skipped
        };
        assert_eq!(
            b.map(|n| n.state),
            Some(want),
            "when {when:?} after {outcome}"
        );
        if runs && outcome != JobState::Succeeded {
            // A node that runs on failure sees why.
            let input: Value = serde_json::from_str(&started(&plan)[0].1).expect("json");
            assert_eq!(input["state"], json!(NodeState::from(outcome)), "{input}");
        }
    }
}

#[test]
fn a_skip_cascades_and_a_failed_node_fails_the_run() {
    let mut run = Run::of(CHAIN);
    run.job("a", 1, JobState::Failed, "");
    let plan = run.step();
    assert_eq!(
        states(&plan),
        [
            ("a".to_string(), NodeState::Failed),
            ("b".to_string(), NodeState::Skipped),
            ("c".to_string(), NodeState::Skipped),
        ]
    );
    let (state, error) = plan.changes.state.clone().expect("the run ends");
    assert_eq!(state, RunState::Failed);
    assert!(error.is_some_and(|e| e.contains("\"a\" failed") && e.contains("boom")));
}

const FAN: &str = "name: fan\nnodes:\n  - {name: split, module: m}\n  - {name: each, module: m, needs: [split], for_each: {items: /xs, concurrency: 2}}\n  - {name: merge, module: m, needs: [each]}\n";
const FAN_COLLECT: &str = "name: fan\nnodes:\n  - {name: split, module: m}\n  - {name: each, module: m, needs: [split], for_each: {items: /xs, concurrency: 2, on_failure: collect_all}}\n";

fn element(node: &str, idx: i64, job: JobId, state: JobState) -> ItemRecord {
    ItemRecord {
        node: node.into(),
        idx,
        job_id: job,
        job_state: state,
        job_error: (state == JobState::Failed).then(|| "element boom".into()),
    }
}

#[test]
fn for_each_fans_out_up_to_its_concurrency_refills_and_gathers_in_order() {
    let mut run = Run::of(FAN);
    run.job("split", 1, JobState::Succeeded, r#"{"xs": [10, 20, 30]}"#);
    let fan = run.step();
    let each = fan
        .changes
        .nodes
        .iter()
        .find(|n| n.name == "each")
        .expect("each");
    assert_eq!(
        (each.state, each.items_total, each.items_next),
        (NodeState::Running, Some(3), 2)
    );
    let submitted: Vec<(i64, String)> = fan
        .changes
        .item_jobs
        .iter()
        .map(|(_, i, j)| (*i, String::from_utf8_lossy(&j.input).into_owned()))
        .collect();
    assert_eq!(submitted, [(0, "10".to_string()), (1, "20".to_string())]);
    assert_eq!(fan.changes.new_items.len(), 3, "every element is stored");

    // Element 0 ended: one slot free, so element 2 goes, read from the store.
    run.ended("split", NodeState::Succeeded);
    {
        let n = run.node("each");
        n.state = NodeState::Running;
        n.items_total = Some(3);
        n.items_next = 2;
    }
    run.snap.running_items = vec![
        element("each", 0, 10, JobState::Succeeded),
        element("each", 1, 11, JobState::Running),
    ];
    assert_eq!(
        run.needs(),
        [Wanted::PendingItems {
            node: "each".into(),
            from: 2,
            limit: 1
        }]
    );
    run.data
        .pending_items
        .insert("each".into(), vec![(2, b"30".to_vec())]);
    let refill = run.step();
    assert_eq!(refill.changes.item_jobs.len(), 1);
    assert_eq!(
        refill.changes.item_states,
        [("each".to_string(), 0, NodeState::Succeeded)]
    );

    // All three done: the outputs are gathered in order and passed on.
    {
        let n = run.node("each");
        n.items_next = 3;
        n.items_done = 2;
    }
    run.snap.running_items = vec![element("each", 2, 12, JobState::Succeeded)];
    run.data.pending_items.clear();
    assert_eq!(run.needs(), [Wanted::ItemOutputs("each".into())]);
    run.data.item_outputs.insert(
        "each".into(),
        vec![
            Some(b"20".to_vec()),
            Some(b"40".to_vec()),
            Some(b"60".to_vec()),
        ],
    );
    let gathered = run.step();
    let each = gathered
        .changes
        .nodes
        .iter()
        .find(|n| n.name == "each")
        .expect("each");
    assert_eq!(each.state, NodeState::Succeeded);
    assert_eq!(each.output.as_deref(), Some(&b"[20,40,60]"[..]));
    assert_eq!(
        started(&gathered),
        [("merge".to_string(), "[20,40,60]".to_string())]
    );
}

#[test]
fn for_each_over_nothing_succeeds_at_once_with_an_empty_array() {
    let mut run = Run::of(FAN);
    run.job("split", 1, JobState::Succeeded, r#"{"xs": []}"#);
    let plan = run.step();
    let each = plan
        .changes
        .nodes
        .iter()
        .find(|n| n.name == "each")
        .expect("each");
    assert_eq!(
        (each.state, each.output.as_deref()),
        (NodeState::Succeeded, Some(&b"[]"[..]))
    );
    assert_eq!(started(&plan), [("merge".to_string(), "[]".to_string())]);
}

#[test]
fn fail_fast_stops_the_other_elements_and_collect_all_waits_for_them() {
    for (yaml, fails_now) in [(FAN, true), (FAN_COLLECT, false)] {
        let mut run = Run::of(yaml);
        run.ended("split", NodeState::Succeeded);
        {
            let n = run.node("each");
            n.state = NodeState::Running;
            n.items_total = Some(2);
            n.items_next = 2;
        }
        run.snap.running_items = vec![
            element("each", 0, 10, JobState::Failed),
            element("each", 1, 11, JobState::Running),
        ];
        let plan = run.step();
        let each = plan
            .changes
            .nodes
            .iter()
            .find(|n| n.name == "each")
            .expect("each");
        if fails_now {
            assert_eq!(each.state, NodeState::Failed);
            assert!(
                each.error
                    .as_deref()
                    .is_some_and(|e| e.contains("element 0")),
                "{each:?}"
            );
            assert_eq!(plan.cancel, [11], "the other element is stopped");
        } else {
            assert_eq!(each.state, NodeState::Running, "collect_all waits");
            assert!(plan.cancel.is_empty());
            // The last element ends: the node fails, naming how many failed.
            {
                let n = run.node("each");
                n.items_done = 1;
                n.items_failed = 1;
            }
            run.snap.running_items = vec![element("each", 1, 11, JobState::Succeeded)];
            let end = run.step();
            let each = end
                .changes
                .nodes
                .iter()
                .find(|n| n.name == "each")
                .expect("each");
            assert_eq!(each.state, NodeState::Failed);
            assert!(
                each.error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("1 of 2 elements failed")),
                "{each:?}"
            );
            assert_eq!(run_state(&end), Some(RunState::Failed));
        }
    }
}

#[test]
fn a_cancel_stops_running_jobs_and_cancels_pending_nodes() {
    let mut run = Run::of(DIAMOND);
    run.ended("a", NodeState::Succeeded);
    run.job("b", 2, JobState::Running, "");
    run.job("c", 3, JobState::Succeeded, "{}");
    run.snap.run.cancel_requested = true;
    let plan = run.step();
    assert_eq!(plan.cancel, [2]);
    let d = plan
        .changes
        .nodes
        .iter()
        .find(|n| n.name == "d")
        .expect("d");
    assert_eq!(d.state, NodeState::Cancelled, "nothing new starts");
    assert_eq!(run_state(&plan), Some(RunState::Cancelling));

    // Once the running job ended, the run ends cancelled.
    run.snap.run.state = RunState::Cancelling;
    run.job("b", 2, JobState::Cancelled, "");
    run.ended("c", NodeState::Succeeded);
    run.ended("d", NodeState::Cancelled);
    let end = run.step();
    assert_eq!(run_state(&end), Some(RunState::Cancelled));
}

#[test]
fn a_passed_deadline_stops_the_run_and_fails_it_saying_so() {
    let mut run = Run::of(
        "name: slow\ntimeout: 1s\nnodes:\n  - {name: a, module: m}\n  - {name: b, module: m, needs: [a]}\n",
    );
    run.job("a", 1, JobState::Running, "");
    run.snap.run.deadline_at = Some(NOW - 1);
    let plan = run.step();
    assert_eq!(plan.cancel, [1]);
    assert_eq!(run_state(&plan), Some(RunState::Cancelling));
    run.snap.run.state = RunState::Cancelling;
    run.snap.run.error = Some("the run's timeout (1s) passed".into());
    run.job("a", 1, JobState::Cancelled, "");
    run.ended("b", NodeState::Cancelled);
    let end = run.step();
    let (state, error) = end.changes.state.clone().expect("ends");
    assert_eq!(state, RunState::Failed);
    assert!(error.is_some_and(|e| e.contains("timeout")));
}

#[test]
fn a_step_asks_for_the_outputs_it_needs_and_only_those() {
    let mut run = Run::of(DIAMOND);
    run.ended("a", NodeState::Succeeded);
    run.job("b", 2, JobState::Succeeded, "{}");
    run.job("c", 3, JobState::Succeeded, "{}");
    run.data.job_outputs.clear();
    let mut wanted = run.needs();
    wanted.sort_by_key(|w| format!("{w:?}"));
    assert_eq!(wanted, [Wanted::JobOutput(2), Wanted::JobOutput(3)]);
    // A chain's node reads its upstream's output in its job: nothing to read here.
    let mut chain = Run::of(CHAIN);
    chain.job("a", 1, JobState::Succeeded, "{}");
    chain.data.job_outputs.clear();
    assert_eq!(started(&chain.step()).len(), 1);
}

#[test]
fn elements_come_from_the_input_or_a_pointer_and_are_bounded() {
    assert_eq!(elements(b"[1, 2]", ""), Ok(vec![json!(1), json!(2)]));
    assert_eq!(
        elements(br#"{"a": {"b": ["x"]}}"#, "/a/b"),
        Ok(vec![json!("x")])
    );
    let e = elements(br#"{"a": 3}"#, "/a").expect_err("not an array");
    assert!(
        e.contains("\"/a\" is not an array") && e.contains("a number"),
        "{e}"
    );
    let e = elements(br#"{"a": 3}"#, "/b").expect_err("missing");
    assert!(e.contains("\"/b\" is missing"), "{e}");
    let e = elements(b"not json", "").expect_err("not json");
    assert!(e.contains("not JSON"), "{e}");
    let big = serde_json::to_vec(&vec![0; MAX_ELEMENTS + 1]).expect("json");
    let e = elements(&big, "").expect_err("too many");
    assert!(e.contains(&format!("at most {MAX_ELEMENTS}")), "{e}");
}

#[test]
fn outputs_become_json_values() {
    assert_eq!(output_value(b""), Value::Null);
    assert_eq!(output_value(br#"{"n": 1}"#), json!({"n": 1}));
    assert_eq!(output_value(b"plain text"), json!("plain text"));
}
