//! The overview: sessions per day, model tokens and their estimated cost per human and per
//! profile (server-rendered SVG charts; prices from `[prices]`), and the state of each
//! integration (Docker, the gateway, GitHub, Slack, Discord).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use airlock_core::config::Price;
use airlock_core::store::{DayCount, Traffic, UsageRow};

use crate::sandbox_side::State as SandboxState;

use super::*;

/// Days the sessions chart shows, and days the usage tables sum.
const CHART_DAYS: i64 = 14;
const USAGE_DAYS: i64 = 30;
const DAY_MS: i64 = 86_400_000;

/// One bar of a chart, in the chart's own coordinates.
pub(super) struct Bar {
    x: String,
    y: String,
    w: String,
    h: String,
    fill: &'static str,
    title: String,
}

pub(super) struct DayLabel {
    x: String,
    text: String,
}

/// A line of a usage table, with its bar.
pub(super) struct UsageLine {
    name: String,
    calls: i64,
    tokens: String,
    cost: String,
    bar: Bar,
}

/// How an integration is doing.
pub(super) struct Integration {
    name: &'static str,
    configured: bool,
    state: String,
    ok: bool,
    last_activity: String,
    last_error: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
pub(super) struct OverviewPage {
    me: Option<Me>,
    notice: Option<String>,
    days: Vec<Bar>,
    day_labels: Vec<DayLabel>,
    day_max: i64,
    total_sessions: i64,
    usage_tables: Vec<(&'static str, Vec<UsageLine>)>,
    total_cost: String,
    unpriced: Vec<String>,
    integrations: Vec<Integration>,
}

fn num(v: f64) -> String {
    format!("{v:.1}")
}

/// Stacked bars per day: succeeded, failed (failed or timed out), other.
fn day_chart(counts: &[DayCount], today: i64) -> (Vec<Bar>, Vec<DayLabel>, i64) {
    let first = today - CHART_DAYS + 1;
    let mut per: BTreeMap<i64, [i64; 3]> = (first..=today).map(|d| (d, [0; 3])).collect();
    for c in counts {
        if let Some(slot) = per.get_mut(&c.day) {
            let i = match c.state.as_str() {
                "succeeded" => 0,
                "failed" | "timed_out" => 1,
                _ => 2,
            };
            slot[i] += c.count;
        }
    }
    let max = per
        .values()
        .map(|v| v.iter().sum::<i64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let (width, height, gap) = (700.0 / CHART_DAYS as f64, 160.0, 6.0);
    let mut bars = Vec::new();
    let mut labels = Vec::new();
    for (i, (day, v)) in per.iter().enumerate() {
        let x = i as f64 * width;
        let mut top = height;
        for (k, (fill, what)) in [
            ("#1a7f37", "succeeded"),
            ("#b42318", "failed"),
            ("#9aa3ad", "other"),
        ]
        .into_iter()
        .enumerate()
        {
            if v[k] == 0 {
                continue;
            }
            let h = v[k] as f64 / max as f64 * (height - 10.0);
            top -= h;
            bars.push(Bar {
                x: num(x + gap / 2.0),
                y: num(top),
                w: num(width - gap),
                h: num(h),
                fill,
                title: format!("{}: {} {what}", day_text(*day), v[k]),
            });
        }
        if i % 2 == 0 || CHART_DAYS <= 7 {
            labels.push(DayLabel {
                x: num(x + width / 2.0),
                text: day_text(*day)[5..].to_string(),
            });
        }
    }
    (bars, labels, max)
}

fn day_text(day: i64) -> String {
    rfc3339(day * DAY_MS)[..10].to_string()
}

fn thousands(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Usage summed by `key`, largest first, with bars scaled to the largest.
fn usage_lines(
    rows: &[UsageRow],
    prices: &BTreeMap<String, Price>,
    key: impl Fn(&UsageRow) -> &str,
) -> Vec<UsageLine> {
    // Calls, tokens, the priced part's cost, and whether some of it has no price.
    let mut sums: BTreeMap<String, (i64, i64, f64, bool, bool)> = BTreeMap::new();
    for r in rows {
        let e = sums
            .entry(key(r).to_string())
            .or_insert((0, 0, 0.0, false, false));
        e.0 += r.calls;
        e.1 += r.input_tokens + r.output_tokens;
        match prices.get(&r.model) {
            Some(p) => {
                e.2 += p.cost(r.input_tokens, r.output_tokens);
                e.3 = true;
            }
            None => e.4 = true,
        }
    }
    let mut lines: Vec<_> = sums.into_iter().collect();
    lines.sort_by(|a, b| b.1 .1.cmp(&a.1 .1).then(a.0.cmp(&b.0)));
    let max = lines.first().map(|l| l.1 .1).unwrap_or(0).max(1);
    lines
        .into_iter()
        .take(20)
        .map(
            |(name, (calls, tokens, cost, priced, unpriced))| UsageLine {
                bar: Bar {
                    x: "0".into(),
                    y: "0".into(),
                    w: num(tokens as f64 / max as f64 * 100.0),
                    h: "12".into(),
                    fill: "#3b6fd8",
                    title: format!("{name}: {} tokens", thousands(tokens)),
                },
                name,
                calls,
                tokens: thousands(tokens),
                cost: cost_text(cost, priced, unpriced),
            },
        )
        .collect()
}

/// `$4.00`, `$4.00 + unpriced`, or `no price`.
fn cost_text(cost: f64, priced: bool, unpriced: bool) -> String {
    match (priced, unpriced) {
        (true, false) => format!("${cost:.2}"),
        (true, true) => format!("${cost:.2} + unpriced"),
        _ => "no price".into(),
    }
}

fn traffic_integration(name: &'static str, configured: bool, t: &Traffic) -> Integration {
    let last_error = [&t.last_inbound_error, &t.last_send_error]
        .into_iter()
        .flatten()
        .max_by_key(|(at, _)| *at);
    let last_ok = t.last_sent_at.max(t.last_received_at);
    let failing = matches!((last_error, last_ok), (Some((e, _)), Some(ok)) if *e > ok)
        || matches!((last_error, last_ok), (Some(_), None));
    let state = match (configured, last_ok, failing) {
        (false, _, _) => "not configured".to_string(),
        (true, _, true) => "failing: the last attempt went wrong".to_string(),
        (true, None, false) => "configured, nothing received or sent yet".to_string(),
        (true, Some(_), false) if t.pending_sends > 0 => {
            format!("working; {} message(s) waiting to be sent", t.pending_sends)
        }
        (true, Some(_), false) => "working".to_string(),
    };
    Integration {
        name,
        configured,
        ok: configured && !failing,
        state,
        last_activity: match (t.last_received_at, t.last_sent_at) {
            (None, None) => "-".into(),
            (r, s) => format!(
                "received {} · sent {}",
                r.map(rfc3339).unwrap_or_else(|| "never".into()),
                s.map(rfc3339).unwrap_or_else(|| "never".into())
            ),
        },
        last_error: last_error
            .map(|(at, e)| format!("{}: {}", rfc3339(*at), render::one_line(e, 300)))
            .unwrap_or_default(),
    }
}

pub(super) async fn overview(State(st): State<AdminState>, headers: HeaderMap) -> Response {
    let ws = match admin(&st, &headers).await {
        Ok(s) => s,
        Err(d) => return d.into_response(),
    };
    let now = airlock_core::ids::now_ms();
    let today = now / DAY_MS;
    let counts = match st
        .store
        .sessions_per_day((today - CHART_DAYS + 1) * DAY_MS)
        .await
    {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let usage = match st.store.usage_breakdown(now - USAGE_DAYS * DAY_MS).await {
        Ok(u) => u,
        Err(e) => return internal(e),
    };
    let (days, day_labels, day_max) = day_chart(&counts, today);
    let priced: Vec<f64> = usage
        .iter()
        .filter_map(|r| {
            st.status
                .prices
                .get(&r.model)
                .map(|p| p.cost(r.input_tokens, r.output_tokens))
        })
        .collect();
    let mut unpriced: Vec<String> = usage
        .iter()
        .filter(|r| !st.status.prices.contains_key(&r.model))
        .map(|r| r.model.clone())
        .collect();
    unpriced.sort();
    unpriced.dedup();
    let docker = st.status.docker_ok.load(Ordering::Relaxed);
    let sandboxes = st.status.sandboxes.get();
    let mut integrations = vec![
        Integration {
            name: "Docker",
            configured: true,
            ok: docker && matches!(sandboxes, SandboxState::Ready { .. }),
            state: match (&sandboxes, docker) {
                (SandboxState::Waiting(why), _) => format!("sessions wait: {why}"),
                (SandboxState::Ready { .. }, true) => "the engine answers".into(),
                (SandboxState::Ready { .. }, false) => {
                    "the engine does not answer: sessions wait until it does".into()
                }
            },
            last_activity: st.status.docker_host.clone(),
            last_error: String::new(),
        },
        Integration {
            name: "Gateway",
            configured: true,
            ok: matches!(sandboxes, SandboxState::Ready { gateway: Some(_) }),
            state: match &sandboxes {
                SandboxState::Ready { gateway: Some(g) } => g.clone(),
                SandboxState::Ready { gateway: None } => {
                    "not run by this server (gateway.mode = \"separate\")".into()
                }
                SandboxState::Waiting(_) => {
                    "not started yet: it starts with the sandboxes, once the Docker engine answers"
                        .into()
                }
            },
            last_activity: String::new(),
            last_error: String::new(),
        },
    ];
    for (name, provider, configured) in [
        ("GitHub", "github", st.status.github),
        ("Slack", "slack", st.status.slack),
        ("Discord", "discord", st.status.discord),
    ] {
        match st.store.traffic(provider).await {
            Ok(t) => integrations.push(traffic_integration(name, configured, &t)),
            Err(e) => return internal(e),
        }
    }
    page(OverviewPage {
        me: me(&ws),
        notice: None,
        total_sessions: counts.iter().map(|c| c.count).sum(),
        days,
        day_labels,
        day_max,
        usage_tables: vec![
            (
                "By human",
                usage_lines(&usage, &st.status.prices, |r| &r.human),
            ),
            (
                "By profile",
                usage_lines(&usage, &st.status.prices, |r| &r.profile),
            ),
        ],
        total_cost: if usage.is_empty() {
            "$0.00".into()
        } else {
            cost_text(
                priced.iter().sum(),
                !priced.is_empty(),
                priced.len() < usage.len(),
            )
        },
        unpriced,
        integrations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_stacked_by_outcome_and_scaled_to_the_busiest_day() {
        let today = 20_000;
        let counts = [
            DayCount {
                day: today,
                state: "succeeded".into(),
                count: 3,
            },
            DayCount {
                day: today,
                state: "failed".into(),
                count: 1,
            },
            DayCount {
                day: today - 1,
                state: "running".into(),
                count: 2,
            },
            // Outside the chart: not drawn.
            DayCount {
                day: today - 30,
                state: "succeeded".into(),
                count: 9,
            },
        ];
        let (bars, _, max) = day_chart(&counts, today);
        assert_eq!(max, 4);
        assert_eq!(bars.len(), 3);
        let heights: Vec<f64> = bars.iter().map(|b| b.h.parse().unwrap()).collect();
        assert_eq!(heights, [75.0, 112.5, 37.5]);
        assert!(
            bars[1].title.ends_with(": 3 succeeded"),
            "{}",
            bars[1].title
        );
    }

    #[test]
    fn cost_needs_a_price_for_every_model_it_sums() {
        let row = |human: &str, model: &str, i, o| UsageRow {
            human: human.into(),
            profile: "p".into(),
            model: model.into(),
            calls: 1,
            input_tokens: i,
            output_tokens: o,
        };
        let prices = BTreeMap::from([(
            "gpt".to_string(),
            Price {
                input: 2.0,
                output: 8.0,
            },
        )]);
        let rows = [
            row("Ada", "gpt", 1_000_000, 500_000),
            row("Bob", "gpt", 10, 0),
            row("Bob", "local", 5, 5),
        ];
        let lines = usage_lines(&rows, &prices, |r| &r.human);
        assert_eq!(lines[0].name, "Ada");
        assert_eq!(lines[0].cost, "$6.00");
        assert_eq!(lines[0].tokens, "1,500,000");
        assert_eq!(lines[1].cost, "$0.00 + unpriced");
        let only_local = usage_lines(&rows[2..], &prices, |r| &r.human);
        assert_eq!(only_local[0].cost, "no price");
        assert_eq!(lines[0].bar.w, "100.0");
    }
}
