//! The commands `check` and `baseline`: comparing the current schema with
//! the committed baseline and linting it, and rewriting the baseline.

use std::path::Path;

use prost::Message as _;

use crate::compare::{compare, reserved_conflicts_in_sources};
use crate::compile::{compile, load_baseline, strip_source_info};
use crate::lint::lint;
use crate::{BaselineReport, CheckReport, Comparison, SchemaError, io_err};

/// `caseshare-schema check`: the breaking changes against the baseline, the
/// lint problems, and (informational) the additions not yet in the baseline.
///
/// A schema that protox rejects only because a field or enum value uses a
/// reserved number or name is reported as problems naming that element;
/// any other compile failure is an `Err`.
pub fn check_report(proto_dir: &Path, baseline_path: &Path) -> Result<CheckReport, SchemaError> {
    let base = load_baseline(baseline_path)?;
    let current = match compile(proto_dir) {
        Ok(set) => set,
        Err(err) => {
            let conflicts = reserved_conflicts_in_sources(proto_dir);
            if conflicts.is_empty() {
                return Err(err);
            }
            let mut breaking = conflicts;
            breaking.push(format!("error: {err}"));
            return Ok(CheckReport {
                breaking,
                ..CheckReport::default()
            });
        }
    };
    let comparison = compare(&base, &current);
    Ok(CheckReport {
        breaking: comparison.breaking,
        lint: lint(&current),
        additions: comparison.additions,
    })
}

/// `caseshare-schema check`: every problem (breaking changes, then lint
/// problems), one line each; empty means the schema passes.
pub fn check(proto_dir: &Path, baseline_path: &Path) -> Result<Vec<String>, SchemaError> {
    check_report(proto_dir, baseline_path).map(|r| r.problems())
}

/// `caseshare-schema baseline`: writes the current schema as the new
/// baseline. Refuses while the schema fails its lint rules or breaks the
/// existing baseline (if there is one).
pub fn baseline(proto_dir: &Path, baseline_path: &Path) -> Result<BaselineReport, SchemaError> {
    write_baseline(proto_dir, baseline_path, false)
}

/// `caseshare-schema baseline --allow-breaking`: as [`baseline`], but
/// accepts breaking changes against the existing baseline and lists them.
/// Only for a schema no agency has built against yet.
pub fn baseline_allowing_breaking(
    proto_dir: &Path,
    baseline_path: &Path,
) -> Result<BaselineReport, SchemaError> {
    write_baseline(proto_dir, baseline_path, true)
}

/// Writes the baseline after the lint and (unless `allow_breaking`)
/// breaking-change checks pass.
fn write_baseline(
    proto_dir: &Path,
    baseline_path: &Path,
    allow_breaking: bool,
) -> Result<BaselineReport, SchemaError> {
    let current = compile(proto_dir)?;
    let problems = lint(&current);
    if !problems.is_empty() {
        return Err(SchemaError::Lint(problems));
    }
    let comparison = if baseline_path.exists() {
        compare(&load_baseline(baseline_path)?, &current)
    } else {
        Comparison::default()
    };
    if !comparison.breaking.is_empty() && !allow_breaking {
        return Err(SchemaError::Breaking(comparison.breaking));
    }
    if let Some(parent) = baseline_path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let bytes = strip_source_info(&current).encode_to_vec();
    std::fs::write(baseline_path, bytes).map_err(io_err(baseline_path))?;
    Ok(BaselineReport {
        additions: comparison.additions,
        accepted_breaking: comparison.breaking,
    })
}
