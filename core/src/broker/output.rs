//! The agent's output: gathered into events, stored within the turn's and the session's
//! bounds (the first and last part kept, a note of what fell out between), and acknowledged
//! to sandboxd once stored.

use airlock_sandboxd::proto::{AgentEvent, Stream};
use serde_json::json;

use super::*;
use crate::domain::EventKind;
use crate::ids::{SandboxId, SessionId};
use crate::store::Store;

/// The end of a command's output kept for its summary.
const SUMMARY_TAIL: usize = 4000;

/// The agent's output not yet stored: gathered into events, and acknowledged to sandboxd once
/// stored. Keeps the end of everything for the session's summary. In [`Mode::Events`],
/// stdout is read as one JSON event per line.
pub(super) struct Output {
    store: Store,
    session: SessionId,
    sandbox: SandboxId,
    exec: u64,
    mode: Mode,
    chunks: Vec<(Stream, Vec<u8>)>,
    bytes: usize,
    last_seq: u64,
    pub(super) tail: String,
    /// An unfinished stdout line (events mode), and the number of the last message stored
    /// before it began: only that much may be acknowledged.
    partial: Vec<u8>,
    partial_after: u64,
    stored_seq: u64,
    /// The runner's final `summary` event: its text and whether it succeeded.
    pub(super) summary: Option<(String, bool)>,
    /// Bounded output: what may still be stored as it comes, then the latest events held
    /// back (up to `tail_cap` bytes) and how much fell out between the two.
    head_left: usize,
    held: std::collections::VecDeque<(EventKind, serde_json::Value, usize)>,
    tail_bytes: usize,
    tail_cap: usize,
    dropped: u64,
    /// Why the turn's output is bounded where it is (for the note).
    why: String,
    /// Bytes stored this turn and not yet counted on the session.
    counted: u64,
    /// The full output, when the profile keeps it (finished when the turn's output is).
    pub(super) log: Option<crate::output_log::OutputLog>,
}

/// How much output this turn may store, and why that much: `limits.output_mb`, or what is
/// left of `limits.session_output_mb` after the session's earlier turns (at least 1 MB, so
/// every turn shows how it began and ended).
pub(super) fn turn_budget(limits: &crate::domain::Limits, stored: u64) -> (u64, String) {
    const MB: u64 = 1 << 20;
    // Profiles stored before the limits were validated may hold 0: at least 1 MB each.
    let per_turn = limits.output_mb.max(1).saturating_mul(MB);
    let left = limits
        .session_output_mb
        .max(1)
        .saturating_mul(MB)
        .saturating_sub(stored);
    if left < per_turn {
        (
            left.max(MB),
            format!(
                "this session had already stored {} of its limits.session_output_mb = {} MB",
                crate::render::human_bytes(stored),
                limits.session_output_mb
            ),
        )
    } else {
        (
            per_turn,
            format!(
                "this turn printed more than limits.output_mb = {} MB",
                limits.output_mb
            ),
        )
    }
}

impl Output {
    pub(super) fn new(
        store: Store,
        session: SessionId,
        sandbox: SandboxId,
        exec: u64,
        mode: Mode,
        (budget, why): (u64, String),
    ) -> Output {
        let half = (budget / 2).max(1) as usize;
        Output {
            head_left: half,
            held: std::collections::VecDeque::new(),
            tail_bytes: 0,
            tail_cap: half,
            dropped: 0,
            why,
            counted: 0,
            log: None,
            store,
            session,
            sandbox,
            exec,
            mode,
            chunks: Vec::new(),
            bytes: 0,
            last_seq: 0,
            tail: String::new(),
            partial: Vec::new(),
            partial_after: 0,
            stored_seq: 0,
            summary: None,
        }
    }

    /// Adds a chunk; returns how many bytes wait to be stored.
    pub(super) fn push(&mut self, seq: u64, stream: Stream, data: Vec<u8>) -> usize {
        if let Some(log) = self.log.as_mut() {
            if let Err(e) = log.write(&data) {
                tracing::warn!(session = %self.session, "the full output log stopped: {e}");
                self.log = None;
            }
        }
        self.bytes += data.len();
        self.chunks.push((stream, data));
        self.last_seq = seq;
        self.bytes
    }

    /// At the end, an unfinished last line counts as a line.
    pub(super) fn finish_lines(&mut self) {
        if !self.partial.is_empty() {
            self.chunks.push((Stream::Stdout, b"\n".to_vec()));
        }
    }

    fn keep_tail(&mut self, text: &str) {
        let tail = &mut self.tail;
        tail.push_str(text);
        if tail.len() > SUMMARY_TAIL {
            let cut = tail.len() - SUMMARY_TAIL;
            let cut = (cut..tail.len())
                .find(|i| tail.is_char_boundary(*i))
                .unwrap_or(tail.len());
            tail.drain(..cut);
        }
    }

    async fn output_event(&mut self, stream: &str, text: &str) -> anyhow::Result<()> {
        self.keep_tail(text);
        // Pieces small enough that even fully escaped JSON stays within an event's bound.
        let mut rest = text;
        while !rest.is_empty() {
            let mut end = rest.len().min(32 * 1024);
            while !rest.is_char_boundary(end) {
                end -= 1;
            }
            let (piece, more) = rest.split_at(end);
            self.record(
                EventKind::CommandOutput,
                json!({ "stream": stream, "text": piece }),
                piece.len(),
            )
            .await?;
            rest = more;
        }
        Ok(())
    }

