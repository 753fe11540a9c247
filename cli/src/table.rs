//! Plain aligned tables for drctl's human output.

/// Renders rows under a header with columns padded to their widest cell.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{:<w$}  ", c, w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// A time (Unix ms) as people read it in a table: UTC to the second and its
/// distance from `now` ("3 min ago", "in 12 s"); "-" for none (0).
pub fn when(at_ms: u64, now_ms: u64) -> String {
    if at_ms == 0 {
        return "-".into();
    }
    let Some(t) = utc(at_ms) else { return at_ms.to_string() };
    let (ahead, gap) = if at_ms >= now_ms { (true, at_ms - now_ms) } else { (false, now_ms - at_ms) };
    let secs = gap / 1000;
    let distance = match secs {
        0 => return format!("{t} (now)"),
        1..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        7200..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    };
    let distance = if ahead { format!("in {distance}") } else { format!("{distance} ago") };
    format!("{t} ({distance})")
}

/// A time (Unix ms) in UTC to the second; none for one no calendar holds.
pub fn utc(at_ms: u64) -> Option<String> {
    let t = i64::try_from(at_ms).ok().and_then(chrono::DateTime::from_timestamp_millis)?;
    Some(t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_time_reads_as_utc_and_its_distance_from_now() {
        let now = 1_796_600_000_000; // 2026-12-06 23:33:20 UTC
        assert_eq!(super::when(now - 180_000, now), "2026-12-06 23:30:20 UTC (3 min ago)");
        assert_eq!(super::when(now + 12_000, now), "2026-12-06 23:33:32 UTC (in 12 s)");
        assert_eq!(super::when(now - 3 * 86_400_000, now), "2026-12-03 23:33:20 UTC (3 days ago)");
        assert_eq!(super::when(now, now), "2026-12-06 23:33:20 UTC (now)");
        assert_eq!(super::when(0, now), "-");
        assert_eq!(super::when(u64::MAX, now), u64::MAX.to_string(), "a time no calendar holds is shown as it is");
    }

    #[test]
    fn aligns_columns() {
        let t = super::render(&["ID", "ROLE"], &[vec!["1".into(), "leader".into()], vec!["10".into(), "follower".into()]]);
        assert_eq!(t, "ID  ROLE\n1   leader\n10  follower\n");
    }
}
