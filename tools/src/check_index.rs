//! `sluicectl check-index`: every segment of a partition directory checked against its offset
//! and time index, with the same checks as `dump-log --index` (the storage engine's decoders).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;
use sluice::storage::segment_names::{parse_segment_name, INDEX_SUFFIX, TIME_INDEX_SUFFIX};

use crate::dump_log;
use crate::output::{write_json, Format};

/// Arguments of `check-index`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A partition directory (`<topic>-<partition>`) holding `.log`, `.index`, `.timeindex`.
    pub partition_dir: PathBuf,
}

/// The verdict for one segment.
#[derive(Debug, Serialize)]
struct SegmentReport {
    segment: String,
    ok: bool,
    problems: Vec<String>,
}

/// Checks every segment; `Ok(false)` when any is inconsistent.
pub fn run(args: &Args, format: Format, out: &mut impl Write) -> anyhow::Result<bool> {
    let dir = &args.partition_dir;
    let mut segments: Vec<(i64, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("reading partition directory {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            match parse_segment_name(&name) {
                Some((base, "log")) => Some((base, e.path())),
                _ => None,
            }
        })
        .collect();
    segments.sort();
    if segments.is_empty() {
        anyhow::bail!(
            "{} holds no segment files (<20-digit offset>.log); pass a partition directory such as <data-dir>/<topic>-0",
            dir.display()
        );
    }
    let mut reports = Vec::with_capacity(segments.len());
    let mut notes = Vec::new();
    let last = segments.len() - 1;
    for (i, (_, path)) in segments.iter().enumerate() {
        // A broker may write the active segment's index files only when it rolls or closes
        // the segment; their absence there is not corruption.
        let unindexed_active = i == last
            && !path.with_extension(INDEX_SUFFIX).exists()
            && !path.with_extension(TIME_INDEX_SUFFIX).exists();
        let report = dump_log::inspect(&dump_log::Args {
            segment: path.clone(),
            index: !unindexed_active,
            deep: false,
        })?;
        let ok = report.ok();
        let problems = report.problems().to_vec();
        if unindexed_active {
            notes.push(format!(
                "{}: active segment without index files yet; batches and CRCs checked",
                path.display()
            ));
        }
        reports.push(SegmentReport {
            segment: path.display().to_string(),
            ok,
            problems,
        });
    }
    let all_ok = reports.iter().all(|r| r.ok);
    let notes = &notes;
    match format {
        Format::Json => write_json(
            out,
            &serde_json::json!({ "ok": all_ok, "segments": reports, "notes": notes }),
        )?,
        Format::Table => {
            for r in &reports {
                writeln!(out, "{} {}", if r.ok { "ok  " } else { "FAIL" }, r.segment)?;
                for p in &r.problems {
                    writeln!(out, "     {p}")?;
                }
            }
            for n in notes {
                writeln!(out, "note: {n}")?;
            }
            writeln!(
                out,
                "{} of {} segments consistent.",
                reports.iter().filter(|r| r.ok).count(),
                reports.len()
            )?;
        }
    }
    Ok(all_ok)
}
