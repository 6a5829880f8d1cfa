//! Git pushes through the gateway: the command list at the start of a `git-receive-pack`
//! request (pkt-lines), read before any byte goes upstream, and the answer git shows when a
//! push is refused (`remote: Airlock: ...` and `! [remote rejected]`).
//!
//! A session may create or update its own branch and nothing else: no other branch, no tags,
//! no other refs, no deletes. Pure: no I/O.

/// The longest command list read before deciding (a push of thousands of refs is far less).
pub const MAX_COMMANDS_BYTES: usize = 1024 * 1024;

/// One ref update a push asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub old: String,
    pub new: String,
    pub refname: String,
}

impl Command {
    pub fn is_delete(&self) -> bool {
        self.new.bytes().all(|b| b == b'0')
    }
}

/// The start of a receive-pack request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    pub commands: Vec<Command>,
    pub capabilities: Vec<String>,
    /// Bytes of the body the command list took (the pack, if any, follows).
    pub consumed: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// More bytes are needed.
    Incomplete,
    Malformed(String),
}

fn bad(why: impl Into<String>) -> ParseError {
    ParseError::Malformed(why.into())
}

/// One pkt-line at the start of `buf`: its payload (`None` for a flush-pkt) and its length.
pub fn pkt_line(buf: &[u8]) -> Result<(Option<&[u8]>, usize), ParseError> {
    if buf.len() < 4 {
        return Err(ParseError::Incomplete);
    }
    let len = std::str::from_utf8(&buf[..4])
        .ok()
        .and_then(|s| usize::from_str_radix(s, 16).ok())
        .ok_or_else(|| bad("a pkt-line length is not hex"))?;
    match len {
        0 => Ok((None, 4)),
        1..=3 => Err(bad("a delimiter pkt-line where a command was expected")),
        _ if len > 65520 => Err(bad("a pkt-line is longer than git allows")),
        _ if buf.len() < len => Err(ParseError::Incomplete),
        _ => Ok((Some(&buf[4..len]), len)),
    }
}

fn is_oid(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads the command list at the start of a receive-pack body.
pub fn parse_push(buf: &[u8]) -> Result<PushRequest, ParseError> {
    let mut at = 0;
    let mut commands = Vec::new();
    let mut capabilities = Vec::new();
    loop {
        if at > MAX_COMMANDS_BYTES {
            return Err(bad("the command list is longer than 1 MiB"));
        }
        let (line, len) = pkt_line(&buf[at..])?;
        at += len;
        let Some(line) = line else { break };
        let line = std::str::from_utf8(line).map_err(|_| bad("a command is not UTF-8"))?;
        let line = line.strip_suffix('\n').unwrap_or(line);
        if line.starts_with("shallow ") && commands.is_empty() {
            continue;
        }
        if line.starts_with("push-cert") {
            return Err(bad(
                "signed pushes (push certificates) are not supported through Airlock",
            ));
        }
        let (command, caps) = match line.split_once('\0') {
            Some((c, caps)) if commands.is_empty() => (c, Some(caps)),
            Some(_) => return Err(bad("capabilities after the first command")),
            None => (line, None),
        };
        if let Some(caps) = caps {
            capabilities = caps
                .split(' ')
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect();
        }
        let mut parts = command.splitn(3, ' ');
        let (Some(old), Some(new), Some(refname)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(format!(
                "`{}` is not a ref update",
                command.escape_debug()
            )));
        };
        if !is_oid(old) || !is_oid(new) {
            return Err(bad("a ref update without valid object ids"));
        }
        commands.push(Command {
            old: old.to_string(),
            new: new.to_string(),
            refname: refname.to_string(),
        });
    }
    // No commands at all is git's probe before a large push (`0000` alone): it updates
    // nothing, and receive-pack reads no pack after it.
    Ok(PushRequest {
        commands,
        capabilities,
        consumed: at,
    })
}

/// Why one ref update is refused, or `None` to allow it. `branch` is the session's own.
pub fn refusal(command: &Command, branch: Option<&str>) -> Option<String> {
    let Some(branch) = branch else {
        return Some("this sandbox has no session branch to push to".into());
    };
    let own = format!("refs/heads/{branch}");
    if command.refname != own {
        let what = if command.refname.starts_with("refs/tags/") {
            "tags are not pushed from a session"
        } else if command.refname.starts_with("refs/heads/") {
            "only the session's own branch may be pushed"
        } else {
            "only the session's own branch may be pushed, no other refs"
        };
        return Some(format!(
            "{what}: {} was refused; push to {own} instead",
            command.refname
        ));
    }
    if command.is_delete() {
        return Some(format!("deleting {own} is not allowed"));
    }
    None
}

