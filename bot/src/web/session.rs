//! One session: its live log (a window of events, server-sent events for the latest), plan, egress audit, full output log, and Stop.

use super::*;
use airlock_core::ids::SessionId;

pub(super) struct EventView {
    kind: EventKind,
    html: String,
    /// A command's output, grouped under the event that started it (a tool call) or under
    /// the first piece of it: one collapsible block per command, not a row per line.
    group: Option<OutputGroup>,
}

pub(super) struct OutputGroup {
    output: String,
    lines: usize,
    open: bool,
}

/// Output blocks of at most this many lines are shown open.
const OPEN_LINES: usize = 20;
/// The output one block shows; the rest is behind the full log.
const GROUP_BYTES: usize = 256 * 1024;

/// The log as the page shows it: consecutive command output joined into one block under the
/// tool call before it (or under its first piece).
pub(super) fn log_items(events: &[SessionEvent]) -> Vec<EventView> {
    let mut items: Vec<EventView> = Vec::new();
    let mut grouping = false;
    for e in events {
        match e.kind {
            EventKind::CommandOutput => {
                let text = e.payload["text"].as_str().unwrap_or("");
                if !grouping {
                    items.push(EventView {
                        kind: e.kind,
                        html: format!(
                            "<span class=\"at\">{}</span> output",
                            render::escape(&rfc3339(e.at))
                        ),
                        group: Some(OutputGroup {
                            output: String::new(),
                            lines: 0,
                            open: false,
                        }),
                    });
                    grouping = true;
                }
                // The window is bounded (LOG_WINDOW_BYTES); a block keeps its latest part.
                if let Some(g) = items.last_mut().and_then(|i| i.group.as_mut()) {
                    g.output.push_str(text);
                }
            }
            EventKind::ToolCall => {
                items.push(EventView {
                    kind: e.kind,
                    html: event_html(e),
                    group: Some(OutputGroup {
                        output: String::new(),
                        lines: 0,
                        open: false,
                    }),
                });
                grouping = true;
            }
            _ => {
                items.push(EventView {
                    kind: e.kind,
                    html: event_html(e),
                    group: None,
                });
                grouping = false;
            }
        }
    }
    for i in &mut items {
        let empty = i.group.as_ref().is_some_and(|g| g.output.is_empty());
        if empty {
            i.group = None;
        } else if let Some(g) = i.group.as_mut() {
            if g.output.len() > GROUP_BYTES {
                let cut = g.output.len() - GROUP_BYTES;
                g.output = format!(
                    "[… {} KB of this output above: Earlier events, or the full output log]\n{}",
                    cut / 1024,
                    tail_from(&g.output, cut)
                );
            }
            g.lines = g.output.lines().count();
            g.open = g.lines <= OPEN_LINES;
        }
    }
    items
}

/// `text` from byte `start` on (moved forward to a character boundary).
fn tail_from(text: &str, start: usize) -> &str {
    let mut at = start.min(text.len());
    while !text.is_char_boundary(at) {
        at += 1;
    }
    &text[at..]
}

/// What the session's branch changed, from its latest git event.
pub(super) struct ChangesView {
    branch: String,
    commit: String,
    files: Vec<FileRow>,
    diff: Vec<DiffLine>,
}

pub(super) struct FileRow {
    path: String,
    added: String,
    removed: String,
}

pub(super) struct DiffLine {
    class: &'static str,
    text: String,
}

pub(super) fn changes_view(e: &SessionEvent) -> Option<ChangesView> {
    let p = &e.payload;
    if p["pushed"] != true {
        return None;
    }
    let count = |v: &serde_json::Value| match v.as_u64() {
        Some(n) => n.to_string(),
        None => "binary".to_string(),
    };
    let files = p["files"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .map(|f| FileRow {
                    path: f["path"].as_str().unwrap_or("").to_string(),
                    added: count(&f["added"]),
                    removed: count(&f["removed"]),
                })
                .collect()
        })
        .unwrap_or_default();
    let diff = p["patch"]
        .as_str()
        .unwrap_or("")
        .lines()
        .take(20_000)
        .map(|l| DiffLine {
            class: if l.starts_with("+++") || l.starts_with("---") || l.starts_with("diff ") {
                "file"
            } else if l.starts_with('+') {
                "add"
            } else if l.starts_with('-') {
                "del"
            } else if l.starts_with("@@") {
                "hunk"
            } else {
                "ctx"
            },
            text: l.to_string(),
        })
        .collect();
    Some(ChangesView {
        branch: p["branch"].as_str().unwrap_or("").to_string(),
        commit: p["commit"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(12)
            .collect(),
        files,
        diff,
    })
}

