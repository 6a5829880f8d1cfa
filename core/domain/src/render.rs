//! Agent markdown for each surface: GitHub markdown, Slack mrkdwn, Discord markdown and safe
//! HTML, each within the surface's size limit.
//!
//! Agent output is hostile: raw HTML is escaped everywhere, links keep only http(s) and
//! mailto targets, and mentions (`@team`, `@everyone`, `<@U123>`) are defused so an agent
//! cannot page people. Every function is pure, total and bounded in time by its input size.

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

/// GitHub's limit on a comment or pull-request body, in characters.
pub const GITHUB_MAX: usize = 65_536;
/// What a Slack message may carry in `text` before Slack truncates it.
pub const SLACK_MAX: usize = 39_000;
/// Discord's limit on a message, in characters.
pub const DISCORD_MAX: usize = 2_000;

fn options() -> Options {
    Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TABLES | Options::ENABLE_TASKLISTS
}

fn safe_url(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://") || lower.starts_with("mailto:")
}

/// A zero-width space after `@` stops GitHub, Slack and Discord from treating it as a mention.
fn defuse_mentions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut prev: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '@'
            && !prev.is_some_and(|p| p.is_alphanumeric())
            && chars
                .peek()
                .is_some_and(|n| n.is_alphanumeric() || *n == '-' || *n == '_')
        {
            out.push('\u{200B}');
        }
        prev = Some(c);
    }
    out
}

/// HTML-escapes text (`<`, `>`, `&`, quotes).
pub fn escape(text: &str) -> String {
    escape_html(text)
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Cuts `text` to at most `max` characters at a line end if one is near, adding `note`.
fn truncate(text: &str, max: usize, note: &str) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let budget = max.saturating_sub(note.chars().count() + 2);
    let end = text
        .char_indices()
        .nth(budget)
        .map(|(i, _)| i)
        .unwrap_or(text.len());
    let head = &text[..end];
    let head = match head.rfind('\n') {
        Some(i) if i > end / 2 => &head[..i],
        _ => head,
    };
    // An open code fence would swallow the note.
    let fences = head
        .lines()
        .filter(|l| l.trim_start().starts_with("```"))
        .count();
    let close = if fences % 2 == 1 { "\n```" } else { "" };
    format!("{head}{close}\n\n{note}")
}

/// Rewrites the markdown source outside code: `text` for prose (and syntax), `raw_html` for
/// raw HTML. Code spans and blocks are kept byte for byte.
fn rewrite(md: &str, text: impl Fn(&str) -> String, raw_html: impl Fn(&str) -> String) -> String {
    // Ranges to keep (code) or to treat as HTML, in source order.
    let mut marks: Vec<(std::ops::Range<usize>, bool)> = Vec::new();
    let mut code_start: Option<usize> = None;
    for (ev, range) in Parser::new_ext(md, options()).into_offset_iter() {
        match ev {
            Event::Start(Tag::CodeBlock(_)) => code_start = code_start.or(Some(range.start)),
            Event::End(TagEnd::CodeBlock) => {
                if let Some(start) = code_start.take() {
                    marks.push((start..range.end, false));
                }
            }
            Event::Code(_) if code_start.is_none() => marks.push((range, false)),
            Event::Html(_) | Event::InlineHtml(_) if code_start.is_none() => {
                marks.push((range, true))
            }
            _ => {}
        }
    }
    marks.sort_by_key(|(r, _)| r.start);
    let mut out = String::with_capacity(md.len() + 16);
    let mut last = 0;
    for (range, is_html) in marks {
        if range.start < last {
            continue;
        }
        out.push_str(&text(&md[last..range.start]));
        if is_html {
            out.push_str(&raw_html(&md[range.clone()]));
        } else {
            out.push_str(&md[range.clone()]);
        }
        last = range.end;
    }
    out.push_str(&text(&md[last..]));
    out
}

/// GitHub markdown: the agent's own markdown (GitHub renders and sanitises it), with raw
/// HTML escaped, mentions defused, and at most `max` characters (`more` is linked when cut).
pub fn github(md: &str, max: usize, more: Option<&str>) -> String {
    let out = rewrite(md, defuse_mentions, escape_html);
    let note = match more {
        Some(url) => format!("*(cut here; the full log is at {url})*"),
        None => "*(cut here)*".to_string(),
    };
    truncate(&out, max, &note)
}