fn pkt(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{:04x}", payload.len() + 4).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// The body of a receive-pack answer that refuses the push: every ref `ng` with its reason,
/// and the reasons as `remote:` lines where the client reads a side band.
pub fn refused_answer(push: &PushRequest, reasons: &[(String, String)]) -> Vec<u8> {
    let mut report = pkt(b"unpack ok\n");
    for c in &push.commands {
        let why = reasons
            .iter()
            .find(|(r, _)| *r == c.refname)
            .map(|(_, w)| "refused by Airlock: ".to_string() + w)
            .unwrap_or_else(|| "refused by Airlock with the rest of the push".into());
        let why: String = why.chars().filter(|c| !c.is_control()).take(300).collect();
        report.extend(pkt(format!("ng {} {why}\n", c.refname).as_bytes()));
    }
    report.extend_from_slice(b"0000");
    let sideband = push
        .capabilities
        .iter()
        .any(|c| c == "side-band-64k" || c == "side-band");
    if !sideband {
        return report;
    }
    let mut out = Vec::new();
    for (_, why) in reasons {
        let mut msg = vec![2u8];
        msg.extend_from_slice(format!("Airlock: {why}\n").as_bytes());
        out.extend(pkt(&msg));
    }
    for piece in report.chunks(900) {
        let mut data = vec![1u8];
        data.extend_from_slice(piece);
        out.extend(pkt(&data));
    }
    out.extend_from_slice(b"0000");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const Z: &str = "0000000000000000000000000000000000000000";

    fn body(lines: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            out.extend(pkt(l.as_bytes()));
        }
        out.extend_from_slice(b"0000PACK...");
        out
    }

    #[test]
    fn a_push_command_list_is_read_up_to_the_pack() {
        let b = body(&[
            format!("{A} {B} refs/heads/airlock/x\0report-status side-band-64k agent=git/2.47\n"),
            format!("{Z} {B} refs/tags/v1\n"),
        ]);
        let p = parse_push(&b).unwrap();
        assert_eq!(p.commands.len(), 2);
        assert_eq!(p.commands[1].refname, "refs/tags/v1");
        assert_eq!(
            p.capabilities,
            ["report-status", "side-band-64k", "agent=git/2.47"]
        );
        assert_eq!(&b[p.consumed..], b"PACK...");
        assert_eq!(parse_push(&b[..10]), Err(ParseError::Incomplete));
        assert!(matches!(parse_push(b"zzzz"), Err(ParseError::Malformed(_))));
        // git's probe before a large push: nothing to update, nothing to refuse.
        assert_eq!(parse_push(b"0000").unwrap().commands, vec![]);
        let cert = body(&["push-cert\0report-status\n".to_string()]);
        assert!(
            matches!(parse_push(&cert), Err(ParseError::Malformed(m)) if m.contains("signed pushes"))
        );
    }

    #[test]
    fn only_the_sessions_own_branch_may_be_created_or_updated() {
        let c = |old: &str, new: &str, r: &str| Command {
            old: old.into(),
            new: new.into(),
            refname: r.into(),
        };
        let own = Some("airlock/ses-1-fix");
        assert_eq!(refusal(&c(A, B, "refs/heads/airlock/ses-1-fix"), own), None);
        assert_eq!(refusal(&c(Z, B, "refs/heads/airlock/ses-1-fix"), own), None);
        for (cmd, want) in [
            (c(A, B, "refs/heads/main"), "only the session's own branch"),
            (c(Z, B, "refs/tags/x"), "tags are not pushed"),
            (c(A, Z, "refs/heads/airlock/ses-1-fix"), "deleting"),
            (c(A, B, "refs/notes/commits"), "no other refs"),
            (
                c(A, B, "refs/heads/airlock/ses-1-fix2"),
                "only the session's own branch",
            ),
        ] {
            let why = refusal(&cmd, own).expect("refused");
            assert!(why.contains(want), "{why}");
        }
        assert!(refusal(&c(A, B, "refs/heads/x"), None).is_some());
    }

    #[test]
    fn a_refusal_reaches_git_as_remote_lines_and_rejected_refs() {
        let p = PushRequest {
            commands: vec![Command {
                old: A.into(),
                new: B.into(),
                refname: "refs/heads/main".into(),
            }],
            capabilities: vec!["report-status".into(), "side-band-64k".into()],
            consumed: 0,
        };
        let out = refused_answer(&p, &[("refs/heads/main".into(), "no main".into())]);
        let (first, n) = pkt_line(&out).unwrap();
        assert_eq!(first.unwrap(), b"\x02Airlock: no main\n");
        let (second, _) = pkt_line(&out[n..]).unwrap();
        let inner = &second.unwrap()[1..];
        let (unpack, m) = pkt_line(inner).unwrap();
        assert_eq!(unpack.unwrap(), b"unpack ok\n");
        let (ng, _) = pkt_line(&inner[m..]).unwrap();
        assert_eq!(
            ng.unwrap(),
            b"ng refs/heads/main refused by Airlock: no main\n"
        );
        assert!(out.ends_with(b"0000"));
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panicking(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_push(&b);
        }
    }
}
