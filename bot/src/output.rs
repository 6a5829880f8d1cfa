//! Text and JSON output for the CLI. Table cells are made safe for terminals: names and agent
//! output can hold escape sequences, which are replaced, never printed raw.

use serde::Serialize;

/// Replaces control characters so a stored value cannot drive the terminal.
pub fn safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Like [`safe`] but keeps newlines and tabs: for agent output printed as text.
pub fn safe_multiline(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// Like [`safe`], and cut to `max` characters.
pub fn cell(s: &str, max: usize) -> String {
    let s = safe(s);
    if s.chars().count() > max {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    } else {
        s
    }
}

/// Prints rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        println!("(none)");
        return;
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn escape_sequences_never_reach_the_terminal() {
        assert_eq!(super::safe("evil\u{1b}[2Jname\n"), "evil?[2Jname?");
        assert_eq!(super::cell("abcdef", 4), "abc…");
    }
}
