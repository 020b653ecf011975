//! Parsing and validation of definitions, and how conditions read outputs.

use super::*;

const PIPELINE: &str = r#"
name: wordcount
timeout: 10m
nodes:
  - name: split
    module: splitter
  - name: count
    module: wordfreq
    needs: [split]
    for_each: { items: /chunks, concurrency: 8 }
  - name: merge
    module: merge
    needs: [count]
  - name: report
    module: report
    needs: [merge]
    when: /total > 100
"#;

#[test]
fn yaml_and_json_parse_to_the_same_definition() {
    let yaml = Definition::parse(PIPELINE).expect("yaml");
    let json = serde_json::to_string(&yaml).expect("to json");
    assert_eq!(Definition::parse(&json).expect("json"), yaml);
    let v = yaml.validate().expect("valid");
    let names: Vec<&str> = v
        .order
        .iter()
        .map(|&i| v.definition.nodes[i].name.as_str())
        .collect();
    assert_eq!(names, ["split", "count", "merge", "report"]);
    assert_eq!(
        v.conditions[3],
        Condition::Predicate(Predicate {
            pointer: "/total".into(),
            op: Op::Gt,
            value: serde_json::json!(100)
        })
    );
    assert_eq!(
        v.definition.nodes[1]
            .for_each
            .as_ref()
            .map(|f| f.concurrency),
        Some(8)
    );
}

fn invalid(text: &str) -> Vec<String> {
    match Definition::parse(text).and_then(Definition::validate) {
        Err(DefinitionError::Invalid(p)) => p,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn a_cycle_is_printed() {
    let p = invalid(
        r#"{"name": "c", "nodes": [
                {"name": "a", "module": "m", "needs": ["c"]},
                {"name": "b", "module": "m", "needs": ["a"]},
                {"name": "c", "module": "m", "needs": ["b"]},
                {"name": "d", "module": "m"}]}"#,
    );
    assert_eq!(p, ["cycle: a → b → c → a"], "{p:?}");
    let p = invalid(r#"{"name": "s", "nodes": [{"name": "a", "module": "m", "needs": ["a"]}]}"#);
    assert_eq!(p, ["cycle: a → a"]);
}

#[test]
fn every_problem_is_named() {
    let p = invalid(
        r#"{"name": "Bad Name", "timeout": "soon", "nodes": [
                {"name": "a", "module": "m"},
                {"name": "a", "module": "m"},
                {"name": "b", "module": "", "needs": ["ghost", "a", "a"], "when": "/x >> 1"},
                {"name": "c", "module": "m", "when": "sometimes"},
                {"name": "d", "module": "m", "when": "/n > \"big\""},
                {"name": "e", "module": "m", "for_each": {"items": "chunks", "concurrency": 0}}]}"#,
    );
    let all = p.join("\n");
    for expected in [
        "workflow name \"Bad Name\"",
        "timeout \"soon\"",
        "duplicate node name \"a\"",
        "node \"b\" has no module",
        "node \"b\" needs \"ghost\", which is not a node",
        "node \"b\" lists \"a\" twice",
        "node \"b\": when",
        "\"sometimes\"",
        "compares numbers",
        "for_each.concurrency must be at least 1",
        "for_each.items \"chunks\" is not a JSON pointer",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    assert!(matches!(
        Definition::parse(r#"{"name": "x", "nodes": [{"name": "a", "modul": "m"}]}"#),
        Err(DefinitionError::Parse(m)) if m.contains("modul")
    ));
    assert!(matches!(
        Definition::parse("name: [unclosed"),
        Err(DefinitionError::Parse(_))
    ));
    assert_eq!(
        invalid(r#"{"name": "e", "nodes": []}"#),
        ["the workflow has no nodes"]
    );
}

#[test]
fn predicates_compare_json_values() {
    let input =
        serde_json::json!({"score": 0.7, "label": "cat", "n": 3, "ok": true, "up": {"x": 1}});
    let holds = |p: &str| match Condition::parse(p).expect(p) {
        Condition::Predicate(pred) => pred.eval(&input),
        other => panic!("{other:?}"),
    };
    assert!(holds("/score > 0.5"));
    assert!(!holds("/score >= 0.8"));
    assert!(holds("/label == \"cat\""));
    assert!(holds("/label != \"dog\""));
    assert!(holds("/n == 3.0"));
    assert!(holds("/ok == true"));
    assert!(holds("/up/x <= 1"));
    assert!(!holds("/missing == 1"), "a missing field is false");
    assert!(
        !holds("/label > 1"),
        "a string is not ordered against a number"
    );
    assert!(
        !holds("/missing != 1"),
        "a missing field is false for != too"
    );
    assert_eq!(Condition::parse("always"), Ok(Condition::Always));
    assert_eq!(Condition::parse("failure"), Ok(Condition::Failure));
    assert_eq!(Condition::parse(" "), Ok(Condition::Success));
    assert!(Condition::parse("/x ==").is_err());
    assert!(Condition::parse("/x").is_err());
    assert!(
        Condition::parse("/x == cat").is_err(),
        "strings need quotes"
    );
}

#[test]
fn drawings_show_every_node_and_edge() {
    let d = Definition::parse(PIPELINE).expect("parse");
    let m = d.mermaid();
    assert!(m.starts_with("flowchart TD\n"));
    assert!(m.contains("count[[\"count (wordfreq) ×N\"]]"), "{m}");
    assert!(m.contains("split --> count"), "{m}");
    assert!(m.contains("merge -- \"/total > 100\" --> report"), "{m}");
    let dot = d.dot();
    assert!(dot.starts_with("digraph \"wordcount\" {"), "{dot}");
    assert!(dot.contains("\"split\" -> \"count\";"), "{dot}");
    assert!(
        dot.contains("\"merge\" -> \"report\" [label=\"/total > 100\"];"),
        "{dot}"
    );
    assert!(dot.contains("shape=box3d"), "{dot}");
    assert_eq!(
        d.modules().into_iter().collect::<Vec<_>>(),
        ["merge", "report", "splitter", "wordfreq"]
    );
}