/// One event as sanitised HTML: agent markdown through `render::html`, everything else escaped.
pub(super) fn event_html(e: &SessionEvent) -> String {
    let p = &e.payload;
    let t = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let esc = render::escape;
    let body = match e.kind {
        EventKind::Message => render::html(&cut(t("text"))),
        EventKind::CommandOutput => format!("<pre>{}</pre>", esc(&cut(t("text")))),
        EventKind::ToolCall => format!(
            "→ <b>{}</b> <code>{}</code>",
            esc(t("tool")),
            esc(&render::one_line(&p["input"].to_string(), 300))
        ),
        EventKind::FileChange => format!("✎ {} <code>{}</code>", esc(t("change")), esc(t("path"))),
        EventKind::State => format!(
            "state: <b>{}</b>{}",
            esc(t("to")),
            p["reason"]
                .as_str()
                .map(|r| format!(" — {}", esc(r)))
                .unwrap_or_default()
        ),
        EventKind::Turn => format!("follow-up: {}", esc(t("prompt"))),
        EventKind::Note => format!("· {}", esc(t("text"))),
        EventKind::Summary if p["runner"] == "agent" => format!(
            "<div class=\"summary\">{}</div>",
            render::html(&cut(t("text")))
        ),
        EventKind::Summary => format!("exit: {}", esc(&p["exit_code"].to_string())),
        EventKind::Git => format!(
            "git: {} <code>{}</code>{}",
            if p["pushed"] == true {
                "pushed"
            } else {
                "nothing to push on"
            },
            esc(t("branch")),
            p["pull_request"]["url"]
                .as_str()
                .map(|u| format!(" · <a href=\"{0}\" rel=\"noreferrer\">{0}</a>", esc(u)))
                .filter(|_| p["pull_request"]["url"]
                    .as_str()
                    .is_some_and(|u| u.starts_with("http")))
                .unwrap_or_default()
        ),
    };
    format!("<span class=\"at\">{}</span> {body}", esc(&rfc3339(e.at)))
}

/// Output shown on the page is bounded; the full log stays in the database.
pub(super) fn cut(text: &str) -> String {
    if text.len() <= 64 * 1024 {
        text.to_string()
    } else {
        let mut end = 64 * 1024;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}\n[… cut]", &text[..end])
    }
}

pub(super) struct RouteRow {
    host: String,
    path: String,
    methods: String,
    credential: String,
    upstream: String,
}

pub(super) struct PlanView {
    profile: String,
    version: i64,
    agent: String,
    limits: String,
    routes: Vec<RouteRow>,
    passthrough: String,
    env: String,
}

pub(super) struct EgressRow {
    at: String,
    action: String,
    request: String,
    status: String,
    credential: String,
}

#[derive(Template)]
#[template(path = "session.html")]
pub(super) struct SessionPage {
    me: Option<Me>,
    notice: Option<String>,
    me_csrf: String,
    s: Session,
    requester: String,
    pull_request: Option<String>,
    usage: String,
    live: bool,
    last_seq: i64,
    events: Vec<EventView>,
    /// The log shows a window of the latest events; these go to the ones before and after it.
    earlier: Option<i64>,
    later: Option<i64>,
    /// Whether a full output log is kept (a download link).
    full_log: bool,
    plan: Option<PlanView>,
    egress: Vec<EgressRow>,
    changes: Option<ChangesView>,
}

