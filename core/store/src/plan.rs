//! A session's plan: what its sandbox gets, computed from the profile version, the
//! repository and the requester. The routes in it are exactly what the gateway enforces, and
//! the plan is what the admin page shows, so what a session may reach is written down once.
//!
//! Pure: no I/O. A plan names credentials; it never holds a value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{AgentSpec, Human, Inject, Limits, ProfileSpec, RouteSpec};
use crate::store::{Repo, RepoLocation, Session};

/// The host name sandboxes clone local repositories from: only the gateway knows it (the
/// route's `upstream` is the server's own git endpoint), so no DNS is involved.
pub const LOCAL_GIT_HOST: &str = "git.airlock.internal";
/// The credential the gateway injects on requests to the server's git endpoint (made by
/// `airlock up`; the endpoint refuses anything without it).
pub const LOCAL_GIT_CREDENTIAL: &str = "airlock-local-git";

/// Deployment settings a plan depends on.
#[derive(Debug, Clone)]
pub struct PlanSettings {
    /// Git hosting, when GitHub is configured: sessions clone, push and open pull requests.
    pub github: Option<GitHosting>,
    pub author_name: String,
    pub author_email: String,
    /// Where the gateway reaches this server's git endpoint for local repositories
    /// (`http://127.0.0.1:8080/git`); `None` where no server serves them.
    pub local_git: Option<String>,
}

