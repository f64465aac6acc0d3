//! Tables for people, JSON for scripts (keys are the column names).

use std::io::Write;

use serde_json::Value;
use tasktrail::backend::{escape_control_characters, human_duration};
use tasktrail::json::{session_json, stats_json, task_json};
use tasktrail::{Liveness, NoticedOwner, SessionRecord, TaskRecord, TaskStats, Timestamp};

use crate::CliResult;

fn short_time(at: Option<Timestamp>) -> String {
    at.map_or_else(
        || "-".to_owned(),
        |at| at.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

fn print_json(value: &Value) -> CliResult<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Writes rows as a left-aligned table with a header.
pub(crate) fn write_table(
    out: &mut dyn Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    // comfy-table measures cells by their display width, so wide characters
    // (CJK repo names, emoji) keep the columns aligned.
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    // One row is one line: a value holding a newline or an escape sequence
    // (a row another program wrote) is shown escaped.
    for row in rows {
        table.add_row(row.iter().map(|cell| escape_control_characters(cell)));
    }
    let last = header.len().saturating_sub(1);
    for (index, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if index == last { 0 } else { 2 }));
    }
    for line in table.lines() {
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// The task table.
pub(crate) fn task_table(rows: &[TaskRecord]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|row| {
            let end = row.finished_at.or(row.interrupted_at);
            let ran = end.map_or_else(
                || "-".to_owned(),
                |end| human_duration(end - row.started_at),
            );
            vec![
                row.id.to_string(),
                row.repo_issue(),
                row.status.to_string(),
                row.agent.clone(),
                row.model.clone(),
                row.worker_id
                    .map_or_else(|| "-".to_owned(), |id| id.to_string()[..8].to_owned()),
                short_time(Some(row.started_at)),
                short_time(row.finished_at),
                ran,
            ]
        })
        .collect()
}

pub(crate) const TASK_HEADER: [&str; 9] = [
    "id",
    "repo#issue",
    "status",
    "agent",
    "model",
    "worker",
    "started_at",
    "finished_at",
    "ran",
];

/// One line about an owner a sweep left alone for a reason worth telling:
/// `[stalled] ...` or `[not yet provable] ...`.
pub(crate) fn noticed_owner_line(owner: &NoticedOwner) -> String {
    let who = format!(
        "worker {} (pid {} on {})",
        owner.record.id, owner.record.pid, owner.record.host
    );
    let silent = human_duration(owner.silence);
    match &owner.verdict {
        Liveness::Stalled { .. } => format!(
            "[stalled] {who} holds its liveness lock but has not heartbeaten for {silent} \
             (stopped or hung); its tasks are left running"
        ),
        Liveness::NotYetProvable(why) => format!(
            "[not yet provable] {who}, silent for {silent}: {why}; its tasks are left running \
             (run recover again later; running workers' sweeps decide it)"
        ),
        other => format!("{who}: {other:?}"),
    }
}

pub(crate) fn print_tasks(rows: &[TaskRecord], json: bool) -> CliResult<()> {
    if json {
        return print_json(&Value::Array(rows.iter().map(task_json).collect()));
    }
    let mut out = std::io::stdout().lock();
    if rows.is_empty() {
        writeln!(out, "no task_history rows")?;
        return Ok(());
    }
    write_table(&mut out, &TASK_HEADER, &task_table(rows))?;
    Ok(())
}

pub(crate) fn print_task(row: &TaskRecord, json: bool) -> CliResult<()> {
    let value = task_json(row);
    if json {
        return print_json(&value);
    }
    let mut out = std::io::stdout().lock();
    if let Value::Object(columns) = value {
        for (name, value) in columns {
            let text = match value {
                Value::Null => "NULL".to_owned(),
                Value::String(text) => text,
                other => other.to_string(),
            };
            writeln!(out, "{name:>16}: {text}")?;
        }
    }
    Ok(())
}

/// A row that cannot be read as a record, column by column as the database
/// holds it (`json`: an object of strings and nulls).
pub(crate) fn print_raw_task(
    columns: &[(&'static str, Option<String>)],
    json: bool,
) -> CliResult<()> {
    if json {
        let object: serde_json::Map<String, Value> = columns
            .iter()
            .map(|(name, text)| {
                let value = text.clone().map_or(Value::Null, Value::String);
                ((*name).to_owned(), value)
            })
            .collect();
        return print_json(&Value::Object(object));
    }
    let mut out = std::io::stdout().lock();
    for (name, text) in columns {
        writeln!(out, "{name:>16}: {}", text.as_deref().unwrap_or("NULL"))?;
    }
    Ok(())
}

pub(crate) fn session_table(rows: &[SessionRecord]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|row| {
            vec![
                row.session_id.to_string(),
                row.task_id.to_string(),
                format!("{}#{}", row.repo, row.issue_number),
                row.agent.clone(),
                short_time(Some(row.created_at)),
                short_time(row.invalidated_at),
                row.invalidation_reason
                    .clone()
                    .unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect()
}

pub(crate) const SESSION_HEADER: [&str; 7] = [
    "session_id",
    "task_id",
    "repo#issue",
    "agent",
    "created_at",
    "invalidated_at",
    "invalidation_reason",
];

pub(crate) fn print_sessions(rows: &[SessionRecord], json: bool) -> CliResult<()> {
    if json {
        return print_json(&Value::Array(rows.iter().map(session_json).collect()));
    }
    let mut out = std::io::stdout().lock();
    if rows.is_empty() {
        writeln!(out, "no claude_sdk_sessions rows")?;
        return Ok(());
    }
    write_table(&mut out, &SESSION_HEADER, &session_table(rows))?;
    Ok(())
}

/// A duration for people: `1.234s` under a minute (milliseconds matter
/// there), `36m05s` / `1h02m03s` above; negative ones (clocks that
/// disagreed) keep their sign.
pub(crate) fn span(duration: chrono::Duration) -> String {
    if duration < chrono::Duration::zero() {
        return format!("-{}", span(-duration));
    }
    if duration < chrono::Duration::minutes(1) {
        let millis = duration.num_milliseconds();
        format!("{}.{:03}s", millis / 1000, millis % 1000)
    } else {
        human_duration(duration)
    }
}

fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_owned())
}

/// The stats as four tables (or one JSON object).
pub(crate) fn print_stats(stats: &TaskStats, json: bool) -> CliResult<()> {
    if json {
        return print_json(&stats_json(stats));
    }
    let now = stats.request.now;
    let mut out = std::io::stdout().lock();
    let total: u64 = stats.by_status.iter().map(|(_, rows)| rows).sum();
    writeln!(out, "rows by status ({total} in all)")?;
    let rows: Vec<Vec<String>> = stats
        .by_status
        .iter()
        .map(|(status, rows)| vec![status.to_string(), rows.to_string()])
        .collect();
    write_table(&mut out, &["status", "rows"], &rows)?;

    writeln!(out)?;
    if stats.running.is_empty() {
        writeln!(out, "running rows by worker: none")?;
    } else {
        writeln!(out, "running rows by worker (oldest first)")?;
        let rows: Vec<Vec<String>> = stats
            .running
            .iter()
            .map(|owner| {
                vec![
                    or_dash(owner.worker.map(|id| id.to_string())),
                    or_dash(owner.host.clone()),
                    or_dash(owner.pid.map(|pid| pid.to_string())),
                    or_dash(owner.state.map(|state| state.as_str().to_owned())),
                    owner.rows.to_string(),
                    short_time(owner.oldest_started_at),
                    or_dash(owner.oldest_age(now).map(span)),
                ]
            })
            .collect();
        write_table(
            &mut out,
            &[
                "worker",
                "host",
                "pid",
                "state",
                "rows",
                "oldest_started_at",
                "oldest_age",
            ],
            &rows,
        )?;
    }

    writeln!(out)?;
    let causes: Vec<Vec<String>> = stats
        .interrupted
        .iter()
        .filter(|(_, rows)| *rows > 0)
        .map(|(cause, rows)| vec![cause.to_string(), rows.to_string()])
        .collect();
    let since = short_time(Some(stats.request.interrupted_start()));
    if causes.is_empty() {
        writeln!(out, "interrupted in the last 24h (since {since} UTC): none")?;
    } else {
        let total: u64 = stats.interrupted.iter().map(|(_, rows)| rows).sum();
        writeln!(
            out,
            "interrupted in the last 24h (since {since} UTC) by cause ({total} in all)"
        )?;
        write_table(&mut out, &["cause", "rows"], &causes)?;
    }

    writeln!(out)?;
    writeln!(
        out,
        "durations of rows that ended in the last {} (since {} UTC)",
        stats.request.since.to_std().map_or_else(
            |_| "-".to_owned(),
            |window| humantime::format_duration(window).to_string()
        ),
        short_time(Some(stats.request.window_start()))
    )?;
    let rows: Vec<Vec<String>> = stats
        .durations
        .iter()
        .map(|figures| {
            vec![
                figures.status.to_string(),
                figures.rows.to_string(),
                or_dash(figures.median.map(span)),
                or_dash(figures.p95.map(span)),
            ]
        })
        .collect();
    write_table(&mut out, &["status", "rows", "median", "p95"], &rows)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicode_width::UnicodeWidthStr;

    fn render(header: &[&str], rows: &[Vec<String>]) -> String {
        let mut out = Vec::new();
        write_table(&mut out, header, rows).expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn columns_line_up_by_display_width_even_with_wide_characters() {
        let text = render(
            &["REPO", "STATUS"],
            &[
                vec!["acme/widgets".into(), "success".into()],
                vec!["日本/リポジトリ".into(), "running".into()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        // The second column starts at the same display column on every line.
        let column_of = |line: &str, word: &str| line[..line.rfind(word).expect("word")].width();
        assert_eq!(
            column_of(lines[0], "STATUS"),
            column_of(lines[1], "success")
        );
        assert_eq!(
            column_of(lines[0], "STATUS"),
            column_of(lines[2], "running")
        );
        assert!(lines.iter().all(|line| *line == line.trim_end()));
        assert!(lines[0].starts_with("REPO"), "{text}");
    }

    #[test]
    fn spans_show_milliseconds_under_a_minute_and_keep_their_sign() {
        assert_eq!(span(chrono::Duration::milliseconds(1_234)), "1.234s");
        assert_eq!(span(chrono::Duration::milliseconds(7)), "0.007s");
        assert_eq!(span(chrono::Duration::seconds(3723)), "1h02m03s");
        assert_eq!(span(chrono::Duration::milliseconds(-1_500)), "-1.500s");
    }

    #[test]
    fn a_cell_with_a_newline_stays_on_its_row() {
        let text = render(
            &["REPO", "STATUS"],
            &[vec!["acme/x\nfake  success".into(), "running".into()]],
        );
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("acme/x\\nfake"), "{text}");
    }
}
