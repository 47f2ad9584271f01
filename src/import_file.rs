//! `keygate import FILE`: JSON Lines rows in, one report line per row out
//! (docs/behaviour.md, "Key hygiene").

use std::{io::BufRead, path::Path};

use keygate::admin::hygiene::{ImportRow, RowOutcome};

/// Reads every row; a line that is not a row becomes the reason it is
/// refused, never a message that could repeat a key from the file.
pub fn read(path: &Path) -> anyhow::Result<Vec<Result<ImportRow, String>>> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut rows = Vec::new();
    for line in reader.lines() {
        let line = line.map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        rows.push(serde_json::from_str::<ImportRow>(&line).map_err(|e| reason(&e)));
    }
    Ok(rows)
}

/// serde_json names a wrong value by quoting it, and the value may be a
/// key: only field names are repeated.
fn reason(error: &serde_json::Error) -> String {
    let message = error.to_string();
    if message.starts_with("unknown field") || message.starts_with("missing field") {
        let field = message.split('`').nth(1).unwrap_or_default();
        let kind = if message.starts_with("unknown") {
            "unknown field"
        } else {
            "missing field"
        };
        return format!("{kind} {field:?}");
    }
    match error.classify() {
        serde_json::error::Category::Data => format!(
            "a field has the wrong type or value (column {})",
            error.column()
        ),
        _ => format!("not a JSON object (column {})", error.column()),
    }
}

/// The printed report and its counts.
pub struct Report {
    pub text: String,
    pub invalid: usize,
}

impl Report {
    /// Rows are numbered from 1 among the file's non-empty lines.
    pub fn of(outcomes: &[RowOutcome]) -> Report {
        let (mut imported, mut present, mut invalid) = (0, 0, 0);
        let mut text = String::new();
        for (index, outcome) in outcomes.iter().enumerate() {
            let row = index + 1;
            let line = match outcome {
                RowOutcome::Imported { id } => {
                    imported += 1;
                    format!("row {row}: imported {id}")
                }
                RowOutcome::AlreadyPresent { id } => {
                    present += 1;
                    format!("row {row}: already present {id}")
                }
                RowOutcome::Invalid { reason } => {
                    invalid += 1;
                    format!("row {row}: invalid: {reason}")
                }
            };
            text.push_str(&line);
            text.push('\n');
        }
        text.push_str(&format!(
            "imported {imported}, already present {present}, invalid {invalid}"
        ));
        Report { text, invalid }
    }
}