#[derive(Debug, Clone)]
pub struct GitHosting {
    /// `https://github.com`: clone URLs are `<web_url>/OWNER/NAME.git`.
    pub web_url: String,
    /// Where the gateway sends that git traffic instead, if anywhere.
    pub git_upstream: Option<String>,
    /// The credential the gateway injects for git (a GitHub App or a token).
    pub credential: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Requester {
    pub id: crate::ids::HumanId,
    pub name: String,
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GitPlan {
    /// What the sandbox clones (through the gateway).
    pub clone_url: String,
    /// The branch the session commits to and pushes.
    pub branch: String,
    /// Where a new branch starts; `None` for the repository's default branch.
    pub base: Option<String>,
    /// The branch exists already (a pull request's): check it out rather than create it, and
    /// push to it rather than open a pull request.
    pub existing_branch: bool,
    pub author_name: String,
    pub author_email: String,
    /// `Name <email>` of the requester, for the `Co-authored-by` trailer.
    pub co_author: String,
    /// Where the branch goes: GitHub (a pull request is opened), or a registered repository
    /// (the branch is pushed, no pull request).
    #[serde(default)]
    pub hosting: Hosting,
}

/// Who hosts a session's repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Hosting {
    #[default]
    Github,
    /// A local repository at `path`, served by this server.
    Local { path: String },
    /// A git remote that is not GitHub: push-only.
    Remote { url: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub profile: String,
    pub profile_version: i64,
    pub repo: String,
    pub requester: Requester,
    pub agent: AgentSpec,
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
    /// The routes the gateway allows, in order: the profile's, then the ones Airlock adds
    /// (git for the session's repository).
    pub routes: Vec<RouteSpec>,
    /// Tunnelled hosts: the profile's `passthrough`, only if it allows them in sessions.
    pub passthrough: Vec<String>,
    pub git: Option<GitPlan>,
    /// The one branch the session may push (a pull request's own branch, or
    /// `airlock/<session>-<slug>`), whether or not Airlock itself pushes it.
    #[serde(default)]
    pub branch: String,
}

/// The branch name of a session: `airlock/<session id>-<slug of the prompt>`.
pub fn branch_name(session_id: &str, prompt: &str) -> String {
    let id = session_id.to_ascii_lowercase().replace('_', "-");
    let slug = slug(prompt, 40);
    if slug.is_empty() {
        format!("airlock/{id}")
    } else {
        format!("airlock/{id}-{slug}")
    }
}

/// Lower-case words of `text` joined by dashes, at most `max` characters, cut at a word.
pub fn slug(text: &str, max: usize) -> String {
    let mut out = String::new();
    for word in text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let word = word.to_ascii_lowercase();
        let extra = if out.is_empty() { 0 } else { 1 };
        if out.len() + extra + word.len() > max {
            if out.is_empty() {
                out.push_str(&word[..max.min(word.len())]);
            }
            break;
        }
        if extra == 1 {
            out.push('-');
        }
        out.push_str(&word);
    }
    out
}

/// The pull request the session works on, as the GitHub adapter recorded it in the thread:
/// its head branch and base.
fn pull_request_of(session: &Session) -> Option<(String, String)> {
    let pr = session.thread_ref.pull_request()?;
    Some((pr.head.clone(), pr.base.clone()))
}

impl Plan {
    /// The plan of `session`: `registered` is its repository's registration, if it names
    /// one (`airlock repo add`), which takes precedence over GitHub.
    pub fn build(
        spec: &ProfileSpec,
        profile_version: i64,
        session: &Session,
        requester: &Human,
        settings: &PlanSettings,
        registered: Option<&Repo>,
    ) -> Plan {
        let mut routes = spec.egress.clone();
        let (branch, base, existing) = match pull_request_of(session) {
            Some((head, base)) => (head, Some(base), true),
            None => (branch_name(&session.id, &session.prompt), None, false),
        };
        let git_plan = |clone_url: String, hosting: Hosting| GitPlan {
            clone_url,
            branch: branch.clone(),
            base: base.clone(),
            existing_branch: existing,
            author_name: settings.author_name.clone(),
            author_email: settings.author_email.clone(),
            co_author: format!("{} <{}>", requester.display_name, requester.email),
            hosting,
        };
        let git = match registered.map(|r| &r.location) {
            Some(RepoLocation::Local { path }) => settings.local_git.as_ref().map(|upstream| {
                routes.push(RouteSpec {
                    host: LOCAL_GIT_HOST.into(),
                    path_prefix: format!("/{}.git", session.repo),
                    methods: vec!["GET".into(), "POST".into()],
                    credential: Some(LOCAL_GIT_CREDENTIAL.into()),
                    inject: Some(Inject::Basic {
                        username: "airlock".into(),
                    }),
                    upstream: Some(upstream.clone()),
                });
                git_plan(
                    format!("https://{LOCAL_GIT_HOST}/{}.git", session.repo),
                    Hosting::Local { path: path.clone() },
                )
            }),
            Some(RepoLocation::Remote {
                url,
                credential,
                username,
                upstream,
            }) => {
                let url = url.trim_end_matches('/');
                let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
                let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
                routes.push(RouteSpec {
                    host: authority
                        .rsplit_once(':')
                        .map(|(h, _)| h)
                        .unwrap_or(authority)
                        .to_ascii_lowercase(),
                    path_prefix: format!("/{path}"),
                    methods: vec!["GET".into(), "POST".into()],
                    credential: credential.clone(),
                    inject: credential.as_ref().map(|_| Inject::Basic {
                        username: username.clone().unwrap_or_else(|| "airlock".into()),
                    }),
                    upstream: upstream.clone(),
                });
                Some(git_plan(
                    url.to_string(),
                    Hosting::Remote {
                        url: url.to_string(),
                    },
                ))
            }
            None => settings.github.as_ref().map(|gh| {
                let web = gh.web_url.trim_end_matches('/');
                let host = web
                    .split_once("://")
                    .map(|(_, rest)| rest)
                    .unwrap_or(web)
                    .to_string();
                routes.push(RouteSpec {
                    host: host.split(':').next().unwrap_or(&host).to_string(),
                    path_prefix: format!("/{}.git", session.repo),
                    methods: vec!["GET".into(), "POST".into()],
                    credential: Some(gh.credential.clone()),
                    inject: Some(Inject::Basic {
                        username: "x-access-token".into(),
                    }),
                    upstream: gh.git_upstream.clone(),
                });
                git_plan(format!("{web}/{}.git", session.repo), Hosting::Github)
            }),
        };
        let branch = match (&git, pull_request_of(session)) {
            (Some(g), _) => g.branch.clone(),
            (None, Some((head, _))) => head,
            (None, None) => branch_name(&session.id, &session.prompt),
        };
        let mut env = spec.env.clone();
        env.insert("AIRLOCK_REPO".into(), session.repo.clone());
        env.insert("AIRLOCK_BRANCH".into(), branch.clone());
        Plan {
            profile: spec.name.clone(),
            profile_version,
            repo: session.repo.clone(),
            requester: Requester {
                id: requester.id.clone(),
                name: requester.display_name.clone(),
                email: requester.email.clone(),
            },
            agent: spec.agent.clone(),
            env,
            limits: spec.limits.clone(),
            routes,
            passthrough: if spec.passthrough_in_sessions {
                spec.passthrough.clone()
            } else {
                Vec::new()
            },
            git,
            branch,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a plan serialises")
    }

    pub fn from_json(v: &serde_json::Value) -> Option<Plan> {
        serde_json::from_value(v.clone()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Role, SessionState, Surface};

    fn session(prompt: &str, thread_ref: crate::domain::ThreadRef) -> Session {
        Session {
            id: crate::ids::SessionId::from_stored("ses_01ABC"),
            requester_id: crate::ids::HumanId::from_stored("hum_1"),
            surface: Surface::Cli,
            thread_ref,
            repo: "acme/web".into(),
            profile_id: crate::ids::ProfileId::from_stored("prf_1"),
            profile_version: 3,
            prompt: prompt.into(),
            state: SessionState::Starting,
            reason: None,
            trigger_id: None,
            last_event_seq: 1,
            created_at: 0,
            updated_at: 0,
            started_at: None,
            finished_at: None,
            plan: None,
            branch: None,
            pull_request_url: None,
            thread_key: None,
            notify: None,
        }
    }

    fn human() -> Human {
        Human {
            id: crate::ids::HumanId::from_stored("hum_1"),
            display_name: "Ada Lovelace".into(),
            email: "ada@example.com".into(),
            role: Role::Member,
            created_at: 0,
            disabled_at: None,
        }
    }

    fn settings(upstream: Option<&str>) -> PlanSettings {
        PlanSettings {
            github: Some(GitHosting {
                web_url: "https://github.com/".into(),
                git_upstream: upstream.map(str::to_string),
                credential: "github".into(),
            }),
            author_name: "Airlock".into(),
            author_email: "airlock@example.com".into(),
            local_git: None,
        }
    }

    const PROFILE: &str = r#"
name = "web"
[agent]
kind = "command"
command = "make test"
[env]
CI = "1"
[[egress]]
host = "api.openai.com"
credential = "openai"
inject = { kind = "bearer" }
"#;

    #[test]
    fn a_plan_adds_a_git_route_for_the_session_repository_only() {
        let spec = ProfileSpec::from_toml(PROFILE).unwrap();
        let plan = Plan::build(
            &spec,
            3,
            &session("Fix the flaky login test!", Default::default()),
            &human(),
            &settings(Some("https://git.internal")),
            None,
        );
        assert_eq!(plan.routes.len(), 2);
        assert_eq!(plan.routes[0].host, "api.openai.com");
        let git = &plan.routes[1];
        assert_eq!(git.host, "github.com");
        assert_eq!(git.path_prefix, "/acme/web.git");
        assert_eq!(git.methods, ["GET", "POST"]);
        assert_eq!(git.credential.as_deref(), Some("github"));
        assert_eq!(git.upstream.as_deref(), Some("https://git.internal"));
        let g = plan.git.as_ref().unwrap();
        assert_eq!(g.clone_url, "https://github.com/acme/web.git");
        assert_eq!(g.branch, "airlock/ses-01abc-fix-the-flaky-login-test");
        assert_eq!(g.co_author, "Ada Lovelace <ada@example.com>");
        assert!(!g.existing_branch);
        assert_eq!(plan.env["CI"], "1");
        assert_eq!(plan.env["AIRLOCK_BRANCH"], g.branch);
        assert_eq!(Plan::from_json(&plan.to_json()), Some(plan));
    }

    #[test]
    fn a_pull_request_session_works_on_the_pull_requests_branch() {
        let spec = ProfileSpec::from_toml(PROFILE).unwrap();
        let s = session(
            "address the review",
            crate::domain::ThreadRef::Github(crate::domain::thread::GithubThread {
                repo: "acme/web".into(),
                issue: 7,
                pull_request: Some(crate::domain::thread::PullRequestRef {
                    number: 7,
                    head: "feature/x".into(),
                    base: "main".into(),
                    url: None,
                }),
                ..Default::default()
            }),
        );
        let plan = Plan::build(&spec, 3, &s, &human(), &settings(None), None);
        let g = plan.git.unwrap();
        assert_eq!(g.branch, "feature/x");
        assert_eq!(g.base.as_deref(), Some("main"));
        assert!(g.existing_branch);
    }

    #[test]
    fn a_registered_repository_is_cloned_from_where_it_is_and_never_from_github() {
        let spec = ProfileSpec::from_toml(PROFILE).unwrap();
        let mut st = settings(None);
        st.local_git = Some("http://127.0.0.1:8080/git".into());
        let local = Repo {
            name: "acme/web".into(),
            location: RepoLocation::Local {
                path: "/srv/web".into(),
            },
            created_at: 0,
        };
        let s = session("x", Default::default());
        let plan = Plan::build(&spec, 1, &s, &human(), &st, Some(&local));
        let git = plan.git.unwrap();
        assert_eq!(git.clone_url, "https://git.airlock.internal/acme/web.git");
        assert_eq!(
            git.hosting,
            Hosting::Local {
                path: "/srv/web".into()
            }
        );
        let route = plan.routes.last().unwrap();
        assert_eq!(route.host, LOCAL_GIT_HOST);
        assert_eq!(route.path_prefix, "/acme/web.git");
        assert_eq!(route.credential.as_deref(), Some(LOCAL_GIT_CREDENTIAL));
        assert_eq!(route.upstream.as_deref(), Some("http://127.0.0.1:8080/git"));
        assert!(plan.routes.iter().all(|r| r.host != "github.com"));

        let remote = Repo {
            name: "acme/web".into(),
            location: RepoLocation::Remote {
                url: "https://Git.Example.com:8443/team/web.git".into(),
                credential: Some("gitea".into()),
                username: None,
                upstream: None,
            },
            created_at: 0,
        };
        let plan = Plan::build(&spec, 1, &s, &human(), &st, Some(&remote));
        let git = plan.git.unwrap();
        assert_eq!(git.clone_url, "https://Git.Example.com:8443/team/web.git");
        let route = plan.routes.last().unwrap();
        assert_eq!(route.host, "git.example.com");
        assert_eq!(route.path_prefix, "/team/web.git");
        assert_eq!(
            route.inject,
            Some(Inject::Basic {
                username: "airlock".into()
            })
        );
        // Without a server serving local repositories, a local one has no git at all.
        st.local_git = None;
        assert!(Plan::build(&spec, 1, &s, &human(), &st, Some(&local))
            .git
            .is_none());
    }

    #[test]
    fn without_git_hosting_there_is_no_git_route() {
        let spec = ProfileSpec::from_toml(PROFILE).unwrap();
        let mut st = settings(None);
        st.github = None;
        let plan = Plan::build(
            &spec,
            1,
            &session("x", Default::default()),
            &human(),
            &st,
            None,
        );
        assert_eq!(plan.routes.len(), 1);
        assert!(plan.git.is_none());
        // The session still has its own branch, the only one it may push.
        assert_eq!(plan.branch, "airlock/ses-01abc-x");
        assert_eq!(plan.env["AIRLOCK_BRANCH"], plan.branch);
    }

    #[test]
    fn passthrough_reaches_sessions_only_where_the_profile_says_so() {
        let mut spec = ProfileSpec::from_toml(PROFILE).unwrap();
        spec.passthrough = vec!["registry.npmjs.org".into()];
        let s = session("x", Default::default());
        let plan = Plan::build(&spec, 1, &s, &human(), &settings(None), None);
        assert!(plan.passthrough.is_empty());
        spec.passthrough_in_sessions = true;
        let plan = Plan::build(&spec, 1, &s, &human(), &settings(None), None);
        assert_eq!(plan.passthrough, ["registry.npmjs.org"]);
    }

    #[test]
    fn slugs_are_short_lower_case_words() {
        assert_eq!(
            slug("Fix the FLAKY login test, please", 20),
            "fix-the-flaky-login"
        );
        assert_eq!(slug("ünïcode only ✓", 40), "n-code-only");
        assert_eq!(slug("!!!", 40), "");
        assert_eq!(slug("averyveryverylongword", 8), "averyver");
        assert_eq!(branch_name("ses_1", "!!!"), "airlock/ses-1");
    }
}
