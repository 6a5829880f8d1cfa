//! What a person asked for, parsed from a GitHub comment, a Slack command or a Discord
//! message: pure functions with table and property tests, no I/O.
//!
//! In comments, only a mention of the bot in the prose counts: mentions inside code (spans or
//! blocks) or quotes (someone quoting an earlier request) never start anything.

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

use airlock_domain::{is_name, is_repo};

/// A request to Airlock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Work on something: the prompt, and options given with it.
    Run { prompt: String, options: RunOptions },
    /// Stop the conversation's running session.
    Stop,
    /// Where the conversation's session is.
    Status,
    /// Explain the commands.
    Help,
    /// Link this account to a human: without a code, get one; with one, prove this account.
    Link { code: Option<String> },
    /// Bind a channel to a default repository and profile (Slack, admins).
    Config { options: RunOptions },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    pub profile: Option<String>,
    pub repo: Option<String>,
}

/// One help entry: the command's form, what it does, and an instance of that form (which
/// [`parse`] must read back as this command).
pub struct Usage {
    pub form: &'static str,
    pub what: &'static str,
    pub example: &'static str,
}

impl Command {
    /// This command's help entry. The `match` has no wildcard: a new command does not compile
    /// until it has one.
    pub fn usage(&self) -> Usage {
        let u = |form, what, example| Usage {
            form,
            what,
            example,
        };
        match self {
            Command::Run { .. } => u(
                "<what to do> [profile=NAME] [repo=OWNER/NAME]",
                "start a session (or continue this conversation's session) with that request",
                "fix the flaky login test repo=acme/web",
            ),
            Command::Status => u(
                "status",
                "show where this conversation's session is",
                "status",
            ),
            Command::Stop => u("stop", "stop this conversation's running session", "stop"),
            Command::Link { .. } => u(
                "link [CODE]",
                "link this account to your Airlock identity (without a code: get one)",
                "link ABCDE-FGHIJ",
            ),
            Command::Config { .. } => u(
                "config repo=OWNER/NAME [profile=NAME]",
                "set this channel's default repository and profile (admins, Slack)",
                "config repo=acme/web",
            ),
            Command::Help => u("help", "show this help", "help"),
        }
    }

    /// The command after this one in the help (`None` after the last). The `match` has no
    /// wildcard: a new command does not compile until it has its place in the help.
    fn next_in_help(&self) -> Option<Command> {
        let none = RunOptions::default;
        match self {
            Command::Run { .. } => Some(Command::Status),
            Command::Status => Some(Command::Stop),
            Command::Stop => Some(Command::Link { code: None }),
            Command::Link { .. } => Some(Command::Config { options: none() }),
            Command::Config { .. } => Some(Command::Help),
            Command::Help => None,
        }
    }

    /// One command of each kind, in help order.
    fn each() -> Vec<Command> {
        let mut out = vec![Command::Run {
            prompt: String::new(),
            options: RunOptions::default(),
        }];
        // Bounded, so a chain that loops shows up as a duplicate in the help test.
        while let Some(next) = out.last().and_then(Command::next_in_help) {
            if out.len() > 32 {
                break;
            }
            out.push(next);
        }
        out
    }

