//! The outcomes chart: final rows per hour over the last 24 hours as a
//! stacked bar chart, rendered on the server as SVG (no script, no
//! external anything). One bar per hour, oldest on the left; each final
//! status a band of its own colour, in [`TaskStatus::ALL`] order from the
//! bottom, so an incident shows as a tall `interrupted` band.

use std::fmt::Write as _;

use tasktrail::prelude::*;
use tasktrail::{hour_start, OutcomeBucket, Timestamp};

/// How many hours the chart shows.
pub const CHART_HOURS: i64 = 24;

const WIDTH: u32 = 720;
const HEIGHT: u32 = 260;
const LEFT: u32 = 44;
const RIGHT: u32 = 8;
const TOP: u32 = 12;
const BOTTOM: u32 = 28;

/// The fill of a status's band (and its badge), readable on white.
pub fn status_colour(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Running => "#1f6feb",
        TaskStatus::Success => "#1a7f37",
        TaskStatus::Failure => "#cf222e",
        TaskStatus::Cancelled => "#6e7781",
        TaskStatus::Interrupted => "#d4760a",
        TaskStatus::AbortedNoSkill => "#8250df",
    }
}

/// The first hour the chart shows for `now`: the hour 23 hours before
/// `now`'s own, so the chart's last bar is the current hour.
pub fn chart_start(now: Timestamp) -> Timestamp {
    hour_start(now) - chrono::Duration::hours(CHART_HOURS - 1)
}

/// The chart over `buckets` (from
/// [`Storage::count_outcomes_by_hour`](tasktrail::Storage::count_outcomes_by_hour)
/// since [`chart_start`]), as an `<svg>` element.
pub fn outcomes_svg(buckets: &[OutcomeBucket], now: Timestamp) -> String {
    let start = chart_start(now);
    let mut per_hour = vec![Vec::<(TaskStatus, u64)>::new(); CHART_HOURS as usize];
    for bucket in buckets {
        let index = (bucket.hour - start).num_hours();
        if let Some(bars) = usize::try_from(index)
            .ok()
            .and_then(|index| per_hour.get_mut(index))
        {
            bars.push((bucket.status, bucket.rows));
        }
    }
    let tallest = per_hour
        .iter()
        .map(|bars| bars.iter().map(|(_, rows)| rows).sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_width = f64::from(WIDTH - LEFT - RIGHT);
    let plot_height = f64::from(HEIGHT - TOP - BOTTOM);
    let slot = plot_width / CHART_HOURS as f64;
    let bar = (slot * 0.8).max(1.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         role=\"img\" aria-labelledby=\"chart-title\" class=\"chart\">\
         <title id=\"chart-title\">Outcomes per hour, last {CHART_HOURS} hours (UTC)</title>"
    );
    // The axes and the tallest bar's count.
    let base = f64::from(HEIGHT - BOTTOM);
    let _ = write!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{base}\" stroke=\"#8c959f\"/>\
         <line x1=\"{LEFT}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"#8c959f\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"11\">{tallest}</text>\
         <text x=\"{}\" y=\"{base}\" text-anchor=\"end\" font-size=\"11\">0</text>",
        WIDTH - RIGHT,
        LEFT - 4,
        TOP + 10,
        LEFT - 4,
    );
    for (index, bars) in per_hour.iter().enumerate() {
        let hour = start + chrono::Duration::hours(index as i64);
        let x = f64::from(LEFT) + slot * index as f64 + (slot - bar) / 2.0;
        let mut y = base;
        let mut ordered = bars.clone();
        ordered.sort_by_key(|(status, _)| TaskStatus::ALL.iter().position(|s| s == status));
        for (status, rows) in ordered {
            let height = plot_height * rows as f64 / tallest as f64;
            y -= height;
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{height:.1}\" \
                 fill=\"{}\" data-hour=\"{}\" data-status=\"{status}\" data-rows=\"{rows}\">\
                 <title>{} {status}: {rows}</title></rect>",
                status_colour(status),
                hour.format("%H"),
                hour.format("%Y-%m-%d %H:00Z"),
            );
        }
        if index % 3 == 0 {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{}</text>",
                x + bar / 2.0,
                HEIGHT - BOTTOM + 16,
                hour.format("%H:00"),
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn bars_stack_by_hour_and_the_tallest_fills_the_plot() {
        let now = chrono::Utc
            .with_ymd_and_hms(2026, 11, 27, 20, 30, 0)
            .single()
            .expect("time");
        let start = chart_start(now);
        assert_eq!(start, hour_start(now) - chrono::Duration::hours(23));
        let buckets = vec![
            OutcomeBucket {
                hour: start,
                status: TaskStatus::Success,
                rows: 3,
            },
            OutcomeBucket {
                hour: hour_start(now),
                status: TaskStatus::Success,
                rows: 1,
            },
            OutcomeBucket {
                hour: hour_start(now),
                status: TaskStatus::Interrupted,
                rows: 5,
            },
            // Before the chart: left out.
            OutcomeBucket {
                hour: start - chrono::Duration::hours(1),
                status: TaskStatus::Failure,
                rows: 100,
            },
        ];
        let svg = outcomes_svg(&buckets, now);
        assert_eq!(svg.matches("<rect").count(), 3, "{svg}");
        assert!(svg.contains("data-status=\"interrupted\" data-rows=\"5\""));
        assert!(!svg.contains("data-rows=\"100\""), "before the window");
        // The tallest bar (6 rows) is 6 units of the plot's height: the
        // label on the axis is its count.
        assert!(svg.contains(">6</text>"), "{svg}");
    }
}