    /// One line of `sandboxd agent`: an event, or (not JSON) plain output.
    async fn agent_line(&mut self, line: &[u8]) -> anyhow::Result<()> {
        let text = String::from_utf8_lossy(line);
        let (kind, payload) = match serde_json::from_str::<AgentEvent>(&text) {
            Ok(AgentEvent::Summary { text, ok }) => {
                self.summary = Some((text, ok));
                return Ok(());
            }
            Ok(AgentEvent::CommandOutput { text }) => {
                return self.output_event("stdout", &text).await;
            }
            Ok(AgentEvent::Message { text }) => (EventKind::Message, json!({ "text": text })),
            Ok(AgentEvent::ToolCall { tool, input }) => {
                (EventKind::ToolCall, json!({ "tool": tool, "input": input }))
            }
            Ok(AgentEvent::FileChange { path, change }) => (
                EventKind::FileChange,
                json!({ "path": path, "change": change }),
            ),
            Err(_) => return self.output_event("stdout", &format!("{text}\n")).await,
        };
        self.record(kind, payload, line.len()).await
    }

    /// Stores an event while the turn's head budget lasts; after that, holds it among the
    /// latest (older ones fall out), for [`Output::write_tail`] at the end of the turn.
    async fn record(
        &mut self,
        kind: EventKind,
        payload: serde_json::Value,
        size: usize,
    ) -> anyhow::Result<()> {
        if self.held.is_empty() && size <= self.head_left {
            self.head_left -= size;
            self.counted += size as u64;
            self.store
                .append_event(&self.session, kind, &payload)
                .await?;
            return Ok(());
        }
        self.head_left = 0;
        self.held.push_back((kind, payload, size));
        self.tail_bytes += size;
        while self.tail_bytes > self.tail_cap {
            let Some((_, _, s)) = self.held.pop_front() else {
                break;
            };
            self.tail_bytes -= s;
            self.dropped += s as u64;
        }
        Ok(())
    }

    /// At the end of a turn: a note of what was left out (if anything), then the latest
    /// events held back.
    pub(super) async fn write_tail(&mut self) -> anyhow::Result<()> {
        if self.dropped > 0 {
            let text = format!(
                "{} of output truncated here: {}, so this turn's first and last {} are kept",
                crate::render::human_bytes(self.dropped),
                self.why,
                crate::render::human_bytes(self.tail_cap as u64),
            );
            self.store
                .append_event(
                    &self.session,
                    EventKind::Note,
                    &json!({ "text": text, "truncated_bytes": self.dropped }),
                )
                .await?;
            self.dropped = 0;
        }
        while let Some((kind, payload, size)) = self.held.pop_front() {
            self.store
                .append_event(&self.session, kind, &payload)
                .await?;
            self.counted += size as u64;
        }
        self.tail_bytes = 0;
        if let Some(log) = self.log.take() {
            if let Err(e) = log.finish() {
                tracing::warn!(session = %self.session, "cannot finish the full output log: {e}");
            }
        }
        if self.counted > 0 {
            self.store
                .add_session_output(&self.session, self.counted)
                .await?;
            self.counted = 0;
        }
        Ok(())
    }

    /// Stores what waits as events, then lets sandboxd forget what is stored.
    pub(super) async fn flush(&mut self, hub: &airlock_sandbox::Hub) -> anyhow::Result<()> {
        if self.chunks.is_empty() {
            return Ok(());
        }
        // One event per run of the same stream.
        let mut groups: Vec<(Stream, Vec<u8>)> = Vec::new();
        for (s, d) in self.chunks.drain(..) {
            match groups.last_mut() {
                Some((ls, ld)) if *ls == s => ld.extend_from_slice(&d),
                _ => groups.push((s, d)),
            }
        }
        self.bytes = 0;
        for (s, d) in groups {
            let name = match s {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
                Stream::Pty => "pty",
            };
            if self.mode == Mode::Events && s == Stream::Stdout {
                let mut data = std::mem::take(&mut self.partial);
                data.extend_from_slice(&d);
                let mut start = 0;
                while let Some(i) = data[start..].iter().position(|b| *b == b'\n') {
                    let line = data[start..start + i].to_vec();
                    start += i + 1;
                    if !line.is_empty() {
                        self.agent_line(&line).await?;
                    }
                }
                self.partial = data[start..].to_vec();
            } else {
                let text = String::from_utf8_lossy(&d).into_owned();
                self.output_event(name, &text).await?;
            }
        }
        if self.partial.is_empty() {
            self.stored_seq = self.last_seq;
            self.partial_after = self.last_seq;
        } else {
            self.stored_seq = self.partial_after;
        }
        hub.done(&self.sandbox, self.exec, self.stored_seq);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::turn_budget;
    use crate::domain::Limits;

    const MB: u64 = 1 << 20;

    #[test]
    fn a_turn_keeps_its_own_limit_then_what_is_left_of_the_session_and_never_nothing() {
        let limits = Limits {
            output_mb: 16,
            session_output_mb: 64,
            ..Limits::default()
        };
        let (bytes, why) = turn_budget(&limits, 0);
        assert_eq!(bytes, 16 * MB);
        assert!(why.contains("limits.output_mb = 16 MB"), "{why}");
        let (bytes, why) = turn_budget(&limits, 60 * MB);
        assert_eq!(bytes, 4 * MB);
        assert!(why.contains("already stored 60.0 MB of its limits.session_output_mb = 64 MB"));
        assert_eq!(
            turn_budget(&limits, 200 * MB).0,
            MB,
            "a full session still keeps 1 MB"
        );
        // Stored before validation: zero limits are read as 1 MB.
        let zero = Limits {
            output_mb: 0,
            session_output_mb: 0,
            ..Limits::default()
        };
        assert_eq!(turn_budget(&zero, 0).0, MB);
    }
}