    #[cfg(test)]
    fn same_kind(&self, other: &Command) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// The help text for a surface whose commands start with `prefix` (`@airlock`, `/airlock`).
pub fn help(prefix: &str) -> String {
    let mut out = String::from("Airlock runs a coding agent in a sandbox on your request:\n\n");
    for c in Command::each() {
        let u = c.usage();
        out.push_str(&format!("- `{prefix} {}`: {}\n", u.form, u.what));
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("say what the agent should do after the command, e.g. `fix the flaky login test`")]
    Empty,
    #[error("`profile={0}` is not a profile name (lower-case letters, digits and dashes)")]
    BadProfile(String),
    #[error("`repo={0}` is not a repository; write repo=OWNER/NAME")]
    BadRepo(String),
    #[error("`link` takes one code, like `link ABCDE-FGHIJ`")]
    BadLink,
}

/// Where the first mention of `@bot` in comment `body` ends, counting only prose: not code,
/// not quotes. Case-insensitive; `@airlock-bot` is not `@airlock`.
pub fn mention_end(body: &str, bot: &str) -> Option<usize> {
    let bot = bot.trim_end_matches("[bot]");
    if bot.is_empty() {
        return None;
    }
    let needle = format!("@{}", bot.to_ascii_lowercase());
    let mut quote = 0usize;
    let mut code = 0usize;
    for (ev, range) in Parser::new_ext(body, Options::empty()).into_offset_iter() {
        match ev {
            Event::Start(Tag::BlockQuote(_)) => quote += 1,
            Event::End(TagEnd::BlockQuote(_)) => quote = quote.saturating_sub(1),
            Event::Start(Tag::CodeBlock(_)) => code += 1,
            Event::End(TagEnd::CodeBlock) => code = code.saturating_sub(1),
            Event::Text(_) if quote == 0 && code == 0 => {
                let text = &body[range.clone()];
                let lower = text.to_ascii_lowercase();
                let mut from = 0;
                while let Some(i) = lower[from..].find(&needle) {
                    let at = from + i;
                    let end = at + needle.len();
                    let before = lower[..at].chars().next_back();
                    let mut rest = lower[end..].chars();
                    let after = rest.next();
                    // The mention must be the whole word: not `@airlock/reviewers` (a team),
                    // `@airlock-bot`, `bob@airlock.dev` or `@airlock.example` (an address).
                    let word = |c: char| c.is_alphanumeric() || "-_@/".contains(c);
                    let dotted =
                        after == Some('.') && rest.next().is_some_and(char::is_alphanumeric);
                    if !before.is_some_and(word) && !after.is_some_and(word) && !dotted {
                        return Some(range.start + end);
                    }
                    from = end;
                }
            }
            _ => {}
        }
    }
    None
}

/// The request in a comment that mentions `@bot`, if it does (outside code and quotes).
pub fn from_comment(body: &str, bot: &str) -> Option<Result<Command, ParseError>> {
    let end = mention_end(body, bot)?;
    Some(parse(body[end..].trim_start_matches([',', ':'])))
}

/// Parses the text of a request (what follows the mention or the slash command).
pub fn parse(text: &str) -> Result<Command, ParseError> {
    let text = text.trim();
    let mut words = text.split_whitespace();
    let first = words.next().map(str::to_ascii_lowercase);
    match first.as_deref() {
        None => return Ok(Command::Help),
        Some("help") if words.next().is_none() => return Ok(Command::Help),
        Some("stop" | "cancel") if words.next().is_none() => return Ok(Command::Stop),
        Some("status") if words.next().is_none() => return Ok(Command::Status),
        Some("link") => {
            let code = words.next().map(str::to_string);
            if words.next().is_some() {
                return Err(ParseError::BadLink);
            }
            return Ok(Command::Link { code });
        }
        Some("config") => {
            let (options, rest) = options(text["config".len()..].trim())?;
            if !rest.trim().is_empty() || options == RunOptions::default() {
                return Err(ParseError::BadRepo(rest.trim().chars().take(60).collect()));
            }
            return Ok(Command::Config { options });
        }
        _ => {}
    }
    let (options, prompt) = options(text)?;
    if prompt.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(Command::Run {
        prompt: prompt.trim().to_string(),
        options,
    })
}

/// Takes `profile=…` and `repo=…` out of the first line; returns them and the rest.
fn options(text: &str) -> Result<(RunOptions, String), ParseError> {
    let (first, rest) = match text.split_once('\n') {
        Some((f, r)) => (f, Some(r)),
        None => (text, None),
    };
    let mut opts = RunOptions::default();
    let mut kept = Vec::new();
    for word in first.split(' ') {
        match word.split_once('=') {
            Some(("profile", v)) => {
                if !is_name(v) {
                    return Err(ParseError::BadProfile(v.chars().take(60).collect()));
                }
                opts.profile = Some(v.to_string());
            }
            Some(("repo", v)) => {
                if !is_repo(v) {
                    return Err(ParseError::BadRepo(v.chars().take(60).collect()));
                }
                opts.repo = Some(v.to_string());
            }
            _ => kept.push(word),
        }
    }
    let mut prompt = kept.join(" ").trim().to_string();
    if let Some(r) = rest {
        prompt.push('\n');
        prompt.push_str(r);
    }
    Ok((opts, prompt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(prompt: &str) -> Command {
        Command::Run {
            prompt: prompt.into(),
            options: RunOptions::default(),
        }
    }

    #[test]
    fn comments_are_parsed_into_commands() {
        let with = |profile: Option<&str>, repo: Option<&str>, prompt: &str| Command::Run {
            prompt: prompt.into(),
            options: RunOptions {
                profile: profile.map(str::to_string),
                repo: repo.map(str::to_string),
            },
        };
        let cases: Vec<(&str, Option<Result<Command, ParseError>>)> = vec![
            (
                "@airlock fix the flaky login test",
                Some(Ok(run("fix the flaky login test"))),
            ),
            ("@Airlock: fix it", Some(Ok(run("fix it")))),
            (
                "Hey @airlock, please look\nat the logs",
                Some(Ok(run("please look\nat the logs"))),
            ),
            (
                "@airlock profile=rust-ci fix the build",
                Some(Ok(with(Some("rust-ci"), None, "fix the build"))),
            ),
            (
                "@airlock fix it repo=acme/web",
                Some(Ok(with(None, Some("acme/web"), "fix it"))),
            ),
            ("@airlock help", Some(Ok(Command::Help))),
            ("@airlock", Some(Ok(Command::Help))),
            ("@airlock stop", Some(Ok(Command::Stop))),
            ("@airlock STATUS", Some(Ok(Command::Status))),
            (
                "@airlock status of the build is red, fix it",
                Some(Ok(run("status of the build is red, fix it"))),
            ),
            (
                "@airlock link ABCDE-FGHIJ",
                Some(Ok(Command::Link {
                    code: Some("ABCDE-FGHIJ".into()),
                })),
            ),
            ("@airlock link", Some(Ok(Command::Link { code: None }))),
            (
                "@airlock profile=Bad! go",
                Some(Err(ParseError::BadProfile("Bad!".into()))),
            ),
            (
                "@airlock repo=nope go",
                Some(Err(ParseError::BadRepo("nope".into()))),
            ),
            ("@airlock profile=web", Some(Err(ParseError::Empty))),
            // Not for us.
            ("thanks @airlock-bot", None),
            ("mail me at me@airlock.dev", None),
            // A team (`@org/team`) whose name starts like the bot is not the bot.
            ("@airlock/reviewers please look", None),
            ("cc @airlock/core-team", None),
            ("see @airlock.example.com", None),
            ("@airlockbot fix it", None),
            ("@airlock_ci fix it", None),
            ("x@airlock fix it", None),
            // Punctuation after the mention ends it.
            ("@airlock, fix it", Some(Ok(run("fix it")))),
            ("@airlock: fix it", Some(Ok(run("fix it")))),
            ("Hey @AIRLOCK fix it.", Some(Ok(run("fix it.")))),
            ("no mention here", None),
            ("> @airlock fix the test\n\nI agree", None),
            ("```\n@airlock fix the test\n```", None),
            ("Run `@airlock fix it` to ask", None),
            ("    @airlock indented code", None),
            // A quote, then a real request.
            (
                "> @airlock old\n\n@airlock new one",
                Some(Ok(run("new one"))),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(from_comment(body, "airlock"), want, "{body:?}");
        }
    }

    #[test]
    fn the_app_bot_login_mentions_by_its_slug() {
        assert_eq!(
            from_comment("@airlock go", "airlock[bot]"),
            Some(Ok(run("go")))
        );
    }

    #[test]
    fn help_has_every_kind_of_command_once_and_its_example_parses_as_that_command() {
        let each = Command::each();
        for (i, c) in each.iter().enumerate() {
            assert!(
                !each[..i].iter().any(|d| d.same_kind(c)),
                "{c:?} is in the help twice"
            );
        }
        let h = help("@airlock");
        for c in &each {
            let u = c.usage();
            assert!(
                h.contains(&format!("- `@airlock {}`: {}", u.form, u.what)),
                "{h}"
            );
            let parsed = parse(u.example).unwrap_or_else(|e| panic!("{}: {e}", u.example));
            assert!(parsed.same_kind(c), "`{}` parses as {parsed:?}", u.example);
            // The comment form reads the same.
            let comment = format!("@airlock {}", u.example);
            let from = from_comment(&comment, "airlock").unwrap().unwrap();
            assert!(from.same_kind(c), "{comment} parses as {from:?}");
        }
    }

    proptest! {
        #[test]
        fn any_comment_parses_without_panicking(body in "\\PC{0,400}") {
            let _ = from_comment(&body, "airlock");
            let _ = parse(&body);
        }

        #[test]
        fn quoted_and_fenced_mentions_never_trigger(text in "[a-z ]{0,40}") {
            let quoted = format!("> @airlock {text}\n");
            let fenced = format!("```\n@airlock {text}\n```\n");
            let tilde = format!("~~~\n@airlock {text}\n~~~\n");
            prop_assert_eq!(from_comment(&quoted, "airlock"), None);
            prop_assert_eq!(from_comment(&fenced, "airlock"), None);
            prop_assert_eq!(from_comment(&tilde, "airlock"), None);
        }
    }
}