/// Safe HTML: pulldown-cmark's rendering with raw HTML turned into text, links and images
/// only to http(s) or mailto (images become links, so nothing loads by itself).
pub fn html(md: &str) -> String {
    // Links (and images, which become links) to anything but http(s) or mailto lose their
    // tag and keep their text; `skip` counts the ones open.
    let mut skip = 0usize;
    let events = Parser::new_ext(md, options()).filter_map(|ev| match ev {
        Event::Html(h) | Event::InlineHtml(h) => Some(Event::Text(h)),
        Event::Start(
            Tag::Link {
                link_type,
                dest_url,
                title,
                id,
            }
            | Tag::Image {
                link_type,
                dest_url,
                title,
                id,
            },
        ) => {
            if safe_url(&dest_url) {
                Some(Event::Start(Tag::Link {
                    link_type,
                    dest_url,
                    title,
                    id,
                }))
            } else {
                skip += 1;
                None
            }
        }
        Event::End(TagEnd::Link | TagEnd::Image) if skip > 0 => {
            skip -= 1;
            None
        }
        Event::End(TagEnd::Image) => Some(Event::End(TagEnd::Link)),
        other => Some(other),
    });
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

/// Slack's mrkdwn escapes.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Slack mrkdwn, split into messages of at most `max` characters each.
pub fn slack(md: &str, max: usize) -> Vec<String> {
    let mut out = String::new();
    let mut list: Vec<Option<u64>> = Vec::new();
    let mut link: Vec<String> = Vec::new();
    let mut quote = 0usize;
    let mut in_code_block = false;
    let newline = |out: &mut String, quote: usize| {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        for _ in 0..quote {
            out.push_str("> ");
        }
    };
    for ev in Parser::new_ext(md, options()) {
        match ev {
            Event::Start(Tag::Paragraph) => newline(&mut out, quote),
            Event::End(TagEnd::Paragraph) => out.push('\n'),
            Event::Start(Tag::Heading { .. }) => {
                newline(&mut out, quote);
                out.push('*');
            }
            Event::End(TagEnd::Heading(level)) => {
                out.push('*');
                if level <= HeadingLevel::H2 {
                    out.push('\n');
                }
                out.push('\n');
            }
            Event::Start(Tag::BlockQuote(_)) => quote += 1,
            Event::End(TagEnd::BlockQuote(_)) => quote = quote.saturating_sub(1),
            Event::Start(Tag::CodeBlock(kind)) => {
                newline(&mut out, quote);
                out.push_str("```\n");
                in_code_block = true;
                let _ = kind;
            }
            Event::End(TagEnd::CodeBlock) => {
                if !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str("```\n");
                in_code_block = false;
            }
            Event::Start(Tag::List(start)) => list.push(start),
            Event::End(TagEnd::List(_)) => {
                list.pop();
                if list.is_empty() {
                    out.push('\n');
                }
            }
            Event::Start(Tag::Item) => {
                newline(&mut out, quote);
                for _ in 1..list.len() {
                    out.push_str("    ");
                }
                match list.last_mut() {
                    Some(Some(n)) => {
                        out.push_str(&format!("{n}. "));
                        *n += 1;
                    }
                    _ => out.push_str("• "),
                }
            }
            Event::Start(Tag::Emphasis) | Event::End(TagEnd::Emphasis) => out.push('_'),
            Event::Start(Tag::Strong) | Event::End(TagEnd::Strong) => out.push('*'),
            Event::Start(Tag::Strikethrough) | Event::End(TagEnd::Strikethrough) => out.push('~'),
            Event::Start(Tag::Link { dest_url, .. })
            | Event::Start(Tag::Image { dest_url, .. }) => {
                link.push(dest_url.to_string());
                out.push('<');
                if safe_url(&dest_url) {
                    out.push_str(&slack_escape(&dest_url).replace('|', "%7C"));
                    out.push('|');
                }
            }
            Event::End(TagEnd::Link) | Event::End(TagEnd::Image) => {
                link.pop();
                out.push('>');
            }
            Event::Code(c) => {
                out.push('`');
                out.push_str(&slack_escape(&c.replace('`', "'")));
                out.push('`');
            }
            Event::Text(t) => {
                if in_code_block {
                    let text = slack_escape(&t);
                    out.push_str(&text.replace("```", "'''"));
                } else {
                    let mut text = slack_escape(&defuse_mentions(&t));
                    if !link.is_empty() {
                        text = text.replace(['|', '>'], " ");
                    }
                    out.push_str(&text);
                }
            }
            Event::Html(h) | Event::InlineHtml(h) => out.push_str(&slack_escape(&h)),
            Event::SoftBreak => out.push(' '),
            Event::HardBreak => newline(&mut out, quote),
            Event::Rule => {
                newline(&mut out, quote);
                out.push_str("———\n");
            }
            Event::TaskListMarker(done) => out.push_str(if done { "☑ " } else { "☐ " }),
            _ => {}
        }
    }
    split(out.trim_end(), max)
}

/// Discord markdown (close to CommonMark): mentions defused (`@everyone`, `@here`, `<@…>`,
/// role and channel pings), split into messages of at most `max` characters with code fences
/// kept balanced. Discord shows raw HTML as text already.
pub fn discord(md: &str, max: usize) -> Vec<String> {
    let defuse = |t: &str| {
        defuse_mentions(t)
            .replace("<@", "<\u{200B}@")
            .replace("<#", "<\u{200B}#")
    };
    split(&rewrite(md, defuse, defuse), max)
}

/// Splits `text` into pieces of at most `max` characters, at line ends where possible,
/// closing and reopening a code fence that a split falls inside.
pub fn split(text: &str, max: usize) -> Vec<String> {
    let max = max.max(16);
    let mut pieces = Vec::new();
    let mut cur = String::new();
    let mut cur_len = 0usize;
    let mut fence_open = false;
    let flush = |pieces: &mut Vec<String>, cur: &mut String, cur_len: &mut usize, fence: bool| {
        if fence {
            cur.push_str("\n```");
        }
        let done = std::mem::take(cur);
        if !done.trim().is_empty() {
            pieces.push(done.trim_end_matches('\n').to_string());
        }
        *cur_len = 0;
        if fence {
            cur.push_str("```\n");
            *cur_len = 4;
        }
    };
    for line in text.split_inclusive('\n') {
        let mut line = line;
        loop {
            let n = line.chars().count();
            // Room for a closing fence if one may be needed.
            let room = max - 4 - cur_len.min(max - 4);
            if n <= room {
                cur.push_str(line);
                cur_len += n;
                if line.trim_start().starts_with("```") {
                    fence_open = !fence_open;
                }
                break;
            }
            if cur_len > 4 {
                flush(&mut pieces, &mut cur, &mut cur_len, fence_open);
                continue;
            }
            // One line longer than a message: cut it.
            let cut = line
                .char_indices()
                .nth(room.max(1))
                .map(|(i, _)| i)
                .unwrap_or(line.len());
            cur.push_str(&line[..cut]);
            cur_len += line[..cut].chars().count();
            flush(&mut pieces, &mut cur, &mut cur_len, fence_open);
            line = &line[cut..];
            if line.is_empty() {
                break;
            }
        }
    }
    flush(&mut pieces, &mut cur, &mut cur_len, false);
    if pieces.is_empty() {
        pieces.push(String::new());
    }
    pieces
}

/// The first `max` characters of `text` on one line, for titles and previews.
pub fn one_line(text: &str, max: usize) -> String {
    let line: String = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if line.chars().count() <= max {
        line
    } else {
        let mut s: String = line.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// A byte count as people read it: `812 B`, `3.4 KB`, `190.7 MB`, `1.2 GB` (powers of 1024).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOSTILE: &str = "Done! <script>alert(1)</script> cc @octocat @everyone\n\n\
        [click](javascript:alert(1)) ![x](https://evil.example/p.png)\n\n\
        ```sh\n@not-a-mention <b>kept</b>\n```\n";

    #[test]
    fn html_escapes_raw_html_and_unsafe_links() {
        let h = html(HOSTILE);
        assert!(!h.contains("<script>"), "{h}");
        assert!(h.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{h}");
        assert!(!h.contains("javascript:"), "{h}");
        assert!(!h.contains("<img"), "images become links: {h}");
        assert!(
            h.contains(r#"<a href="https://evil.example/p.png">x</a>"#),
            "{h}"
        );
        assert!(
            h.contains("&lt;b&gt;kept&lt;/b&gt;"),
            "code stays text: {h}"
        );
    }

    #[test]
    fn github_keeps_markdown_but_escapes_html_and_mentions() {
        let g = github(HOSTILE, GITHUB_MAX, None);
        assert!(g.contains("&lt;script&gt;"), "{g}");
        assert!(
            g.contains("@\u{200B}octocat") && g.contains("@\u{200B}everyone"),
            "{g}"
        );
        assert!(g.contains("@not-a-mention"), "code is left alone: {g}");
        assert!(g.contains("```sh"));
        let long = "line\n".repeat(20_000);
        let cut = github(&long, 1000, Some("https://airlock.example/s/1"));
        assert!(cut.chars().count() <= 1000);
        assert!(cut.ends_with("*(cut here; the full log is at https://airlock.example/s/1)*"));
    }

    #[test]
    fn slack_gets_mrkdwn() {
        let s = slack(
            "# Result\n**Fixed** the _flaky_ test in `login.rs`.\n\n- one\n- two\n\n[PR](https://github.com/a/b/pull/1) & <b>",
            SLACK_MAX,
        );
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert!(s.starts_with("*Result*"), "{s}");
        assert!(s.contains("*Fixed* the _flaky_ test in `login.rs`."), "{s}");
        assert!(s.contains("• one\n• two"), "{s}");
        assert!(s.contains("<https://github.com/a/b/pull/1|PR>"), "{s}");
        assert!(s.contains("&amp; &lt;b&gt;"), "{s}");
        let evil = slack("[x](javascript:alert(1)) <!channel> @here", SLACK_MAX);
        assert!(!evil[0].contains("javascript"), "{}", evil[0]);
        assert!(!evil[0].contains("<!channel>"), "{}", evil[0]);
        assert!(evil[0].contains("@\u{200B}here"), "{}", evil[0]);
    }

    #[test]
    fn discord_splits_at_its_limit_and_keeps_fences_balanced() {
        let md = format!(
            "intro @everyone <@123>\n```\n{}```\n",
            "x = 1\n".repeat(600)
        );
        let parts = discord(&md, DISCORD_MAX);
        assert!(parts.len() > 1);
        for p in &parts {
            assert!(p.chars().count() <= DISCORD_MAX, "{}", p.len());
            assert_eq!(p.matches("```").count() % 2, 0, "{p}");
        }
        assert!(parts[0].contains("@\u{200B}everyone"), "{}", parts[0]);
        assert!(
            !parts[0].contains("<@123>") && parts[0].contains("<\u{200B}@"),
            "{}",
            parts[0]
        );
    }

    #[test]
    fn titles_are_one_short_line() {
        assert_eq!(
            one_line("\n  Fix the login test\nmore", 72),
            "Fix the login test"
        );
        assert_eq!(one_line("abcdef", 4), "abc…");
    }

    proptest! {
        #[test]
        fn renderers_never_panic_and_respect_limits(md in "\\PC{0,400}", max in 16usize..300) {
            let h = html(&md);
            prop_assert!(!h.contains("<script"));
            prop_assert!(github(&md, max.max(60), None).chars().count() <= max.max(60));
            for p in slack(&md, max) { prop_assert!(p.chars().count() <= max.max(16)); }
            for p in discord(&md, max) { prop_assert!(p.chars().count() <= max.max(16)); }
        }
    }

    #[test]
    fn byte_counts_read_as_people_say_them() {
        assert_eq!(human_bytes(812), "812 B");
        assert_eq!(human_bytes(3_500), "3.4 KB");
        assert_eq!(human_bytes(193_650_688), "184.7 MB");
        assert_eq!(human_bytes(5 << 30), "5.0 GB");
    }
}