pub(super) fn plan_view(p: &Plan) -> PlanView {
    let agent = serde_json::to_value(&p.agent)
        .ok()
        .and_then(|v| v["kind"].as_str().map(str::to_string))
        .unwrap_or_default();
    PlanView {
        profile: p.profile.clone(),
        version: p.profile_version,
        agent,
        limits: format!(
            "{} CPUs, {} MB, {} processes, {} s wall clock, {} s idle",
            p.limits.cpus,
            p.limits.memory_mb,
            p.limits.pids,
            p.limits.wall_clock_secs,
            p.limits.idle_secs
        ),
        routes: p
            .routes
            .iter()
            .map(|r| RouteRow {
                host: r.host.clone(),
                path: r.path_prefix.clone(),
                methods: if r.methods.is_empty() {
                    "any".into()
                } else {
                    r.methods.join(", ")
                },
                credential: r.credential.clone().unwrap_or_else(|| "—".into()),
                upstream: r.upstream.clone().unwrap_or_else(|| "—".into()),
            })
            .collect(),
        passthrough: p.passthrough.join(", "),
        env: p.env.keys().cloned().collect::<Vec<_>>().join(", "),
    }
}

/// How much of a session's log one page shows: at most this many events, or this many bytes
/// of their payloads, the latest first (older ones behind "Earlier events").
pub(super) const LOG_WINDOW_EVENTS: usize = 300;
pub(super) const LOG_WINDOW_BYTES: usize = 1 << 20;

/// Which part of a session's log a page shows.
#[derive(Clone, Copy)]
pub(super) enum LogAt {
    Latest,
    Before(i64),
    After(i64),
}

/// A window of a session's events, oldest first: the latest ones, those just before an
/// event, or those just after one.
pub(super) async fn log_window(
    store: &Store,
    id: &SessionId,
    at: LogAt,
) -> airlock_core::store::Result<Vec<SessionEvent>> {
    let mut window = Vec::new();
    let mut bytes = 0;
    let (mut cursor, forward) = match at {
        LogAt::Latest => (i64::MAX, false),
        LogAt::Before(b) => (b, false),
        LogAt::After(a) => (a, true),
    };
    'read: loop {
        let page = if forward {
            store.events(id, cursor, 50).await?
        } else {
            store.events_before(id, cursor, 50).await?
        };
        let Some(last) = page.last() else { break };
        cursor = last.seq;
        for e in page {
            bytes += e.payload.to_string().len();
            window.push(e);
            if window.len() >= LOG_WINDOW_EVENTS || bytes >= LOG_WINDOW_BYTES {
                break 'read;
            }
        }
    }
    if !forward {
        window.reverse();
    }
    Ok(window)
}

pub(super) async fn session(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<SessionId>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let ws = match admin(&st, &headers).await {
        Ok(s) => s,
        Err(d) => return d.into_response(),
    };
    let s = match st.store.session(&id).await {
        Ok(s) => s,
        Err(_) => {
            return message(
                StatusCode::NOT_FOUND,
                "No such session",
                "There is no session with that id.",
                me(&ws),
            )
        }
    };
    let seq = |k: &str| {
        q.get(k)
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|v| *v >= 0)
    };
    let at = match (seq("before"), seq("after")) {
        (Some(b), _) => LogAt::Before(b),
        (None, Some(a)) => LogAt::After(a),
        (None, None) => LogAt::Latest,
    };
    // Read first: events that arrive meanwhile fall in the window, not after it.
    let newest = match st.store.last_event_seq(&id).await {
        Ok(n) => n,
        Err(e) => return internal(e),
    };
    let events = match log_window(&st.store, &id, at).await {
        Ok(w) => w,
        Err(e) => return internal(e),
    };
    let earlier = events.first().map(|e| e.seq).filter(|first| *first > 1);
    // A window that is not the latest links to the next one; the latest follows the stream.
    let later = events.last().map(|e| e.seq).filter(|last| *last < newest);
    let latest = later.is_none();
    let requester = st
        .store
        .find_human(&s.requester_id)
        .await
        .map(|h| h.display_name)
        .unwrap_or_default();
    let usage = st
        .store
        .session_usage(&id)
        .await
        .map(|u| {
            format!(
                "{} calls, {} tokens in, {} out",
                u.calls, u.input_tokens, u.output_tokens
            )
        })
        .unwrap_or_default();
    let egress = st
        .store
        .audit_for_session(&id, 500)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.action.starts_with("egress."))
        .map(|a| {
            let d = &a.detail;
            EgressRow {
                at: rfc3339(a.at),
                action: a.action.trim_start_matches("egress.").to_string(),
                request: format!(
                    "{} {}{}",
                    d["method"].as_str().unwrap_or(""),
                    a.target,
                    d["path"].as_str().unwrap_or("")
                ),
                status: d["status"].to_string(),
                credential: d["credential"].as_str().unwrap_or("—").to_string(),
            }
        })
        .collect();
    // A queued session on a server whose sandboxes cannot start says why it waits.
    let notice = (s.state == SessionState::Queued)
        .then(|| st.status.sandboxes.waiting())
        .flatten()
        .map(|why| format!("This session waits: {why}. It starts once sandboxes can."));
    page(SessionPage {
        me: me(&ws),
        notice,
        me_csrf: ws.csrf.clone(),
        requester,
        pull_request: s
            .pull_request_url
            .clone()
            .filter(|u| u.starts_with("https://") || u.starts_with("http://")),
        usage,
        live: !s.state.is_terminal() && latest,
        last_seq: events.last().map(|e| e.seq).unwrap_or(0),
        earlier,
        later,
        full_log: airlock_core::output_log::path(&st.logs_dir, &id).is_some_and(|p| p.exists()),
        events: log_items(&events),
        changes: st
            .store
            .last_event_of(&id, EventKind::Git)
            .await
            .ok()
            .flatten()
            .as_ref()
            .and_then(changes_view),
        plan: s
            .plan
            .as_ref()
            .and_then(Plan::from_json)
            .map(|p| plan_view(&p)),
        egress,
        s,
    })
}

