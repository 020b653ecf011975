//! Column statistics of a CSV file. Run with:
//! `wasmjobs run csvstats.wasm --input @examples/data/weather.json`
//!
//! Input `{"csv": string, "delimiter"?: ","}` (first row is the header); output
//! `{"rows", "columns": [{"name", "count", "numeric", "min", "max", "mean", "stddev", "distinct"}]}`.
//! A column is numeric when every non-empty cell parses as a number.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input {
    csv: String,
    #[serde(default = "comma")]
    delimiter: char,
}

fn comma() -> char {
    ','
}

#[derive(Serialize)]
struct Column {
    name: String,
    count: u64,
    numeric: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stddev: Option<f64>,
    distinct: usize,
}

#[derive(Serialize)]
struct Output {
    rows: u64,
    columns: Vec<Column>,
}

fn csvstats(input: Input) -> Result<Output, String> {
    let delimiter = u8::try_from(input.delimiter).map_err(|_| format!("delimiter {:?} is not ASCII", input.delimiter))?;
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).from_reader(input.csv.as_bytes());
    let names: Vec<String> = reader.headers().map_err(|e| format!("cannot read the header row: {e}"))?.iter().map(String::from).collect();
    if names.is_empty() {
        return Err("the CSV has no header row".into());
    }
    let n = names.len();
    let mut values: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut numeric = vec![true; n];
    let mut counts = vec![0u64; n];
    let mut distinct: Vec<HashSet<String>> = vec![HashSet::new(); n];
    let mut rows = 0u64;
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| format!("row {}: {e}", i + 2))?;
        rows += 1;
        for (col, cell) in record.iter().enumerate().take(n) {
            let cell = cell.trim();
            if cell.is_empty() {
                continue;
            }
            counts[col] += 1;
            distinct[col].insert(cell.to_string());
            match cell.parse::<f64>() {
                Ok(v) if v.is_finite() => values[col].push(v),
                _ => numeric[col] = false,
            }
        }
    }
    let columns = names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let is_num = numeric[i] && !values[i].is_empty();
            let v = &values[i];
            let (min, max, mean, stddev) = if is_num {
                let len = v.len() as f64;
                let mean = v.iter().sum::<f64>() / len;
                let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / len;
                (
                    Some(v.iter().copied().fold(f64::INFINITY, f64::min)),
                    Some(v.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
                    Some(mean),
                    Some(var.sqrt()),
                )
            } else {
                (None, None, None, None)
            };
            Column { name, count: counts[i], numeric: is_num, min, max, mean, stddev, distinct: distinct[i].len() }
        })
        .collect();
    wasmjobs_guest::info!("{rows} rows");
    Ok(Output { rows, columns })
}

wasmjobs_guest::export_job!(csvstats);