/// The session's full output log (gzip, every turn), streamed from the data directory.
pub(super) async fn output_log(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<SessionId>,
) -> Response {
    let ws = match admin(&st, &headers).await {
        Ok(s) => s,
        Err(d) => return d.into_response(),
    };
    let missing = || {
        message(
            StatusCode::NOT_FOUND,
            "No full log",
            "No full output log is kept for this session: only profiles with \
             limits.output_log = true keep one, on the server that ran the session.",
            me(&ws),
        )
    };
    let Some(path) = airlock_core::output_log::path(&st.logs_dir, &id) else {
        return missing();
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return missing(),
    };
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{id}.log.gz\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// The session's events as they happen, for the page's log.
pub(super) async fn session_events(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<SessionId>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(d) = admin(&st, &headers).await {
        return d.into_response();
    }
    let after: i64 = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let stream = futures_util::stream::unfold(
        (st.store.clone(), id, after, false),
        |(store, id, mut after, done)| async move {
            if done {
                return None;
            }
            let mut out: Vec<Result<Event, Infallible>> = Vec::new();
            loop {
                let events = store.events(&id, after, 200).await.unwrap_or_default();
                for e in &events {
                    after = e.seq;
                    out.push(Ok(Event::default().event("event").data(
                        json!({"seq": e.seq, "kind": e.kind, "html": event_html(e)}).to_string(),
                    )));
                    if e.kind == EventKind::State {
                        out.push(Ok(Event::default()
                            .event("state")
                            .data(json!({"state": e.payload["to"]}).to_string())));
                    }
                }
                let ended = store
                    .session(&id)
                    .await
                    .map(|s| s.state.is_terminal())
                    .unwrap_or(true);
                if !out.is_empty() || ended {
                    let finished = ended && events.is_empty();
                    if finished {
                        out.push(Ok(Event::default().event("end").data("{}")));
                    }
                    return Some((
                        futures_util::stream::iter(out),
                        (store, id, after, finished),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        },
    );
    use futures_util::StreamExt;
    Sse::new(stream.flatten())
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub(super) async fn stop(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<SessionId>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let ws = match admin_post(&st, &headers, &f).await {
        Ok(s) => s,
        Err(d) => return d.into_response(),
    };
    let actor = Actor::human(
        ws.human.clone(),
        Surface::Web,
        format!("{} on the admin page", ws.human.display_name),
    );
    match Sessions::new(st.store.clone(), None)
        .stop(&actor, &id, None)
        .await
    {
        Ok(_) => Redirect::to(&format!("/sessions/{id}")).into_response(),
        Err(e) => message(StatusCode::CONFLICT, "Cannot stop", &e.to_string(), me(&ws)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::domain::ProfileSpec;
    use airlock_core::store::{ApplyOutcome, NewSession};

    fn ev(seq: i64, kind: EventKind, payload: serde_json::Value) -> SessionEvent {
        SessionEvent {
            session_id: SessionId::from_stored("ses_1"),
            seq,
            kind,
            payload,
            at: 0,
        }
    }

    /// A command's output is one block under the tool call that ran it; output with no call
    /// before it is a block of its own; a block longer than the page keeps its latest part.
    #[test]
    fn output_is_one_block_per_command_and_keeps_its_end() {
        let events = [
            ev(
                1,
                EventKind::ToolCall,
                json!({"tool": "shell", "input": {"command": "make"}}),
            ),
            ev(2, EventKind::CommandOutput, json!({"text": "a\n"})),
            ev(3, EventKind::CommandOutput, json!({"text": "b\n"})),
            ev(4, EventKind::Note, json!({"text": "between"})),
            ev(
                5,
                EventKind::CommandOutput,
                json!({"text": "x".repeat(GROUP_BYTES) + "\nthe-end\n"}),
            ),
            ev(
                6,
                EventKind::ToolCall,
                json!({"tool": "read_file", "input": {}}),
            ),
        ];
        let items = log_items(&events);
        assert_eq!(items.len(), 4);
        let first = items[0].group.as_ref().unwrap();
        assert_eq!(
            (first.output.as_str(), first.lines, first.open),
            ("a\nb\n", 2, true)
        );
        assert!(items[1].group.is_none());
        let long = items[2].group.as_ref().unwrap();
        assert!(
            long.output.ends_with("the-end\n") && long.output.starts_with("[… 0 KB"),
            "{}",
            &long.output[..80]
        );
        assert!(long.output.len() < GROUP_BYTES + 200);
        // A call with no output is a plain line.
        assert!(items[3].group.is_none());
    }

    /// Following "Earlier events" from the latest window back to the first, and "Later
    /// events" forward again, shows every event exactly once, each window bounded.
    #[tokio::test]
    async fn log_windows_cover_a_long_session_once_each_way() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let store = Store::connect(&url, 2, airlock_core::secrets::MasterKey::generate())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let human = store
            .add_human("Ada", "ada@example.com", Role::Admin)
            .await
            .unwrap();
        let spec = ProfileSpec::from_toml(
            "name = \"p\"\n[agent]\nkind = \"command\"\ncommand = \"true\"\n",
        )
        .unwrap();
        let ApplyOutcome::Created {
            profile_id,
            version,
        } = store.apply_profile(&spec, None).await.unwrap()
        else {
            panic!("not created")
        };
        let s = store
            .create_session(NewSession {
                requester_id: human.id,
                surface: Surface::Cli,
                thread_ref: Default::default(),
                repo: "acme/web".into(),
                profile_id,
                profile_version: version,
                prompt: "p".into(),
                trigger_id: None,
                thread_key: None,
                notify: None,
            })
            .await
            .unwrap();
        // 2,000 small events, then 40 of 30 KB: the byte bound cuts those windows short.
        for i in 0..2040 {
            let text = if i < 2000 {
                format!("{i}")
            } else {
                "z".repeat(30_000)
            };
            store
                .append_event(&s.id, EventKind::CommandOutput, &json!({ "text": text }))
                .await
                .unwrap();
        }
        let total = store.last_event_seq(&s.id).await.unwrap();
        let mut seen = Vec::new();
        let mut at = LogAt::Latest;
        loop {
            let w = log_window(&store, &s.id, at).await.unwrap();
            assert!(w.len() <= LOG_WINDOW_EVENTS);
            let bytes: usize = w.iter().map(|e| e.payload.to_string().len()).sum();
            assert!(bytes < LOG_WINDOW_BYTES + 32 * 1024, "{bytes}");
            assert!(
                w.windows(2).all(|p| p[0].seq + 1 == p[1].seq),
                "in order, no gaps"
            );
            seen.splice(0..0, w.iter().map(|e| e.seq));
            match w.first() {
                Some(first) if first.seq > 1 => at = LogAt::Before(first.seq),
                _ => break,
            }
        }
        assert_eq!(seen, (1..=total).collect::<Vec<_>>());
        let mut forward = Vec::new();
        let mut at = LogAt::After(0);
        loop {
            let w = log_window(&store, &s.id, at).await.unwrap();
            let Some(last) = w.last() else { break };
            at = LogAt::After(last.seq);
            forward.extend(w.iter().map(|e| e.seq));
        }
        assert_eq!(forward, seen);
    }
}
